"""Evaluation: classification metrics (pure numpy) and the run report (plots + Markdown).

matplotlib is imported only inside the plotting functions, with the ``Agg`` backend.
"""

from .metrics import classification_report, confusion_matrix, format_report, per_class_metrics, topk_accuracy
from .lr import suggest_lr
from .plots import plot_confusion, plot_curves, plot_lr_find, plot_worst
from .report import write_report

__all__ = [
    "classification_report",
    "confusion_matrix",
    "format_report",
    "per_class_metrics",
    "plot_confusion",
    "plot_curves",
    "plot_lr_find",
    "plot_worst",
    "suggest_lr",
    "topk_accuracy",
    "write_report",
]
