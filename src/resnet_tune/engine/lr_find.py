"""The learning-rate range test (Smith 2017) on the user's data, through the trainer's own set-up: the
``lr-find`` command and ``--lr auto``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import RunConfig
from .task import Task

__all__ = ["AUTO_RANGE", "lr_find", "range_test", "write_lr_find"]

#: ``--lr auto``: the range tested before training (shorter than ``lr-find``'s: it is paid on every run)
AUTO_RANGE = {"start_lr": 1e-5, "end_lr": 1.0, "steps": 60}


def range_test(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, loader: Any, criterion: nn.Module,
               device: torch.device, precision: Any, channels_last: bool, seed: int, *, start_lr: float,
               end_lr: float, steps: int) -> tuple[list[float], list[float]]:
    """Train ``model`` for up to ``steps`` batches of ``loader`` while the learning rate of the optimiser's last
    (head) group rises exponentially from ``start_lr`` to ``end_lr`` (earlier groups keep their ratio to it, as
    their ``base_lr`` says); stop when the loss explodes. Returns the learning rates and the raw losses. The model
    and optimiser are changed: pass copies to keep the originals."""
    from .finetune import train_mode

    train_mode(model)
    g = torch.Generator().manual_seed(seed)
    lrs: list[float] = []
    losses: list[float] = []
    best = math.inf
    it: Any = iter(())
    epoch = 0
    head_base = optimizer.param_groups[-1]["base_lr"]
    for i in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            loader.set_epoch(epoch)
            epoch += 1
            it = iter(loader)
            x, y = next(it)
        lr = start_lr * (end_lr / start_lr) ** (i / max(steps - 1, 1))
        for group in optimizer.param_groups:
            group["lr"] = lr * group["base_lr"] / head_base
        x, y = task.to_device(x, y, device, channels_last)
        with precision.autocast(device):
            loss, _ = task.train_loss(model, x, y, criterion, g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        v = float(loss.item())
        lrs.append(lr)
        losses.append(v)
        if not math.isfinite(v) or v > 4 * best:
            break
        best = min(best, v)
    return lrs, losses


def write_lr_find(result: dict[str, Any], out: Path) -> dict[str, Any]:
    """``lr_find.json`` and the plot ``lr_find.png`` of a range test's ``result`` (lrs, losses, suggestion) in
    ``out``; the result with the plot's path."""
    from ..eval import plot_lr_find

    out.mkdir(parents=True, exist_ok=True)
    result = {**result, "plot": str(plot_lr_find(result["lrs"], result["losses"], result["suggestion"],
                                                 out / "lr_find.png"))}
    (out / "lr_find.json").write_text(json.dumps(result, indent=2))
    return result


def lr_find(task: type[Task], cfg: RunConfig, *, start_lr: float = 1e-6, end_lr: float = 10.0, steps: int = 100,
            output: str | Path | None = None) -> dict[str, Any]:
    """The learning-rate range test (Smith 2017): raise the lr exponentially over ``steps`` batches,
    record the loss, stop when it explodes; suggest the lr halfway down the longest valley of the smoothed loss
    (:func:`~resnet_tune.eval.suggest_lr`, ``method="valley"``).

    Runs the task's own set-up and loss (:class:`~.trainer.Trainer`), and leaves no trace on the model the user
    will train (it works on a fresh one).
    """
    from ..eval import suggest_lr
    from .trainer import Trainer

    trainer = Trainer(task, cfg.replace(epochs=1, budget=None, lr=None), quiet=True)
    s = trainer.prepare()
    lrs, losses = range_test(trainer.task, s.model, s.optimizer, s.data.train, s.criterion, s.device, s.precision,
                             s.channels_last, cfg.seed, start_lr=start_lr, end_lr=end_lr, steps=steps)
    result = {"lrs": lrs, "losses": losses, "suggestion": suggest_lr(lrs, losses, method="valley")}
    return write_lr_find(result, Path(output)) if output is not None else result
