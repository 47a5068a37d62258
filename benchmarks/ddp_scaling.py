"""Training throughput of 1 vs N processes under torchrun, through the CLI, on the CPU cores at hand.

Each configuration trains the same model on the same data with the same *global* batch (per-process batch
x processes), with ``OMP_NUM_THREADS`` (and ``--threads``) set per process:

* ``1 process``: ``python -m resnet_tune train ...`` (no process group, no DDP) with all ``--threads``;
* ``1 process, 1 thread``: the same with one thread: what one core does;
* ``1 process, 1 thread, torchrun``: ``torchrun --nproc-per-node 1`` (a gloo process group and DDP with one
  rank): the cost of the machinery alone, against the line above;
* ``N processes, torchrun``: ``torchrun --nproc-per-node N`` with ``--threads / N`` threads each (gloo, DDP
  averaging the gradients): the same total number of threads as the first line.

Throughput is the ``images_per_s`` column of the run's ``metrics.csv`` (training images of all processes
per second of training time, evaluation excluded) for every epoch after the first, pooled over ``--repeats``
runs of each configuration (run in turn): the median, and the slowest and fastest epoch, which show how much
other jobs on a shared machine disturbed it. Data: a class-balanced subset of ``../shared/data/cifar10/train``
given as a CSV (no copies), or generated 32x32 images where that is absent.

Usage::

    python benchmarks/ddp_scaling.py --work /tmp/ddp-bench --output benchmarks/ddp_results.md
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cifar_subset_csv, cpu_name, read_metrics  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def subset_csv(work: Path, per_class: int, val_per_class: int, seed: int = 0) -> tuple[Path, str]:
    """A CSV of path,label,split: ``per_class`` training and ``val_per_class`` validation images a class."""
    root = (DATA / "cifar10" / "train").resolve()
    path = work / f"cifar10_{per_class}_{val_per_class}.csv"
    if root.is_dir():
        cifar_subset_csv(path, per_class, val_per_class, seed)
        return path, f"CIFAR-10 subset ({per_class} train + {val_per_class} val images a class, 32x32 JPEG)"
    folder = work / "generated"
    if not folder.exists():  # no shared data: coloured noise, 10 classes
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(seed)
        for c in range(10):
            colour = rng.integers(0, 255, 3)
            for split, n in (("train", per_class), ("val", val_per_class)):
                d = folder / split / f"class{c}"
                d.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    arr = np.clip(colour + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                    Image.fromarray(arr).save(d / f"{i:05d}.png")
    return folder, f"generated 32x32 images ({per_class} train + {val_per_class} val a class, 10 classes)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(name: str, nproc: int, torchrun: bool, threads: int, args: argparse.Namespace, data: Path, out: Path
        ) -> dict:
    options = ["--data", str(data), "--model", args.model, "--pretrained", "none", "--epochs", str(args.epochs),
               "--batch-size",
               str(args.global_batch // nproc), "--img-size", "32", "--loader", "memory", "--precision",
               args.precision, "--no-progress", "--threads", str(threads), "--workers", "0", "--output", str(out)]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
               str(free_port()), "-m", "resnet_tune", "train", *options]
    else:
        cmd = [sys.executable, "-m", "resnet_tune", "train", *options]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{log[-3000:]}")
    rows = read_metrics(out)
    rates = [r["images_per_s"] for r in rows[1:]] or [rows[0]["images_per_s"]]
    precision = re.search(r"precision (\w+)", log)
    return {"name": name, "nproc": nproc, "threads": threads, "rates": rates, "img_s": statistics.median(rates),
            "wall": wall,
            "val_acc": rows[-1]["val_acc"], "precision": precision.group(1) if precision else "?"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for the runs (outside the repository)")
    ap.add_argument("--output", type=Path, help="also write the Markdown table here")
    ap.add_argument("--nproc", type=int, default=2, help="processes of the multi-process configuration")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="CPU threads in total")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--global-batch", type=int, default=128)
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--val-per-class", type=int, default=20)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data, data_desc = subset_csv(args.work, args.per_class, args.val_per_class)
    load_before = os.getloadavg()
    t = args.threads
    configs = [("1 process", 1, False, t), ("1 process, 1 thread", 1, False, 1),
               ("1 process, 1 thread, torchrun", 1, True, 1),
               (f"{args.nproc} processes, torchrun", args.nproc, True, max(t // args.nproc, 1))]
    results: dict[str, list[dict]] = {c[0]: [] for c in configs}
    for rep in range(args.repeats):
        for name, nproc, torchrun, threads in configs:
            out = args.work / f"run-{nproc}x{threads}-{'torchrun' if torchrun else 'plain'}-{rep}"
            if out.exists():
                import shutil

                shutil.rmtree(out)
            r = run(name, nproc, torchrun, threads, args, data, out)
            results[name].append(r)
            print(f"{name} (repeat {rep + 1}): epochs 2+ at {', '.join(f'{x:.0f}' for x in r['rates'])} img/s, "
                  f"{r['wall']:.1f} s wall", flush=True)
    load_after = os.getloadavg()

    import torchvision

    pooled = {name: [x for r in rs for x in r["rates"]] for name, rs in results.items()}
    base = statistics.median(pooled[configs[0][0]])
    lines = [
        "# Distributed training throughput: 1 vs several processes under torchrun",
        "",
        f"`python benchmarks/ddp_scaling.py --work {args.work} --nproc {args.nproc} --threads {args.threads} "
        f"--epochs {args.epochs} --global-batch {args.global_batch} --per-class {args.per_class} "
        f"--repeats {args.repeats}`",
        "",
        f"- hardware: {cpu_name()}, {os.cpu_count()} CPU threads visible; no GPU. Shared machine: load average "
        f"{load_before[0]:.1f} before and {load_after[0]:.1f} after the runs (other jobs were using the cores).",
        f"- software: torch {torch.__version__}, torchvision {torchvision.__version__}, python "
        f"{platform.python_version()}, gloo backend.",
        f"- workload: {args.model} on {data_desc}, {args.epochs} epochs, global batch {args.global_batch} "
        f"(per-process batch = global / processes), in-memory loader, precision "
        f"{results[configs[0][0]][0]['precision']}.",
        f"- throughput: training images per second of all processes together (`images_per_s` in metrics.csv) "
        f"in epochs 2-{args.epochs} of {args.repeats} runs each: median (slowest-fastest epoch). Wall: the median "
        "whole command (start-up, data scan and decoding, evaluation, report).",
        "",
        "| configuration | processes x threads | img/s median (range) | median vs 1 process | wall s | val acc |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, nproc, _, threads in configs:
        xs = pooled[name]
        med = statistics.median(xs)
        wall = statistics.median(r["wall"] for r in results[name])
        accs = "/".join(f"{r['val_acc']:.3f}" for r in results[name])
        lines.append(f"| {name} | {nproc} x {threads} | {med:.0f} ({min(xs):.0f}-{max(xs):.0f}) | {med / base:.2f}x | "
                     f"{wall:.0f} | {accs} |")
    lines += ["", "Every epoch (img/s): " + "; ".join(
        f"{name}: " + " | ".join(", ".join(f"{x:.0f}" for x in r["rates"]) for r in results[name])
        for name, *_ in configs) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
