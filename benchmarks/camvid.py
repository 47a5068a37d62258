"""Semantic segmentation on CamVid with a ResNet-18 backbone, through the project's public API.

Data: ``../shared/data/camvid`` (367 train / 101 val / 233 test road scenes at 480x360, 12 ids with
11 = Unlabelled, ignored in the loss and the metrics as usual). One run of ``resnet_tune.fit(task="segmentation")``:

* backbone ResNet-18, from scratch or from ``--pretrained`` (e.g. the Imagenette classification
  backbone of ``benchmarks/transfer.py --stage backbones``: ``WORK/backbones/resnet18_128/best.safetensors``);
* head U-Net at output stride 32 (default) or DeepLabV3 at 16 (``--head deeplabv3``);
* random 240x320 crops of the 360x480 images after scale jitter (0.75-1.5) and flips; median-frequency
  class weights (the thin classes, Pole, SignSymbol, Fence, Pedestrian, Bicyclist, are ~1% of the pixels);
  SGD with the poly schedule; bf16 autocast where the CPU has it;
* the best checkpoint by validation mean IoU is evaluated on the full-size test images.

Prints a Markdown block with the test mean IoU, the per-class IoU and the wall-clock. Resumable: an
interrupted run is resumed, a finished one only reported. Time with the defaults (40 epochs): training
ran at 7-13 img/s on one core of the project's CPU (bf16), so an epoch (367 crops + 101 full-size
validation images) takes 30-60 s: about 20-25 minutes with both cores free, up to 40 when the CPU is
shared (lower --epochs there). Usage::

    python benchmarks/camvid.py --work /tmp/camvid-bench
    python benchmarks/camvid.py --work /tmp/camvid-bench \
        --pretrained /work/bench_runs/transfer/backbones/resnet18_128/best.safetensors
    python benchmarks/camvid.py --work /tmp/camvid-smoke --epochs 1 --limit 8      # a smoke test, seconds
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA as SHARED, read_metrics  # noqa: E402

from resnet_tune.engine.checkpoint import STATE  # noqa: E402
from resnet_tune import fit  # noqa: E402

DATA = SHARED / "camvid"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for the run (outside the repository)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--head", choices=["unet", "deeplabv3", "fcn"], default="unet")
    ap.add_argument("--output-stride", type=int, choices=[8, 16, 32], default=None,
                    help="default: 32 for unet, 16 for deeplabv3, 8 for fcn")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", default="240,320", help="training crop H,W")
    ap.add_argument("--scale", default="0.75,1.5", help="scale jitter range")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--class-weights", choices=["none", "median", "inverse"], default="median")
    ap.add_argument("--pretrained", default=None, help="backbone weights, e.g. a resnet-tune classification checkpoint")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="at most this many images per split (smoke tests)")
    args = ap.parse_args()

    output_stride = args.output_stride or {"unet": 32, "deeplabv3": 16, "fcn": 8}[args.head]
    tag = "pretrained" if args.pretrained else "scratch"
    out = args.work / f"camvid_resnet18_{args.head}_os{output_stride}_{tag}" \
        f"{f'_limit{args.limit}' if args.limit else ''}"
    smin, smax = (float(v) for v in args.scale.split(","))
    options = dict(data=str(args.data), model="resnet18", head=args.head, output_stride=output_stride,
                   ignore_index=11, img_size=args.crop, scale_min=smin, scale_max=smax, epochs=args.epochs,
                   batch_size=args.batch_size, lr=args.lr, class_weights=args.class_weights,
                   pretrained=args.pretrained, precision=args.precision, threads=args.threads, seed=args.seed,
                   limit=args.limit, progress=False)

    timing_path = out / "timing.json"
    t0 = time.perf_counter()
    try:
        if (out / "eval.json").exists():
            print(f"{out} is finished; reporting it")
        elif (out / STATE).exists():
            print(f"resuming {out}")
            fit(resume=out, progress=False, threads=args.threads)
        else:
            fit(task="segmentation", output=str(out), **options)
    finally:  # every session counts in the wall-clock, interrupted ones too
        session = time.perf_counter() - t0
        if out.is_dir() and not (session < 1 and timing_path.exists()):
            timing = json.loads(timing_path.read_text()) if timing_path.exists() else {"sessions": []}
            timing["sessions"].append(round(session, 1))
            timing_path.write_text(json.dumps(timing))

    report = json.loads((out / "eval.json").read_text())
    rows = read_metrics(out)
    train_seconds = sum(r["seconds"] for r in rows)
    best = max(rows, key=lambda r: r["val_miou"])
    wall = sum(json.loads(timing_path.read_text())["sessions"])
    meta = {"hardware": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "argv": sys.argv}
    result = {"run": str(out), "options": options, "test": {k: report[k] for k in
              ("mean_iou", "pixel_acc", "mean_acc", "fw_iou", "num_images", "per_class")},
              "best_val_miou": float(best["val_miou"]), "best_epoch": int(best["epoch"]),
              "train_seconds": train_seconds, "eval_seconds": report["seconds"], "wall_seconds": wall, "meta": meta}
    (out / "camvid_results.json").write_text(json.dumps(result, indent=2))

    cfg = json.loads((out / "best.json").read_text())
    print()
    print(f"### CamVid, ResNet-18 + {args.head} (output stride {output_stride}), {tag}")
    print()
    print(f"- test mean IoU **{100 * report['mean_iou']:.2f}%** over 11 classes ({report['num_images']} images, "
          f"full 360x480, Unlabelled ignored); pixel accuracy {100 * report['pixel_acc']:.2f}%, mean class accuracy "
          f"{100 * report['mean_acc']:.2f}%")
    print(f"- best validation mean IoU {100 * float(best['val_miou']):.2f}% at epoch {int(best['epoch'])} of {len(rows)}")
    print(f"- training {train_seconds / 60:.1f} min ({len(rows)} epochs, mean "
          f"{sum(float(r['images_per_s']) for r in rows) / len(rows):.1f} img/s), test evaluation "
          f"{report['seconds']:.0f} s; wall-clock {wall / 60:.1f} min; {meta['threads']} threads, "
          f"precision {args.precision}, {meta['hardware']}, torch {meta['torch']}")
    print(f"- crops {args.crop}, scale {args.scale}, batch {args.batch_size}, class weights {args.class_weights}, "
          f"strategy {cfg.get('strategy')}, pretrained {args.pretrained or 'none'}"
          + (f", limit {args.limit} images per split" if args.limit else ""))
    print()
    print("| class | IoU | accuracy |")
    print("|:--|--:|--:|")
    for r in report["per_class"]:
        iou = "–" if r["iou"] is None else f"{100 * r['iou']:.1f}%"
        acc = "–" if r["acc"] is None else f"{100 * r['acc']:.1f}%"
        print(f"| {r['class']} | {iou} | {acc} |")
    print(f"| **mean** | **{100 * report['mean_iou']:.1f}%** | {100 * report['mean_acc']:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
