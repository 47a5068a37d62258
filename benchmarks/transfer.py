"""Transfer suite (issue 13): which fine-tuning strategy wins, on backbones the project pretrains itself.

ImageNet weights cannot be downloaded here, so the backbones are pretrained on Imagenette by the project's own CLI
(``WORK/backbones/<name>``, made once and reused; resumable):

* ``resnet18_128``: ``resnet-tune train --data ../shared/data/imagenette --model resnet18 --img-size 128
  --epochs 16 --loader memory --pretrained none`` (about 20 minutes on 2 cores with AMX, 40 with bf16 AVX-512);
* ``resnet18d_128``: the same with ``--model resnet18d`` (ResNet-D: deep 3-convolution stem, average-pool
  shortcut downsampling), the suite's second backbone.

Targets (CSVs of paths, no copies; :func:`common.target_csv`), each with a held-out validation split drawn from its
training folder (what selection looks at) and an evaluation folder reported as ``test``:

* ``cifar10_100``: 100 training and 100 validation images a class of CIFAR-10's training folder; test: all 10,000
  of ``cifar10/test``. 32 px photos, near the backbone's domain but tiny.
* ``eurosat``: 576 training and 64 validation images a class of ``eurosat/train``; test: the 1,600 of
  ``eurosat/val``. 64 px satellite tiles: a domain shift.
* ``digits``: the embedded default's handwritten digits (scikit-learn's 1,797) at 32 px: 100 training and 20
  validation images a class, the other 597 as test. Far from photos.

Arms (every one through ``resnet-tune train`` of the code under ``--code``, ``--model resnet18``, the same epochs
per target; all but ``scratch`` with ``--pretrained`` the backbone):

* ``linear_probe``, ``full``, ``freeze_unfreeze``: ``--strategy`` that one (``full`` with ``--freeze-at 0``, which
  a fine-tune with ``--budget`` would otherwise not have);
* ``default``: no ``--strategy``/``--freeze-at``/``--lr`` (what a user gets without flags; since the first
  session's figures the same as ``full`` at ``--size backbone``, which the table reports as the default);
* ``scratch``: ``--pretrained none``;
* ``full_freeze2``: ``--strategy full --freeze-at 2`` (stem and first stage frozen, detectron2's default);
* ``full_lr_auto``: ``--strategy full --lr auto`` (the learning-rate range test picks the rate);
* the settings of a full fine-tune, one at a time: ``full_lr_decay`` (per-stage learning-rate decay 0.5, no head
  warm-up: ``--strategy freeze_unfreeze --freeze-epochs 0``), ``head_warmup`` (one head-only epoch, no decay:
  ``--strategy freeze_unfreeze --lr-decay 1``), ``full_bn_frozen`` (``--freeze-bn-stats``), ``full_wd0``
  (``--weight-decay 0``), ``full_aug_none`` and ``full_aug_ta`` (``--augment none|trivialaugment``).

``--size`` chooses the input size: ``native`` (the images' own side), ``backbone`` (the pretraining size, 128) or
a number; ``default`` arms leave it to the code unless ``--size`` is a number. ``--budget`` gives every arm its
target's wall-clock budget (``BUDGETS``) instead of the fixed epochs (the arm is then recorded as
``arm@size+budget`` and compared with ``full@size+budget``). Runs are resumable: a finished one (its
``summary.json``) is skipped, an interrupted one resumed. Usage::

    python benchmarks/transfer.py --work /work/bench_runs/transfer --stage backbones
    python benchmarks/transfer.py --work /work/bench_runs/transfer --arms full --size native backbone --seeds 0
    python benchmarks/transfer.py --work /work/bench_runs/transfer --budget --arms full full_freeze2 --seeds 1 2 3
    python benchmarks/transfer.py --work /work/bench_runs/transfer --table
    python benchmarks/transfer.py --work /work/bench_runs/transfer --stage speed   # step time by frozen blocks
    python benchmarks/transfer.py --work /work/bench_runs/transfer --stage heldout --targets eurosat \
        --pair full_freeze2@96+budget full@96+budget --seeds 1 2 3 4 5

Every finished run's figures also go into the repository's ledger (``common.ledger_write``:
``benchmarks/results/transfer/<backbone>/<target>/<arm>@<size>/seed<N>.json``, no log; the backbone's digest and
accuracy, CPU, torch, date), and ``--table`` reads the ledger: the work folder lives on a machine that a later
session does not get back, so the campaign's seeds accumulate in the ledger across sessions. A backbone retrained in
a later session by the same command is a new draw of the backbone (its digest says which runs shared one); every arm
of one seed shares one.

``--stage speed`` times the training step of ResNet-18 (bf16 autocast, channels-last, SGD, batch 64, as the trainer
runs it) with 0, 1 and 2 body blocks frozen (``--freeze-at``) and with the whole body frozen, at 64 and 128 px, in
interleaved rounds on an otherwise idle machine: what freezing the stem and first stage saves.

``--stage heldout`` re-scores two finished arms' best checkpoints on the held-out images and reports their paired
difference with its error over the seeds and over the images: the held-out splits are small, and the seeds' error
alone leaves out that every seed is scored on the same images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DATA, cli_run, cpu_name, header, ledger_read, ledger_write, mean_sd, pair_by_seed,  # noqa: E402
                    paired, per_cpu, target_csv, timed)

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = {"resnet18_128": {"model": "resnet18", "img_size": 128, "epochs": 16},
             "resnet18d_128": {"model": "resnet18d", "img_size": 128, "epochs": 16}}
#: name: (target set, training and validation images a class, epochs, the images' own side)
TARGETS = {"cifar10_100": ("cifar10", 100, 100, 15, 32), "eurosat": ("eurosat", 576, 64, 5, 64),
           "digits": ("digits", 100, 20, 10, 32)}
#: ``--budget``: each target's wall-clock budget, about what ``full@backbone`` takes for the epochs above on a 2-core
#: Xeon with AMX (180, 247 and 96 s), so the full fine-tune gets about its usual epochs and a cheaper strategy more
BUDGETS = {"cifar10_100": "3m", "eurosat": "4m", "digits": "90s"}
ARMS = {"linear_probe": ["--strategy", "linear_probe"], "full": ["--strategy", "full", "--freeze-at", "0"],
        "freeze_unfreeze": ["--strategy", "freeze_unfreeze"], "default": [], "scratch": ["--pretrained", "none"],
        "full_freeze2": ["--strategy", "full", "--freeze-at", "2"],
        "full_lr_auto": ["--strategy", "full", "--lr", "auto"],
        # the settings of a fine-tune, one at a time against ``full`` (and freeze_unfreeze taken apart)
        "full_lr_decay": ["--strategy", "freeze_unfreeze", "--freeze-epochs", "0"],
        "head_warmup": ["--strategy", "freeze_unfreeze", "--lr-decay", "1"],
        "full_bn_frozen": ["--strategy", "full", "--freeze-bn-stats"],
        "full_wd0": ["--strategy", "full", "--weight-decay", "0"],
        "full_aug_none": ["--strategy", "full", "--augment", "none"],
        "full_aug_ta": ["--strategy", "full", "--augment", "trivialaugment"]}


def backbone(work: Path, name: str, code: Path) -> Path:
    """The pretrained backbone's weights, trained first when they are not there yet (resumable)."""
    spec = BACKBONES[name]
    out = work / "backbones" / name
    if not (out / "eval.json").exists():
        res = cli_run(code, out, ["--data", str(DATA / "imagenette"), "--model", spec["model"], "--img-size",
                                  str(spec["img_size"]), "--epochs", str(spec["epochs"]), "--loader", "memory",
                                  "--pretrained", "none"])
        print(f"backbone {name}: Imagenette val {res['test_acc']:.4f} in {res['seconds'] / 60:.1f} min", flush=True)
    return out / "best.safetensors"


