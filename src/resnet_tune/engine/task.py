"""The task interface: what differs between image classification, segmentation and the tasks to come.

The :class:`~resnet_tune.engine.trainer.Trainer` owns everything a training run shares (device and precision,
the always-present gradient scaler, channels-last, freezing and discriminative learning rates, gradient
accumulation, EMA, clipping, torchrun/DDP with rank-0 writes and exact distributed metrics, exact resume, early
stopping, the NaN guard, the frozen-backbone feature cache, the run folder, ``metrics.csv``, TensorBoard and
progress bars). A :class:`Task` owns only what differs: how data is found and batched, the model and its head,
the loss, the metrics and the best-checkpoint criterion, what a checkpoint records, and the report.

Evaluation is split so that several processes compute exactly what one does: :meth:`Task.eval_batch` returns,
per batch, integer ``counts`` (summed over batches and processes: exact in any order, e.g. a confusion matrix)
and a ``part`` (gathered to rank 0 and put back in batch order: per-image scores, per-batch loss sums), and
:meth:`Task.eval_metrics` turns them into the epoch's numbers on rank 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .budget import BudgetView, Candidate
from .config import NO_WEIGHTS, RunConfig, has_weights
from .finetune import TransferChoice
from .hardware import Precision

__all__ = ["EvalBatch", "Evaluation", "Task", "TaskData", "Weights", "no_published_weights", "require_usable"]


def no_published_weights(model_name: str) -> str:
    """:attr:`Task.weights_reason` of a model that trains from scratch because it has no published weights."""
    return f"{model_name} has no published weights"


#: pretrained weights as read: (state dict in our names, what is known about them)
Weights = tuple[dict[str, torch.Tensor], dict[str, Any]]


@dataclass
class TaskData:
    """What a task's :meth:`Task.build_data` found: loaders and what the run records about the data.

    ``train``/``val``/``test`` yield ``(x, y)`` batches and follow the loader protocol of
    :class:`~resnet_tune.data.loaders.MemoryLoader` / :class:`~resnet_tune.data.loaders.EpochLoader`
    (``set_epoch``, ``batch_ids``, ``__len__``; ``view_batches`` for the feature cache).
    """

    classes: list[str]
    train: Any
    val: Any
    test: Any | None
    num_train: int
    description: str
    model_name: str  # the architecture, resolved (a task may choose it from the data)
    preprocessing: dict[str, Any]  # recorded in every checkpoint
    notes: list[str] = field(default_factory=list)  # sentences for the log and the report
    #: the shape of one image's target beyond the batch: () for a class index (long), else float vectors (e.g. a
    #: multi-label task's 0/1 row of length L)
    target_shape: tuple[int, ...] = ()
    scan_summary: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the task's own (splits, scan report, tables, ...)


def require_usable(n_train: int, n_val: int, data: Any, unit: str = "image(s)") -> None:
    """Training needs two usable training items and one validation item: one sentence when the scan left fewer."""
    from ..errors import DataError

    if n_train < 2:
        raise DataError(f"the training split of {data} has {n_train} usable {unit}; training needs at least two (see "
                        "the scan report above for skipped files).")
    if n_val < 1:
        raise DataError(f"the validation split of {data} has no usable {unit}; add some or raise --val-fraction.")


class EvalBatch(NamedTuple):
    """One evaluation batch: integer statistics to sum (exact in any order) and a part to gather in order."""

    counts: dict[str, np.ndarray] | None
    part: Any


@dataclass
class Evaluation:
    """The metrics of one evaluation pass (``val_*`` keys for the epoch row, higher-is-better
    ``Task.best_metric`` among them) and what the report needs (predictions, confusion matrix, ...)."""

    metrics: dict[str, float]
    details: Any = None
    seconds: float = 0.0  # wall-clock time of the pass


class Task:
    """Base class of a task; subclasses set the class attributes and implement the methods that raise."""

    #: the name recorded in checkpoints and run states (``classification``, ``segmentation``, ...)
    name: ClassVar[str]
    #: the task's configuration dataclass (a :class:`RunConfig`)
    config_class: ClassVar[type[RunConfig]]
    #: the first columns of ``metrics.csv`` (other keys of the rows follow, sorted)
    metric_columns: ClassVar[list[str]]
    #: the key of an epoch row that chooses the best checkpoint (higher is better)
    best_metric: ClassVar[str]
    #: whether frozen-backbone epochs may train the head on cached pooled features
    supports_feature_cache: ClassVar[bool] = False
    #: epochs when neither ``epochs`` nor ``budget`` is given
    default_epochs: ClassVar[int] = 15

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.data: TaskData | None = None
        self.device = torch.device("cpu")
        self.precision = Precision(None, False)
        #: the weights :meth:`load_pretrained` read (None: from scratch), and its one warning, if any
        self.pretrained: Weights | None = None
        #: a resumed run: the normalisation it trained with (``mean``, ``std``); its weights come from the saved
        #: state, so :meth:`load_pretrained` does not read (or download) the pretrained weights again
        self.resumed_meta: dict[str, Any] | None = None
        #: whether the run resumes from a saved state (its recorded options stand; set by the trainer)
        self.resuming = False
        self.weights_warning: str | None = None
        #: why these weights (or none), in a few words for the log
        self.weights_reason = ""
        #: what the task chose from the data (batch size, ...), for the log and the report
        self.plan_notes: list[str] = []
        #: --budget: the time left and where the run computes, set by the trainer before :meth:`build_data`
        self.budget_view: BudgetView | None = None
        #: how to fine-tune (:func:`~resnet_tune.engine.finetune.choose_transfer`), when the task chose it from the
        #: data and the weights (None: the engine's defaults)
        self.transfer: TransferChoice | None = None

    def setup(self, data: TaskData, device: torch.device, precision: Precision) -> None:
        """The trainer hands the task the run's data and where and how it computes, once they are known."""
        self.data, self.device, self.precision = data, device, precision

    # ---- set-up --------------------------------------------------------------------------------------------

    def read_weights(self, source: str, model_name: str) -> Weights:
        """Read the weights ``source`` names for the architecture ``model_name`` (our parameter names)."""
        from ..models import get_config
        from ..models.pretrained import resolve_source

        return resolve_source(source, cfg=get_config(model_name), model_name=model_name)

    def load_pretrained(self, model_name: str) -> Weights | None:
        """The weights ``cfg.pretrained`` names for ``model_name`` (state dict, meta), or None; a task's
        :meth:`build_data` calls it once it knows the architecture (a task may choose it from the data).

        ``auto`` takes the architecture's published ImageNet weights (torchvision's, timm's or Keras's, downloaded
        into the usual cache and checked); a model without any trains from scratch, and weights that cannot be
        fetched (offline, a firewall) leave one warning (:attr:`weights_warning`) that names the file, where to put
        it and ``--pretrained none``, and train from scratch. Afterwards ``cfg.pretrained`` holds what was used (a
        source, or ``none``: what ``config.yaml`` records) and :attr:`pretrained` the weights."""
        source = self.cfg.pretrained
        self.weights_warning = None
        if self.resumed_meta is not None and has_weights(source):  # no state dict: the saved state replaces it
            self.weights_reason = f"resumed; it started from {source}"
            self.pretrained = ({}, dict(self.resumed_meta))
            return self.pretrained
        if source == "auto":
            source, weights = self._published_weights(model_name)
            self.weights_reason = (f"{model_name}'s published weights, --pretrained auto" if weights is not None else
                                   "its published weights could not be fetched" if self.weights_warning else
                                   no_published_weights(model_name))
        else:
            weights = None if source in NO_WEIGHTS else self.read_weights(source, model_name)
            self.weights_reason = "--pretrained none" if weights is None else "given by --pretrained"
        if weights is None and self.cfg.strategy in ("linear_probe", "freeze_unfreeze"):
            raise ConfigError(f"strategy {self.cfg.strategy!r} freezes a pretrained backbone, but the run has no "
                              f"pretrained weights ({self.weights_reason}); give --pretrained or use --strategy "
                              "scratch.")
        self.cfg = self.cfg.replace(pretrained=source if weights is not None else "none")
        self.pretrained = weights
        return weights

    def _published_weights(self, model_name: str) -> tuple[str | None, Weights | None]:
        """``pretrained=auto``: ``model_name``'s published weights and their source if they are at hand or can be
        fetched, else Nones (with :attr:`weights_warning` set when they exist but could not be fetched)."""
        from ..models import get_preset
        from ..models.hub import DownloadError
        from ..models.sources import weights_file

        published = get_preset(model_name).default_weights if model_name != "custom" else None
        if not published:
            return None, None
        try:
            return published, self.read_weights(published, model_name)
        except DownloadError as err:
            url, path = weights_file(published)
            where = (f"download {url} into {path.parent}/" if path is not None else
                     f"download {url} and pass --pretrained /path/to/{Path(url).name}")
            reason = err.reason or str(err).split(";")[0]
            self.weights_warning = (
                f"{model_name}'s published weights ({published}) could not be fetched ({reason}), so the run trains "
                f"from scratch; to fine-tune them, {where}, or pass --pretrained none to train from scratch without "
                "this warning.")
            return None, None

    def choose_within_budget(self, candidates: list[Candidate], n_train: int, n_val: int, num_classes: int
                             ) -> Candidate:
        """``--model auto`` with ``--budget``: the candidate (network and input size, cheapest first) that the time
        left affords (:func:`.budget.choose_candidate`). The first candidate's training step is timed on this
        machine (:func:`.budget.image_seconds`, at the run's batch size); other networks are timed as well where their
        three timed steps cost less than :data:`.budget.TIME_CANDIDATE_SECONDS` or
        :data:`.budget.TIME_CANDIDATE_SHARE` of the time left, and the rest's cost follows from the first's in
        proportion to their FLOPs. The choice and why go into :attr:`plan_notes`."""
        from .budget import (TIME_CANDIDATE_SECONDS, TIME_CANDIDATE_SHARE, choose_candidate, format_duration,
                             image_seconds, model_gflops)

        view = self.budget_view
        if view is None or len(candidates) == 1:
            return candidates[0]
        first = candidates[0]
        batch = max(2, min(self.cfg.batch_size or 64, n_train))
        # timed as they will train (the run's architecture options, e.g. its activation)
        s0 = image_seconds(first.model, first.size, batch, view, num_classes,
                           model_kwargs=self.architecture_options(first.model))
        base = model_gflops(first.model, first.size)
        costs, timed = [s0], [True]
        # every process decides alike (timing is a collective, and all must choose the same model): the time left
        # is agreed before it decides anything
        afford = max(TIME_CANDIDATE_SECONDS, TIME_CANDIDATE_SHARE * view.agree(view.left()))
        for c in candidates[1:]:
            estimate = s0 * model_gflops(c.model, c.size) / base
            # other networks are timed too where that is cheap (3 steps): FLOPs mislead across layouts
            # (resnet9_narrow: 3.8x resnet20's FLOPs, 1.4-2.1x its time on the CPUs measured)
            probe = c.model != first.model and 3 * batch * estimate < afford
            costs.append(image_seconds(c.model, c.size, batch, view, num_classes,
                                       model_kwargs=self.architecture_options(c.model)) if probe else estimate)
            timed.append(probe)
        left = view.agree(view.left())
        k, epochs = choose_candidate(candidates, costs, n_train, n_val, view.world, left, view.budget)
        chosen = candidates[k]
        nxt = candidates[k + 1] if k + 1 < len(candidates) else None
        how = "timed here" if timed[k] else f"estimated from its FLOPs and {first.describe()}'s step timed here"
        why = (f"the {format_duration(left)} left of the budget affords about {epochs[k]:.0f} epoch(s) of it "
               f"(its step {how}: {costs[k] * 1e3:.3g} ms an image)")
        if nxt is not None:
            why += (f"; {nxt.describe()} would get about {epochs[k + 1]:.0f}"
                    + ("" if timed[k + 1] else " (its step estimated from its FLOPs)")
                    + f", fewer than the {nxt.enough} it needs to pay off against a cheaper network trained longer")
        self.plan_notes.append(f"--model auto chose {chosen.describe()}: {why}; --model and --img-size override")
        return chosen

    def resolve_batch_size(self, n_train: int, world: int) -> int:
        """``cfg.batch_size``, chosen from the training-set size when it is None (:func:`.stability.auto_batch_size`)
        and written into ``cfg``; a task's :meth:`build_data` calls it once it knows the image count."""
        from .stability import AUTO_BATCH, auto_batch_size

        cfg = self.cfg
        if cfg.batch_size is not None:
            return cfg.batch_size
        batch = auto_batch_size(n_train, world, cfg.accum_steps)
        self.cfg = cfg.replace(batch_size=batch)
        if batch < AUTO_BATCH[0]:
            steps = max(1, n_train // (batch * world * cfg.accum_steps))
            self.plan_notes.append(f"batch size {batch} (not {AUTO_BATCH[0]}): {n_train} training images make "
                                   f"{steps} steps an epoch at this size; --batch-size overrides")
        return batch

    def build_data(self, device: torch.device, channels_last: bool, rank: int, world: int) -> TaskData:
        """The run's data; calls :meth:`load_pretrained` once the architecture is known (so that the
        normalisation can follow the weights)."""
        raise NotImplementedError

    def build_model(self, data: TaskData, pretrained: tuple[dict[str, torch.Tensor], dict[str, Any]] | None
                    ) -> tuple[nn.Module, str]:
        """The model (with ``body_and_head()``) and one sentence describing it for the log."""
        raise NotImplementedError

    def architecture_options(self, model_name: str) -> dict[str, Any]:
        """The :func:`~resnet_tune.models.create_model` options the run builds ``model_name`` with (e.g. its
        activation); none by default. :meth:`choose_within_budget` times candidates with them, as they will train."""
        return {}

    #: SGD's default peak learning rate: (from scratch or for a linear probe, fine-tuning the whole network, the
    #: global batch these are for); it scales linearly with the global batch
    sgd_lr: ClassVar[tuple[float, float, int]]
    #: AdamW's (and RAdam's) default peak learning rate: (from scratch or for a linear probe, fine-tuning the whole
    #: network)
    adamw_lr: ClassVar[tuple[float, float]] = (1e-3, 3e-4)
    #: LAMB's: each layer moves by about this fraction of its norm a step, whatever the batch
    lamb_lr: ClassVar[tuple[float, float]] = (5e-3, 1e-3)

    def choose_epochs(self, data: TaskData) -> tuple[int, str | None]:
        """The epochs of a run given neither ``epochs`` nor ``budget`` (after :meth:`build_data` and the weights),
        and the sentence that says why when they are not :attr:`default_epochs`."""
        return self.default_epochs, None

    def default_lr(self, strategy: str, world: int) -> float:
        """The peak learning rate when ``cfg.lr`` is not given (:attr:`sgd_lr`, :attr:`adamw_lr`, :attr:`lamb_lr`),
        for the strategy and the global batch (batch_size per process x processes x accum_steps)."""
        cfg = self.cfg
        head_or_scratch = strategy in ("scratch", "linear_probe")
        if cfg.optimizer in ("adamw", "radam", "lamb"):
            return (self.lamb_lr if cfg.optimizer == "lamb" else self.adamw_lr)[0 if head_or_scratch else 1]
        scratch, finetune, batch = self.sgd_lr
        return (scratch if head_or_scratch else finetune) * cfg.batch_size * world * cfg.accum_steps / batch

    def criterion(self, data: TaskData, device: torch.device) -> nn.Module:
        raise NotImplementedError

    def run_name(self, data: TaskData) -> str:
        """The stem of the default run folder ``runs/<stem>-<date>-<time>``."""
        return data.model_name

    def resolved_config(self, data: TaskData) -> RunConfig:
        """The configuration with what "auto" chose written in (saved in config.yaml; a resume uses it)."""
        return self.cfg.replace(model=data.model_name)

    def head(self, model: nn.Module) -> nn.Module:
        """The module that maps pooled backbone features to the output (for the feature cache)."""
        raise NotImplementedError

    def feature_cache_refusal(self) -> str | None:
        """Why the frozen-body epochs of this configuration cannot train on cached features, or None."""
        return None

    # ---- steps ---------------------------------------------------------------------------------------------

    def to_device(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch from the loader, on the device and ready for the model."""
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def resize_batch(self, x: torch.Tensor, y: torch.Tensor, size: tuple[int, int]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch at ``size`` (progressive resizing): the images resampled (bilinear, antialiased, in
        their memory format); image-level targets unchanged. Tasks with dense targets resize those too."""
        small = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        if x.is_contiguous(memory_format=torch.channels_last):
            small = small.contiguous(memory_format=torch.channels_last)
        return small, y

    def train_loss(self, fwd: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and loss of one training batch (called under autocast); returns (loss, output)."""
        raise NotImplementedError

    def train_counts(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Statistics of a training batch summed over the epoch (e.g. correct predictions); empty for none."""
        return {}

    def train_metrics(self, loss: float, counts: dict[str, float], seen: int) -> dict[str, float]:
        """The epoch row's training columns from the mean loss and the summed counts."""
        return {"train_loss": loss}

    def eval_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: Precision,
                   device: torch.device) -> EvalBatch:
        raise NotImplementedError

    def eval_metrics(self, counts: dict[str, np.ndarray], parts: list[Any]) -> Evaluation:
        raise NotImplementedError

    def epoch_summary(self, row: dict[str, float]) -> str:
        """The metrics part of the log line of an epoch."""
        return f"train loss {row['train_loss']:.4f}"

    # ---- records and report --------------------------------------------------------------------------------

    def record(self, data: TaskData, model: nn.Module) -> dict[str, Any]:
        """Fields every checkpoint of the run carries besides the common ones (classes, preprocessing)."""
        return {}

    def evaluation_record(self, evaluation: Evaluation) -> dict[str, Any]:
        """Fields of an epoch's checkpoints that come from that epoch's validation pass (e.g. decision thresholds
        tuned on it); rank 0 only."""
        return {}

    def write_data_records(self, run_dir: Path, data: TaskData) -> None:
        """Files describing the data, written once into the run folder (scan reports, split lists)."""

    def check_resume(self, state: dict[str, Any], data: TaskData) -> None:
        """Refuse to resume when the data no longer matches the saved run."""
        if list(state.get("classes") or data.classes) != list(data.classes):
            from ..errors import ConfigError

            raise ConfigError(f"the data in {self.cfg.data} no longer gives the classes this run was started with; "
                              "resume needs the same data.")

    def report(self, run_dir: Path, data: TaskData, history: list[dict[str, float]], best: float, best_epoch: int,
               record: dict[str, Any], split: str, evaluation: Evaluation, notes: list[str]
               ) -> tuple[dict[str, Any], str]:
        """Write ``eval.json``, plots and ``report.md`` for the best checkpoint's evaluation on ``split``;
        returns the evaluation report and the sentence the run ends with."""
        raise NotImplementedError
