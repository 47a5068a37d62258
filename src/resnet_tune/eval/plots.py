"""Plots of a run: training curves, confusion matrix, worst-classified images, the learning-rate range test.

matplotlib is imported lazily inside each plotting function (with the ``Agg`` backend), so importing this module
never touches a display or pays matplotlib's import cost.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_confusion", "plot_curves", "plot_lr_find", "plot_worst"]


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

def plot_curves(rows: list[dict], out_png: str | os.PathLike, *,
                score_keys: Sequence[tuple[str, str]] = (("train_acc", "train"), ("val_acc", "validation")),
                score_name: str = "accuracy", best_key: str = "val_acc", loss_name: str = "cross-entropy loss"
                ) -> Path:
    """Training curves from ``metrics.csv`` rows.

    Each row has ``epoch, train_loss, val_loss, lr`` and the score columns ``score_keys`` (``(key, legend)``;
    classification's ``train_acc, val_acc`` by default; numbers or the strings ``csv.DictReader`` gives; ``val_*``
    may be missing, blank or NaN). Draws loss and score panels side by side (the best ``best_key`` marked) and a
    small learning-rate panel below. Scores in 0..1 are shown as percentages.
    """
    out = _prepare_out(out_png)
    plt = _plt()
    rows = list(rows)
    epoch = _column(rows, "epoch")
    if rows and np.isnan(epoch).all():
        epoch = np.arange(1, len(rows) + 1, dtype=np.float64)
    cols = {k: _column(rows, k) for k in ("train_loss", "val_loss", "lr", best_key, *(k for k, _ in score_keys))}
    acc_vals = np.concatenate([cols[k] for k, _ in score_keys])
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
    ax_loss.set_ylabel(loss_name)
    if any(drew):
        ax_loss.legend(loc="best", fontsize=9)

    drew = [line(ax_acc, cols[k], legend, colour, acc_scale)
            for (k, legend), colour in zip(score_keys, ("tab:blue", "tab:orange", "tab:purple", "tab:brown"))]
    val_acc = cols[best_key]
    if np.isfinite(val_acc).any():
        best = int(np.nanargmax(val_acc))
        ax_acc.scatter([epoch[best]], [val_acc[best] * acc_scale], s=90, facecolors="none",
                       edgecolors="tab:red", linewidths=1.8, zorder=5,
                       label=f"best val {val_acc[best] * acc_scale:.2f}{'%' if acc_scale == 100 else ''}"
                             f" (epoch {epoch[best]:g})")
    ax_acc.set_title(score_name[:1].upper() + score_name[1:])
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel(f"{score_name} (%)" if acc_scale == 100 else score_name)
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


def plot_confusion(cm: Any, classes: list[str], out_png: str | os.PathLike, normalize: bool = True, *,
                   title: str | None = None, xlabel: str = "predicted class", ylabel: str = "true class") -> Path:
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
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    total = int(counts.sum())
    acc = float(np.trace(counts) / total) if total else 0.0
    ax.set_title(title or f"Confusion matrix{' (row-normalised)' if normalize else ''}\n"
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


def plot_label_ap(report: Mapping[str, Any], out_png: str | os.PathLike) -> Path:
    """Average precision per label (a multi-label report's ``per_label``), sorted, with each label's support;
    labels without positives (no AP) are listed in the title instead."""
    out = _prepare_out(out_png)
    plt = _plt()
    rows = [r for r in report["per_label"] if r.get("ap") is not None]
    rows.sort(key=lambda r: r["ap"])
    n = len(rows)
    fig, ax = plt.subplots(figsize=(8, float(np.clip(0.28 * n + 1.6, 2.5, 30.0))))
    y = np.arange(n)
    ax.barh(y, [100 * r["ap"] for r in rows], color="#4c72b0")
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['label']} ({r['support']})" for r in rows], fontsize=float(np.clip(500 / max(n, 1),
                                                                                                 6, 10)))
    ax.set_xlim(0, 100)
    ax.set_xlabel("average precision (%)")
    left = report.get("left_out") or []
    extra = f"; no positives: {', '.join(left[:6])}{' ...' if len(left) > 6 else ''}" if left else ""
    ax.set_title(f"AP per label (support in brackets): macro mAP {100 * report['macro_map']:.1f}%{extra}",
                 fontsize=10)
    return _save(fig, out)


def error_cooccurrence(predicted: Any, targets: Any) -> np.ndarray:
    """(L, L) counts of images where label i was missed and label j predicted wrongly (i != j); the diagonal counts
    images where label i was missed and no label was predicted wrongly."""
    p = np.asarray(predicted).astype(bool)
    t = np.asarray(targets).astype(bool)
    fn, fp = t & ~p, ~t & p
    m = fn.T.astype(np.int64) @ fp.astype(np.int64)
    np.fill_diagonal(m, (fn & ~fp.any(1, keepdims=True)).sum(0))
    return m


def plot_error_cooccurrence(predicted: Any, targets: Any, labels: list[str], out_png: str | os.PathLike) -> Path:
    """Heat map of :func:`error_cooccurrence`: which labels are predicted when a label is missed."""
    return plot_confusion(error_cooccurrence(predicted, targets), labels, out_png, normalize=False,
                          title="Errors: label missed (row) and label predicted wrongly (column), images;\n"
                                "the diagonal: missed with nothing predicted wrongly",
                          xlabel="predicted wrongly", ylabel="missed")
