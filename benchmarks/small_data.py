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
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, cpu_name, subset_csv  # noqa: E402

TARGETS = {"eurosat": ("eurosat/train", "eurosat/val"), "cifar10": ("cifar10/train", "cifar10/test")}
SEEDS = (0, 1, 2)


def target_csv(work: Path, target: str, per_class: int = 25, val_per_class: int = 10, seed: int = 0) -> Path:
    """``per_class`` train and ``val_per_class`` val images a class of the target's training folder (drawn with
    ``seed``) and its whole evaluation folder as ``test``, as a CSV of paths (written once, then reused)."""
    train_dir, test_dir = (DATA / p for p in TARGETS[target])
    return subset_csv(work / f"{target}_{per_class}.csv", train_dir, per_class, val_per_class, seed, test_dir)


def run(code: Path, out: Path, args: list[str]) -> dict:
    """One training run through the command line of the code in ``code``; its figures (cached in summary.json)."""
    summary = out / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())
    env = {**os.environ, "PYTHONPATH": str(code.resolve()), "RESNET_TUNE_OFFLINE": "1"}
    resume = (out / "last.state.pt").exists()
    cmd = [sys.executable, "-m", "resnet_tune", "train", *(["--resume", str(out)] if resume else
                                                            [*args, "--output", str(out)]), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    seconds = time.perf_counter() - t0
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    report = json.loads((out / "eval.json").read_text())
    res = {"test_acc": report["accuracy"], "split": report.get("split"),
           "best_val_acc": max(float(r["val_acc"]) for r in rows),
           "max_val_loss": max(float(r["val_loss"]) for r in rows),
           "max_train_loss": max(float(r["train_loss"]) for r in rows), "seconds": seconds,
           "command": " ".join(["resnet-tune train", *args]), "log": proc.stdout[-4000:]}
    summary.write_text(json.dumps(res, indent=2))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--code", type=Path, default=Path("src"), help="the src folder of the code under test")
    ap.add_argument("--label", default="after")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
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
        data = target_csv(args.work, target)
        for arm in ("scratch", "pretrained"):
            extra = ["--pretrained", str(backbone)] if arm == "pretrained" else (["--pretrained", "none"] if has_none
                                                                                else [])
            for seed in SEEDS:
                out = args.work / args.label / target / arm / f"seed{seed}"
                res = run(args.code, out, ["--data", str(data), "--model", "resnet18", "--seed", str(seed), *extra])
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
                found = sorted((work / label / target / arm).glob("seed*/summary.json"))
                runs = [json.loads(p.read_text()) for p in found]
                if not runs:
                    continue
                acc = [r["test_acc"] * 100 for r in runs]
                sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
                print(f"| {target} | {arm} | {label} | {statistics.mean(acc):.1f}% ± {sd:.1f} ({len(runs)}) | "
                      f"{max(r['max_val_loss'] for r in runs):.4g} | {max(r['max_train_loss'] for r in runs):.3g} | "
                      f"{statistics.mean(r['seconds'] for r in runs):.0f} |")


if __name__ == "__main__":
    main()
