"""Export a checkpoint to ONNX, TorchScript or a torch.export program (verified against the eager model).

Names load lazily so that ``resnet-tune --help`` does not import PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: format name -> default file suffix
FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2", "openvino": ".xml"}
#: the formats that ``--int8`` quantises (post-training static quantisation with calibration images)
INT8_FORMATS = ("onnx", "openvino")
#: the largest top-1 drop (points) on the run's validation split an int8 export may have by default
MAX_DROP = 1.0
#: calibration images used at most (spread evenly over the folder's sorted files)
CALIBRATION_IMAGES = 300

_LAZY = {name: "exporter" for name in ("ATOL", "RTOL", "ExportError", "ExportReport", "MissingExtraError", "export",
                                       "export_model", "read_export_record")}

__all__ = ["CALIBRATION_IMAGES", "FORMATS", "INT8_FORMATS", "MAX_DROP", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
