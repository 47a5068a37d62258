"""``--budget 10m``: the trainer plans the run that fits the time the user has.

The budget covers the whole process, from the command's start to the final checkpoint and report: the data scan
and decoding, any learning-rate range test, every epoch's training, validation and checkpoints, and the final
evaluation. The trainer measures what it spends (:class:`Clock`): the set-up already spent, the first training
steps on the user's data with the chosen model, size and precision, then each epoch's training, validation and
saving, and plans the optimiser steps (:func:`plan_steps`: whole epochs and a shorter last one) so that the run
ends inside the budget. It re-plans at every epoch end when the speed drifts (the schedule keeps its shape: the
learning rate still ends at its final value), stops an epoch early when even that is not enough, and always ends
with a validated, saved best checkpoint.

Everything here is a pure function of the measured times, so tests drive it with an injected clock.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["TIME_CANDIDATE_SECONDS", "TIME_CANDIDATE_SHARE", "BudgetState", "BudgetView", "Candidate", "Clock",
           "Plan", "choose_candidate", "format_duration", "image_seconds", "minimum_budget", "model_gflops",
           "parse_duration", "plan_epochs", "plan_steps", "reserve_seconds"]

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$",
                       re.IGNORECASE)


def parse_duration(text: Any) -> float:
    """Seconds in ``10m``, ``90s``, ``1h30m``, ``1.5h`` or a plain number of seconds; a ConfigError otherwise."""
    if isinstance(text, bool):
        raise ConfigError(f"budget must be a duration such as 10m, 90s or 1h30m, got {text!r}.")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = str(text).strip()
        try:
            seconds = float(s)
        except ValueError:
            m = _DURATION.match(s)
            if not s or m is None or not any(m.groups()):
                raise ConfigError(f"budget must be a duration such as 10m, 90s or 1h30m, got {text!r}.") from None
            seconds = sum(float(v) * u for v, u in zip(m.groups(), _UNITS.values()) if v)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"budget must be a positive duration such as 10m, 90s or 1h30m, got {text!r}.")
    return seconds


def format_duration(seconds: float) -> str:
    """``10m``, ``1m30s``, ``45s``, ``1h05m`` (rounded to the second)."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m" if not sec else f"{h}h{m:02d}m{sec:02d}s"
    if m:
        return f"{m}m" if not sec else f"{m}m{sec:02d}s"
    return f"{sec}s"


class Clock:
    """The run's clock: :meth:`now` in seconds (monotonic). The trainer reports what it has just done through
    :meth:`event` (``step``, ``eval`` (the whole network on the validation set), ``eval_features`` (the head on
    cached features), ``save``, ``probe`` (a timed step of a candidate model), ``features`` and ``features_val``
    (building the feature cache), ``final_eval`` (the best checkpoint on the reported split)); the real clock
    ignores it, a test clock advances by an injected cost per event, so a planned run can be tested without waiting
    and without wall-clock thresholds."""

    def now(self) -> float:
        return time.monotonic()

    def event(self, kind: str) -> None:  # noqa: ARG002 - a hook for test clocks
        return None


@dataclass
class Plan:
    """One plan of a budgeted run, as printed and recorded."""

    epochs: int  # planned epochs in all (done + to come)
    steps: int  # optimiser steps in all (the schedule's length)
    seconds_per_step: float
    seconds_per_eval: float  # a validation pass (with precise BN when it runs) plus a save
    spent: float  # seconds of the budget spent when the plan was made
    expected: float  # the run's expected total seconds
    budget: float
    at_epoch: int  # epochs done when it was made
    why: str = "first plan"
    machine: str = ""

    def describe(self) -> str:
        return (f"{self.epochs} epoch(s) ({self.steps} steps at {self.seconds_per_step:.3g} s a step, "
                f"{self.seconds_per_eval:.3g} s a validation and save) expected to take "
                f"{format_duration(self.expected)} of the {format_duration(self.budget)} budget "
                f"({format_duration(self.spent)} spent; {self.why})")


@dataclass
class BudgetState:
    """What a budgeted run keeps across epochs and resumes: the seconds spent in earlier sessions and the plans."""

    budget: float
    spent_before: float = 0.0  # seconds spent by earlier sessions of a resumed run
    plans: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, budget: float) -> "BudgetState":
        if not d:
            return cls(budget)
        return cls(budget, float(d.get("spent_before", 0.0)), list(d.get("plans", [])))


def reserve_seconds(budget: float, final_eval: float) -> float:
    """Seconds kept back for the end: the final evaluation (``final_eval``: 0 when the best checkpoint's own
    validation stands), the report and plots (5 s), and 2% of the budget for noise."""
    return final_eval + 5.0 + 0.02 * budget


