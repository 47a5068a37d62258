"""Parameter groups, optimisers and the learning-rate schedule as a pure function of the step."""

from __future__ import annotations

import math
import torch
from torch import nn


def param_groups(model: nn.Module, lr: float, weight_decay: float, lr_decay: float = 1.0, frozen: int = 0
                 ) -> list[dict]:
    """Groups from input to output with discriminative learning rates and no decay on BN/bias.

    The head gets ``lr``; each earlier stage gets ``lr_decay`` times the next one's (the stem the
    smallest). Parameters with one dimension (BN affine, biases) get no weight decay. The first ``frozen`` blocks
    of the body (frozen for the whole run, :func:`~resnet_tune.engine.finetune.set_frozen_blocks`) are left out.
    """
    if hasattr(model, "body_and_head"):
        body, head = model.body_and_head()
        blocks = [*body, head]
    else:  # any other module: one group
        blocks = [model]
    n = len(blocks)
    groups = []
    seen: set[int] = {id(p) for block in blocks[:frozen] for p in block.parameters()} if frozen else set()
    for i, block in enumerate(blocks):
        if i < frozen:
            continue
        scale = lr_decay ** (n - 1 - i)
        decay, no_decay = [], []
        for p in block.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if p.ndim <= 1 else decay).append(p)
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                groups.append({"params": params, "lr": lr * scale, "base_lr": lr * scale, "weight_decay": wd,
                               "stage": i})
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:
        groups.append({"params": rest, "lr": lr, "base_lr": lr, "weight_decay": weight_decay, "stage": n - 1})
    return groups


def make_optimizer(name: str, groups: list[dict], lr: float, momentum: float = 0.9, nesterov: bool = True,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                               weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def lr_at(step: int, total_steps: int, schedule: str, warmup_steps: int = 0, final_frac: float = 1e-3,
          power: float = 0.9) -> float:
    """Learning-rate multiplier (0..1) at ``step`` of ``total_steps``; a pure function, so resume is exact.

    ``onecycle``: linear warm-up from 4% over the first 25% of steps, then cosine to ``final_frac``
    (Smith & Topin 2018, as PyTorch's OneCycleLR with ``anneal_strategy='cos'``).
    ``cosine``: linear warm-up over ``warmup_steps`` then cosine to ``final_frac``.
    ``poly``: linear warm-up over ``warmup_steps``, then ``(1 - t / T) ** power`` (DeepLab, Chen et al. 2017).
    ``constant``: 1.
    """
    total_steps = max(total_steps, 1)
    t = min(max(step, 0), total_steps)
    if schedule == "constant":
        return 1.0
    if schedule == "onecycle":
        warm = max(int(0.25 * total_steps), 1)
        start = 0.04
        if t < warm:
            return start + (1.0 - start) * t / warm
        p = (t - warm) / max(total_steps - warm, 1)
        return final_frac + (1.0 - final_frac) * 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule in ("cosine", "poly"):
        if warmup_steps > 0 and t < warmup_steps:
            return (t + 1) / (warmup_steps + 1)
        p = (t - warmup_steps) / max(total_steps - warmup_steps, 1)
        if schedule == "poly":
            return max(0.0, 1.0 - p) ** power
        return final_frac + (1.0 - final_frac) * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown schedule {schedule!r}")


def set_lr(optimizer: torch.optim.Optimizer, mult: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * mult


class EMA:
    """Exponential moving average of weights and buffers (BN statistics are copied, not averaged)."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        # Warm-up of the decay (as timm's ModelEmaV2 with warmup): early averages follow the weights.
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                s.copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.updates = state["updates"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
