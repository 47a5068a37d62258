"""Segmentation metrics from a pixel confusion matrix: pixel accuracy, per-class IoU, mean IoU.

Pixels labelled with the ignore index (or with a label outside the classes) are left out of the
confusion matrix, so they count nowhere. A class that appears in neither the ground truth nor
the predictions has no IoU (NaN) and is left out of the mean; when the ignore index is itself a
class id below ``num_classes`` that class is left out too.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["confusion_matrix", "iou_per_class", "mean_iou", "pixel_accuracy", "segmentation_report",
           "format_seg_report"]


def confusion_matrix(pred: Tensor | np.ndarray, target: Tensor | np.ndarray, num_classes: int,
                     ignore_index: int = 255) -> np.ndarray:
    """(C, C) int64 pixel counts, rows the true class and columns the predicted one."""
    p = torch.as_tensor(np.asarray(pred) if isinstance(pred, np.ndarray) else pred).reshape(-1).long()
    t = torch.as_tensor(np.asarray(target) if isinstance(target, np.ndarray) else target).reshape(-1).long()
    if p.shape != t.shape:
        raise ValueError(f"prediction and target differ in size ({p.numel()} vs {t.numel()} pixels)")
    c = int(num_classes)
    valid = (t != ignore_index) & (t >= 0) & (t < c)
    idx = t[valid] * c + p[valid].clamp(0, c - 1)
    return torch.bincount(idx, minlength=c * c).reshape(c, c).cpu().numpy().astype(np.int64)


def _classes_counted(c: int, ignore_index: int) -> np.ndarray:
    keep = np.ones(c, dtype=bool)
    if 0 <= ignore_index < c:
        keep[ignore_index] = False
    return keep


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU = TP / (TP + FP + FN) per class (float64); NaN where the class is in neither truth nor prediction."""
    m = np.asarray(cm, dtype=np.float64)
    tp = np.diag(m)
    union = m.sum(0) + m.sum(1) - tp
    out = np.full(len(tp), np.nan)
    np.divide(tp, union, out=out, where=union > 0)
    return out


def mean_iou(cm: np.ndarray, ignore_index: int = 255) -> float:
    iou = iou_per_class(cm)[_classes_counted(len(cm), ignore_index)]
    iou = iou[~np.isnan(iou)]
    return float(iou.mean()) if iou.size else math.nan


def pixel_accuracy(cm: np.ndarray) -> float:
    m = np.asarray(cm)
    total = m.sum()
    return float(np.trace(m) / total) if total else math.nan


def segmentation_report(cm: np.ndarray, classes: Sequence[str], ignore_index: int = 255) -> dict[str, Any]:
    """Everything about one evaluation pass, JSON-serialisable.

    Keys: ``pixel_acc``, ``mean_iou``, ``mean_acc`` (mean per-class recall), ``fw_iou``
    (frequency-weighted IoU), ``per_class`` (``class``, ``id``, ``iou``, ``acc``, ``pixels``,
    ``predicted``; IoU None where undefined), ``confusion_matrix`` (list of lists), ``num_pixels``.
    """
    m = np.asarray(cm, dtype=np.int64)
    keep = _classes_counted(len(m), ignore_index)
    iou = iou_per_class(m)
    gt = m.sum(1)
    acc = np.full(len(m), np.nan)
    np.divide(np.diag(m).astype(np.float64), gt, out=acc, where=gt > 0)
    freq = gt / gt.sum() if gt.sum() else np.zeros(len(m))
    ok = keep & ~np.isnan(iou)
    per_class = []
    for i, name in enumerate(classes):
        if not keep[i]:
            continue
        per_class.append({"class": str(name), "id": i, "iou": None if np.isnan(iou[i]) else float(iou[i]),
                          "acc": None if np.isnan(acc[i]) else float(acc[i]), "pixels": int(gt[i]),
                          "predicted": int(m[:, i].sum())})
    accs = acc[keep & ~np.isnan(acc)]
    return {
        "pixel_acc": pixel_accuracy(m),
        "mean_iou": float(iou[ok].mean()) if ok.any() else math.nan,
        "mean_acc": float(accs.mean()) if accs.size else math.nan,
        "fw_iou": float((freq[ok] * iou[ok]).sum()) if ok.any() else math.nan,
        "per_class": per_class,
        "confusion_matrix": m.tolist(),
        "num_pixels": int(m.sum()),
    }


def format_seg_report(report: dict[str, Any]) -> str:
    """A few console lines: the headline numbers and the per-class IoU table."""
    lines = [f"mean IoU {100 * report['mean_iou']:.2f}%, pixel accuracy {100 * report['pixel_acc']:.2f}%, "
             f"mean class accuracy {100 * report['mean_acc']:.2f}%"
             + (f" ({report['num_images']} images)" if "num_images" in report else "")]
    width = max([len(r["class"]) for r in report["per_class"]] + [5])
    lines.append(f"  {'class':<{width}}  {'IoU':>7}  {'acc':>7}  {'pixels':>11}")
    for r in report["per_class"]:
        iou = "–" if r["iou"] is None else f"{100 * r['iou']:.2f}%"
        acc = "–" if r["acc"] is None else f"{100 * r['acc']:.2f}%"
        lines.append(f"  {r['class']:<{width}}  {iou:>7}  {acc:>7}  {r['pixels']:>11,}")
    return "\n".join(lines)
