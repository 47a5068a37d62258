"""resnet-tune: residual networks built correctly, fine-tuned fast, exported and served.

The public names load lazily (PEP 562), so ``import resnet_tune`` and ``resnet-tune --version`` do not import
PyTorch::

    import resnet_tune as rt
    model = rt.create_model("resnet50", num_classes=10)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "ResNet": "resnet_tune.models",
    "ResNetConfig": "resnet_tune.models",
    "build_model": "resnet_tune.models",
    "create_model": "resnet_tune.models",
    "list_models": "resnet_tune.models",
    "model_info": "resnet_tune.models",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
