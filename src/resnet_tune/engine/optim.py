"""Parameter groups, optimisers and the learning-rate schedule as a pure function of the step."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

from .config import LOOKAHEAD_SCHEDULES
from .stability import BATCHNORMS


def param_groups(model: nn.Module, lr: float, weight_decay: float, lr_decay: float = 1.0, frozen: int = 0,
                 bn_bias_lr_scale: float = 1.0) -> list[dict]:
    """Groups from input to output with discriminative learning rates and no decay on BN/bias.

    The head gets ``lr``; each earlier stage gets ``lr_decay`` times the next one's (the stem the
    smallest). Parameters with one dimension (BN affine, biases) get no weight decay. The first ``frozen`` blocks
    of the body (frozen for the whole run, :func:`~resnet_tune.engine.finetune.set_frozen_blocks`) are left out.
    With ``bn_bias_lr_scale`` other than 1, the BatchNorm shifts (biases) of each block get a group of their own at
    that multiple of the block's rate (airbench's ``bias_scaler``, 64 with fixed BatchNorm scales).
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
        shifts = {id(m.bias) for m in block.modules() if isinstance(m, BATCHNORMS) and m.bias is not None
                  } if bn_bias_lr_scale != 1.0 else set()
        decay, no_decay, bn_bias = [], [], []
        for p in block.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            (bn_bias if id(p) in shifts else no_decay if p.ndim <= 1 else decay).append(p)
        # the shifts first: a block's last group is at its rate (lr_find and the history read the head's there)
        for params, wd, mult in ((bn_bias, 0.0, bn_bias_lr_scale), (decay, weight_decay, 1.0), (no_decay, 0.0, 1.0)):
            if params:
                groups.append({"params": params, "lr": lr * scale * mult, "base_lr": lr * scale * mult,
                               "weight_decay": wd, "stage": i})
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:
        groups.append({"params": rest, "lr": lr, "base_lr": lr, "weight_decay": weight_decay, "stage": n - 1})
    return groups


def make_optimizer(name: str, groups: list[dict], lr: float, momentum: float = 0.9, nesterov: bool = True,
                   weight_decay: float = 0.0, beta2: float = 0.999, eps: float | None = None
                   ) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``groups``. SGD and AdamW take torch's fused kernels where the parameters' device
    has them (CPU and CUDA), else the multi-tensor (foreach) path: the same update, without one Python loop over the
    tensors per step (torch defaults to that loop on a CPU; on a small network it costs several percent of a step).

    The Adam family (``adamw``, ``radam``, ``lamb``) takes ``momentum`` as its beta1 and ``beta2`` as the decay of
    its squared-gradient average (fastai's ``mom`` and ``sqr_mom``); ``eps`` defaults to torch's (1e-8; LAMB's
    1e-6). ``radam`` is RAdam (Liu et al. 2020) with decoupled weight decay, as AdamW's: with Lookahead, fastai's
    ``ranger``, the Imagenette leaderboard's optimiser."""
    if name == "sgd":
        return _fastest(torch.optim.SGD, groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                        weight_decay=weight_decay)
    adam = {"lr": lr, "betas": (momentum, beta2), "weight_decay": weight_decay}
    if eps is not None:
        adam["eps"] = eps
    if name == "adamw":
        return _fastest(torch.optim.AdamW, groups, **adam)
    if name == "radam":  # no fused kernel in torch
        return torch.optim.RAdam(groups, decoupled_weight_decay=True, foreach=True, **adam)
    if name == "lamb":
        return Lamb(groups, **adam)
    raise ValueError(f"unknown optimizer {name!r}")


def _fastest(cls: type, groups: list[dict], **kw: Any) -> torch.optim.Optimizer:
    """``cls`` with torch's fused kernels where the parameters' device and dtype have them, else with the foreach
    path. Which devices have them depends on the torch version (CPU since about 2.4; torch checks only at the first
    step), so one step on a one-element parameter of each device type decides (:func:`_has_fused`)."""
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_floating_point() and _has_fused(cls, p.device.type) for p in params)
    return cls(groups, **({"fused": True} if fused else {"foreach": True}), **kw)


