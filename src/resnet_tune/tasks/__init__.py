"""Tasks on the one engine: image classification, multi-label recognition and semantic segmentation, each a package
with its config, data, model head, loss, metrics, record, report and predictor (:class:`~resnet_tune.engine.task.Task`);
a new task is a new package here and a line in :mod:`.registry`.

Names load lazily (the configs are read by ``resnet-tune --help`` without importing PyTorch).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {name: ".registry" for name in ("TASKS", "ClassificationConfig", "ClassificationPredictor",
                                         "ClassificationTask", "MultiLabelConfig", "MultiLabelPredictor", "MultiLabelTask", "Predictor", "SegmentationConfig",
                                         "SegmentationPredictor", "SegmentationTask", "fit", "get_task")}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
