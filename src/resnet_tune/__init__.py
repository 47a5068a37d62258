"""resnet-tune: residual networks built correctly, fine-tuned fast, exported and served.

The public names load lazily (PEP 562), so ``import resnet_tune`` and ``resnet-tune --version`` do not import
PyTorch::

    import resnet_tune as rt
    model = rt.create_model("resnet50", num_classes=10)
    run = rt.fit(data="photos/", model="resnet50", pretrained="torchvision:ResNet50_Weights.IMAGENET1K_V2", epochs=5)
    rt.fit(task="segmentation", data="camvid/", head="unet", ignore_index=11)
    print(rt.Predictor(run.run_dir).predict_files(["cat.jpg"]))
    rt.export(run.run_dir, "onnx")
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
    "fit": "resnet_tune.tasks.registry",
    "ClassificationConfig": "resnet_tune.tasks.registry",
    "SegmentationConfig": "resnet_tune.tasks.registry",
    "evaluate": "resnet_tune.tasks.classification",
    "evaluate_segmentation": "resnet_tune.tasks.segmentation.evaluate",
    "Predictor": "resnet_tune.tasks.registry",  # the base, with every task's predictor registered
    "export": "resnet_tune.export",
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
