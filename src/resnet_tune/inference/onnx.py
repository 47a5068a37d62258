"""Writing a model to ONNX (the exporter's format and the file the ONNX Runtime and OpenVINO engines run).

The export package verifies and publishes files for users; the inference engines use the same writer for the
float model they build from a checkpoint, so there is one way to write ONNX.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MissingExtraError

__all__ = ["ATOL", "INPUT_NAME", "ONNX_OPSET", "OUTPUT_NAME", "RECORD_KEY", "RTOL", "batch_dim", "quiet_exporters",
           "require_onnx", "write_onnx"]

#: the record's key in ONNX metadata_props (and the file name stem inside other archives)
RECORD_KEY = "resnet_tune"
ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "output"
#: fp32 parity tolerance between an exported model and the eager (unfolded) model it was made from
RTOL, ATOL = 1e-3, 1e-4


def require_onnx(runtime_only: bool = False) -> None:
    """Raise :class:`MissingExtraError` with the install command when the ONNX extra is missing."""
    names = ("onnxruntime",) if runtime_only else ("onnx", "onnxruntime", "onnxscript")
    for name in names:
        try:
            __import__(name)
        except ImportError:
            raise MissingExtraError(f"ONNX needs onnx, onnxscript and onnxruntime ({name} is not installed); "
                                    "install them with pip install 'resnet-tune[onnx]'.") from None


@contextlib.contextmanager
def quiet_exporters() -> Any:
    """Silence the exporters' progress prints and tracer/deprecation warnings."""
    import io
    import logging
    from contextlib import redirect_stdout

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript",
                                               "torch.fx.experimental.symbolic_shapes", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def batch_dim() -> Any:
    """The dynamic batch dimension of exported programs."""
    return torch.export.Dim("batch", min=1, max=65536)


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path, record: dict[str, Any]) -> None:
    """Write ``model`` (eval mode, one tensor in and out) to ``path`` as ONNX (opset :data:`ONNX_OPSET`, dynamic
    batch, weights inside the file) with ``record`` (classes, preprocessing, task, ...) in its metadata."""
    require_onnx()
    with quiet_exporters():
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=ONNX_OPSET,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: batch_dim()},), verbose=False, external_data=False)
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise RuntimeError("torch.onnx.export returned no program.")
    meta = program.model.metadata_props
    meta[RECORD_KEY] = json.dumps(record)
    meta["classes"] = json.dumps(record.get("classes", []))
    meta["preprocessing"] = json.dumps(record.get("preprocessing", {}))
    meta["task"] = str(record.get("task", ""))
    program.model.producer_name = "resnet-tune"
    program.model.doc_string = f"{record.get('model', 'model')} exported by resnet-tune ({record.get('task')})"
    with quiet_exporters():
        program.save(str(path), external_data=False)
