"""Multi-label options: classification's (model, size, loader, augmentation, feature cache, ...) plus the label
CSV's separator, class balance by positive weighting and the rule that tunes the decision thresholds."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...engine.config import option
from ..classification.config import ClassificationConfig

__all__ = ["MultiLabelConfig"]


@dataclass(frozen=True)
class MultiLabelConfig(ClassificationConfig):
    """Everything a multi-label run needs (see :mod:`resnet_tune.tasks.multilabel.data` for the CSV forms)."""

    data: str | None = option(None, "a CSV of images and their labels: path,labels with several labels a field "
                                    "(cat;dog), one 0/1 column per label, or one row per (path, label)")
    label_sep: str | None = option(None, "the separator inside a labels field (default: ; | or , when present, "
                                         "whitespace for a column named labels/tags/classes); 'space' for a space")
    balance: str = option("none", "imbalanced labels: pos_weight weighs each label's positives by its "
                                  "negatives/positives ratio in the training split", choices=("none", "pos_weight"))
    label_smoothing: float = option(0.0, "smooth the 0/1 targets towards 0.5 by this amount",
                                    range=(0.0, 0.999999, "in [0, 1)"))
    target_precision: float | None = option(None, "tune each label's threshold for at least this validation "
                                                  "precision (default: the threshold that maximises its F1)",
                                            range=(0.0, 1.0, "between 0 and 1"))
    min_threshold_positives: int = option(5, "labels with fewer positive validation images take the global "
                                             "threshold", range=(1, math.inf, "at least 1"))
