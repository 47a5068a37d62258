"""Fine-tuning strategies: which parts of a model train when, for any model with ``body_and_head()``.

``scratch`` and ``full`` train everything; ``linear_probe`` trains only the head on a frozen body;
``freeze_unfreeze`` trains the head alone for ``freeze_epochs`` epochs, then everything with discriminative
learning rates (:func:`resnet_tune.engine.optim.param_groups`); ``auto`` is the :func:`choose_transfer` choice
(``full``) where the task makes one (classification, multi-label), else ``freeze_unfreeze`` with pretrained weights
(segmentation), and ``scratch`` without.

``freeze_at`` (detectron2's ``MODEL.BACKBONE.FREEZE_AT``, counted over the body's blocks from the input: 1 = the
stem, 2 = the stem and the first stage) keeps the first blocks of a pretrained body frozen for the whole run: they
get no gradient (their backward pass is skipped), no optimiser state, and stay in eval mode (BatchNorm keeps the
pretrained statistics).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from torch import nn

from .config import has_weights
from .stability import BATCHNORMS

__all__ = ["ALL_EPOCHS", "TransferChoice", "TransferFacts", "budget_input_size", "choose_transfer", "frozen_blocks",
           "frozen_epochs", "resolve_freeze_at", "resolve_strategy", "set_body_frozen", "set_frozen_blocks",
           "train_mode", "weights_input_size"]


@dataclass(frozen=True)
class TransferFacts:
    """What a run knows before fine-tuning starts: all that :func:`choose_transfer` may look at."""

    n_train: int  # training images
    n_classes: int
    image_side: float | None  # the median shorter side of the training images (None: not known)
    weights_size: int | None  # the input size the pretrained weights were trained at (None: not recorded)
    budget: bool = False  # the run's length is a wall-clock budget (--budget), not a number of epochs
    img_size: int | None = None  # the input size the user set (--img-size; None: chosen here)


@dataclass(frozen=True)
class TransferChoice:
    """How to fine-tune: the strategy, the body blocks frozen for the whole run, the input size (None: the task's
    default) and why, in a sentence each for the log and the report (``reason``: the size, empty when it is None;
    ``strategy_reason``: the strategy)."""

    strategy: str
    freeze_at: int
    img_size: int | None
    reason: str
    strategy_reason: str = ""


def choose_transfer(facts: TransferFacts) -> TransferChoice:
    """The fine-tuning defaults for a run with pretrained weights, from what it knows (a pure function).

    The input size is the one the weights were trained at: features are tied to the scale of what they saw (on
    the project's transfer suite, ``benchmarks/transfer.py``, that gained 10 points on 32 px CIFAR-10 images and
    tied on the other targets, at 2.5-4x the cost). The strategy is ``full`` with nothing frozen for the whole
    run and the task's default learning rate: on the suite (3 seeds a target, paired by seed, judged on held-out
    images) freeze-then-unfreeze, a linear probe, a frozen stem and first stage (``freeze_at`` 2: faster epochs,
    about a point lower on two targets) and ``--lr auto`` (no gain, a much larger spread) each lost to it or tied.
    Fit leave-one-out, the rule any two targets give (``full``) is the best choice or tied with it on the third,
    so it does not depend on the image or class counts: no measured target set favoured another strategy.

    What does depend on the run is what a frozen stem and first stage cost. At the same number of epochs they cost
    accuracy (above); at the same wall-clock budget their skipped backward pass buys more epochs, and at the
    weights' size, where a budget affords few epochs, that won or tied on every target of the suite (3 seeds a
    target, also leave-one-out). So a run with ``--budget`` at the weights' size keeps them frozen (``freeze_at`` 2)
    and a run with ``--epochs`` trains them.

    A budget also changes the size for images smaller than the weights' size: upscaled to the weights' size they
    cost 2-4x more an epoch than at a size between the two. On the suite, at the same budget, the images' own size
    won on the targets far from the pretraining photos (EuroSAT, the digits: more epochs) and lost clearly on the
    near one (CIFAR-10: the scale the features were learnt at matters), while the size between the two
    (:func:`budget_input_size`) beat the weights' size on all three; leave-one-out, the size any two targets pick
    is that one. So a budgeted run with small images fine-tunes there; no threshold is fitted to the targets. At a
    size below the weights' the budget affords 2-3x the epochs, and the extra ones a frozen stem and first stage
    buy no longer clearly paid: on held-out images (5 seeds a target, paired) freezing was ahead on two targets
    and behind on the third (+1.1, +0.5, -1.0; mean +0.2), each within 1.4 standard errors once the small held-out
    splits' own sampling error is counted, and the test splits had it behind or tied (-1.3, -0.2, -1.2). With no
    measured gain the strategy keeps its own setting: below the weights' size (chosen here or set with
    ``--img-size``) nothing is frozen. Figures: ``benchmarks/RESULTS.md``, "Measurements the code cites",
    *fine-tuning defaults*.
    """
    size, side = facts.weights_size, facts.image_side
    why = "" if size is None else f"at {size} px, the size the weights were trained at"
    if size is not None and side is not None and round(side) != size:
        why += f" (the images are about {round(side)} px)"
    between = budget_input_size(side, size) if facts.budget and size is not None and side is not None else size
    train = facts.img_size
    if train is not None:
        why = f"at {train} px, the size --img-size set"
    elif between != size:
        train = between
        why = (f"at {train} px, between the images' {round(side)} px and the {size} px the weights were trained at "
               "(their geometric mean): with --budget a smaller input buys more epochs")
    else:
        train = size
    if not facts.budget:
        return TransferChoice("full", 0, train, why, STRATEGY_REASON)
    if train is not None and size is not None and train < size:
        return TransferChoice("full", 0, train, why, STRATEGY_REASON + BUDGET_SMALL_REASON)
    return TransferChoice("full", 2, train, why, STRATEGY_REASON + BUDGET_FREEZE_REASON)


def budget_input_size(image_side: float, weights_size: int) -> int:
    """The input side of a budgeted fine-tune of ``image_side`` px images on weights trained at ``weights_size`` px:
    their geometric mean, rounded to a multiple of 32 (a ResNet's total stride), at least 32 and at most the
    weights' size (images at or above it keep the weights' size): 64 for 32 px images on 128 px weights, 96 for
    64 px ones, 96 for 32 px images on 224 px ImageNet weights."""
    if image_side >= weights_size:
        return weights_size
    mid = int(math.sqrt(max(image_side, 1.0) * weights_size) / 32 + 0.5) * 32
    return int(min(weights_size, max(32, mid)))


#: what a run that fine-tunes with the default strategy says about it
STRATEGY_REASON = ("strategy full: every layer trains from the first step (on the project's transfer suite it beat "
                   "freeze-then-unfreeze by 5-6 points of held-out accuracy on all three targets, 3 seeds each; "
                   "--strategy freeze_unfreeze for that)")
#: what a fine-tuning run with ``--budget`` adds about its frozen stem and first stage
BUDGET_FREEZE_REASON = ("; with --budget the stem and first stage stay frozen (--freeze-at 2): skipping their "
                        "backward pass buys more epochs in the same time, which on the suite won or tied on every "
                        "target, 3 seeds each (--freeze-at 0 trains them)")
#: what a fine-tuning run with ``--budget`` at a size below the weights' adds about its stem and first stage
BUDGET_SMALL_REASON = ("; with --budget below the weights' size nothing is frozen: there the budget already affords "
                       "2-3x the epochs, and freezing the stem and first stage for more of them showed no clear gain "
                       "on held-out images, 5 seeds on three targets (--freeze-at 2 freezes them)")


def weights_input_size(meta: dict[str, Any] | None) -> int | None:
    """The input side the weights' metadata records (``input_size``: an int or ``(C, H, W)``), or None."""
    size = (meta or {}).get("input_size")
    if isinstance(size, (list, tuple)) and size:
        size = size[-1]
    return int(size) if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def resolve_strategy(cfg: Any, choice: TransferChoice | None = None) -> str:
    """The strategy ``cfg.strategy`` names, with ``auto`` resolved: the ``choice`` of :func:`choose_transfer`
    when the task made one (classification, multi-label), else freeze-then-unfreeze with weights (segmentation) and
    scratch without."""
    if cfg.strategy != "auto":
        return cfg.strategy
    if not has_weights(cfg.pretrained):
        return "scratch"
    return choice.strategy if choice is not None else "freeze_unfreeze"


