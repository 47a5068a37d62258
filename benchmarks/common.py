"""Shared helpers for the benchmarks: the machine's measured peak, timing and a header saying what ran where."""

from __future__ import annotations

import csv
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(repeats: int) -> str:
    import torchvision

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()
    return (f"hardware: {dev}, {os.cpu_count()} CPU threads visible, torch threads {torch.get_num_threads()}; "
            f"torch {torch.__version__}, torchvision {torchvision.__version__}, python {platform.python_version()}; "
            f"median of {repeats} timed windows")


def timed(fn: Callable[[], None], repeats: int = 5, warmup: int = 1, sync: Callable[[], None] | None = None
          ) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` windows after ``warmup`` untimed calls."""
    sync = sync or (torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None))
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5, device: str = "cpu") -> float:
    """Measured GFLOP/s of an n x n matmul in ``dtype``: the issue's yardstick for this machine's peak."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sec = timed(lambda: torch.mm(a, b), repeats=repeats)
    return 2 * n**3 / sec / 1e9


def conv_peak(dtype: torch.dtype, repeats: int = 5, device: str = "cpu") -> float:
    """Measured GFLOP/s of one large 3x3 convolution (256 -> 256 channels, 28x28, batch 32, channels_last),
    in ``dtype`` via autocast. On the project's EPYC the fp32 convolution runs at 2.5x the fp32 matmul
    (oneDNN vs the BLAS behind ``torch.mm``), so the matmul alone is no ceiling for fp32 convolutions."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(32, 256, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    dev = torch.device(device)
    amp = dtype != torch.float32

    def run() -> None:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype, enabled=amp):
            conv(x)

    sec = timed(run, repeats=repeats)
    return 2 * 32 * 256 * 256 * 9 * 28 * 28 / sec / 1e9


def measured_peaks() -> dict[str, tuple[float, float]]:
    """(4096 matmul, 3x3 convolution) GFLOP/s for fp32 and bf16 on this CPU, and a line that says so."""
    return {"fp32": (matmul_peak(torch.float32), conv_peak(torch.float32)),
            "bf16": (matmul_peak(torch.bfloat16), conv_peak(torch.bfloat16))}


def peaks_line(peaks: dict[str, tuple[float, float]]) -> str:
    fp32, bf16 = peaks["fp32"], peaks["bf16"]
    return (f"measured peak: 4096 matmul fp32 {fp32[0]:.0f}, bf16 {bf16[0]:.0f} GFLOP/s; 3x3 conv fp32 "
            f"{fp32[1]:.0f}, bf16 {bf16[1]:.0f} GFLOP/s")


def read_metrics(run: Path) -> list[dict[str, float]]:
    """A run folder's ``metrics.csv``, every value a float."""
    with (run / "metrics.csv").open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def cifar_subset_csv(path: Path, per_class: int, val_per_class: int, seed: int = 0) -> Path:
    """A CSV of path,label,split over ``../shared/data/cifar10/train`` (no copies of the images):
    ``per_class`` training and the next ``val_per_class`` validation images a class, drawn with ``seed``.
    Written once; an existing file is reused, so runs that read it stay resumable."""
    return subset_csv(path, DATA / "cifar10" / "train", per_class, val_per_class, seed)


def subset_csv(path: Path, train_dir: Path, per_class: int, val_per_class: int, seed: int = 0,
               test_dir: Path | None = None) -> Path:
    """A CSV of path,label,split over the class folders of ``train_dir`` (no copies of the images): ``per_class``
    training and the next ``val_per_class`` validation images a class, drawn with ``seed``, and every image of
    ``test_dir``'s class folders as ``test`` when it is given. Written once; an existing file is reused, so runs
    that read it stay resumable."""
    if path.exists():
        return path
    root = Path(train_dir).resolve()
    rng = random.Random(seed)
    rows = []
    for cls in sorted(p.name for p in root.iterdir() if p.is_dir()):
        files = sorted(str(p) for p in (root / cls).iterdir())
        rng.shuffle(files)
        rows += [(f, cls, "train") for f in files[:per_class]]
        rows += [(f, cls, "val") for f in files[per_class:per_class + val_per_class]]
        if test_dir is not None:
            rows += [(str(p), cls, "test") for p in sorted((Path(test_dir).resolve() / cls).iterdir())]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    return path


def run_or_resume(out: Path, **options) -> float:
    """Train into ``out`` with the public ``fit`` unless it is finished; resume it if it was interrupted.
    Returns the wall seconds of the whole run (kept in ``out/timing.json`` across resumes)."""
    from resnet_tune.engine.checkpoint import STATE
    from resnet_tune import fit

    timing = out / "timing.json"
    if (out / "eval.json").exists():
        return json.loads(timing.read_text())["seconds"] if timing.exists() else 0.0
    options.setdefault("pretrained", "none")  # the benchmarks train from scratch unless they name weights
    before = json.loads(timing.read_text())["seconds"] if timing.exists() else 0.0
    t0 = time.perf_counter()
    if (out / STATE).exists():
        fit(resume=out, progress=False)
    else:
        fit(output=str(out), progress=False, **options)
    seconds = before + time.perf_counter() - t0
    timing.write_text(json.dumps({"seconds": seconds}))
    return seconds
