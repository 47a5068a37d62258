"""Inference: the predictor, Grad-CAM explanations and the web service (``create_app``, needs the serve extra).

Names are imported lazily so that ``resnet-tune --help`` does not load PyTorch or FastAPI.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Predictor": "predictor",
    "grad_cam": "gradcam", "overlay": "gradcam", "explain": "gradcam", "explain_image": "gradcam",
    "create_app": "http",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
