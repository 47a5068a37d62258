"""Classification metrics on plain numpy arrays (no torch needed).

Everything here is vectorised (no Python loop over samples) and every dict that
:func:`classification_report` returns holds plain Python ``int``/``float``/``str``
values only, so it can go straight to ``json.dumps``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "classification_report",
    "confusion_matrix",
    "format_report",
    "per_class_metrics",
    "safe_div",
    "topk_accuracy",
]


def _as_scores(scores: Any, name: str = "scores") -> np.ndarray:
    arr = np.asarray(scores)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (N, C); got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric; got dtype {arr.dtype}.")
    return arr


def _as_labels(labels: Any, num_classes: int, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices; got shape {arr.shape}.")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer class indices; got dtype {arr.dtype}.")
    arr = arr.astype(np.int64, copy=False)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name} must lie in [0, {num_classes - 1}] for {num_classes} classes; "
                         f"found values from {lo} to {hi}.")
    return arr


def topk_accuracy(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Fraction (0..1) of samples whose true class is among the ``k`` highest scores.

    ``scores`` is (N, C) (logits or probabilities), ``targets`` (N,) class indices.
    Ties are broken towards the lower class index, the same rule as ``argmax``, so
    ``topk_accuracy(s, t, 1)`` equals ``(s.argmax(1) == t).mean()`` exactly.
    Raises ``ValueError`` when ``k < 1`` or ``k > C``. An empty batch gives 0.0.
    """
    s = _as_scores(scores)
    n, c = s.shape
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}.")
    k = int(k)
    if k > c:
        raise ValueError(f"top-{k} accuracy needs at least {k} classes; the scores have only {c}.")
    t = _as_labels(targets, c, "targets")
    if t.shape[0] != n:
        raise ValueError(f"scores has {n} rows but targets has {t.shape[0]} entries.")
    if n == 0:
        return 0.0
    true_score = s[np.arange(n), t][:, None]
    cls = np.arange(c)[None, :]
    # Rank of the true class = number of classes ordered before it.
    ahead = (s > true_score) | ((s == true_score) & (cls < t[:, None]))
    rank = ahead.sum(axis=1)
    return float(np.mean(rank < k))