@functools.cache
def _has_fused(cls: type, device_type: str) -> bool:
    try:
        p = torch.nn.Parameter(torch.zeros(1, device=device_type))
        p.grad = torch.zeros(1, device=device_type)
        cls([p], lr=0.1, fused=True).step()
        return True
    except (RuntimeError, ValueError, TypeError, NotImplementedError):
        return False


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning"): Adam's bias-corrected moments, the
    weight decay added to the update, and each tensor's step rescaled by the trust ratio ``||w|| / ||update||``, so
    every layer moves by about ``lr`` of its own norm whatever its gradients' scale. Tensors without weight decay
    (BatchNorm, biases: :func:`param_groups`) take the plain Adam step, as in NVIDIA's and timm's LAMB
    (timm's ``Lamb`` with ``max_grad_norm=None``: the trainer's ``--grad-clip`` clips instead)."""

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01) -> None:
        if not lr >= 0 or not eps >= 0 or not weight_decay >= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Lamb: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2 ** t)).add_(group["eps"])
                update = (m / (1 - beta1 ** t)).div_(denom)
                if group["weight_decay"] != 0:
                    update.add_(p, alpha=group["weight_decay"])
                    w_norm, u_norm = p.norm(), update.norm()
                    trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                    update.mul_(trust)
                p.add_(update, alpha=-group["lr"])
        return loss


def lr_at(step: int, total_steps: int, schedule: str, warmup_steps: int = 0, final_frac: float = 1e-3,
          power: float = 0.9, flat_frac: float = 0.75) -> float:
    """Learning-rate multiplier (0..1) at ``step`` of ``total_steps``; a pure function, so resume is exact.

    ``onecycle``: linear warm-up from 4% over the first 25% of steps, then cosine to ``final_frac``
    (Smith & Topin 2018, as PyTorch's OneCycleLR with ``anneal_strategy='cos'``).
    ``cosine``: linear warm-up over ``warmup_steps`` then cosine to ``final_frac``.
    ``poly``: linear warm-up over ``warmup_steps``, then ``(1 - t / T) ** power`` (DeepLab, Chen et al. 2017).
    ``flat_cos``: linear warm-up over ``warmup_steps``, flat at the peak until ``flat_frac`` of the steps, then
    cosine to ``final_frac`` (fastai's ``fit_flat_cos``, whose ``pct_start`` is 0.75; the Imagenette leaderboard's
    recipe).
    ``triangle``: airbench94's: linear from 0.2 to 1 over the first 23% of steps, then linear down to 0.07.
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
    if schedule == "triangle":
        warm = int(0.23 * total_steps)
        if t < warm:
            return 0.2 + 0.8 * t / warm
        return 1.0 - 0.93 * (t - warm) / max(total_steps - warm, 1)
    if schedule in ("cosine", "flat_cos", "poly"):
        if warmup_steps > 0 and t < warmup_steps:
            return (t + 1) / (warmup_steps + 1)
        flat = max(int(flat_frac * total_steps), warmup_steps) if schedule == "flat_cos" else warmup_steps
        if t < flat:
            return 1.0
        p = (t - flat) / max(total_steps - flat, 1)
        if schedule == "poly":
            return max(0.0, 1.0 - p) ** power
        return final_frac + (1.0 - final_frac) * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown schedule {schedule!r}")


def scale_at(epoch: int, epochs: int, start: float, ramp: float = 0.75) -> float:
    """Progressive resizing: the image-size factor of ``epoch`` (0-based) of ``epochs``: ``start`` at the first,
    rising linearly to 1 at ``ramp`` of the epochs, 1 from there (FFCV's linear resolution ramp); a pure function,
    so resume is exact."""
    end = max(round(ramp * epochs), 1)
    return 1.0 if start >= 1.0 or epoch >= end else start + (1.0 - start) * epoch / end


def scaled_size(size: int, scale: float, multiple: int = 8) -> int:
    """``size * scale`` rounded to a multiple of ``multiple`` pixels, at least ``multiple`` and at most ``size``."""
    return size if scale >= 1.0 else min(size, max(multiple, round(size * scale / multiple) * multiple))


def set_lr(optimizer: torch.optim.Optimizer, mult: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * mult


class Lookahead:
    """Lookahead (Zhang et al. 2019, "Lookahead Optimizer: k steps forward, 1 step back"): every ``k`` optimiser
    steps the slow copy of the weights moves ``alpha`` of the way to the fast weights, and the fast weights restart
    from it. Applied after the inner optimiser's step (any optimiser); its state is saved for exact resume.

    ``schedule="airbench"`` is airbench's lookahead-EMA (Jordan 2024): ``alpha`` falls from 1 at the start (the slow
    copy simply follows) to ``1 - 0.95^k`` at the end as ``1 - 0.95^k (t/T)^3`` of the way through the ``T`` steps,
    the BatchNorm statistics (floating-point buffers) are averaged with the weights, and :meth:`finish` leaves the
    model on the slow copy at the last step."""

    def __init__(self, model: nn.Module, k: int = 5, alpha: float = 0.5, schedule: str = "constant") -> None:
        if schedule not in LOOKAHEAD_SCHEDULES:
            raise ValueError(f"lookahead schedule {schedule!r}: choose one of {', '.join(LOOKAHEAD_SCHEDULES)}")
        self.k, self.alpha, self.steps, self.schedule = k, alpha, 0, schedule
        self.slow = {n: t.detach().clone() for n, t in self._tracked(model)}

    def _tracked(self, model: nn.Module) -> list[tuple[str, torch.Tensor]]:
        if self.schedule == "constant":
            return list(model.named_parameters())
        return [(n, t) for n, t in model.state_dict(keep_vars=True).items() if t.dtype.is_floating_point]

    def alpha_at(self, progress: float) -> float:
        """How far the slow copy moves towards the fast weights at a sync ``progress`` (0-1) through the run."""
        if self.schedule == "constant":
            return self.alpha
        return 1.0 - 0.95 ** self.k * min(max(progress, 0.0), 1.0) ** 3

    @torch.no_grad()
    def update(self, model: nn.Module, progress: float = 0.0) -> None:
        """After an optimiser step; ``progress``: the share of the run's steps done (the airbench schedule's t/T)."""
        self.steps += 1
        if self.steps % self.k:
            return
        alpha = self.alpha_at(progress)
        for n, t in self._tracked(model):
            slow = self.slow[n]
            slow.lerp_(t.detach(), alpha)
            t.copy_(slow)

    @torch.no_grad()
    def finish(self, model: nn.Module) -> None:
        """The last step of the run: with the airbench schedule the model ends on the slow copy (the steps since the
        last sync are dropped, as airbench's final update with decay 1); the constant schedule keeps the fast
        weights."""
        if self.schedule == "constant":
            return
        for n, t in self._tracked(model):
            t.copy_(self.slow[n])

    def state_dict(self) -> dict:
        return {"k": self.k, "alpha": self.alpha, "steps": self.steps, "schedule": self.schedule, "slow": self.slow}

    def load_state_dict(self, state: dict) -> None:
        self.k, self.alpha, self.steps = int(state["k"]), float(state["alpha"]), int(state["steps"])
        if state.get("schedule", "constant") != self.schedule:
            raise ValueError(f"a lookahead state of schedule {state.get('schedule', 'constant')!r} cannot resume "
                             f"one of {self.schedule!r}")
        for n, v in state["slow"].items():
            self.slow[n].copy_(v)


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