def plan_steps(budget: float, spent: float, done_epochs: int, steps_per_epoch: int, seconds_per_step: float,
               seconds_per_eval: float, reserve: float) -> int:
    """The most optimiser steps in all (at least those of the ``done_epochs`` finished epochs) that fit in what is
    left of the budget after ``spent`` seconds and the ``reserve`` for the end: whole epochs of ``steps_per_epoch``
    steps and a validation and save each, then a last, shorter epoch with what remains (at least a quarter of an
    epoch, else none), so that the run fills its budget rather than stopping up to an epoch early."""
    step, epoch = max(seconds_per_step, 1e-9), steps_per_epoch * seconds_per_step + seconds_per_eval
    left = budget - spent - reserve
    full = max(0, int(left // max(epoch, 1e-9)))
    extra = int(max(0.0, left - full * epoch - seconds_per_eval) // step)
    extra = min(extra, steps_per_epoch - 1) if extra >= max(1, steps_per_epoch // 4) else 0
    return (done_epochs + full) * steps_per_epoch + extra


def plan_epochs(budget: float, spent: float, done_epochs: int, steps_per_epoch: int, seconds_per_step: float,
                seconds_per_eval: float, reserve: float) -> int:
    """The epochs of :func:`plan_steps`' plan (a shorter last epoch counts as one)."""
    steps = plan_steps(budget, spent, done_epochs, steps_per_epoch, seconds_per_step, seconds_per_eval, reserve)
    return -(-steps // steps_per_epoch)


def minimum_budget(spent: float, steps_per_epoch: int, seconds_per_step: float, seconds_per_eval: float,
                   reserve_fixed: float) -> float:
    """The smallest budget that holds the set-up already spent, one epoch and the end (rounded up to 10 s)."""
    need = (spent + steps_per_epoch * seconds_per_step + seconds_per_eval + reserve_fixed) / 0.98
    return math.ceil(need / 10.0) * 10.0


# ---- choosing the network and input size from the budget (--model auto)


@dataclass(frozen=True)
class Candidate:
    """One network and input size that ``--model auto`` may choose, and the epochs it needs within the budget to
    be preferred over the cheaper candidates before it (0 for the first, the fallback)."""

    model: str
    size: int
    enough: int = 0

    def describe(self) -> str:
        return f"{self.model} at {self.size} px"


@dataclass
class BudgetView:
    """What a task may know of the budget while it reads the data and chooses the model: the seconds left now,
    how to agree on a measured figure across processes (the maximum; every rank must choose the same model),
    and where and how the run computes (to time a few steps)."""

    left: Callable[[], float]
    agree: Callable[[float], float]
    budget: float
    device: torch.device
    precision: Any  # hardware.Precision
    channels_last: bool
    world: int = 1
    clock: Clock = field(default_factory=Clock)  # the run's clock (a test's advances by its own costs)


def model_gflops(model: str, size: int) -> float:
    """Forward GFLOPs of one ``size`` x ``size`` image through the preset ``model`` (counted on the meta device,
    so it costs no memory)."""
    from ..models import model_info

    return model_info(model, input_size=(3, size, size)).gflops


#: ``--model auto`` with ``--budget`` times a candidate network's step too (instead of scaling the first one's by
#: FLOPs) when, by the FLOP estimate, its three timed steps cost less than this share of the time left or less than
#: :data:`TIME_CANDIDATE_SECONDS`
TIME_CANDIDATE_SHARE = 0.01
TIME_CANDIDATE_SECONDS = 2.0


def image_seconds(model: str, size: int, batch: int, view: BudgetView, num_classes: int, steps: int = 2,
                  model_kwargs: dict[str, Any] | None = None) -> float:
    """Measured seconds of one training image (forward, loss and backward; the optimiser's step is small beside
    them) through a fresh ``model`` (with the run's architecture options ``model_kwargs``, e.g. its activation) at
    ``size`` px with the run's device, precision and memory format: one warm-up step, then the mean of ``steps``
    timed ones, agreed across processes. The random state is left as it was, so a run is the same whether it timed
    candidates or not."""
    from ..models import create_model

    with torch.random.fork_rng(devices=[view.device] if view.device.type == "cuda" else []):
        net = create_model(model, num_classes=num_classes, **(model_kwargs or {})).to(view.device).train()
        x = torch.randn(batch, 3, size, size, device=view.device)
        y = torch.randint(0, num_classes, (batch,), device=view.device)
        if view.channels_last:
            net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        loss_fn = torch.nn.CrossEntropyLoss()
        took = 0.0
        for i in range(steps + 1):
            if view.device.type == "cuda":
                torch.cuda.synchronize(view.device)
            t0 = view.clock.now()
            with view.precision.autocast(view.device):
                loss = loss_fn(net(x).float(), y)
            loss.backward()
            if view.device.type == "cuda":
                torch.cuda.synchronize(view.device)
            view.clock.event("probe")
            if i:
                took += view.clock.now() - t0
            net.zero_grad(set_to_none=True)
    return view.agree(took / (steps * batch))


def choose_candidate(candidates: list[Candidate], seconds_per_image: list[float], n_train: int, n_val: int,
                     world: int, left: float, budget: float) -> tuple[int, list[float]]:
    """The index of the candidate to train, and the epochs each could afford: the most expensive candidate whose
    affordable epochs reach its :attr:`Candidate.enough`, else the first (the cheapest). An epoch costs its
    training images at the measured seconds an image and its validation images at a third of that (a forward
    pass), split over ``world`` processes; the budget's reserve for the end (:func:`reserve_seconds`) is kept."""
    usable = max(0.0, left - reserve_seconds(budget, 0.0))
    epochs = [usable / max(1e-9, s * (n_train + n_val / 3.0) / max(world, 1)) for s in seconds_per_image]
    best = 0
    for i, (cand, e) in enumerate(zip(candidates, epochs)):
        if i and e >= cand.enough:
            best = i
    return best, epochs
