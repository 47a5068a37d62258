"""Fine-tuning strategies: which parts of a model train when, for any model with ``body_and_head()``.

``scratch`` and ``full`` train everything; ``linear_probe`` trains only the head on a frozen body;
``freeze_unfreeze`` trains the head alone for ``freeze_epochs`` epochs, then everything with discriminative
learning rates (:func:`resnet_tune.engine.optim.param_groups`); ``auto`` is ``freeze_unfreeze`` with pretrained
weights and ``scratch`` without.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .config import has_weights

__all__ = ["frozen_epochs", "resolve_strategy", "set_body_frozen", "train_mode"]


def resolve_strategy(cfg: Any) -> str:
    """The strategy ``cfg.strategy`` names, with ``auto`` resolved from ``cfg.pretrained``."""
    if cfg.strategy != "auto":
        return cfg.strategy
    return "freeze_unfreeze" if has_weights(cfg.pretrained) else "scratch"


def frozen_epochs(strategy: str, cfg: Any) -> int:
    """How many epochs (from the first) train with a frozen body."""
    if strategy == "linear_probe":
        return cfg.epochs
    if strategy == "freeze_unfreeze":
        return min(cfg.freeze_epochs, cfg.epochs)
    return 0


def set_body_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze or unfreeze everything but the head; frozen BatchNorm layers keep their statistics."""
    body, head = model.body_and_head()
    for block in body:
        for p in block.parameters():
            p.requires_grad_(not frozen)
    for p in head.parameters():
        p.requires_grad_(True)
    model._body_frozen = frozen  # type: ignore[attr-defined]


def train_mode(model: nn.Module) -> None:
    """``model.train()``, except that a frozen body stays in eval mode: its BatchNorm layers keep their
    statistics and stochastic depth is off, so its features are a fixed function of the image (what lets the
    trainer cache them, :mod:`.features`)."""
    model.train()
    if getattr(model, "_body_frozen", False):
        body, _ = model.body_and_head()
        for block in body:
            block.eval()
