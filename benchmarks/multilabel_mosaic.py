"""Multi-label recognition on real data without hand labelling: 2x2 mosaics of EuroSAT tiles.

Each mosaic is four 64 px EuroSAT tiles (``../shared/data/eurosat``: 10 land-use classes) drawn at random, 128 x 128
px, labelled with the set of its tiles' classes (1 to 4 labels, about 3.4 on average). Training mosaics use only
the EuroSAT train split's tiles, test mosaics only its val split's, so no tile is in both. The CSV
(``path,labels,split``: train and test rows) is trained on with the tool's defaults at the mosaic's own size
(``rt.fit(task="multilabel", data=CSV, img_size=128)``): the validation split is drawn from the training rows by
iterative stratification, the best checkpoint (macro mAP on validation) is evaluated once on the test mosaics.

Prints the CPU, versions, the command, test macro/micro mAP and micro-F1 at the tuned thresholds, and the
wall-clock. Resumable: an interrupted run is resumed, a finished one only reported. Usage::

    python benchmarks/multilabel_mosaic.py --work /tmp/mosaic
    python benchmarks/multilabel_mosaic.py --work /tmp/mosaic --model resnet18   # another network, same mosaics
    python benchmarks/multilabel_mosaic.py --work /tmp/mosaic-smoke --train 64 --test 32 --epochs 1   # seconds
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA  # noqa: E402

import resnet_tune as rt  # noqa: E402

TILE = 64


def tiles(split_dir: Path) -> list[tuple[Path, str]]:
    return [(p, c.name) for c in sorted(split_dir.iterdir()) if c.is_dir() for p in sorted(c.glob("*.jpg"))]


def make_mosaics(pool: list[tuple[Path, str]], n: int, out: Path, split: str, rng: random.Random) -> list[str]:
    """``n`` mosaics of four tiles from ``pool``; CSV rows ``path,labels,split``."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        picked = rng.sample(pool, 4)
        canvas = Image.new("RGB", (2 * TILE, 2 * TILE))
        for k, (path, _) in enumerate(picked):
            with Image.open(path) as im:
                canvas.paste(im.convert("RGB").resize((TILE, TILE)), ((k % 2) * TILE, (k // 2) * TILE))
        name = f"{split}_{i:05d}.jpg"
        canvas.save(out / name, quality=92)
        labels = sorted({c for _, c in picked})
        rows.append(f"{out.name}/{name},{';'.join(labels)},{split}")
    return rows


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                    platform.processor())
    except OSError:
        return platform.processor()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the mosaics and the run (outside the repo)")
    ap.add_argument("--data", type=Path, default=DATA / "eurosat")
    ap.add_argument("--train", type=int, default=4000, help="training mosaics (validation is drawn from them)")
    ap.add_argument("--test", type=int, default=1000, help="test mosaics")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="default: the tool's")
    ap.add_argument("--model", default=None, help="default: the tool's choice (its run in WORK/run; another "
                                                  "network's in WORK/run-MODEL)")
    args = ap.parse_args()

    csv = args.work / "mosaics.csv"
    if not csv.is_file():
        rng = random.Random(args.seed)
        rows = make_mosaics(tiles(args.data / "train"), args.train, args.work / "images", "train", rng)
        rows += make_mosaics(tiles(args.data / "val"), args.test, args.work / "images", "test", rng)
        csv.write_text("path,labels,split\n" + "\n".join(rows) + "\n")
    run = args.work / (f"run-{args.model}" if args.model else "run")
    options = {"seed": args.seed, **({"epochs": args.epochs} if args.epochs else {}),
               **({"model": args.model} if args.model else {})}
    t0 = time.perf_counter()
    if (run / "last.state.pt").is_file():
        res = rt.fit(resume=run)
    else:
        res = rt.fit(task="multilabel", data=str(csv), img_size=128, output=str(run), **options)
    minutes = (time.perf_counter() - t0) / 60
    ev = json.loads((run / "eval.json").read_text())
    import torch

    print(f"\nCPU: {cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}, Python "
          f"{platform.python_version()}")
    print(f"command: python benchmarks/multilabel_mosaic.py --work {args.work} --train {args.train} --test "
          f"{args.test} --seed {args.seed}" + (f" --epochs {args.epochs}" if args.epochs else "")
          + (f" --model {args.model}" if args.model else ""))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    print(f"trained: {cfg['model']} at {cfg['img_size']} px, {cfg['epochs']} epochs, {cfg['optimizer']}, "
          f"model_kwargs {cfg.get('model_kwargs')}")
    print(f"| split | images | macro mAP | micro mAP | micro-F1 | macro-F1 | exact match | best epoch | minutes |\n"
          f"|---|--:|--:|--:|--:|--:|--:|--:|--:|\n"
          f"| {ev['split']} | {ev['images']} | {100 * ev['macro_map']:.2f}% | {100 * ev['micro_map']:.2f}% | "
          f"{ev['micro_f1']:.4f} | {ev['macro_f1']:.4f} | {100 * ev['exact_match']:.2f}% | {res.best_epoch} | "
          f"{minutes:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