def size_of(size: str, target: str, backbone_name: str) -> str | None:
    if size == "native":
        return str(TARGETS[target][4])
    if size == "backbone":
        return str(BACKBONES[backbone_name]["img_size"])
    return size


def label(arm: str, size: str, budget: bool) -> str:
    """An arm's name in the work folder and the ledger: ``arm@size``, with ``+budget`` for the ``--budget`` runs."""
    return f"{arm}@{size}" + ("+budget" if budget else "")


def run_arm(work: Path, code: Path, backbone_name: str, target: str, arm: str, size: str, seed: int,
            budget: bool = False) -> dict:
    base, per_class, val_per_class, epochs, _ = TARGETS[target]
    data = target_csv(work, base, per_class, val_per_class)
    out = work / backbone_name / target / label(arm, size, budget) / f"seed{seed}"
    length = ["--budget", BUDGETS[target]] if budget else ["--epochs", str(epochs)]
    args = ["--data", str(data), "--model", BACKBONES[backbone_name]["model"], *length, "--seed", str(seed),
            *ARMS[arm]]
    if arm != "scratch":
        args += ["--pretrained", str(backbone(work, backbone_name, code))]
    if arm != "default" or size not in ("native", "backbone"):
        args += ["--img-size", size_of(size, target, backbone_name)]
    return cli_run(code, out, args)


