"""The web service (``create_app``; needs the serve extra): routes over any task's predictor, a micro-batcher,
safe decoding of uploads, a page to try the model.

Names are imported lazily so that ``resnet-tune --help`` does not load PyTorch or FastAPI.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"create_app": "http", "MicroBatcher": "batching", "decode_upload": "images"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name == "Predictor":  # deprecated, with its warning
        return importlib.import_module(".predictor", __name__).Predictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
