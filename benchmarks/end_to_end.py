"""Does the data path keep up? An epoch over Imagenette's JPEGs against the model-only step, in one run.

All three figures are the public ``fit``'s own training images/s (one epoch, training only, data loading
included), for the same model, input size and batch:
- model only: ``data="synthetic:N"`` (random uint8 images already in memory, cropped and flipped in batches);
- Imagenette with the in-memory loader (every JPEG decoded once before training, then batches as above);
- Imagenette with DataLoader workers (decoding, RandomResizedCrop and flip per image in worker processes,
  the ``auto`` choice for images larger than 64 px), with the number of workers the trainer picks.

    python benchmarks/end_to_end.py --model resnet18 --size 128
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, header  # noqa: E402

from resnet_tune import fit  # noqa: E402


def epoch(data: str, model: str, size: int, batch: int, **options) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        res = fit(data=data, model=model, img_size=size, batch_size=batch, epochs=1, output=f"{tmp}/run",
                  progress=False, quiet=True, pretrained="none", **options)
    return res.history[-1]["images_per_s"], res.history[-1]["seconds"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    print(header(1))
    folder = str(DATA / "imagenette")
    n = sum(1 for f in (DATA / "imagenette" / "train").rglob("*") if f.is_file())  # as many images and batches
    rows = [("model only (synthetic, in memory)", *epoch(f"synthetic:{n}", args.model, args.size, args.batch)),
            ("Imagenette, in-memory loader", *epoch(folder, args.model, args.size, args.batch, loader="memory")),
            ("Imagenette, DataLoader workers", *epoch(folder, args.model, args.size, args.batch, loader="workers"))]
    base = rows[0][1]
    print(f"\n{args.model} at {args.size} px, batch {args.batch}, one epoch of training\n")
    print("| data path | training img/s | vs model only | epoch seconds (with validation) |\n|---|---|---|---|")
    for name, ips, sec in rows:
        print(f"| {name} | {ips:.1f} | {100 * ips / base:.0f}% | {sec:.0f} |")
    print(f"(command: {' '.join(sys.argv)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
