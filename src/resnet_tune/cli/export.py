"""``resnet-tune export CHECKPOINT --format onnx|torchscript|exported-program [--output FILE]``."""

from __future__ import annotations

import argparse
from typing import Any, Callable


def cmd_export(args: argparse.Namespace) -> int:
    from ..export.exporter import export

    report = export(args.checkpoint, args.format, args.output)
    print(report.summary())
    return 0


def register(add: Callable[..., Any]) -> None:
    """Add ``export``."""
    from ..export import FORMATS

    p = add("export", cmd_export, "export a checkpoint to ONNX, TorchScript or torch.export (verified)",
            "Export a checkpoint with batch-norm folded and its record (classes, preprocessing, task) embedded. "
            "The exported file is run by its own runtime at two batch sizes and must match the eager model "
            "(rtol 1e-3, atol 1e-4) before it is written; ONNX needs pip install 'resnet-tune[onnx]'.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a run folder (its best checkpoint) or a .safetensors "
                                                            "checkpoint")
    p.add_argument("--format", default="onnx", choices=list(FORMATS), help="onnx (opset 18, onnxruntime), "
                   "torchscript (.pt, torch.jit.load) or exported-program (.pt2, torch.export.load)")
    p.add_argument("--output", "-o", help="the file to write (default: beside the checkpoint, e.g. <run>/model.onnx)")
