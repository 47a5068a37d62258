"""Plots and the Markdown run report.

matplotlib is imported lazily inside each plotting function (with the ``Agg`` backend),
so importing this module, or the package, never touches a display or pays matplotlib's
import cost.
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

__all__ = ["plot_confusion", "plot_curves", "plot_lr_find", "plot_worst", "suggest_lr", "write_report"]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _prepare_out(out_png: str | os.PathLike) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _save(fig, out: Path, dpi: int = 110) -> Path:
    plt = _plt()
    try:
        fig.savefig(out, dpi=dpi, bbox_inches="tight", facecolor="white")
    finally:
        plt.close(fig)
    return out


def _num(value: Any) -> float:
    """A float from a CSV cell or number; missing/blank/unparsable -> NaN."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([_num(r.get(key)) for r in rows], dtype=np.float64)


# --------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------

def plot_curves(rows: list[dict], out_png: str | os.PathLike) -> Path:
    """Training curves from ``metrics.csv`` rows.

    Each row has ``epoch, train_loss, train_acc, val_loss, val_acc, lr`` (numbers or the
    strings ``csv.DictReader`` gives; ``val_*`` may be missing, blank or NaN). Draws loss
    and accuracy panels side by side (best validation accuracy marked) and a small
    learning-rate panel below. Accuracies in 0..1 are shown as percentages.
    """
    out = _prepare_out(out_png)
    plt = _plt()
    rows = list(rows)
    epoch = _column(rows, "epoch")
    if rows and np.isnan(epoch).all():
        epoch = np.arange(1, len(rows) + 1, dtype=np.float64)
    cols = {k: _column(rows, k) for k in ("train_loss", "val_loss", "train_acc", "val_acc", "lr")}
    acc_vals = np.concatenate([cols["train_acc"], cols["val_acc"]])
    finite_acc = acc_vals[np.isfinite(acc_vals)]
    acc_scale = 100.0 if finite_acc.size and finite_acc.max() <= 1.0 + 1e-9 else 1.0

    fig = plt.figure(figsize=(11, 6.2))
    gs = fig.add_gridspec(2, 2, height_ratios=[3, 1.15], hspace=0.45, wspace=0.22)
    ax_loss = fig.add_subplot(gs[0, 0])
    ax_acc = fig.add_subplot(gs[0, 1])
    ax_lr = fig.add_subplot(gs[1, :])

    def line(ax, y, label, color, scale=1.0):
        ok = np.isfinite(y) & np.isfinite(epoch)
        if ok.any():
            ax.plot(epoch[ok], y[ok] * scale, marker="o" if ok.sum() <= 30 else None, ms=3.5,
                    lw=1.6, color=color, label=label)
        return ok.any()

    drew = [line(ax_loss, cols["train_loss"], "train", "tab:blue"),
            line(ax_loss, cols["val_loss"], "validation", "tab:orange")]
    ax_loss.set_title("Loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    if any(drew):
        ax_loss.legend(loc="best", fontsize=9)

    drew = [line(ax_acc, cols["train_acc"], "train", "tab:blue", acc_scale),
            line(ax_acc, cols["val_acc"], "validation", "tab:orange", acc_scale)]
    val_acc = cols["val_acc"]
    if np.isfinite(val_acc).any():
        best = int(np.nanargmax(val_acc))
        ax_acc.scatter([epoch[best]], [val_acc[best] * acc_scale], s=90, facecolors="none",
                       edgecolors="tab:red", linewidths=1.8, zorder=5,
                       label=f"best val {val_acc[best] * acc_scale:.2f}{'%' if acc_scale == 100 else ''}"
                             f" (epoch {epoch[best]:g})")
    ax_acc.set_title("Accuracy")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)" if acc_scale == 100 else "accuracy")
    if any(drew):
        ax_acc.legend(loc="best", fontsize=9)

    lr = cols["lr"]
    ok = np.isfinite(lr) & np.isfinite(epoch)
    if ok.any():
        ax_lr.plot(epoch[ok], lr[ok], color="tab:green", lw=1.6, marker="o" if ok.sum() <= 30 else None, ms=3)
        pos = lr[ok]
        if (pos > 0).all() and pos.max() / pos.min() > 20:
            ax_lr.set_yscale("log")
    ax_lr.set_title("Learning rate", fontsize=10)
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("lr")
    if ax_lr.get_yscale() == "linear":
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))

    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(True, alpha=0.3)
        if len(rows) and len(rows) <= 20:
            ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, out)


