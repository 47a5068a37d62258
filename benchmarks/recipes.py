"""Recipes from random weights (issue 12): which ingredients buy accuracy per CPU-minute, chosen on held-out data.

Selection never looks at the split that is reported. Each target's training folder is split once (seed 0) into
90% training and 10% held out (``select`` CSVs); every ablation arm trains on the 90% and is judged by its best
epoch on the 10%. Only a final recipe runs with ``--report``: the same 90/10 split plus the target's evaluation
folder as the test split, evaluated once with the best checkpoint. ``--full`` runs a final recipe as the
leaderboards do: on the whole training folder, with the evaluation folder as its validation split, reporting the
last epoch's accuracy on it (no epoch is chosen on that split).

Targets (CSVs of paths under ``WORK``, no copies of the images; :func:`common.subset_csv`):

* ``imagenette``: ``../shared/data/imagenette/train`` (9,469 images; 947 held out), test = its ``val`` folder
  (3,925); 128 px, 5 epochs (the fast.ai leaderboard's setting).
* ``cifar10``: ``cifar10/train`` (50,000; 5,000 held out), test = ``cifar10/test``; 32 px.
* ``eurosat`` (576 training and 64 held-out images a class, 10 epochs), ``cifar10_100`` (100 and 100, 30
  epochs) and ``imagenette_100`` (100 and 100 photos a class, 10 epochs: a small photo folder): the generalisation
  checks, with the model and size the defaults choose for the images (no ``--model``, no ``--img-size``: what
  ``resnet-tune train --data DIR`` does).

Arms are flags added to the target's base command (``resnet-tune train --data CSV --pretrained none --loader memory
--model M --img-size S --epochs E --seed N``); ``--epochs`` and ``--model`` override the target's. Arm names that
are not listed run the options given with ``--flags`` (e.g. ``--arms resnet9 --flags '--model resnet9'``). Every
finished run goes into the ledger
(``benchmarks/results/recipes/<target>/<arm>@<model>-<epochs>ep[-report]/seed<N>.json``), so the campaign
accumulates across sessions; runs resume. Usage::

    python benchmarks/recipes.py --work /work/bench_runs/recipes --target imagenette --arms baseline flat_cos
    python benchmarks/recipes.py --work /work/bench_runs/recipes --target cifar10 --model resnet9 --epochs 10 \\
        --arms baseline lookahead --seeds 0
    python benchmarks/recipes.py --work /work/bench_runs/recipes --target imagenette --arms final --report \\
        --seeds 0 1 2
    python benchmarks/recipes.py --table
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DATA, cli_run, cpu_name, ledger_read, ledger_write, mean_sd, pair_by_seed, paired,  # noqa: E402
                    read_metrics, subset_csv)

ROOT = Path(__file__).resolve().parents[1]
#: name: (training folder, evaluation folder, training images a class (None: all but the held-out), held out a
#: class, model, size (None: the defaults'), epochs)
TARGETS = {
    "imagenette": ("imagenette/train", "imagenette/val", None, 95, "resnet18", 128, 5),
    "cifar10": ("cifar10/train", "cifar10/test", None, 500, "resnet20", 32, 30),
    "eurosat": ("eurosat/train", "eurosat/val", 576, 64, None, None, 10),
    "cifar10_100": ("cifar10/train", "cifar10/test", 100, 100, None, None, 30),
    "imagenette_100": ("imagenette/train", "imagenette/val", 100, 100, None, None, 10),
}
#: arm: flags on top of the base command
ARMS = {
    "baseline": [],
    "flat_cos": ["--schedule", "flat_cos"],
    "progressive": ["--progressive-resize", "0.5"],
    "lookahead": ["--lookahead", "5"],
    "no_label_smoothing": ["--label-smoothing", "0"],
    "ema": ["--ema"],
    "adamw": ["--optimizer", "adamw"],
    "mixup": ["--mixup", "0.2"],
    "trivialaugment": ["--augment", "trivialaugment"],
    "whiten": ["--whiten"],
    "lamb": ["--optimizer", "lamb"],
    "no_ls_flat_cos": ["--label-smoothing", "0", "--schedule", "flat_cos"],
    "cutout": ["--cutout", "0.25"],
}


def data_csv(work: Path, target: str, report: bool) -> Path:
    train_dir, test_dir, per_class, held, *_ = TARGETS[target]
    name = f"{target}_{'report' if report else 'select'}.csv"
    return subset_csv(work / name, DATA / train_dir, per_class, held, seed=0,
                      test_dir=DATA / test_dir if report else None)


def full_csv(work: Path, target: str) -> Path:
    """``--full``: every image of the target's training folder as ``train`` and its evaluation folder as ``val``
    (a CSV of paths, written once)."""
    train_dir, test_dir, per_class, *_ = TARGETS[target]
    if per_class is not None:
        raise SystemExit(f"--full trains on a whole training folder; {target} is a subset of one")
    return subset_csv(work / f"{target}_full.csv", DATA / train_dir, None, 0, test_dir=DATA / test_dir,
                      test_split="val")


def run_arm(work: Path, code: Path, target: str, arm: str, model: str | None, epochs: int | None, seed: int,
            report: bool, extra: list[str], tta: bool = False, full: bool = False) -> tuple[str, dict]:
    *_, base_model, size, base_epochs = TARGETS[target]
    model, epochs = model or base_model, epochs or base_epochs
    key = f"{target}/{arm}@{model or 'default'}-{epochs}ep" + ("-full" if full else "-report" if report else "")
    data = full_csv(work, target) if full else data_csv(work, target, report)
    args = ["--data", str(data), "--pretrained", "none", "--loader", "memory",
            "--epochs", str(epochs), "--seed", str(seed), *ARMS.get(arm, []), *extra]
    if model:
        args += ["--model", model] + (["--img-size", str(size)] if size else [])
    out = work / key / f"seed{seed}"
    res = cli_run(code, out, args)
    if full:  # the evaluation folder is the run's validation split: its last epoch, no epoch chosen on it
        rows = read_metrics(out)
        res.update(test_acc=rows[-1]["val_acc"], split="test (the last epoch)", best_val_acc=None, minutes_to={})
        return key, res
    res["minutes_to"] = minutes_to(read_metrics(out))
    if report and tta and "test_acc_tta" not in res:
        res["test_acc_tta"] = evaluate_tta(code, out, data_csv(work, target, report))
    return key, res


#: held-out accuracies whose first epoch is reported (issue 12: time to 90/93/94% on CIFAR-10)
MILESTONES = (0.90, 0.93, 0.94)


def minutes_to(rows: list[dict[str, float]]) -> dict[str, float | None]:
    """Minutes of training and evaluation (metrics.csv's ``seconds``, summed) until the first epoch whose held-out
    accuracy reaches each of :data:`MILESTONES` (None: never)."""
    out: dict[str, float | None] = {f"{m:.2f}": None for m in MILESTONES}
    elapsed = 0.0
    for r in rows:
        elapsed += r["seconds"]
        for m in MILESTONES:
            if out[f"{m:.2f}"] is None and r["val_acc"] >= m:
                out[f"{m:.2f}"] = round(elapsed / 60, 2)
    return out


def evaluate_tta(code: Path, run: Path, data: Path) -> float:
    """The test split's accuracy with flip test-time augmentation (``resnet-tune evaluate --tta``), the run's best
    checkpoint; kept in the run folder (``tta/eval.json``), so it is computed once."""
    import json
    import os
    import subprocess

    out = run / "tta"
    if not (out / "eval.json").exists():
        env = {**os.environ, "PYTHONPATH": str(Path(code).resolve()), "RESNET_TUNE_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "resnet_tune", "evaluate", str(run), "--data", str(data), "--tta", "--output",
               str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "eval.json").read_text())["accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, help="run folders (outside the repository)")
    ap.add_argument("--code", type=Path, default=ROOT / "src", help="the src folder of the code under test")
    ap.add_argument("--target", choices=list(TARGETS), default="imagenette")
    ap.add_argument("--arms", nargs="+", default=["baseline"],
                    help=f"arms ({', '.join(ARMS)}), or any name with --flags giving its options")
    ap.add_argument("--flags", default="", help="extra options for every arm, e.g. '--model resnetblur18'")
    ap.add_argument("--model", help="the model instead of the target's")
    ap.add_argument("--epochs", type=int, help="epochs instead of the target's")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--report", action="store_true", help="a final recipe: also evaluate the test split once")
    ap.add_argument("--full", action="store_true", help="a final recipe trained on the whole training folder (no "
                    "held-out part), with the evaluation folder as its validation split: reports the last epoch's "
                    "accuracy on it (the leaderboard's protocol; nothing is chosen on that split)")
    ap.add_argument("--tta", action="store_true", help="with --report: also the test split with flip test-time "
                    "augmentation (resnet-tune evaluate --tta), reported beside the plain figure")
    ap.add_argument("--table", action="store_true", help="print the ledger's table and exit")
    ap.add_argument("--pair", nargs=2, metavar=("ARM_A", "ARM_B"),
                    help="print ARM_A against ARM_B (ledger keys under --target, e.g. r9n@resnet9_narrow-10ep "
                         "default_prev@default-10ep): each one's held-out accuracy, and A - B paired by seed")
    args = ap.parse_args()
    if args.table:
        return table()
    if args.pair:
        return pair(args.target, *args.pair)
    if args.work is None:
        ap.error("--work is required to run")
    named = [a for a in args.arms if a in ARMS]
    if args.flags and named:
        ap.error(f"--flags changes what an arm runs: give it a new name, not {', '.join(named)}")
    print(f"CPU: {cpu_name()}; code: {args.code}", flush=True)
    for seed in args.seeds:
        for arm in args.arms:
            key, res = run_arm(args.work, args.code, args.target, arm, args.model, args.epochs, seed, args.report,
                               args.flags.split(), args.tta, args.full)
            ledger_write("recipes", key, seed, res, flags=args.flags, code=args.code.name)
            print(f"{key} seed {seed}: "
                  + (f"test (last epoch) {res['test_acc']:.4f}" if args.full else
                     f"held-out {res['best_val_acc']:.4f}" + (f" test {res['test_acc']:.4f}" if args.report else ""))
                  + (f" (flip TTA {res['test_acc_tta']:.4f})" if "test_acc_tta" in res else "")
                  + f" in {res['seconds'] / 60:.1f} min; held-out milestones (minutes): {res['minutes_to']}",
                  flush=True)


def table() -> None:
    print("| target | arm@model-epochs | held-out accuracy (mean ± sd, n) | paired diff from baseline (points, mean ± "
          "SE, seeds) | test (report runs only) | test, flip TTA | minutes a run | minutes to 90/93/94% held-out "
          "(mean; runs that got there) |")
    print("|---|---|---|---|---|---|---|---|")
    runs = ledger_read("recipes")
    for key, arm_runs in runs.items():
        target, arm = key.split("/")
        test = mean_sd([r["test_acc"] for r in arm_runs]) if arm.endswith(("-report", "-full")) else "-"
        held = "-" if arm.endswith("-full") else mean_sd([r["best_val_acc"] for r in arm_runs])
        tta = [r["test_acc_tta"] for r in arm_runs if "test_acc_tta" in r]
        base = runs.get(f"{target}/baseline@{arm.split('@')[1]}")
        pairs = pair_by_seed(arm_runs, base) if base and not arm.startswith("baseline@") else []
        diff = f"{paired(pairs, 'best_val_acc')}, {len(pairs)}" if pairs else "-"
        print(f"| {target} | {arm} | {held} | {diff} | {test} | "
              f"{mean_sd(tta) if tta else '-'} | {statistics.mean(r['seconds'] for r in arm_runs) / 60:.1f} | "
              f"{milestones(arm_runs)} |")


def pair(target: str, a: str, b: str) -> None:
    runs = ledger_read("recipes")
    missing = [k for k in (a, b) if f"{target}/{k}" not in runs]
    if missing:
        raise SystemExit(f"not in the ledger under {target}: {', '.join(missing)}")
    if any(k.endswith("-full") for k in (a, b)):
        raise SystemExit("--full runs have no held-out figure to pair")
    ra, rb = runs[f"{target}/{a}"], runs[f"{target}/{b}"]
    pairs = pair_by_seed(ra, rb)
    print(f"{target}: {a} {mean_sd([r['best_val_acc'] for r in ra])}; {b} {mean_sd([r['best_val_acc'] for r in rb])}; "
          f"{a} - {b} held-out {paired(pairs, 'best_val_acc')} points over seeds {[x['seed'] for x, _ in pairs]}")


def milestones(arm_runs: list[dict]) -> str:
    """Mean minutes to each held-out milestone over the runs that reached it (``-``: none did; older entries
    without the figures: blank)."""
    if not any("minutes_to" in r for r in arm_runs):
        return ""
    out = []
    for m in MILESTONES:
        got = [r["minutes_to"][f"{m:.2f}"] for r in arm_runs if r.get("minutes_to", {}).get(f"{m:.2f}") is not None]
        out.append(f"{statistics.mean(got):.1f} ({len(got)}/{len(arm_runs)})" if got else "-")
    return " / ".join(out)


if __name__ == "__main__":
    main()
