"""Small photo folders, before and after issue 18: a few real images a class, from scratch and from the project's
own Imagenette-pretrained backbone, with the defaults of two versions of the code.

Targets (no copies of the images: CSVs of paths): ``eurosat`` = 25 training and 10 validation images a class drawn
with a fixed seed from ``../shared/data/eurosat/train`` (10 land-use classes, 64 px), evaluated once on the
1,600-image ``eurosat/val`` split as the test split; ``cifar10`` = the same from ``cifar10/train`` (32 px), evaluated
once on all 10,000 images of ``cifar10/test``.

Arms, each with 3 seeds, each through the command line of the code under test (``--code SRC`` puts that ``src``
folder first on PYTHONPATH, e.g. a worktree of the commit before the change):

* ``scratch``: ``resnet-tune train --data CSV --model resnet18`` (+ ``--pretrained none`` where the option exists);
* ``pretrained``: ``... --model resnet18 --pretrained BACKBONE`` (freeze-then-unfreeze, the default with weights).

The backbone: ``python -m resnet_tune train --data ../shared/data/imagenette --model resnet18 --img-size 64
--loader memory --epochs 16 --batch-size 128 --output WORK/pretrain_r18_64`` (made once; reused).

Resumable: a finished run (its ``eval.json``) is skipped. Usage::

    python benchmarks/small_data.py --work /work/bench_runs/small --code /work/wt-base/src --label before
    python benchmarks/small_data.py --work /work/bench_runs/small --code src --label after
    python benchmarks/small_data.py --work /work/bench_runs/small --table
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cli_run, cpu_name, mean_sd, summaries, target_csv  # noqa: E402

TARGETS = ("eurosat", "cifar10")
SEEDS = (0, 1, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--code", type=Path, default=Path("src"), help="the src folder of the code under test")
    ap.add_argument("--label", default="after")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    ap.add_argument("--table", action="store_true", help="print the table of every finished run and exit")
    args = ap.parse_args()
    backbone = args.work / "pretrain_r18_64" / "best.safetensors"
    if args.table:
        return table(args.work)
    if not backbone.exists():
        raise SystemExit(f"no backbone at {backbone}; make it with the command in this file's docstring.")
    print(f"CPU: {cpu_name()}; code: {args.code} ({args.label})", flush=True)
    helptext = subprocess.run([sys.executable, "-m", "resnet_tune", "train", "--help"], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(args.code.resolve())}).stdout
    has_none = "none (from scratch" in " ".join(helptext.split())  # before issue 18 no flag meant scratch
    for target in args.targets:
        data = target_csv(args.work, target, 25, 10)
        for arm in ("scratch", "pretrained"):
            extra = ["--pretrained", str(backbone)] if arm == "pretrained" else (["--pretrained", "none"] if has_none
                                                                                else [])
            for seed in SEEDS:
                out = args.work / args.label / target / arm / f"seed{seed}"
                res = cli_run(args.code, out, ["--data", str(data), "--model", "resnet18", "--seed", str(seed), *extra])
                print(f"{args.label} {target} {arm} seed {seed}: test {res['test_acc']:.4f} best val "
                      f"{res['best_val_acc']:.4f} max val loss {res['max_val_loss']:.4g} {res['seconds']:.0f}s",
                      flush=True)


def table(work: Path) -> None:
    print("| target | arm | code | test accuracy (mean ± sd, 3 seeds) | max validation loss (worst seed) | "
          "max training loss | s a run |")
    print("|---|---|---|---|---|---|---|")
    for target in TARGETS:
        for arm in ("scratch", "pretrained"):
            for label in ("before", "after"):
                runs = summaries(work / label / target / arm)
                if not runs:
                    continue
                print(f"| {target} | {arm} | {label} | {mean_sd([r['test_acc'] for r in runs])} | "
                      f"{max(r['max_val_loss'] for r in runs):.4g} | {max(r['max_train_loss'] for r in runs):.3g} | "
                      f"{statistics.mean(r['seconds'] for r in runs):.0f} |")


if __name__ == "__main__":
    main()
