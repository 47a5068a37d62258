"""Mish that trains at SiLU's cost on a CPU.

ATen's CPU Mish evaluates ``x * tanh(softplus(x))`` with three transcendental functions forward and more backward:
in bf16 on a 2-core AVX-512 CPU its forward + backward costs 5.5x ReLU's and 3.9x SiLU's
(``benchmarks/activations.py``), which made a Mish network's training epoch 1.25x a SiLU one's. With
``e = exp(x)`` and ``n = e (e + 2)`` the same function is ``x n / (n + 2)`` and its derivative
``n / (n + 2) + 4 x e (e + 1) / (n + 2)^2``: one exponential each way. :class:`Mish` runs those two formulas
as kernels compiled by ``torch.compile`` (computed in float32 whatever the tensor's type) when it trains on a CPU,
and ATen's ``F.mish`` everywhere else: on GPUs, without gradients unless training in the same process built the
kernels (evaluation, prediction, export, tracing), inside a compiled model (Inductor fuses it there), or where
``torch.compile`` does not work (no C++ compiler: one warning, then ATen's kernel). Same values as ``F.mish`` to
float rounding; no parameters, so state dicts and ``isinstance(m, nn.Mish)`` are unchanged.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: above this the exponential would overflow float32's square; Mish(x) = x there to float precision
_LINEAR_ABOVE = 20.0


def mish_forward(x: Tensor) -> Tensor:
    """Mish from one exponential: ``x n / (n + 2)`` with ``n = e^x (e^x + 2)``, computed in float32."""
    xf = x.float()
    e = torch.exp(xf.clamp(max=_LINEAR_ABOVE))
    n = e * (e + 2.0)
    return (xf * n / (n + 2.0)).to(x.dtype)


def mish_backward(x: Tensor, grad: Tensor) -> Tensor:
    """``grad`` times Mish's derivative at ``x``: ``n / (n + 2) + 4 x e (e + 1) / (n + 2)^2``, computed in float32."""
    xf = x.float()
    e = torch.exp(xf.clamp(max=_LINEAR_ABOVE))
    n = e * (e + 2.0)
    m = n + 2.0
    d = torch.where(xf > _LINEAR_ABOVE, torch.ones_like(xf), n / m + 4.0 * xf * e * (e + 1.0) / (m * m))
    return (grad.float() * d).to(grad.dtype)


_kernels: dict[Any, Any] = {}  # "fwd"/"bwd": the compiled kernels; ("checked", dtype, layout): tried; "failed": why


def _give_up(err: Exception) -> None:
    _kernels["failed"] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
    warnings.warn(f"Mish trains with ATen's slower kernel: torch.compile could not build the fast one "
                  f"({_kernels['failed']}).", RuntimeWarning, stacklevel=4)


class _CompiledMish(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return _kernels["fwd"](x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return _kernels["bwd"](x, grad)


def _key(x: Tensor) -> tuple[str, torch.dtype, bool]:
    return ("checked", x.dtype, x.is_contiguous(memory_format=torch.channels_last))


def _built_for(x: Tensor) -> bool:
    """Whether training in this process already built and tried the kernels on ``x``'s type and layout."""
    return "failed" not in _kernels and _key(x) in _kernels


def _fast_path_works(x: Tensor) -> bool:
    """Build (once) and try both kernels on ``x``'s type and layout; False for good if torch.compile fails."""
    if _built_for(x):
        return True
    if "failed" in _kernels:
        return False
    # the C++ toolchain's import may log that no CUDA runtime was found: irrelevant to a CPU kernel, so not shown
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_log.level
    cpp_log.setLevel(logging.ERROR)
    try:
        if "fwd" not in _kernels:
            _kernels["fwd"] = torch.compile(mish_forward, dynamic=True)
            _kernels["bwd"] = torch.compile(mish_backward, dynamic=True)
        with torch.no_grad():
            probe = x.detach()
            _kernels["bwd"](probe, _kernels["fwd"](probe))
    except Exception as err:  # noqa: BLE001 - any compiler failure means: use ATen's kernel
        _give_up(err)
        return False
    finally:
        cpp_log.setLevel(level)
    _kernels[_key(x)] = True
    return True


class Mish(nn.Mish):
    """``nn.Mish`` whose training on a CPU runs the one-exponential kernels (module docstring). Without gradients
    the forward kernel runs only where training in this process built it for the tensor's type and layout (the
    validation passes of a run: 1.15x faster there); evaluation alone never waits for a compiler."""

    def forward(self, x: Tensor) -> Tensor:
        # plain CPU tensors only: tracing for export (FakeTensors, proxies, TorchScript) gets ATen's operator
        if (x.device.type == "cpu" and x.dim() > 0 and type(x) is Tensor and not torch.jit.is_tracing()
                and not torch.compiler.is_compiling()):
            if x.requires_grad and torch.is_grad_enabled():
                if _fast_path_works(x):
                    return _CompiledMish.apply(x)
            elif _built_for(x):
                return _kernels["fwd"](x)
        return F.mish(x, inplace=self.inplace)