def plot_confusion(cm: Any, classes: list[str], out_png: str | os.PathLike, normalize: bool = True) -> Path:
    """Confusion-matrix heat map (rows true class, columns predicted).

    ``normalize=True`` colours by row fraction (recall per true class; empty rows stay 0).
    Cells are annotated when C <= 20 (percent and count when normalised, else counts);
    the figure grows with the class count and tick labels shrink, so ~100 classes stay
    legible without annotations.
    """
    out = _prepare_out(out_png)
    m = np.asarray(cm, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a confusion matrix must be square (C, C); got shape {m.shape}.")
    c = m.shape[0]
    names = [str(x) for x in classes]
    if len(names) != c:
        raise ValueError(f"the confusion matrix has {c} classes but {len(names)} names were given.")
    names = [n if len(n) <= 28 else n[:25] + "..." for n in names]
    plt = _plt()

    counts = m
    if normalize:
        rs = m.sum(axis=1, keepdims=True)
        shown = np.divide(m, rs, out=np.zeros_like(m), where=rs != 0)
    else:
        shown = m

    side = float(np.clip(0.5 * c + 2.5, 5.0, 26.0))
    tick_fs = float(np.clip(700.0 / max(c, 1), 6.5, 10.0))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    vmax = 1.0 if normalize else max(float(shown.max()), 1.0)
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest", aspect="equal")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cbar.set_label("fraction of true class" if normalize else "count")

    ax.set_xticks(np.arange(c))
    ax.set_yticks(np.arange(c))
    ax.set_xticklabels(names, rotation=90 if c > 8 else 45, ha="center" if c > 8 else "right",
                       rotation_mode="anchor" if c <= 8 else "default", fontsize=tick_fs)
    ax.set_yticklabels(names, fontsize=tick_fs)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = int(counts.sum())
    acc = float(np.trace(counts) / total) if total else 0.0
    ax.set_title(f"Confusion matrix{' (row-normalised)' if normalize else ''}\n"
                 f"{total} samples, accuracy {100 * acc:.2f}%", fontsize=max(11.0, tick_fs + 1))

    if c <= 20:
        fs = float(np.clip(140.0 / max(c, 1), 5.5, 10.0))
        thresh = 0.5 * vmax
        for i in range(c):
            for j in range(c):
                val, cnt = shown[i, j], int(counts[i, j])
                if normalize:
                    if cnt == 0:
                        text = "0"
                    elif c <= 10:
                        text = f"{100 * val:.0f}%\n({cnt})"
                    else:
                        text = f"{100 * val:.0f}%"
                else:
                    text = f"{cnt}"
                ax.text(j, i, text, ha="center", va="center", fontsize=fs,
                        color="white" if val > thresh else "black")
    else:
        edges = np.arange(-0.5, c, 1.0)  # thin cell borders (line collections: far cheaper than minor ticks)
        ax.hlines(edges, -0.5, c - 0.5, colors="0.9", linewidths=0.3)
        ax.vlines(edges, -0.5, c - 0.5, colors="0.9", linewidths=0.3)
    return _save(fig, out, dpi=100 if c > 40 else 110)


def plot_worst(worst: list[dict], out_png: str | os.PathLike, max_images: int = 16) -> Path | None:
    """Grid of the worst-classified images, each titled ``true -> pred (p)``.

    ``worst`` is ``classification_report(...)['worst']`` (``file`` must be an image path).
    Missing or unreadable files are skipped; returns None (and writes nothing) when no
    image could be shown.
    """
    from PIL import Image

    thumbs: list[tuple[Any, str]] = []
    for entry in worst or []:
        if len(thumbs) >= max_images:
            break
        path = entry.get("file")
        if not path:
            continue
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((224, 224))
                arr = np.asarray(im)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
        p = entry.get("prob_pred")
        p_txt = f"{float(p):.2f}" if p is not None else "?"
        label = f"{entry.get('true', '?')} -> {entry.get('pred', '?')} ({p_txt})"
        thumbs.append((arr, label))
    if not thumbs:
        return None

    out = _prepare_out(out_png)
    plt = _plt()
    import textwrap

    n = len(thumbs)
    ncols = min(4, n) if n <= 8 else int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.8 * ncols, 3.1 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (arr, label) in zip(axes.flat, thumbs):
        ax.imshow(arr)
        ax.set_title("\n".join(textwrap.wrap(label, 30)[:3]), fontsize=8.5)
    fig.suptitle("Worst-classified images: true -> predicted (p of predicted)", fontsize=11)
    fig.tight_layout()
    return _save(fig, out)


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], suggestion: float | None,
                 out_png: str | os.PathLike) -> Path:
    """Loss against learning rate (log x) from an lr range test, suggestion marked."""
    out = _prepare_out(out_png)
    plt = _plt()
    x = np.asarray(lrs, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    n = min(x.size, y.size)
    x, y = x[:n], y[:n]
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    if ok.any():
        ax.plot(x[ok], y[ok], color="tab:blue", lw=1.6, label="loss")
        yo = y[ok]
        lo, hi = float(yo.min()), float(np.percentile(yo, 95))
        # Keep the interesting part visible when the loss explodes at the end.
        if hi > lo:
            ax.set_ylim(lo - 0.05 * (hi - lo), min(float(yo.max()), hi + 0.6 * (hi - lo)) + 0.05 * (hi - lo))
    ax.set_xscale("log")
    if suggestion is not None and np.isfinite(suggestion) and suggestion > 0:
        ax.axvline(suggestion, color="tab:red", ls="--", lw=1.3, label=f"suggested lr {suggestion:.2e}")
        if ok.any():
            idx = int(np.argmin(np.abs(np.log(x[ok]) - math.log(suggestion))))
            ax.scatter([x[ok][idx]], [y[ok][idx]], color="tab:red", s=40, zorder=5)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss")
    ax.set_title("Learning-rate range test")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="best", fontsize=9)
    return _save(fig, out)


