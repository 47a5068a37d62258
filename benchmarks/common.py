"""Shared helpers for the benchmarks: the machine's measured peak, timing and a header saying what ran where."""

from __future__ import annotations

import os
import platform
import statistics
import time
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
    """Measured GFLOP/s of an n x n matmul in ``dtype``: this machine's practical peak."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sec = timed(lambda: torch.mm(a, b), repeats=repeats)
    return 2 * n**3 / sec / 1e9
