"""The Markdown run report (``report.md``): headline numbers, configuration, history, per-class table, figures.

The plots live in :mod:`.plots`; this module only links them.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from .plots import _column, _num

__all__ = ["write_report"]


# --------------------------------------------------------------------------------------
# Markdown report
# --------------------------------------------------------------------------------------

_ROW_ORDER = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]
_ROW_HEAD = {"epoch": "epoch", "train_loss": "train loss", "train_acc": "train acc", "val_loss": "val loss",
             "val_acc": "val acc", "lr": "lr"}
_EPOCH_TIME_KEYS = ("epoch_time", "epoch_time_s", "time_s", "time", "seconds", "duration_s", "duration")
_ELAPSED_KEYS = ("elapsed", "elapsed_s", "wall_time", "wall_time_s", "total_time_s")
_IPS_KEYS = ("images_per_s", "images_per_sec", "img_per_s", "img_s", "imgs_per_s", "throughput",
             "samples_per_s", "train_images_per_s")
_KEY_CONFIG = ("model", "arch", "pretrained", "weights", "strategy", "freeze", "epochs", "batch_size",
               "lr", "optimizer", "weight_decay", "scheduler", "warmup_epochs", "label_smoothing", "img_size",
               "image_size", "precision", "amp", "device", "num_classes", "seed", "data", "data_dir")


def _md(text: Any) -> str:
    """Escape a value for a GitHub table cell / inline text."""
    s = str(text).replace("\r", " ").replace("\n", " ")
    for ch in ("\\", "|", "*", "_", "`", "<", ">", "[", "]"):
        s = s.replace(ch, "\\" + ch)
    return s


def _code(text: Any) -> str:
    """Inline code span that survives backticks and pipes inside table cells."""
    s = str(text).replace("\n", " ").replace("|", "\\|")
    ticks = "`"
    while ticks in s:
        ticks += "`"
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{ticks}{pad}{s}{pad}{ticks}"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> list[str]:
    align = list(align) if align else ["l"] * len(header)
    sep = {"l": ":---", "r": "---:", "c": ":---:"}
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep[a] for a in align) + " |"]
    for r in rows:
        out.append("| " + " | ".join(str(v) for v in r) + " |")
    return out


def _fmt_pct(v: float, scale: float) -> str:
    if not np.isfinite(v):
        return "–"
    return f"{v * scale:.2f}%" if scale == 100.0 else f"{v:.4f}"


def _fmt_cell(key: str, value: Any, acc_scale: float) -> str:
    v = _num(value)
    if math.isnan(v):
        if isinstance(value, str) and value.strip() and key not in _ROW_HEAD:
            return _md(value.strip())
        return "–"
    if key == "epoch":
        return f"{v:g}"
    if key.endswith("_acc") or key.endswith("acc1") or key.endswith("acc5") or key.endswith("_top5"):
        return _fmt_pct(v, acc_scale)
    if key == "lr" or key.endswith("_lr") or (v != 0 and abs(v) < 1e-3):
        return f"{v:.2e}"
    if key.endswith("loss"):
        return f"{v:.4f}"
    if float(v).is_integer() and abs(v) < 1e12:
        return f"{int(v)}"
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"


def _fmt_seconds(sec: float) -> str:
    if not np.isfinite(sec):
        return "n/a"
    sec = float(sec)
    if sec < 60:
        return f"{sec:.1f} s"
    m, s = divmod(int(round(sec)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _first(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str | None:
    for k in keys:
        if any(k in r and np.isfinite(_num(r.get(k))) for r in rows):
            return k
    return None


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def _fmt_config_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5) else f"{v:g}"
    if isinstance(v, (list, tuple)):
        return _code(json.dumps(list(v), default=str))
    if v is None:
        return "–"
    return _code(v) if isinstance(v, (str, os.PathLike)) and ("/" in str(v) or "\\" in str(v)) else _md(v)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    return str(o)


def _fence(text: str, lang: str = "") -> list[str]:
    # a fence longer than any run of backticks inside the text
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    ticks = max(3, longest + 1)
    fence = "`" * ticks
    return [fence + lang, text.rstrip("\n"), fence]


def _image_link(run_dir: Path, path: str) -> str:
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.relative_to(run_dir)
        except ValueError:
            pass
    return quote(p.as_posix(), safe="/:._-~")


def write_report(run_dir: str | os.PathLike, *, title: str, config: dict, rows: list[dict],
                 eval_report: dict | None, classes: list[str], scan_summary: str | None = None,
                 notes: list[str] | None = None, images: dict[str, str] | None = None,
                 sections: Sequence[str] = ()) -> Path:
    """Write ``run_dir/report.md`` (GitHub-flavoured Markdown) and return its path.

    ``sections`` are a task's own Markdown sections, placed after the summary.

    Sections: title; summary (best and final validation accuracy, final losses, total
    time and images/s when known, test accuracy/top-5/macro-F1 from ``eval_report``);
    embedded ``images`` (``{caption: path}``, paths relative to ``run_dir``; absolute
    paths inside it are made relative); per-epoch table; key configuration values (full
    config folded below); per-class metrics; confusion matrix (C <= 12); worst images;
    data-scan summary (code block); notes.

    Timing comes from the rows when they have it: a per-epoch duration column (one of
    ``epoch_time, epoch_time_s, time_s, time, seconds, duration_s, duration``) is
    summed, else the last cumulative ``elapsed``/``wall_time``/``total_time_s`` value is
    used; images/s is the mean of ``images_per_s`` (or ``images_per_sec, img_per_s,
    throughput, samples_per_s, ...``). ``config['total_time_s']`` /
    ``config['images_per_s']`` override those when given.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [dict(r) for r in (rows or [])]
    config = dict(config or {})
    flat_cfg = _flatten(config)
    classes = [str(c) for c in (classes or [])]
    L: list[str] = [f"# {_md(title)}", ""]
    L.append(f"_Generated {time.strftime('%Y-%m-%d %H:%M:%S')}_")
    L.append("")

    # ---- summary ------------------------------------------------------------------
    epoch = _column(rows, "epoch") if rows else np.zeros(0)
    if rows and np.isnan(epoch).all():
        epoch = np.arange(1, len(rows) + 1, dtype=np.float64)
    val_acc = _column(rows, "val_acc") if rows else np.zeros(0)
    train_acc = _column(rows, "train_acc") if rows else np.zeros(0)
    acc_all = np.concatenate([val_acc, train_acc])
    acc_all = acc_all[np.isfinite(acc_all)]
    acc_scale = 100.0 if acc_all.size == 0 or acc_all.max() <= 1.0 + 1e-9 else 1.0
    summary: list[tuple[str, str]] = []
    if np.isfinite(val_acc).any():
        b = int(np.nanargmax(val_acc))
        summary.append(("Best validation accuracy", f"**{_fmt_pct(val_acc[b], acc_scale)}** (epoch {epoch[b]:g})"))
    if rows:
        last = rows[-1]
        fin = []
        for key, name in (("val_acc", "val acc"), ("val_loss", "val loss"), ("train_acc", "train acc"),
                          ("train_loss", "train loss")):
            v = _num(last.get(key))
            if np.isfinite(v):
                fin.append(f"{name} {_fmt_cell(key, v, acc_scale)}")
        summary.append((f"Final (epoch {epoch[-1]:g})", ", ".join(fin) if fin else "–"))
        summary.append(("Epochs run", str(len(rows))))

    total_time = _num(flat_cfg.get("total_time_s"))
    if not np.isfinite(total_time) and rows:
        tk = _first(rows, _EPOCH_TIME_KEYS)
        if tk:
            total_time = float(np.nansum(_column(rows, tk)))
        else:
            ek = _first(rows, _ELAPSED_KEYS)
            if ek:
                total_time = float(np.nanmax(_column(rows, ek)))
    if np.isfinite(total_time):
        summary.append(("Total training time", _fmt_seconds(total_time)))
    ips = _num(flat_cfg.get("images_per_s"))
    if not np.isfinite(ips) and rows:
        ik = _first(rows, _IPS_KEYS)
        if ik:
            ips = float(np.nanmean(_column(rows, ik)))
    if np.isfinite(ips):
        summary.append(("Throughput", f"{ips:,.0f} images/s"))
    if eval_report:
        ev = [f"accuracy {_fmt_pct(float(eval_report.get('accuracy', math.nan)), 100.0)}"]
        if eval_report.get("top5") is not None:
            ev.append(f"top-5 {_fmt_pct(float(eval_report['top5']), 100.0)}")
        if eval_report.get("macro_f1") is not None:
            ev.append(f"macro-F1 {float(eval_report['macro_f1']):.4f}")
        summary.append((f"Evaluation ({int(eval_report.get('num_samples', 0))} images)", ", ".join(ev)))
    if classes:
        shown = ", ".join(_md(c) for c in classes[:12]) + (f", … ({len(classes)} total)" if len(classes) > 12 else "")
        summary.append(("Classes", f"{len(classes)}: {shown}"))
    if summary:
        L.append("## Summary")
        L.append("")
        L += _table(["metric", "value"], [(f"**{k}**", v) for k, v in summary])
        L.append("")
    for section in sections:
        L += [section.rstrip("\n"), ""]

    # ---- images -------------------------------------------------------------------
    if images:
        L.append("## Figures")
        L.append("")
        for caption, path in images.items():
            if not path:
                continue
            L.append(f"### {_md(caption)}")
            L.append("")
            L.append(f"![{_md(caption)}]({_image_link(run_dir, str(path))})")
            L.append("")

    # ---- per-epoch table ----------------------------------------------------------
    if rows:
        keys = [k for k in _ROW_ORDER if any(k in r for r in rows)]
        for r in rows:
            for k in r:
                if k not in keys:
                    keys.append(k)
        L.append("## Training history")
        L.append("")
        L += _table([_md(_ROW_HEAD.get(k, k.replace("_", " "))) for k in keys],
                    ([_fmt_cell(k, r.get(k), acc_scale) for k in keys] for r in rows),
                    ["r"] * len(keys))
        L.append("")

    # ---- config -------------------------------------------------------------------
    if config:
        L.append("## Configuration")
        L.append("")
        key_rows = []
        seen = set()
        for want in _KEY_CONFIG:
            for k, v in flat_cfg.items():
                if k in seen:
                    continue
                last = k.rsplit(".", 1)[-1]
                if k == want or last == want or k in (f"{want}.name", f"{want}.type") or k.endswith(f".{want}.name"):
                    key_rows.append((_code(k), _fmt_config_value(v)))
                    seen.add(k)
        if key_rows:
            L += _table(["setting", "value"], key_rows)
            L.append("")
        if len(seen) < len(flat_cfg):
            L.append("<details><summary>Full configuration</summary>")
            L.append("")
            L += _fence(json.dumps(config, indent=2, sort_keys=False, default=_json_default), "json")
            L.append("")
            L.append("</details>")
            L.append("")

    # ---- evaluation ---------------------------------------------------------------
    if eval_report:
        per_class = eval_report.get("per_class") or []
        if per_class:
            L.append("## Per-class metrics")
            L.append("")
            L += _table(["class", "precision", "recall", "F1", "support"],
                        ([_md(r.get("class", classes[i] if i < len(classes) else i)),
                          f"{float(r['precision']):.4f}", f"{float(r['recall']):.4f}", f"{float(r['f1']):.4f}",
                          f"{int(r['support'])}"] for i, r in enumerate(per_class)),
                        ["l", "r", "r", "r", "r"])
            L.append("")
        cm = eval_report.get("confusion_matrix")
        names = [str(r.get("class")) for r in per_class] if per_class else classes
        if cm is not None and 0 < len(cm) <= 12 and len(names) == len(cm):
            L.append("## Confusion matrix")
            L.append("")
            L.append("Rows: true class, columns: predicted class.")
            L.append("")
            L += _table(["true \\ pred"] + [_md(n) for n in names],
                        ([f"**{_md(names[i])}**"] + [str(int(v)) for v in row] for i, row in enumerate(cm)),
                        ["l"] + ["r"] * len(names))
            L.append("")
        worst = eval_report.get("worst") or []
        if worst:
            L.append("## Worst-classified images")
            L.append("")
            L.append("Misclassified images with the lowest probability of their true class.")
            L.append("")
            L += _table(["#", "file", "true", "predicted", "p(true)", "p(pred)"],
                        ([str(i + 1), _code(w.get("file", "")), _md(w.get("true", "")), _md(w.get("pred", "")),
                          f"{float(w.get('prob_true', math.nan)):.3f}", f"{float(w.get('prob_pred', math.nan)):.3f}"]
                         for i, w in enumerate(worst)),
                        ["r", "l", "l", "l", "r", "r"])
            L.append("")

    # ---- data scan & notes --------------------------------------------------------
    if scan_summary:
        L.append("## Data scan")
        L.append("")
        L += _fence(str(scan_summary), "text")
        L.append("")
    if notes:
        L.append("## Notes")
        L.append("")
        for note in notes:
            L.append("- " + str(note).strip().replace("\n", "\n  "))
        L.append("")

    out = run_dir / "report.md"
    out.write_text("\n".join(L).rstrip("\n") + "\n", encoding="utf-8")
    return out
