"""Deprecated: the predictors live with their tasks; ``resnet_tune.Predictor(checkpoint)`` returns the right one."""

from __future__ import annotations

import warnings
from typing import Any

from ..models import fold_batchnorm  # noqa: F401  (kept importable from here for this release)



def __getattr__(name: str) -> Any:
    if name == "Predictor":
        warnings.warn("resnet_tune.serve.predictor.Predictor is deprecated; use resnet_tune.Predictor (any task) or "
                      "resnet_tune.tasks.classification.ClassificationPredictor", DeprecationWarning, stacklevel=2)
        from ..tasks.classification import ClassificationPredictor

        return ClassificationPredictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