# --------------------------------------------------------------------------------------
# lr suggestion
# --------------------------------------------------------------------------------------

def suggest_lr(lrs: Sequence[float], losses: Sequence[float], *, beta: float = 0.98,
               min_points: int = 5) -> float | None:
    """fastai-style learning-rate suggestion from an lr range test.

    ``losses`` are the **raw** per-step losses (in the order the lrs were tried, lr
    increasing). They are smoothed here by an exponential moving average with bias
    correction (``beta=0.98``, as fastai); pass ``beta=0`` if the losses are already
    smoothed. The curve is cut at the first non-finite loss or the first point where the
    smoothed loss exceeds 4x its minimum so far; the suggestion is the lr at the steepest
    negative gradient of smoothed loss against log(lr). Fallback when the loss never
    falls: the lr of the minimum loss / 10. Returns None for fewer than ``min_points``
    usable points.

    Note: the moving average lags the raw curve, so with ~100 steps the suggestion sits
    somewhat above the raw steepest point (fastai behaves the same way).
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1); got {beta}.")
    x = np.asarray(list(lrs), dtype=np.float64).ravel()
    y = np.asarray(list(losses), dtype=np.float64).ravel()
    n = min(x.size, y.size)
    x, y = x[:n], y[:n]
    bad = ~np.isfinite(y)
    if bad.any():  # the run diverged: keep what came before
        n = int(np.argmax(bad))
        x, y = x[:n], y[:n]
    keep = np.isfinite(x) & (x > 0)
    x, y = x[keep], y[keep]
    if x.size < max(2, min_points):
        return None

    if beta > 0:
        s = np.empty_like(y)
        avg = 0.0
        for i, v in enumerate(y):  # a few hundred points at most; a loop is clearest
            avg = beta * avg + (1.0 - beta) * v
            s[i] = avg / (1.0 - beta ** (i + 1))
    else:
        s = y.copy()

    run_min = np.minimum.accumulate(s)
    over = (run_min > 0) & (s > 4.0 * run_min)
    if over.any():
        cut = int(np.argmax(over))
        x, s = x[:cut], s[:cut]
    if x.size < 2:
        return None
    if x.size >= 3:
        grad = np.gradient(s, np.log10(x))
        grad = np.where(np.isfinite(grad), grad, np.inf)
        i = int(np.argmin(grad))
        if grad[i] < 0:
            return float(x[i])
    return float(x[int(np.argmin(s))] / 10.0)


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
                 notes: list[str] | None = None, images: dict[str, str] | None = None) -> Path:
    """Write ``run_dir/report.md`` (GitHub-flavoured Markdown) and return its path.

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
