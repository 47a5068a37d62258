"""Frozen-backbone fine-tuning: what a head epoch on cached features costs, and what it is worth.

A linear probe of a pretrained ResNet through the public ``fit`` (the project's defaults: cached features,
one augmented view), beside the same probe with the cache off (every epoch runs the backbone on freshly
augmented images) and with four cached views. Prints the time of a head epoch (training only, the
trainer's own figure) against a full forward pass over the same training images (timed here on the
model the trainer saved, in the trainer's precision and memory format), and the accuracy each reaches.

The backbone: a checkpoint given with --pretrained (e.g. the Imagenette ResNet-18 that
``benchmarks/transfer.py --stage backbones`` trains), else a ResNet-18 trained on nothing (the timing holds,
the accuracies are then meaningless). Data: a CIFAR-10 subset (--per-class train and val images a class).

    python benchmarks/frozen_head.py --work /tmp/fh --pretrained /work/bench_runs/transfer/backbones/resnet18_128/best.safetensors
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, cifar_subset_csv, header, read_metrics, run_or_resume  # noqa: E402

import resnet_tune as rt  # noqa: E402
from resnet_tune.engine.hardware import resolve_precision  # noqa: E402


def forward_seconds(checkpoint: Path, n: int, size: int, batch: int) -> float:
    """One forward pass over ``n`` images, as the trainer runs its backbone (bf16 where it is the default,
    channels_last), in batches of the training batch size; the median of 3."""
    from resnet_tune.engine.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint, torch.device("cpu"))
    model = model.eval().to(memory_format=torch.channels_last)
    precision = resolve_precision("auto", torch.device("cpu"))
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    steps = max(1, n // batch)

    def one_pass() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode(), precision.autocast(torch.device("cpu")):
            for _ in range(steps):
                model(x)
        return (time.perf_counter() - t0) * n / (steps * batch)

    one_pass()
    return statistics.median(one_pass() for _ in range(3))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--pretrained", type=Path)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--img-size", type=int, default=96)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(header(3))
    pre = args.pretrained
    if pre is None:
        from safetensors.torch import save_file

        pre = args.work / "untrained.safetensors"
        save_file({k: v.contiguous() for k, v in rt.create_model(args.model).state_dict().items()}, str(pre))
    subset = cifar_subset_csv(args.work / f"cifar_{args.per_class}.csv", args.per_class, args.per_class // 2)
    common = dict(data=str(subset), model=args.model, pretrained=str(pre), strategy="linear_probe",
                  img_size=args.img_size, epochs=args.epochs, loader="memory", batch_size=64)
    rows = []
    for name, views in [("cached, 1 view (default)", 1), ("cached, 4 views", 4), ("uncached, augmented", 0)]:
        out = args.work / f"probe_views{views}"
        wall = run_or_resume(out, cache_views=views, **common)
        hist = read_metrics(out)
        head = [r["train_seconds"] for r in hist[1:]]  # after the first epoch (which builds the cache)
        acc = json.loads((out / "eval.json").read_text())["accuracy"]
        rows.append((name, statistics.median(head), hist[0]["seconds"], acc, wall))
    first = read_metrics(args.work / "probe_views1")[1]
    n_train = round(first["images_per_s"] * first["train_seconds"])
    fwd = forward_seconds(args.work / "probe_views1" / "best.safetensors", n_train, args.img_size, 64)
    print(f"\n{n_train} training images at {args.img_size} px, {args.model}, {args.epochs} epochs; a full forward "
          f"pass over them: {fwd:.2f} s\n")
    print("| linear probe | head epoch (s, median) | vs full forward | first epoch (s) | val accuracy | wall (s) |\n"
          "|---|---|---|---|---|---|")
    for name, head, first, acc, wall in rows:
        print(f"| {name} | {head:.3f} | {fwd / head:.0f}x cheaper | {first:.1f} | {100 * acc:.2f}% | {wall:.0f} |")
    print(f"(command: {' '.join(sys.argv)}; data {DATA / 'cifar10'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
