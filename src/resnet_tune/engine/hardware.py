"""Device, precision and thread choices made from the hardware at hand."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from ..errors import ConfigError


def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 / AMX), where bf16 autocast pays."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover - older builds
        return False


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not valid; use auto, cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto.")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' was asked for but Apple's MPS backend is not available; use --device cpu.")
    return dev


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (``None`` = fp32) and whether a gradient scaler is needed (fp16 only)."""

    amp_dtype: torch.dtype | None
    scaler: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def autocast(self, device: torch.device):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``auto``: bf16 on CPUs with native bf16 and on CUDA GPUs that support it, fp16 (+scaler)
    on older GPUs, fp32 elsewhere."""
    if name == "fp32":
        return Precision(None, False)
    if name == "bf16":
        if device.type == "cpu" and not cpu_supports_bf16():
            # still correct, only slow: emulated bf16 on CPUs without the instructions
            pass
        return Precision(torch.bfloat16, False)
    if name == "fp16":
        if device.type == "cpu":
            raise ConfigError("fp16 autocast is for GPUs; on a CPU use --precision bf16 or fp32.")
        return Precision(torch.float16, device.type == "cuda")
    # auto
    if device.type == "cuda":
        return Precision(torch.bfloat16, False) if torch.cuda.is_bf16_supported() else Precision(torch.float16, True)
    if device.type == "cpu" and cpu_supports_bf16():
        return Precision(torch.bfloat16, False)
    return Precision(None, False)


def default_channels_last(device: torch.device, deterministic: bool = False) -> bool:
    """channels_last pays on CUDA tensor cores and in oneDNN's CPU convolutions at every input size measured
    (benchmarks/RESULTS.md, "Measurements the code cites": channels-last). Not for a deterministic run on a CPU:
    on an AMD EPYC without AVX-512, oneDNN's channels-last training convolutions with 2 threads gave different
    weights from one run to the next (``--deterministic`` notwithstanding), the contiguous layout the same ones."""
    return device.type == "cuda" or (device.type == "cpu" and not deterministic)


# On a CPU, large inference batches run slower per image once their activations outgrow the caches
# (benchmarks/RESULTS.md, "Measurements the code cites": inference chunks). Forward passes without gradients
# therefore take about four 224 x 224 images' worth of pixels at a time (more images when they are smaller).
CPU_CHUNK_PIXELS = 4 * 224 * 224


def inference_chunk(device: torch.device, height: int, width: int) -> int:
    """Images an inference forward pass should take at once on ``device`` (everything on a GPU)."""
    if device.type != "cpu":
        return 1 << 30
    return max(1, round(CPU_CHUNK_PIXELS / (height * width)))


def forward_chunked(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` without gradients, in :func:`inference_chunk`-sized pieces."""
    n = inference_chunk(x.device, x.shape[-2], x.shape[-1])
    if x.shape[0] <= n:
        return model(x)
    return torch.cat([model(c) for c in x.split(n)])


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def default_workers(device: torch.device) -> int:
    n = os.cpu_count() or 1
    # On a CPU the model itself needs the cores; one or two decoders keep up with it.
    return min(8, max(1, n - 1)) if device.type == "cuda" else min(2, max(n - 1, 0))


def seed_everything(seed: int, deterministic: bool = False) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def machine_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s model name, else the platform's), and the GPU's name when there is one:
    recorded with anything measured (a budget plan, a benchmark), since speeds differ between machines."""
    import platform

    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} ({cpu})"
    return cpu
