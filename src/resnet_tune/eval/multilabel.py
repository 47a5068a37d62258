"""Metrics for multi-label image recognition: several labels an image, one sigmoid score a label.

``targets`` are 0/1 arrays of shape (N, L) (N images, L labels) and ``scores`` probabilities of the same shape.
Average precision follows scikit-learn's ``average_precision_score`` (the step-wise area under the
precision-recall curve, ties in the scores taken together); the tests compare every figure here with
scikit-learn's to 1e-6. Labels without a positive image are left out of macro figures (their AP is undefined),
and the report names them.

Thresholds: :func:`tune_thresholds` picks one threshold a label on a validation split, maximising the label's F1
(or reaching a precision the user asks for with the most recall); labels with too few validation positives to
tune on take one global threshold, the one that maximises micro-F1 over every label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .metrics import safe_div

__all__ = ["MIN_TUNING_POSITIVES", "Thresholds", "average_precision", "label_counts", "multilabel_report",
           "tune_thresholds"]

#: A label needs at least this many positive validation images for a threshold of its own: with fewer, the F1
#: curve is a handful of steps and the chosen threshold fits those images, not the label.
MIN_TUNING_POSITIVES = 5


def _check(targets: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(targets)
    s = np.asarray(scores, dtype=np.float64)
    if t.ndim == 1:
        t, s = t[:, None], s.reshape(-1, 1)
    if t.shape != s.shape or t.ndim != 2:
        raise ValueError(f"targets {t.shape} and scores {s.shape} must both be (images, labels).")
    if t.size and not np.isin(t, (0, 1)).all():
        raise ValueError("multi-label targets must be 0 or 1.")
    return t.astype(bool), s


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives when predicting ``s >= v`` for each distinct score ``v`` (highest first)."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each run of equal scores
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    return tps.astype(np.float64), fps.astype(np.float64), s[last]


def _ap(y: np.ndarray, s: np.ndarray) -> float:
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    tps, fps, _ = _curve(y, s)
    precision = tps / (tps + fps)
    recall = tps / positives
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def average_precision(targets: Any, scores: Any) -> np.ndarray:
    """Each label's average precision (NaN for a label without positives)."""
    t, s = _check(targets, scores)
    return np.array([_ap(t[:, j], s[:, j]) for j in range(t.shape[1])])


def label_counts(targets: Any, predictions: Any) -> dict[str, np.ndarray]:
    """Per label: true positives, false positives, false negatives and support (positives)."""
    t = np.asarray(targets).astype(bool)
    p = np.asarray(predictions).astype(bool)
    return {"tp": (t & p).sum(0), "fp": (~t & p).sum(0), "fn": (t & ~p).sum(0), "support": t.sum(0)}


@dataclass
class Thresholds:
    """Per-label decision thresholds (predict a label when its probability is at least its threshold)."""

    values: np.ndarray
    global_threshold: float
    fallback: list[int]  # labels that took the global threshold (too few validation positives)
    rule: str  # "f1" or "precision>=P"

    def to_dict(self, labels: Sequence[str]) -> dict[str, Any]:
        return {"rule": self.rule, "global": float(self.global_threshold),
                "per_label": {lab: float(v) for lab, v in zip(labels, self.values)},
                "fallback": [labels[j] for j in self.fallback]}


def _best_cut(y: np.ndarray, s: np.ndarray, target_precision: float | None) -> float | None:
    """The threshold maximising F1 (or, with ``target_precision``, the lowest one reaching it): midway between the
    chosen score and the next lower one, so that unseen scores near the boundary fall on the side seen here."""
    positives = y.sum()
    if positives == 0 or len(s) == 0:
        return None
    tps, fps, values = _curve(y, s)
    if target_precision is None:
        k = int(np.argmax(2 * tps / (tps + fps + positives)))
    else:
        ok = np.flatnonzero(tps / (tps + fps) >= target_precision)
        if not len(ok):
            return None
        k = int(ok[-1])  # the most recall that keeps the precision
    return float((values[k] + values[k + 1]) / 2) if k + 1 < len(values) else float(values[k])


def tune_thresholds(targets: Any, scores: Any, *, target_precision: float | None = None,
                    min_positives: int = MIN_TUNING_POSITIVES) -> Thresholds:
    """Thresholds tuned on a validation split (see the module docstring)."""
    t, s = _check(targets, scores)
    pooled = _best_cut(t.ravel(), s.ravel(), None)
    global_threshold = 0.5 if pooled is None else pooled
    values = np.full(t.shape[1], global_threshold)
    fallback = []
    for j in range(t.shape[1]):
        cut = _best_cut(t[:, j], s[:, j], target_precision) if t[:, j].sum() >= min_positives else None
        if cut is None:
            fallback.append(j)
        else:
            values[j] = cut
    rule = "f1" if target_precision is None else f"precision>={target_precision:g}"
    return Thresholds(values, global_threshold, fallback, rule)


def multilabel_report(probs: Any, targets: Any, labels: Sequence[str], thresholds: Sequence[float] | np.ndarray
                      | None = None) -> dict[str, Any]:
    """Every figure of a multi-label evaluation at the given thresholds (0.5 where none are given).

    Macro figures (mAP, F1) average the labels with at least one positive image; ``left_out`` names the others.
    Micro figures pool every (image, label) pair, as scikit-learn's ``average="micro"`` does.
    """
    t, s = _check(targets, probs)
    if t.shape[1] != len(labels):
        raise ValueError(f"{t.shape[1]} label columns but {len(labels)} label names.")
    th = np.full(t.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    pred = s >= th[None, :]
    ap = average_precision(t, s)
    keep = t.sum(0) > 0
    c = label_counts(t, pred)
    precision, recall = safe_div(c["tp"], c["tp"] + c["fp"]), safe_div(c["tp"], c["tp"] + c["fn"])
    f1 = safe_div(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])
    tp, fp, fn = (c[k].sum() for k in ("tp", "fp", "fn"))  # micro figures pool every label
    n = t.shape[0]
    per_label = [{"label": lab, "ap": None if np.isnan(ap[j]) else float(ap[j]), "precision": float(precision[j]),
                  "recall": float(recall[j]), "f1": float(f1[j]), "support": int(c["support"][j]),
                  "threshold": float(th[j])} for j, lab in enumerate(labels)]
    return {
        "images": int(n),
        "labels": list(labels),
        "macro_map": float(ap[keep].mean()) if keep.any() else float("nan"),
        "micro_map": _ap(t.ravel(), s.ravel()),
        "macro_f1": float(f1[keep].mean()) if keep.any() else float("nan"),
        "micro_f1": float(safe_div(2 * tp, 2 * tp + fp + fn)),
        "exact_match": float((pred == t).all(1).mean()) if n else float("nan"),
        "hamming_loss": float((pred != t).mean()) if n else float("nan"),
        "left_out": [lab for j, lab in enumerate(labels) if not keep[j]],
        "per_label": per_label,
    }