def confusion_matrix(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts: rows are the true class, columns the predicted class."""
    c = int(num_classes)
    if c < 1:
        raise ValueError(f"num_classes must be at least 1; got {num_classes!r}.")
    t = _as_labels(targets, c, "targets")
    p = _as_labels(preds, c, "preds")
    if t.shape != p.shape:
        raise ValueError(f"targets and preds differ in length ({t.shape[0]} vs {p.shape[0]}).")
    return np.bincount(t * c + p, minlength=c * c).reshape(c, c).astype(np.int64)


def safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` in float64, 0 where ``den`` is 0 (precision, recall and F1 of empty classes)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def per_class_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 (float64) and support (int64) per class from a confusion matrix.

    Any 0/0 (a class never predicted, or with no samples) gives 0 without a warning,
    the same as scikit-learn's ``zero_division=0``.
    """
    m = np.asarray(cm)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a confusion matrix must be square (C, C); got shape {m.shape}.")
    m = m.astype(np.int64)
    tp = np.diag(m)
    predicted = m.sum(axis=0)
    support = m.sum(axis=1)
    precision = safe_div(tp, predicted)
    recall = safe_div(tp, support)
    # 2PR/(P+R) == 2TP/(2TP+FP+FN); the latter never divides 0 by 0 unless TP=FP=FN=0.
    f1 = safe_div(2 * tp, predicted + support)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def classification_report(probs: np.ndarray, targets: np.ndarray, classes: list[str],
                          files: list[str] | None = None, worst_n: int = 16) -> dict:
    """Everything the run report needs about one evaluation pass, JSON-serialisable.

    ``probs`` is (N, C) probabilities (any scores work; ``prob_*`` then hold those scores),
    predictions are ``argmax`` over classes. Keys:

    - ``num_samples`` (int), ``accuracy`` (float 0..1)
    - ``top5``: top-5 accuracy when C > 5, else ``None``
    - ``macro_f1``: mean F1 over classes that occur in the targets or the predictions
      (scikit-learn's ``f1_score(average='macro')`` without ``labels``); 0.0 when N = 0
    - ``per_class``: ``[{'class', 'precision', 'recall', 'f1', 'support'}]`` in class order
    - ``confusion_matrix``: list of C lists of int (rows true, columns predicted)
    - ``worst``: up to ``worst_n`` misclassified samples, lowest probability of the true
      class first (ties: lower sample index first), each
      ``{'file', 'true', 'pred', 'prob_true', 'prob_pred'}`` with class *names*; when
      ``files`` is None, ``file`` is the sample index as a string. When fewer than
      ``worst_n`` samples are misclassified, all of them are listed (empty if none).
    """
    p = _as_scores(probs, "probs")
    n, c = p.shape
    classes = [str(x) for x in classes]
    if len(classes) != c:
        raise ValueError(f"probs has {c} columns but {len(classes)} class names were given.")
    t = _as_labels(targets, c, "targets")
    if t.shape[0] != n:
        raise ValueError(f"probs has {n} rows but targets has {t.shape[0]} entries.")
    if files is not None:
        files = [str(f) for f in files]
        if len(files) != n:
            raise ValueError(f"{len(files)} file names were given for {n} samples.")
    if worst_n < 0:
        raise ValueError(f"worst_n must be >= 0; got {worst_n}.")

    pred = p.argmax(axis=1).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    cm = confusion_matrix(t, pred, c)
    pcm = per_class_metrics(cm)
    present = (pcm["support"] > 0) | (cm.sum(axis=0) > 0)
    macro_f1 = float(pcm["f1"][present].mean()) if present.any() else 0.0
    accuracy = float(np.mean(pred == t)) if n else 0.0
    top5 = topk_accuracy(p, t, 5) if c > 5 else None

    per_class = [
        {"class": classes[i], "precision": float(pcm["precision"][i]), "recall": float(pcm["recall"][i]),
         "f1": float(pcm["f1"][i]), "support": int(pcm["support"][i])}
        for i in range(c)
    ]

    worst: list[dict] = []
    if n and worst_n:
        rows = np.arange(n)
        prob_true = p[rows, t].astype(np.float64)
        prob_pred = p[rows, pred].astype(np.float64)
        wrong = np.flatnonzero(pred != t)
        order = wrong[np.argsort(prob_true[wrong], kind="stable")][:worst_n]
        for i in order.tolist():
            worst.append({
                "file": files[i] if files is not None else str(i),
                "true": classes[int(t[i])],
                "pred": classes[int(pred[i])],
                "prob_true": float(prob_true[i]),
                "prob_pred": float(prob_pred[i]),
            })

    return {
        "num_samples": int(n),
        "accuracy": accuracy,
        "top5": top5,
        "macro_f1": macro_f1,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "worst": worst,
    }


def _pct(x: Any) -> str:
    if x is None:
        return "n/a"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(v) else f"{100.0 * v:.2f}%"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def format_report(report: dict, classes: list[str] | None = None, *, max_worst: int = 5,
                  max_name: int = 30) -> str:
    """A compact plain-text summary of :func:`classification_report` for the terminal.

    ``classes`` is used only when ``report['per_class']`` lacks names. Shows accuracy,
    top-5 (when present), macro-F1, an aligned per-class P/R/F1/support table and the
    ``max_worst`` worst files.
    """
    lines: list[str] = []
    head = [f"samples {report.get('num_samples', 0)}", f"accuracy {_pct(report.get('accuracy'))}"]
    if report.get("top5") is not None:
        head.append(f"top-5 {_pct(report['top5'])}")
    if report.get("macro_f1") is not None:
        head.append(f"macro-F1 {float(report['macro_f1']):.4f}")
    lines.append("  ".join(head))

    per_class = list(report.get("per_class") or [])
    if per_class:
        names = [str(r.get("class", classes[i] if classes and i < len(classes) else i))
                 for i, r in enumerate(per_class)]
        names = [_shorten(nm, max_name) for nm in names]
        w = max(5, max(len(nm) for nm in names))
        sup_w = max(7, max(len(str(r.get("support", 0))) for r in per_class))
        lines.append("")
        lines.append(f"{'class':<{w}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>{sup_w}}")
        lines.append("-" * (w + 2 + 9 * 3 + 2 * 3 + sup_w))
        for nm, r in zip(names, per_class):
            lines.append(f"{nm:<{w}}  {float(r['precision']):>9.4f}  {float(r['recall']):>9.4f}  "
                         f"{float(r['f1']):>9.4f}  {int(r['support']):>{sup_w}d}")

    worst = list(report.get("worst") or [])[:max(0, max_worst)]
    if worst:
        lines.append("")
        lines.append(f"worst {len(worst)} (lowest probability of the true class):")
        for r in worst:
            lines.append(f"  {float(r['prob_true']):.3f}  {r['true']} -> {r['pred']} "
                         f"({float(r['prob_pred']):.3f})  {r['file']}")
    return "\n".join(lines)
