"""Time to accuracy, and which ResNet to pick: real training runs through the public ``fit``, timed whole.

Tasks (each resumable: finished runs are skipped, interrupted ones resumed; results in WORK/<task>.json):

- ``cifar10``: CIFAR-10 from scratch (``../shared/data/cifar10``, 49,000 train / 1,000 held out for picking the
  best epoch / the 10,000 test images for the figure), for each --models entry, for --epochs, or with epochs
  chosen so that the run fits --minutes on this machine (measured first on in-memory synthetic data).
- ``imagenette``: Imagenette at 128 px from random weights for --epochs (the fast.ai leaderboard's setting:
  5 epochs, no test-time augmentation; accuracy on the 3,925-image val split).
- ``imagenette-budget``: Imagenette at 128 px, epochs chosen to fit --minutes, for each --models entry.

Every run is the project's defaults except what the command line names; the in-memory loader (decode once,
crop and flip in batches) is used for both sets. Usage::

    python benchmarks/time_to_accuracy.py cifar10 --work /tmp/tta --models resnet20 resnet56 resnet18 --minutes 8
    python benchmarks/time_to_accuracy.py cifar10 --work /tmp/tta --models resnet20 --epochs 30
    python benchmarks/time_to_accuracy.py imagenette --work /tmp/tta --models resnet18 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, header, read_metrics, run_or_resume  # noqa: E402

from resnet_tune import fit  # noqa: E402

SETS = {
    # name: (data, img_size, training images, options)
    "cifar10": (DATA / "cifar10", 32, 49_000, dict(val_fraction=0.02, batch_size=128)),
    "imagenette": (DATA / "imagenette", 128, 9_469, dict(batch_size=64)),
}


def images_per_second(model: str, size: int, batch: int) -> float:
    """The trainer's own throughput on in-memory synthetic images of this size (its second epoch)."""
    with tempfile.TemporaryDirectory() as tmp:
        res = fit(data=f"synthetic:{batch * 8}", model=model, img_size=size, batch_size=batch, epochs=2,
                  output=f"{tmp}/run", progress=False, quiet=True)
    return res.history[-1]["images_per_s"]


def run(work: Path, dataset: str, model: str, epochs: int | None, minutes: float | None,
        batch: int | None = None) -> dict:
    data, size, n_train, opts = SETS[dataset]
    tag = f"-b{batch}" if batch and batch != opts["batch_size"] else ""
    opts = dict(opts, batch_size=batch or opts["batch_size"])
    if epochs is None:  # a time budget: the epochs are planned once and kept, so that a rerun resumes
        plan = work / f"{dataset}-{model}{tag}-{minutes:g}min-plan.json"
        if plan.exists():
            epochs = json.loads(plan.read_text())["epochs"]
        else:
            ips = images_per_second(model, size, opts["batch_size"])
            # ~85% of the budget on training; the rest is decoding, validation and checkpoints
            epochs = max(1, int(0.85 * minutes * 60 * ips / n_train))
            print(f"{model} on {dataset}: {ips:.0f} img/s in training -> {epochs} epochs fit {minutes} min", flush=True)
            plan.write_text(json.dumps({"epochs": epochs}))
    out = work / f"{dataset}-{model}{tag}-{epochs}ep"
    seconds = run_or_resume(out, data=str(data), model=model, img_size=size, epochs=epochs, loader="memory", **opts)
    report = json.loads((out / "eval.json").read_text())
    per_epoch = [r["seconds"] for r in read_metrics(out)]
    result = {"dataset": dataset, "model": model, "img_size": size, "epochs": epochs, "batch_size": opts["batch_size"],
              "accuracy": report["accuracy"], "split": report["split"], "wall_seconds": seconds,
              "seconds_per_epoch": sum(per_epoch) / len(per_epoch), "run": str(out)}
    print(f"{dataset} {model} {epochs} epochs: {report['split']} accuracy {report['accuracy']:.4f}, "
          f"{seconds / 60:.1f} min wall, {result['seconds_per_epoch']:.0f} s/epoch", flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=["cifar10", "imagenette", "imagenette-budget"])
    ap.add_argument("--work", type=Path, required=True, help="folder for the runs (outside the repository)")
    ap.add_argument("--models", nargs="+", default=["resnet20"])
    ap.add_argument("--minutes", type=float, default=8.0, help="time budget a run (cifar10, imagenette-budget)")
    ap.add_argument("--epochs", type=int, help="fixed epochs instead of a budget (imagenette: default 5)")
    ap.add_argument("--batch", type=int, help="batch size instead of the set's (cifar10 128, imagenette 64)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(header(1))
    dataset = "cifar10" if args.task == "cifar10" else "imagenette"
    t0 = time.perf_counter()
    epochs = 5 if args.task == "imagenette" and args.epochs is None else args.epochs
    results = [run(args.work, dataset, m, epochs if args.task != "imagenette-budget" else None, args.minutes,
                   args.batch) for m in args.models]
    out = args.work / f"{args.task}.json"
    old = json.loads(out.read_text()) if out.exists() else []

    def key(r: dict) -> tuple:
        return r["model"], r["epochs"], r.get("batch_size")

    keep = [r for r in old if key(r) not in {key(n) for n in results}]
    out.write_text(json.dumps(keep + results, indent=2))
    print(f"\n| data | model | size | batch | epochs | accuracy ({results[0]['split']}) | s/epoch | wall min |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['dataset']} | {r['model']} | {r['img_size']} | {r['batch_size']} | {r['epochs']} | "
              f"{100 * r['accuracy']:.2f}% | "
              f"{r['seconds_per_epoch']:.0f} | {r['wall_seconds'] / 60:.1f} |")
    print(f"(all runs {(time.perf_counter() - t0) / 60:.1f} min; command: {' '.join(sys.argv)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
