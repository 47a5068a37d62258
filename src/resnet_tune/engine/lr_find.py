"""The learning-rate range test (Smith 2017) on the user's data, through the trainer's own set-up."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .task import Task

__all__ = ["lr_find"]


def lr_find(task: type[Task], cfg: RunConfig, *, start_lr: float = 1e-6, end_lr: float = 10.0, steps: int = 100,
            output: str | Path | None = None) -> dict[str, Any]:
    """The learning-rate range test (Smith 2017): raise the lr exponentially over ``steps`` batches,
    record the loss, stop when it explodes; suggest the lr at the steepest descent.

    Runs the task's own set-up and loss (:class:`~.trainer.Trainer`), and leaves no trace on the model the user
    will train (it works on a fresh one).
    """
    from ..eval import plot_lr_find, suggest_lr
    from .finetune import train_mode
    from .trainer import Trainer

    trainer = Trainer(task, cfg.replace(epochs=1, budget=None), quiet=True)
    s = trainer.prepare()
    model, data, device, precision, optimizer = s.model, s.data, s.device, s.precision, s.optimizer
    train_mode(model)
    g = torch.Generator().manual_seed(cfg.seed)
    lrs, losses = [], []
    best = math.inf
    it = iter(())
    epoch = 0
    for i in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            data.train.set_epoch(epoch)
            epoch += 1
            it = iter(data.train)
            x, y = next(it)
        lr = start_lr * (end_lr / start_lr) ** (i / max(steps - 1, 1))
        for group in optimizer.param_groups:
            group["lr"] = lr * group["base_lr"] / optimizer.param_groups[-1]["base_lr"]
        x, y = trainer.task.to_device(x, y, device, s.channels_last)
        with precision.autocast(device):
            loss, _ = trainer.task.train_loss(model, x, y, s.criterion, g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        v = float(loss.item())
        lrs.append(lr)
        losses.append(v)
        if not math.isfinite(v) or v > 4 * best:
            break
        best = min(best, v)
    suggestion = suggest_lr(lrs, losses)
    result = {"lrs": lrs, "losses": losses, "suggestion": suggestion}
    if output is not None:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        result["plot"] = str(plot_lr_find(lrs, losses, suggestion, out / "lr_find.png"))
        (out / "lr_find.json").write_text(json.dumps(result, indent=2))
    return result
