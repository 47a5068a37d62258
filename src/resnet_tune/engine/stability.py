"""Keeping training stable when an epoch has few steps (a small photo folder): the batch size and warm-up follow the
data size, BatchNorm statistics are recomputed before validation, and a loss that explodes is caught.

Why: with a few hundred images, batch 64 and one-cycle at peak lr 0.1, an epoch is a handful of steps. The
BatchNorm running averages (momentum 0.1) then describe weights several large steps old, and validation (which
uses them) can read a loss of thousands while the training loss falls; a few too-large steps can also throw the
weights far off. The remedies here are the standard ones: more, smaller steps (the linear scaling rule then lowers
the peak learning rate with the batch, Goyal et al. 2017), a warm-up of a minimum number of steps, "precise BN"
(recomputing the statistics with the current weights, Wu & Johnson 2021), and skipping a step whose loss jumps far
above the recent ones while halving the learning rate.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import nn

__all__ = ["AUTO_BATCH", "LossGuard", "MIN_STEPS", "MIN_WARMUP_STEPS", "PRECISE_BN_BELOW", "auto_batch_size",
           "recalibrate_bn", "use_precise_bn", "warmup_steps"]

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
#: the batch size when the data allows it, and the smallest one the rule goes down to (BatchNorm needs a batch)
AUTO_BATCH = (64, 16)
#: optimiser steps an epoch the batch-size rule aims for
MIN_STEPS = 16
#: the shortest warm-up, in steps, of the schedules with a warm-up (capped at a quarter of the run)
MIN_WARMUP_STEPS = 20
#: by default (``precise_bn`` None) the trainer recomputes BatchNorm statistics when an epoch has fewer steps than this
PRECISE_BN_BELOW = 20


def auto_batch_size(n_train: int, world: int = 1, accum_steps: int = 1) -> int:
    """The per-process batch size when the user gave none: 64, halved (down to 16) while an epoch of ``n_train``
    images would have fewer than :data:`MIN_STEPS` optimiser steps. 1,000 images or more keep 64."""
    batch, smallest = AUTO_BATCH
    while batch > smallest and n_train / (batch * world * accum_steps) < MIN_STEPS:
        batch //= 2
    return batch


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Warm-up steps of the cosine and poly schedules: ``warmup_epochs`` epochs, but at least
    :data:`MIN_WARMUP_STEPS` steps (at most a quarter of the run), so that 0.3 epochs of a four-step epoch do not
    make a one-step warm-up. No warm-up when ``warmup_epochs`` is 0."""
    if warmup_epochs <= 0:
        return 0
    return max(int(warmup_epochs * steps_per_epoch), min(MIN_WARMUP_STEPS, total_steps // 4))


def use_precise_bn(setting: bool | None, steps_per_epoch: int) -> bool:
    """Whether to recompute BatchNorm statistics before each validation (``precise_bn``; None: when an epoch has
    fewer than :data:`PRECISE_BN_BELOW` steps)."""
    return setting if setting is not None else steps_per_epoch < PRECISE_BN_BELOW


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any],
                   max_batches: int = 200) -> int:
    """Recompute the running statistics of every BatchNorm layer that trains as the plain average over
    ``batches`` (up to ``max_batches``), with the current weights; the momentum is restored afterwards. Layers in
    eval mode (a frozen body) are left alone. Returns the number of batches used (0: no BatchNorm to update).

    ``forward(model, batch)`` runs one batch through the model (the caller moves it to the device)."""
    layers = [m for m in model.modules() if isinstance(m, BATCHNORMS)
              and m.training and m.track_running_stats]
    if not layers:
        return 0
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    used = 0
    try:
        for batch in batches:
            if used >= max_batches:
                break
            forward(model, batch)
            used += 1
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum
    return used


class LossGuard:
    """Catches a training loss that explodes before it wrecks the run: a step whose loss is more than
    ``factor`` times the median of the last ``window`` accepted steps (and at least ``margin`` above it) is skipped
    and the learning rate halved for the rest of the run. Its state (the recent losses and the learning-rate
    scale) is saved with the run, so that a resumed run decides exactly as an uninterrupted one.
    """

    def __init__(self, factor: float = 5.0, margin: float = 1.0, window: int = 32, warmup: int = 3) -> None:
        self.factor, self.margin, self.window, self.warmup = factor, margin, window, warmup
        self.recent: list[float] = []
        self.scale = 1.0  # multiplies the schedule's learning rate
        self.skipped = 0

    def reference(self) -> float | None:
        """The median loss of the recent accepted steps, or None before :attr:`warmup` of them."""
        if len(self.recent) < self.warmup:
            return None
        ordered = sorted(self.recent)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])

    def check(self, loss: float) -> bool:
        """Whether the step with this (finite) loss may be taken; a refused step halves :attr:`scale`."""
        ref = self.reference()
        if ref is not None and loss > self.factor * ref and loss > ref + self.margin:
            self.scale *= 0.5
            self.skipped += 1
            return False
        self.recent.append(float(loss))
        del self.recent[:-self.window]
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "scale": self.scale, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if not state:
            return
        self.recent = [float(v) for v in state.get("recent", []) if math.isfinite(float(v))]
        self.scale = float(state.get("scale", 1.0))
        self.skipped = int(state.get("skipped", 0))
