"""``resnet-tune export CHECKPOINT --format onnx|torchscript|exported-program|openvino [--int8 --calibration DIR]``."""

from __future__ import annotations

import argparse
from typing import Any, Callable


def cmd_export(args: argparse.Namespace) -> int:
    from ..export.exporter import export

    report = export(args.checkpoint, args.format, args.output, int8=args.int8, calibration=args.calibration,
                    max_drop=args.max_drop, calibration_images=args.calibration_images)
    print(report.summary())
    return 0


def register(add: Callable[..., Any]) -> None:
    """Add ``export``."""
    from ..export import CALIBRATION_IMAGES, FORMATS, MAX_DROP

    p = add("export", cmd_export, "export a checkpoint to ONNX, OpenVINO, TorchScript or torch.export (verified; "
                                  "int8 with calibration)",
            "Export a checkpoint with batch-norm folded and its record (classes, preprocessing, task) embedded. "
            "The exported file is run by its own runtime at two batch sizes and must match the eager model "
            "(rtol 1e-3, atol 1e-4) before it is written; ONNX needs pip install 'resnet-tune[onnx]', OpenVINO "
            "pip install 'resnet-tune[openvino]'. With --int8 the verified float model is quantised (post-training, "
            "static) with ranges calibrated on --calibration images, and written only if its top-1 accuracy on the "
            "run's validation split is at most --max-drop points below the float model's.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a run folder (its best checkpoint) or a .safetensors "
                                                            "checkpoint")
    p.add_argument("--format", default="onnx", choices=list(FORMATS), help="onnx (opset 18, onnxruntime), "
                   "openvino (.xml + .bin), torchscript (.pt, torch.jit.load) or exported-program (.pt2, "
                   "torch.export.load)")
    p.add_argument("--output", "-o", help="the file to write (default: beside the checkpoint, e.g. <run>/model.onnx, "
                                          "<run>/model.int8.onnx)")
    p.add_argument("--int8", action="store_true", help="quantise to int8 (onnx: ONNX Runtime's quantiser; openvino: "
                                                       "NNCF); needs --calibration")
    p.add_argument("--calibration", metavar="DIR", help="images to calibrate the int8 ranges on (a few hundred like "
                                                        "the ones the model will see; searched recursively)")
    p.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES,
                   help="use at most this many calibration images")
    p.add_argument("--max-drop", type=float, default=MAX_DROP,
                   help="refuse the int8 model when its top-1 accuracy on the run's validation split is more than "
                        "this many points below the float model's")
