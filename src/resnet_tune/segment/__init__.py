"""Semantic segmentation with a ResNet backbone: FCN, DeepLabV3 and U-Net heads.

``resnet-tune segment train|evaluate|predict`` on the command line; in Python::

    from resnet_tune.segment import fit_segmentation, SegPredictor
    run = fit_segmentation(data="camvid/", head="deeplabv3", ignore_index=11, epochs=30)
    mask, overlay = SegPredictor(run.run_dir).predict_image(pil_image)

Submodules import lazily: ``model`` (the networks), ``data`` (pairs, class tables, the scan),
``transforms`` (joint augmentation), ``losses``, ``metrics``, ``train``, ``evaluate``, ``predictor``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SegPredictor", "Segmenter", "build_segmenter", "create_segmenter", "evaluate_segmentation",
           "fit_segmentation"]

_WHERE = {"SegPredictor": "predictor", "Segmenter": "model", "build_segmenter": "model",
          "create_segmenter": "model", "evaluate_segmentation": "evaluate", "fit_segmentation": "train"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