def backbone_facts(work: Path, name: str) -> dict:
    """Which backbone a run fine-tuned: the first 16 hex digits of its weights' SHA-256 and its Imagenette
    validation accuracy."""
    out = work / "backbones" / name
    digest = hashlib.sha256((out / "best.safetensors").read_bytes()).hexdigest()[:16]
    return {"name": name, "sha256": digest, "val_acc": json.loads((out / "eval.json").read_text())["accuracy"]}


def epoch_seconds(res: dict) -> float:
    """Median training seconds of the epochs that trained the whole network (a frozen first epoch left out); a
    ledger entry transcribed from an earlier table carries only that median."""
    if "epoch_seconds" in res:
        return res["epoch_seconds"]
    secs = res["epoch_train_seconds"]
    return statistics.median(secs[1:] if len(secs) > 2 else secs)


def epochs_run(runs: list[dict]) -> str:
    """Mean epochs the runs trained (a budget's shorter last epoch counts as one); ``-`` for transcribed entries."""
    counts = [len(r["epoch_train_seconds"]) for r in runs if "epoch_train_seconds" in r]
    return f"{statistics.mean(counts):.1f}" if counts else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="runs and backbones (outside the repository)")
    ap.add_argument("--code", type=Path, default=ROOT / "src", help="the src folder of the code under test")
    ap.add_argument("--stage", choices=["backbones", "runs", "speed", "heldout"], default="runs",
                    help="heldout: re-score the best checkpoints of the two --pair arms on the held-out images")
    ap.add_argument("--pair", nargs=2, metavar=("ARM_A", "ARM_B"),
                    help="--stage heldout: two finished arms by their folder name, e.g. full@64+budget")
    ap.add_argument("--backbone", default="resnet18_128", choices=list(BACKBONES))
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--arms", nargs="+", default=["linear_probe", "full", "freeze_unfreeze", "default", "scratch"],
                    choices=list(ARMS))
    ap.add_argument("--size", nargs="+", default=["native"], help="native, backbone or a number of pixels")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", action="store_true",
                    help="every arm at its target's wall-clock budget (BUDGETS) instead of the same epochs")
    ap.add_argument("--table", action="store_true", help="print the ledger's table of every finished run and exit")
    args = ap.parse_args()
    if args.table:
        return table()
    if args.stage == "speed":
        return step_speed()
    if args.stage == "heldout":
        if not args.pair:
            ap.error("--stage heldout needs --pair ARM_A ARM_B")
        return heldout_pair(args.work, args.backbone, args.targets, *args.pair, args.seeds)
    print(f"CPU: {cpu_name()}; code: {args.code}", flush=True)
    backbone(args.work, args.backbone, args.code)
    if args.stage == "backbones":
        return
    for seed in args.seeds:  # seed-major: a partial campaign has every arm at its first seeds
        for target in args.targets:
            for size in args.size:
                for arm in args.arms:
                    res = run_arm(args.work, args.code, args.backbone, target, arm, size, seed, args.budget)
                    name = label(arm, size, args.budget)
                    ledger_write("transfer", f"{args.backbone}/{target}/{name}", seed, res,
                                 backbone=backbone_facts(args.work, args.backbone))
                    print(f"{target} {name} seed {seed}: test {res['test_acc']:.4f} val "
                          f"{res['best_val_acc']:.4f} {epoch_seconds(res):.1f}s an epoch, "
                          f"{len(res['epoch_train_seconds'])} epochs, {res['seconds']:.0f}s", flush=True)


