"""Deprecated: segmentation lives in :mod:`resnet_tune.tasks.segmentation` and trains on the one engine
(``resnet_tune.fit(task="segmentation", ...)``). The old names keep working for this release with a warning."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_WHERE = {"SegPredictor": "resnet_tune.tasks.segmentation.predictor", "Segmenter": "resnet_tune.models.segmentation",
          "build_segmenter": "resnet_tune.models.segmentation", "create_segmenter": "resnet_tune.models.segmentation",
          "evaluate_segmentation": "resnet_tune.tasks.segmentation.evaluate",
          "fit_segmentation": "resnet_tune.segment.train"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        warnings.warn(f"resnet_tune.segment.{name} is deprecated; import it from {_WHERE[name]} (or use "
                      "resnet_tune.fit(task='segmentation', ...) and resnet_tune.Predictor)", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
