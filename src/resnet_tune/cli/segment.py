"""``resnet-tune segment train|evaluate|predict``: registered by :func:`register` (see ``resnet_tune.cli``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable

from .options import HelpFormatter, add_config_options, config_values

def _add_seg_options(p: argparse.ArgumentParser) -> None:
    from ..tasks.segmentation.config import SegmentationConfig

    add_config_options(p, SegmentationConfig)


def _seg_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ..tasks.segmentation.config import SegmentationConfig, from_dict

    return from_dict(config_values(args, SegmentationConfig), source=getattr(args, "config", None) or "command line")


def cmd_segment(args: argparse.Namespace) -> int:
    args._segment_parser.print_help()
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..engine.trainer import Trainer
    from ..tasks.segmentation import SegmentationConfig, SegmentationTask
    from . import STARTED

    try:
        if args.resume:
            names = {f.name for f in dataclasses.fields(SegmentationConfig)}
            overrides = {k: getattr(args, k) for k in names if hasattr(args, k)}
            Trainer(SegmentationTask, resume=args.resume, overrides=overrides, started=STARTED).fit()
        else:
            Trainer(SegmentationTask, _seg_config(args), started=STARTED).fit()
    except KeyboardInterrupt:
        out = args.resume or getattr(args, "output", None)
        if out:
            print(f"continue with `resnet-tune segment train --resume {out}`", file=sys.stderr)
        raise
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..engine.checkpoint import resolve_checkpoint
    from ..tasks.segmentation.config import parse_size
    from ..tasks.segmentation.evaluate import evaluate_segmentation
    from ..tasks.segmentation.metrics import format_seg_report

    out = args.output
    if out is None:
        out = resolve_checkpoint(args.checkpoint).parent / f"evaluate-{Path(args.data).resolve().name or 'data'}"
    report = evaluate_segmentation(args.checkpoint, args.data, device=args.device, precision=args.precision,
                                   output=out, mode=args.mode,
                                   window=parse_size(args.window, "--window") if args.window else None,
                                   ignore_index=args.ignore_index, classes=args.classes, limit=args.limit,
                                   progress=args.progress)
    print(report["scan_summary"])
    print(f"{report['split']} split, {report['mode']}-image inference:")
    print(format_seg_report(report))
    print(f"details: {out}/eval.json, {out}/confusion.png, {out}/worst.png")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..data.datasets import list_images
    from ..tasks.segmentation.config import parse_size
    from ..tasks.segmentation.predictor import SegPredictor, describe_shares

    files = list_images(args.images)
    pred = SegPredictor(args.checkpoint, device=args.device, precision=args.precision, mode=args.mode,
                        window=parse_size(args.window, "--window") if args.window else None)
    results = pred.predict_files(files, args.output)
    for r in results:
        if r.get("error"):
            print(f"{r['file']}: skipped ({r['error']})")
        else:
            print(f"{r['file']}: {describe_shares(r['classes'])} -> {r['mask']}")
    (Path(args.output) / "predictions.json").write_text(json.dumps(results, indent=2))
    ok = sum(1 for r in results if not r.get("error"))
    print(f"wrote masks (class ids), colour masks and overlays for {ok} image(s) to {args.output}")
    return 0


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``segment`` with its ``train``, ``evaluate`` and ``predict`` subcommands."""
    p = add("segment", cmd_segment, "semantic segmentation: train, evaluate and predict masks",
            "Semantic segmentation with a ResNet backbone and an FCN, DeepLabV3 or U-Net head. Data: "
            "DIR/train/images/x.jpg with DIR/train/masks/x.png (class ids), val/test alike.")
    p.set_defaults(_segment_parser=p)
    sub = p.add_subparsers(dest="segment_command", metavar="COMMAND")
    fmt = HelpFormatter

    t = sub.add_parser("train", help="train or fine-tune a segmentation model", formatter_class=fmt,
                       description="Train a segmentation model. Every option can also come from a YAML file "
                                   "(--config); flags win.")
    t.set_defaults(func=cmd_train)
    t.add_argument("--config", help="YAML file of options (keys as the flags, with - or _)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last completed epoch")
    _add_seg_options(t)

    def model_cmd(q: argparse.ArgumentParser) -> None:
        q.add_argument("checkpoint", metavar="CHECKPOINT", help="a run folder (its best checkpoint) or a "
                                                                ".safetensors checkpoint")
        q.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
        q.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                       help="auto = bf16 where the hardware has it")
        q.add_argument("--mode", choices=("full", "sliding"), default=None,
                       help="full-image or sliding-window inference (default: as trained)")
        q.add_argument("--window", default=None, help="sliding window size H,W (default: the training crop)")

    e = sub.add_parser("evaluate", help="mean IoU, per-class IoU, confusion matrix and worst images",
                       formatter_class=fmt)
    e.set_defaults(func=cmd_evaluate)
    model_cmd(e)
    e.add_argument("--data", required=True, help="images + masks: a split layout (its test split, else val) or "
                                                 "DIR/images + DIR/masks")
    e.add_argument("--output", help="folder for eval.json and plots (default: beside the checkpoint)")
    e.add_argument("--ignore-index", type=int, default=None, help="mask value left out of the metrics (default: "
                                                                 "the checkpoint's)")
    e.add_argument("--classes", default=None, help="class table for colour masks (default: one found in DIR)")
    e.add_argument("--limit", type=int, default=None, help="evaluate at most this many images")
    e.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars on a terminal")

    q = sub.add_parser("predict", help="class masks, colour masks and overlays for images", formatter_class=fmt)
    q.set_defaults(func=cmd_predict)
    model_cmd(q)
    q.add_argument("images", nargs="+", metavar="IMAGES_OR_DIR", help="image files or folders (searched recursively)")
    q.add_argument("--output", required=True, metavar="DIR",
                   help="writes NAME_mask.png (class ids), NAME_color.png, NAME_overlay.png and predictions.json")
