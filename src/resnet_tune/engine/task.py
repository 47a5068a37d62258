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

from .config import RunConfig
from .hardware import Precision

__all__ = ["EvalBatch", "Evaluation", "Task", "TaskData", "require_usable"]


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

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.data: TaskData | None = None
        self.device = torch.device("cpu")
        self.precision = Precision(None, False)

    def setup(self, data: TaskData, device: torch.device, precision: Precision) -> None:
        """The trainer hands the task the run's data and where and how it computes, once they are known."""
        self.data, self.device, self.precision = data, device, precision

    # ---- set-up --------------------------------------------------------------------------------------------

    def load_pretrained(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The weights named by ``cfg.pretrained`` (state dict, meta), or None."""
        raise NotImplementedError

    def build_data(self, device: torch.device, channels_last: bool, rank: int, world: int,
                   pretrained_meta: dict[str, Any] | None) -> TaskData:
        raise NotImplementedError

    def build_model(self, data: TaskData, pretrained: tuple[dict[str, torch.Tensor], dict[str, Any]] | None
                    ) -> tuple[nn.Module, str]:
        """The model (with ``body_and_head()``) and one sentence describing it for the log."""
        raise NotImplementedError

    #: SGD's default peak learning rate: (from scratch or for a linear probe, fine-tuning the whole network, the
    #: global batch these are for); it scales linearly with the global batch
    sgd_lr: ClassVar[tuple[float, float, int]]
    #: AdamW's default peak learning rate: (from scratch or for a linear probe, fine-tuning the whole network)
    adamw_lr: ClassVar[tuple[float, float]] = (1e-3, 3e-4)

    def default_lr(self, strategy: str, world: int) -> float:
        """The peak learning rate when ``cfg.lr`` is not given (:attr:`sgd_lr`, :attr:`adamw_lr`), for the
        strategy and the global batch (batch_size per process x processes x accum_steps)."""
        cfg = self.cfg
        head_or_scratch = strategy in ("scratch", "linear_probe")
        if cfg.optimizer == "adamw":
            return self.adamw_lr[0 if head_or_scratch else 1]
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
