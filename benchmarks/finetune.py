"""Does fine-tuning pay off? Pretrain on Imagenette with resnet-tune, fine-tune on 100 CIFAR-10 images a class.

Every figure goes through the project's public API (``fit``, ``evaluate``) with its defaults unless stated:

1. pretrain ResNet-18 from scratch on Imagenette (``../shared/data/imagenette``) at 96x96;
2. fine-tune that backbone on a 1,000-image CIFAR-10 subset (100 per class, drawn with a fixed seed from
   ``../shared/data/cifar10/train``; another 100 per class form the validation split) with each strategy
   (linear probe, full fine-tune, freeze-then-unfreeze) and train the same architecture from scratch, over 3 seeds;
3. evaluate every model on the full CIFAR-10 test split (10,000 images).

Resumable: finished runs are skipped, interrupted ones resumed. Usage::

    python benchmarks/finetune.py --work /tmp/ft-bench            # everything (about 60-70 min on 2 cores)
    python benchmarks/finetune.py --work /tmp/ft-bench --stage pretrain
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, cifar_subset_csv, run_or_resume  # noqa: E402

from resnet_tune.tasks.classification import evaluate

STRATEGIES = ["linear_probe", "full", "freeze_unfreeze", "scratch"]


def cifar_subset(work: Path, per_class: int, seed: int) -> Path:
    """``per_class`` train and ``per_class`` val images a class of CIFAR-10, as a CSV (no copies)."""
    return cifar_subset_csv(work / f"cifar_subset_{per_class}.csv", per_class, per_class, seed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for runs (outside the repository)")
    ap.add_argument("--stage", choices=["pretrain", "finetune", "all"], default="all")
    ap.add_argument("--pretrain-epochs", type=int, default=30)
    ap.add_argument("--finetune-epochs", type=int, default=15)
    ap.add_argument("--img-size", type=int, default=96)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    work = args.work

    pre = work / "pretrain_imagenette_resnet18"
    pre_seconds = run_or_resume(pre, data=str(DATA / "imagenette"), model="resnet18", img_size=args.img_size,
                                loader="memory", epochs=args.pretrain_epochs, batch_size=128)
    pre_acc = json.loads((pre / "eval.json").read_text())["accuracy"]
    print(f"pretrained backbone: Imagenette val accuracy {pre_acc:.4f} ({pre_seconds / 60:.1f} min)")
    if args.stage == "pretrain":
        return 0

    subset = cifar_subset(work, args.per_class, seed=0)
    results = []
    for strategy in STRATEGIES:
        for seed in args.seeds:
            out = work / f"{strategy}_seed{seed}"
            opts = dict(data=str(subset), model="resnet18", img_size=args.img_size, epochs=args.finetune_epochs,
                        seed=seed, loader="memory")
            if strategy != "scratch":
                opts.update(pretrained=str(pre / "best.safetensors"), strategy=strategy)
            seconds = run_or_resume(out, **opts)
            ev_path = out / "test_eval.json"
            if not ev_path.exists():
                rep = evaluate(out, DATA / "cifar10" / "test", progress=False)
                ev_path.write_text(json.dumps({"accuracy": rep["accuracy"], "num_samples": rep["num_samples"]}))
            acc = json.loads(ev_path.read_text())["accuracy"]
            results.append({"strategy": strategy, "seed": seed, "test_acc": acc, "train_seconds": seconds})
            print(f"{strategy:16s} seed {seed}: CIFAR-10 test accuracy {acc:.4f}, training {seconds:.0f}s", flush=True)

    summary = {}
    for strategy in STRATEGIES:
        accs = [r["test_acc"] for r in results if r["strategy"] == strategy]
        secs = [r["train_seconds"] for r in results if r["strategy"] == strategy]
        summary[strategy] = {"mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                             "seconds": statistics.mean(secs), "n": len(accs)}
    meta = {"hardware": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "argv": sys.argv,
            "pretrain_val_acc": pre_acc, "pretrain_seconds": pre_seconds}
    (work / "finetune_results.json").write_text(json.dumps({"meta": meta, "runs": results, "summary": summary},
                                                           indent=2))
    print("\n| strategy | CIFAR-10 test acc (mean ± sd, n) | train time (s) |\n|---|---|---|")
    for s, v in summary.items():
        print(f"| {s} | {100 * v['mean']:.1f}% ± {100 * v['std']:.1f} ({v['n']}) | {v['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
