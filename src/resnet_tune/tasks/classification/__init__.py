"""Image classification: one class an image (``resnet-tune train``, ``evaluate``, ``predict``, ``embed``).

Names load lazily: the configuration (read by ``resnet-tune --help``) does not import PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"ClassificationConfig": ".config", "TrainConfig": ".config", "evaluate": ".evaluation",
         "ClassificationPredictor": ".predictor", "ClassificationTask": ".task"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