def heldout_pair(work: Path, backbone_name: str, targets: list[str], arm_a: str, arm_b: str, seeds: list[int],
                 resamples: int = 2000) -> None:
    """Two arms' best checkpoints re-scored on each target's held-out images (the run folders' ``val.csv``), paired
    by seed: the mean difference in points, its SE over the seeds, and its SE over the images (a bootstrap of the
    mean over the seeds, images resampled: every seed is scored on the same few hundred images, which the seeds'
    SE leaves out), with the share of images the two arms answer differently."""
    import csv
    import random

    from resnet_tune.tasks.registry import Predictor

    def correct(run: Path) -> list[int]:
        with (run / "val.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        out = Predictor(run, device="cpu").predict_files([r["path"] for r in rows], top_k=1)
        return [int(o["top"][0]["class"] == r["label"]) for o, r in zip(out, rows)]

    print(f"CPU: {cpu_name()}; {arm_a} minus {arm_b}, best checkpoints on the held-out images")
    for target in targets:
        runs = [(work / backbone_name / target / arm_a / f"seed{s}", work / backbone_name / target / arm_b / f"seed{s}")
                for s in seeds]
        runs = [(a, b) for a, b in runs if (a / "eval.json").exists() and (b / "eval.json").exists()]
        if len(runs) < 2:
            print(f"{target}: fewer than two seeds with both arms finished")
            continue
        scored = [(correct(a), correct(b)) for a, b in runs]
        n = len(scored[0][0])
        diffs = [100 * (sum(a) - sum(b)) / n for a, b in scored]
        rng = random.Random(0)
        boot = []
        for _ in range(resamples):
            idx = [rng.randrange(n) for _ in range(n)]
            boot.append(statistics.mean(100 * sum(a[i] - b[i] for i in idx) / n for a, b in scored))
        apart = statistics.mean(sum(x != y for x, y in zip(a, b)) / n for a, b in scored)
        print(f"{target}: {len(runs)} seeds, {n} images: {statistics.mean(diffs):+.2f} points, SE over seeds "
              f"{statistics.stdev(diffs) / len(diffs) ** 0.5:.2f}, SE over images {statistics.stdev(boot):.2f}, "
              f"answered differently {100 * apart:.1f}%", flush=True)


def step_speed(rounds: int = 3, steps: int = 10, batch: int = 64) -> None:
    """Seconds a training step with 0, 1, 2 and all body blocks frozen, median of interleaved rounds."""
    import torch

    import resnet_tune as rt
    from resnet_tune.engine.finetune import set_frozen_blocks, train_mode
    from resnet_tune.engine.optim import make_optimizer, param_groups

    print(header(rounds) + f"; {steps} steps a window, batch {batch}, bf16 autocast, channels-last")
    frozen = {"full (freeze_at 0)": 0, "freeze_at 1 (stem)": 1, "freeze_at 2 (stem + stage 1)": 2,
              "linear probe (whole body)": 5}
    for size in (64, 128):
        x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,))
        setups = {}
        for name, k in frozen.items():
            model = rt.create_model("resnet18", num_classes=10).to(memory_format=torch.channels_last)
            set_frozen_blocks(model, k)
            train_mode(model)
            opt = make_optimizer("sgd", param_groups(model, 0.01, 5e-4, frozen=k), 0.01, 0.9, True, 5e-4)

            def step(model=model, opt=opt) -> None:
                for _ in range(steps):
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        loss = torch.nn.functional.cross_entropy(model(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            setups[name] = step
        times: dict[str, list[float]] = {n: [] for n in setups}
        for _ in range(rounds):
            for name, fn in setups.items():
                times[name].append(timed(fn, repeats=1, warmup=1) / steps)
        base = statistics.median(times["full (freeze_at 0)"])
        print(f"\n{size} px | s a step (median of {rounds}) | img/s | vs full")
        for name, t in times.items():
            med = statistics.median(t)
            print(f"{name} | {med:.3f} | {batch / med:.0f} | {base / med:.2f}x")


def table() -> None:
    """The ledger as a table: every backbone, target and arm@size, mean ± sd over the recorded seeds."""
    from resnet_tune.engine.finetune import budget_input_size

    print("| backbone | target | arm@size | test accuracy (mean ± sd, n) | val (selection, mean ± sd) | s an epoch | "
          "epochs | s a run |")
    print("|---|---|---|---|---|---|---|---|")
    for key, runs in ledger_read("transfer").items():
        name, target, arm = key.split("/")
        print(f"| {name} | {target} | {arm} | {mean_sd([r['test_acc'] for r in runs])} | "
              f"{mean_sd([r['best_val_acc'] for r in runs])} | "
              f"{per_cpu(runs, epoch_seconds)} | {epochs_run(runs)} | "
              f"{per_cpu(runs, lambda r: r['seconds'], 0)} |")
    print("\nPaired differences from the default (a full fine-tune, nothing frozen: `full@backbone`, at the weights' "
          "size; a `+budget` arm against `full@S+budget`, S the size between the images' and the weights' that a "
          "budgeted default trains at; seeds both ran on the same backbone draw; val = the held-out selection "
          "split):\n")
    print("| backbone | target | arm@size | seeds | val diff (points, mean ± SE) | test diff (points, mean ± SE) |")
    print("|---|---|---|---|---|---|")
    runs = ledger_read("transfer")
    for key, arm_runs in runs.items():
        name, target, arm = key.split("/")
        ref = "full@backbone"
        if arm.endswith("+budget"):
            ref = f"full@{budget_input_size(TARGETS[target][4], BACKBONES[name]['img_size'])}+budget"
        base = runs.get(f"{name}/{target}/{ref}")
        if base is None or arm == ref:
            continue
        pairs = pair_by_seed(arm_runs, base, same="backbone")
        print(f"| {name} | {target} | {arm} | {len(pairs)} | {paired(pairs, 'best_val_acc')} | "
              f"{paired(pairs, 'test_acc')} |")


if __name__ == "__main__":
    main()