def resolve_freeze_at(cfg: Any, strategy: str, model: nn.Module, pretrained: bool,
                      choice: TransferChoice | None = None) -> int:
    """How many body blocks stay frozen for the whole run: ``cfg.freeze_at`` (``None``: the ``choice`` of
    :func:`choose_transfer` when the run uses the strategy it chose, else 0), and 0 from scratch (random weights are
    not worth keeping); more than the body has is an error."""
    from ..errors import ConfigError

    n_body = len(model.body_and_head()[0])
    chosen = choice.freeze_at if choice is not None and strategy == choice.strategy else 0
    want = cfg.freeze_at if cfg.freeze_at is not None else chosen
    if want > n_body:
        raise ConfigError(f"freeze_at={want} is more than the {n_body} blocks of this model's body (stem and "
                          f"stages); use at most {n_body}, or --strategy linear_probe to train only the head.")
    if strategy == "scratch" or not pretrained:
        return 0
    return want


#: :func:`frozen_epochs` of a linear probe: every epoch, however many a ``--budget`` plan later gives the run
ALL_EPOCHS = sys.maxsize


def frozen_epochs(strategy: str, cfg: Any) -> int:
    """How many epochs (from the first) train with a frozen body: all of them for a linear probe (not the epochs
    known now: a budgeted run re-plans its epochs as it goes, and a probe must never unfreeze), the
    ``freeze_epochs`` of freeze-then-unfreeze, none otherwise."""
    if strategy == "linear_probe":
        return ALL_EPOCHS
    if strategy == "freeze_unfreeze":
        return min(cfg.freeze_epochs, cfg.epochs)
    return 0


def set_frozen_blocks(model: nn.Module, n: int) -> None:
    """Freeze the first ``n`` blocks of the body (stem first) and let the rest of the body and the head train."""
    body, head = model.body_and_head()
    for i, block in enumerate(body):
        for p in block.parameters():
            p.requires_grad_(i >= n)
    for p in head.parameters():
        p.requires_grad_(True)
    model._frozen_blocks = n  # type: ignore[attr-defined]


def set_body_frozen(model: nn.Module, frozen: bool, keep: int = 0) -> None:
    """Freeze everything but the head (``frozen``), or only the first ``keep`` body blocks; frozen BatchNorm
    layers keep their statistics (:func:`train_mode`)."""
    set_frozen_blocks(model, len(model.body_and_head()[0]) if frozen else keep)


def frozen_blocks(model: nn.Module) -> int:
    """How many body blocks of ``model`` are frozen now (:func:`set_frozen_blocks`)."""
    return getattr(model, "_frozen_blocks", 0)


def set_bn_stats_frozen(model: nn.Module, frozen: bool) -> None:
    """Keep the running statistics of the BatchNorm layers of the pretrained body as they are (eval mode under
    :func:`train_mode`) while their scale and shift still train: mmdetection's ``norm_eval``, for fine-tuning on a
    target whose batch statistics should not replace the pretrained ones. A new head's BatchNorm layers (a
    segmentation decoder's) were never trained and keep adapting."""
    model._bn_stats_frozen = bool(frozen)  # type: ignore[attr-defined]


def bn_stats_frozen(model: nn.Module) -> bool:
    """Whether :func:`set_bn_stats_frozen` froze the BatchNorm statistics of ``model``."""
    return bool(getattr(model, "_bn_stats_frozen", False))


def train_mode(model: nn.Module) -> None:
    """``model.train()``, except that frozen body blocks stay in eval mode: their BatchNorm layers keep their
    statistics and stochastic depth is off, so their output is a fixed function of the image (what lets the
    trainer cache a frozen body's features, :mod:`.features`); with :func:`set_bn_stats_frozen`, every BatchNorm
    layer of the body stays in eval mode too."""
    model.train()
    n, keep_bn = frozen_blocks(model), bn_stats_frozen(model)
    if n or keep_bn:
        body, _ = model.body_and_head()
        for block in body[:n]:
            block.eval()
        for block in body[n:] if keep_bn else []:  # the frozen blocks are in eval mode already
            for m in block.modules():
                if isinstance(m, BATCHNORMS):
                    m.eval()
