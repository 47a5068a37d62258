"""The one training loop, for every task: ``Trainer(task_class, cfg).fit()`` reads top to bottom.

setup -> data -> model -> strategy -> optimiser -> (resume) -> epochs -> final evaluation -> report.

What differs between tasks (data, model head, loss, metrics, record, report) comes from the
:class:`~resnet_tune.engine.task.Task`; everything else is here, once.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..console import log, progress
from ..errors import ConfigError, DataError, ResnetTuneError, TrainingError
from . import checkpoint as ckpt
from . import distributed as D
from .config import RunConfig, from_dict, save_yaml
from .finetune import (frozen_epochs, resolve_freeze_at, resolve_strategy, set_bn_stats_frozen, set_body_frozen,
                       set_frozen_blocks, train_mode)
from .hardware import Precision, default_channels_last, resolve_device, resolve_precision, seed_everything, set_threads
from .optim import EMA, Lookahead, lr_at, make_optimizer, param_groups, scale_at, scaled_size, set_lr
from .run import create_run_dir, tensorboard_writer, write_metrics
from .budget import BudgetState, BudgetView, Clock, Plan, format_duration, minimum_budget, parse_duration, plan_steps
from .budget import reserve_seconds
from .stability import LossGuard, recalibrate_bn, use_precise_bn, warmup_steps
from .task import Evaluation, Task, TaskData

__all__ = ["RESUME_OVERRIDES", "RunResult", "Trainer", "fit", "gradient_scaler"]

# Options that may differ when a run is resumed: they change where and how visibly it runs, not
# what it computes.
#: --budget: the epochs whose mean step time re-plans the run
SPEED_EPOCHS = 3
#: --budget: the optimiser steps timed (after a first, warm-up step) before the first plan
PROBE_STEPS = 5
RESUME_OVERRIDES = frozenset({"device", "progress", "workers", "threads", "dist_timeout"})


@dataclass
class RunResult:
    run_dir: Path
    best_metric: float
    best_epoch: int
    history: list[dict[str, float]]
    checkpoint: Path
    eval_report: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def gradient_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler:
    """The gradient scaler every run has: enabled only for fp16, where small gradients underflow (as nanoGPT's
    ``GradScaler(enabled=(dtype == 'float16'))``); disabled, its calls are plain pass-throughs."""
    return torch.amp.GradScaler(device.type, enabled=bool(precision.scaler))


@dataclass
class _Setup:
    """Everything :meth:`Trainer.prepare` builds before the first step."""

    device: torch.device
    precision: Precision
    channels_last: bool
    data: TaskData
    model: nn.Module
    strategy: str
    freeze_at: int  # body blocks frozen for the whole run
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: EMA | None
    lookahead: Lookahead | None
    criterion: nn.Module
    steps_per_epoch: int
    total_steps: int
    warmup: int
    guard: LossGuard = field(default_factory=LossGuard)
    precise_bn: bool = False


@dataclass
class _Run:
    """What changes as the epochs of a run go by."""

    run_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    bad_after: int = 0  # epochs since the best one (early stopping)
    record: dict[str, Any] = field(default_factory=dict)  # the task's fields of every checkpoint record
    n_frozen: int = 0  # epochs with a frozen body
    views: int = 0  # augmented views in the feature cache (0: none)
    cache: Any = None  # the feature cache, while the cached epochs last
    fwd: nn.Module | None = None  # what the training step calls (the model, in DDP, maybe compiled)
    wrapped: str | None = None  # what the DDP wrapper holds: "model", "frozen" or "head"
    tb: Any = None  # the TensorBoard writer (rank 0, with --tensorboard)
    budget: BudgetState | None = None  # --budget: the seconds spent in earlier sessions and the plans
    step_s: float | None = None  # --budget: measured seconds an optimiser step of the whole network
    speeds: list[tuple[float, int]] = field(default_factory=list)  # --budget: (seconds, steps) of recent epochs
    eval_s: float | None = None  # --budget: measured seconds of a validation and save
    evals: list[float] = field(default_factory=list)  # --budget: the recent ones
    out_of_time: bool = False  # --budget: the epoch stopped early to keep the end inside the budget
    probe_t0: float = 0.0  # --budget: when the timed steps began
    budget_mode: str | None = None  # --budget: what the timed steps trained ("model", "frozen" or "head")


class Trainer:
    """One training run of a task. ``Trainer(ClassificationTask, cfg).fit()``, or ``resnet_tune.fit(...)``.

    Under torchrun each process builds its own ``Trainer``; :meth:`fit` joins the process group
    (:mod:`.distributed`), trains its shard of every epoch in DistributedDataParallel, and only rank 0
    writes the run folder. Test hooks (environment variables, for drills and tests):
    ``RESNET_TUNE_DEBUG_SAMPLES=DIR`` makes every rank write the dataset indices it trains on to
    ``DIR/rank<R>-epoch<E>.txt``; ``RESNET_TUNE_DEBUG_DIE_AT=RANK:EPOCH`` makes that rank exit with code 1
    at the start of that (1-based) epoch, on the first attempt of a torchrun job only;
    ``RESNET_TUNE_DEBUG_INTERRUPT_AT=EPOCH`` raises ``KeyboardInterrupt`` (what Ctrl-C does) at the start of that
    epoch of a run that has not resumed.
    """

    def __init__(self, task: type[Task], cfg: RunConfig | None = None, *, resume: str | Path | None = None,
                 quiet: bool = False, overrides: dict[str, Any] | None = None,
                 state: dict[str, Any] | None = None, clock: Clock | None = None, started: float | None = None
                 ) -> None:
        #: the run's clock (tests inject one) and when the run started by it: ``--budget`` counts from there (the
        #: command line passes the moment it started, before its imports)
        self.clock = clock or Clock()
        self.started = self.clock.now() if started is None else started
        self.task_class = task
        self.resume_dir: Path | None = None
        self.state: dict[str, Any] | None = None
        if resume:
            cfg = self._load_resume(Path(resume), overrides, state)
        elif cfg is None:
            cfg = from_dict(overrides or {}, "options", cls=task.config_class)
        if not resume and cfg.budget is not None and cfg.epochs is not None:
            raise ConfigError("--budget and --epochs both say how long to train: drop --epochs to let the trainer "
                              "plan the epochs that fit the budget, or drop --budget to train a fixed number.")
        self.task = task(cfg)
        self.quiet = quiet
        self.notes: list[str] = []
        self.dist = D.Dist()  # one process until fit() joins torchrun's process group
        self._run_dir_path: Path | None = None
        # the last validation pass of this session (its details on rank 0 only)
        self._last_val: Evaluation | None = None
        # the best epoch of this session and its validation (rank 0): the final report's figures when it stands
        self._best_val: tuple[int, Evaluation | None] | None = None
        # --lr auto: the range test's curve (lrs, losses, suggestion), written into the run folder
        self._lr_test: dict[str, Any] | None = None

    @property
    def cfg(self) -> RunConfig:
        return self.task.cfg

    @cfg.setter
    def cfg(self, value: RunConfig) -> None:
        self.task.cfg = value

    def _load_resume(self, resume_dir: Path, overrides: dict[str, Any] | None,
                     state: dict[str, Any] | None = None) -> RunConfig:
        """The saved configuration of ``resume_dir`` (with the few options that may change); ``state`` is its
        ``last.state.pt`` when the caller has read it already."""
        state = state if state is not None else ckpt.load_state(resume_dir / ckpt.STATE)
        saved_task = state.get("task", "classification")
        if saved_task != self.task_class.name:
            how = "resnet-tune segment train" if saved_task == "segmentation" else "resnet-tune train"
            raise ConfigError(f"{resume_dir} is a {saved_task} run, not a {self.task_class.name} one; resume it with "
                              f"`{how} --resume {resume_dir}`.")
        saved = from_dict(state["config"], f"the saved run {resume_dir}", cls=self.task_class.config_class)
        changes = dict(overrides or {})
        bad = sorted(set(changes) - RESUME_OVERRIDES)
        if bad:
            raise ConfigError(f"a resumed run keeps its saved configuration; {', '.join(bad)} cannot change on "
                              f"resume (only {', '.join(sorted(RESUME_OVERRIDES))} can).")
        self.resume_dir, self.state = resume_dir, state
        return saved.replace(**changes, output=str(resume_dir))

    def say(self, msg: str) -> None:
        if not self.quiet and self.dist.is_main:
            log(msg)

    def _progress(self, iterable: Any, total: int, desc: str) -> Any:
        return progress(iterable, total, desc, self.cfg.progress and not self.quiet and self.dist.is_main)

    # ---- the run folder

    def _check_output(self) -> None:
        """Before any work: ``--output`` must not hold another run (decided on rank 0, raised everywhere)."""
        def check() -> None:
            out = Path(self.cfg.output) if self.cfg.output and self.resume_dir is None else None
            if out is not None and (out / ckpt.STATE).exists():
                raise ConfigError(f"{out} already holds a training run; resume it with --resume {out} or choose "
                                  "another --output folder.")

        self.dist.run_on_main(check, "the check of the run folder")

    def _run_dir(self, stem: str) -> Path:
        """The run folder: decided on rank 0 (its clock names it) and handed to every rank."""
        return Path(self.dist.run_on_main(lambda: str(self.decide_run_dir(stem)), "the choice of the run folder"))

    def decide_run_dir(self, stem: str) -> Path:
        """``--output``, the resumed folder, or ``runs/<stem>-<date>-<time>``; created here."""
        if self.resume_dir is not None:
            return self.resume_dir
        out = create_run_dir(self.cfg.output, stem)
        pointer = None if self.cfg.output else self._restart_pointer()
        if pointer is not None:
            pointer.parent.mkdir(parents=True, exist_ok=True)
            pointer.write_text(str(out))
        return out

    def _restart_pointer(self) -> Path | None:
        """Where a torchrun job that may be restarted (--max-restarts) without --output notes its run folder,
        so that the restarted job finds it: runs/.torchrun-<rendezvous id>."""
        launch = self.dist.launch
        if not launch.under_torchrun or launch.max_restarts <= 0 or launch.run_id in ("", "none"):
            return None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in launch.run_id)
        return Path("runs") / f".torchrun-{safe}"

    def find_restart_state(self) -> str | None:
        """In a job torchrun restarted: the run folder whose last checkpoint to continue from, if any."""
        if self.cfg.output:
            out = Path(self.cfg.output)
        else:
            pointer = self._restart_pointer()
            if pointer is None or not pointer.is_file():
                return None
            out = Path(pointer.read_text().strip())
        return str(out) if (out / ckpt.STATE).is_file() else None

    # ---- setup

    def prepare(self) -> _Setup:
        """Device, data, model, strategy and optimiser: everything before the first step."""
        cfg, task, dist = self.cfg, self.task, self.dist
        if cfg.model:
            from ..models import get_preset

            get_preset(cfg.model)  # a misspelt name stops here, before the data is read
        set_threads(cfg.threads)
        device = dist.device if dist.enabled else resolve_device(cfg.device)
        precision = resolve_precision(cfg.precision, device)
        seed_everything(cfg.seed, cfg.deterministic)
        channels_last = (cfg.channels_last if cfg.channels_last is not None else
                         default_channels_last(device, cfg.deterministic))

        if cfg.budget is not None:  # --model auto may choose the network and input size from the time left
            budget = parse_duration(cfg.budget)
            before = BudgetState.from_dict((self.state or {}).get("budget"), budget).spent_before
            task.budget_view = BudgetView(
                left=lambda: budget - self._spent_since(before),
                agree=dist.all_reduce_max, budget=budget, device=device, precision=precision,
                channels_last=channels_last, world=dist.world, clock=self.clock)
        if self.state is not None:
            task.resuming = True
            task.resumed_meta = self._saved_normalisation()
        data = task.build_data(device, channels_last, dist.rank, dist.world)
        cfg = self.cfg  # the task resolved what it chooses from the data (weights, batch size)
        task.setup(data, device, precision)
        if task.weights_warning:
            self.say(f"warning: {task.weights_warning}")
            self.notes.append(task.weights_warning)
        self.say(f"data: {data.description}")
        for note in data.notes + task.plan_notes:
            self.say(f"note: {note}")
            self.notes.append(note)
        if data.scan_summary:
            self.say(data.scan_summary)

        resumed_weights = task.pretrained is not None and not task.pretrained[0]
        model, described = task.build_model(data, None if resumed_weights else task.pretrained)
        if resumed_weights:
            described = f"{task.run_name(data)}, weights from the saved state (it started from {cfg.pretrained})"
        if cfg.whiten and task.pretrained is None and self.state is None:  # a resumed run loads its weights
            self._whiten(model, data, device, channels_last)
        elif cfg.whiten and task.pretrained is not None:
            self.notes.append("--whiten ignored: the first convolution starts from the pretrained weights")
        strategy = resolve_strategy(cfg, task.transfer)
        if task.pretrained is None:
            self.notes.append(f"trained from scratch ({task.weights_reason})")
        self.say(f"model: {described}" + (f", strategy {strategy}" if task.pretrained is not None else ""))
        if cfg.strategy == "auto" and task.pretrained is not None and task.transfer is not None:
            self.say(f"note: {task.transfer.strategy_reason}")
            self.notes.append(task.transfer.strategy_reason)
        freeze_at = resolve_freeze_at(cfg, strategy, model, task.pretrained is not None, task.transfer)
        if cfg.freeze_at and not freeze_at:
            self.notes.append(f"freeze_at={cfg.freeze_at} ignored: the model trains from scratch")
        set_frozen_blocks(model, freeze_at)
        bn_frozen = cfg.freeze_bn_stats and task.pretrained is not None
        if cfg.freeze_bn_stats and not bn_frozen:
            self.notes.append("freeze_bn_stats ignored: the model trains from scratch (random BatchNorm statistics "
                              "are not worth keeping)")
        if bn_frozen and cfg.precise_bn:
            raise ConfigError("--precise-bn recomputes the BatchNorm statistics that --freeze-bn-stats keeps; use "
                              "one of the two.")
        set_bn_stats_frozen(model, bn_frozen)
        if bn_frozen:
            self.say("BatchNorm statistics kept as pretrained (--freeze-bn-stats); their scale and shift train")
        if freeze_at:
            self.say(f"frozen for the whole run: the first {freeze_at} of {len(model.body_and_head()[0])} body "
                     "blocks (stem first; no backward pass, BatchNorm statistics kept)")
        model = model.to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.sync_bn:
            if not dist.enabled:
                self.notes.append("sync_bn has no effect in a single process")
            elif device.type != "cuda":
                raise ConfigError("--sync-bn needs CUDA GPUs: PyTorch's SyncBatchNorm does not run on CPUs. Drop "
                                  "--sync-bn (each process then normalises over its own batch).")
            else:
                model = dist.convert_sync_bn(model)
        self.say(f"device: {device}, precision {precision.name}, channels_last {channels_last}"
                 + (", compiled" if cfg.compile else "")
                 + (f", {dist.world} processes ({dist.backend})" if dist.enabled else ""))

        decay = cfg.lr_decay if strategy == "freeze_unfreeze" else 1.0
        criterion = task.criterion(data, device)
        lr = cfg.lr if cfg.lr is not None else task.default_lr(strategy, dist.world)
        if lr == "auto":
            lr = self._auto_lr(model, data, criterion, device, precision, channels_last, strategy, decay, freeze_at)
            self.cfg = cfg = cfg.replace(lr=lr)  # recorded in config.yaml: a resumed run keeps it
        if dist.enabled:
            global_batch = cfg.batch_size * dist.world * cfg.accum_steps
            msg = (f"global batch {global_batch} = batch size {cfg.batch_size} per process x {dist.world} "
                   f"process(es) x {cfg.accum_steps} accumulation step(s); learning rate {lr:.4g}"
                   + (" (the default, scaled to the global batch)" if cfg.lr is None else ""))
            self.say(msg)
            self.notes.append(f"trained with {dist.world} processes: {msg}")
        optimizer = self._optimizer(model, lr, decay, freeze_at)
        if cfg.epochs is None:  # a budgeted run starts from the default until its first plan
            epochs, why = (task.default_epochs, None) if cfg.budget is not None else task.choose_epochs(data)
            if why:
                self.say(f"note: {why}")
                self.notes.append(why)
            self.cfg = cfg = cfg.replace(epochs=epochs)  # recorded in config.yaml: a resumed run keeps it
        steps_per_epoch = max(len(data.train) // cfg.accum_steps, 1)
        total = steps_per_epoch * cfg.epochs
        precise = use_precise_bn(cfg.precise_bn, steps_per_epoch) and not bn_frozen
        if precise and cfg.precise_bn is None:
            self.say(f"note: BatchNorm statistics are recomputed before each validation ({steps_per_epoch} steps an "
                     "epoch)")
            self.notes.append(f"BatchNorm statistics recomputed on the training batches before each validation (an "
                              f"epoch has {steps_per_epoch} steps, too few for the running averages to follow the "
                              "weights; --no-precise-bn turns this off)")
        setup = _Setup(device=device, precision=precision, channels_last=channels_last, data=data, model=model,
                       strategy=strategy, freeze_at=freeze_at, optimizer=optimizer,
                       scaler=gradient_scaler(precision, device),
                       ema=EMA(model, cfg.ema_decay) if cfg.ema else None,
                       lookahead=self._lookahead(model),
                       criterion=criterion, steps_per_epoch=steps_per_epoch,
                       total_steps=total, warmup=warmup_steps(cfg.warmup_epochs, steps_per_epoch, total),
                       precise_bn=precise)
        if cfg.progressive_resize < 1.0:
            self.say(f"progressive resizing: {self._resize_plan(data)}")
        # what the defaults chose is recorded (config.yaml), and a resumed run keeps it
        self.cfg = cfg.replace(precise_bn=precise, strategy=strategy, freeze_at=freeze_at)
        return setup

    def _saved_normalisation(self) -> dict[str, Any] | None:
        """A resumed run's mean and std (from its last checkpoint's record), so that it normalises as before
        without reading its pretrained weights again; None when the record does not say."""
        try:
            pp = ckpt.read_record(self.resume_dir / ckpt.LAST).get("preprocessing") or {}
        except (ResnetTuneError, OSError, ValueError):
            return None
        return {"mean": pp["mean"], "std": pp["std"]} if pp.get("mean") and pp.get("std") else None

    def _lookahead(self, model: nn.Module) -> Lookahead | None:
        cfg = self.cfg
        if not cfg.lookahead:
            if cfg.lookahead_schedule != "constant":
                raise ConfigError(f"--lookahead-schedule {cfg.lookahead_schedule} needs --lookahead N, the steps "
                                  "between syncs (airbench: 5).")
            return None
        return Lookahead(model, cfg.lookahead, schedule=cfg.lookahead_schedule)

    def _whiten(self, model: nn.Module, data: TaskData, device: torch.device, channels_last: bool) -> None:
        """``--whiten``: the first convolution set from the patches of the first training batches (about as many
        pixels as airbench's 5,000 CIFAR images), the random state left as it was. Several processes: DDP gives
        every process rank 0's weights when it wraps the model."""
        from ..models import whiten_first_conv

        seen, pixels = [], 0
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if hasattr(data.train, "set_epoch"):
                data.train.set_epoch(0)
            for batch in data.train:
                x, _ = self.task.to_device(batch[0], batch[1], torch.device("cpu"), False)
                seen.append(x.float())
                pixels += x.shape[0] * x.shape[-2] * x.shape[-1]
                if pixels >= 5000 * 32 * 32:
                    break
            got = whiten_first_conv(model, torch.cat(seen), generator=torch.Generator().manual_seed(self.cfg.seed))
        n = sum(len(x) for x in seen)
        msg = (f"whitened first convolution: {got['directions']} patch directions from {n} training images "
               f"({got['variance_share']:.1%} of the patch variance)")
        self.say(msg)
        self.notes.append(msg)

    def _resize_plan(self, data: TaskData) -> str:
        """What progressive resizing does epoch by epoch, in pixels where the run has one square size."""
        cfg = self.cfg
        scales = [scale_at(e, cfg.epochs, cfg.progressive_resize) for e in range(cfg.epochs)]
        size = data.preprocessing.get("input_size")
        if isinstance(size, int):
            return f"the epochs train at {', '.join(str(scaled_size(size, f)) for f in scales)} px"
        return f"the epochs train at {', '.join(f'{f:.0%}' for f in scales)} of the crop size"

    def _optimizer(self, model: nn.Module, lr: float, decay: float, freeze_at: int) -> torch.optim.Optimizer:
        """The run's optimiser over ``model``'s parameter groups (discriminative rates ``decay``, the first
        ``freeze_at`` body blocks left out)."""
        cfg = self.cfg
        groups = param_groups(model, lr, cfg.weight_decay, decay, frozen=freeze_at,
                              bn_bias_lr_scale=cfg.bn_bias_lr_scale)
        return make_optimizer(cfg.optimizer, groups, lr, cfg.momentum, cfg.nesterov, cfg.weight_decay,
                              beta2=cfg.beta2, eps=cfg.opt_eps)

    def _auto_lr(self, model: nn.Module, data: TaskData, criterion: nn.Module, device: torch.device,
                 precision: Precision, channels_last: bool, strategy: str, decay: float, freeze_at: int) -> float:
        """``--lr auto``: a learning-rate range test (:data:`~.lr_find.AUTO_RANGE`) on a copy of the model, with
        the run's parameter groups; the suggested rate (rank 0's, for every process), or the task's default when
        the curve gives none. The random state is left as it was; the curve is saved in the run folder."""
        from ..eval import suggest_lr
        from .lr_find import AUTO_RANGE, range_test

        cfg, dist = self.cfg, self.dist
        fallback = self.task.default_lr(strategy, dist.world)
        probe = copy.deepcopy(model)
        if strategy == "linear_probe":  # the rate the head trains at on the frozen body
            set_body_frozen(probe, True)
        opt = self._optimizer(probe, 1.0, decay, freeze_at)
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            lrs, losses = range_test(self.task, probe, opt, data.train, criterion, device, precision, channels_last,
                                     cfg.seed, **AUTO_RANGE)
        del probe, opt
        found = suggest_lr(lrs, losses, method="valley")
        if dist.enabled:
            found = dist.broadcast_object(found if dist.is_main else None)
        lr = found if found is not None else fallback
        self._lr_test = {"lrs": lrs, "losses": losses, "suggestion": found}
        msg = (f"--lr auto: a range test of {len(lrs)} steps ({time.perf_counter() - t0:.1f}s) suggests {lr:.3g}"
               if found is not None else
               f"--lr auto: the range test's loss did not fall, so the default {lr:.3g} is used")
        self.say(msg + " (curve: lr_find.png in the run folder)")
        self.notes.append(msg)
        return float(lr)

    def _forward_module(self, model: nn.Module) -> nn.Module:
        """What the training step calls: the model in DDP (only its trainable parameters), maybe compiled."""
        wrapped = self.dist.wrap(model)
        return torch.compile(wrapped) if self.cfg.compile else wrapped

    # ---- the run

    def fit(self) -> RunResult:
        launch = D.launch_info()
        self.dist = D.setup(resolve_device(self.cfg.device), self.cfg.dist_timeout, launch)
        failed = False
        try:
            return self._fit()
        except BaseException as err:
            failed = True
            if self.dist.enabled and self.dist.world > 1 and not isinstance(err, ResnetTuneError) \
                    and D.is_peer_failure(err):
                run_dir = self._run_dir_path
                saved = run_dir is not None and (run_dir / ckpt.STATE).is_file()
                raise self.dist.failure(err, run_dir if saved else None) from None
            raise
        finally:
            self.dist.cleanup(failed=failed)

    def _fit(self) -> RunResult:
        self._follow_torchrun_restart()
        self._check_output()
        s = self.prepare()
        r = self._begin(s)
        epoch = r.start_epoch
        while epoch < self.cfg.epochs:
            _debug_die_at(self.dist, epoch, resumed=self.state is not None)
            row, improved = self._epoch(s, r, epoch)
            epoch += 1
            # no process starts the next epoch before this one is saved: a process that fails in it then
            # always leaves a complete checkpoint to resume from
            self.dist.barrier()
            frozen = epoch - 1 < r.n_frozen
            summary = (self.task.epoch_summary(row) if self.task.best_metric in row else
                       f"train loss {row['train_loss']:.4f} (validated every {self.cfg.val_every} epochs)")
            self.say(f"epoch {epoch}/{self.cfg.epochs}  {summary}  lr {row['lr']:.2e}  "
                     f"{row['seconds']:.1f}s  {row['images_per_s']:.1f} img/s" + ("  *" if improved else "")
                     + ("  (frozen body)" if frozen else "") + (", cached features" if frozen and r.views else ""))
            if r.out_of_time:
                msg = (f"stopped epoch {epoch} early to finish inside the budget (the machine ran slower than "
                       "planned)")
                self.say(msg)
                self.notes.append(msg)
                break
            if self.cfg.early_stop and r.bad_after >= self.cfg.early_stop:
                self.say(f"early stop: no improvement in {self.task.best_metric} for {self.cfg.early_stop} epochs")
                self.notes.append(f"stopped early after epoch {epoch}")
                break
            if r.budget is not None:
                self._replan(s, r, epoch)
        r.fwd = None
        return self._finish(r.run_dir, s, r.history, r.best, r.best_epoch)

    def _follow_torchrun_restart(self) -> None:
        """In a job torchrun restarted, continue from the last checkpoint when there is one."""
        launch = self.dist.launch
        if not launch.restarted or self.state is not None:
            return
        found = self.dist.run_on_main(self.find_restart_state, "the search for a checkpoint to resume")
        if found:
            self.cfg = self._load_resume(Path(found), {k: getattr(self.cfg, k) for k in RESUME_OVERRIDES})
            self.say(f"torchrun restarted the job (restart {launch.restart_count} of {launch.max_restarts}): "
                     f"resuming {found} from its last checkpoint")
        else:
            self.say(f"torchrun restarted the job (restart {launch.restart_count} of {launch.max_restarts}); "
                     "no checkpoint to resume yet: starting again"
                     + ("" if self.cfg.output or self._restart_pointer() else
                        " (pass --output so that a restarted job finds its run folder)"))

    def _begin(self, s: _Setup) -> _Run:
        """The run folder, the data records, the restored state and the resolved configuration."""
        dist, task = self.dist, self.task
        r = _Run(run_dir=self._run_dir(task.run_name(s.data)))
        self._run_dir_path = r.run_dir
        if dist.is_main:
            task.write_data_records(r.run_dir, s.data)
            if self._lr_test is not None:
                from .lr_find import write_lr_find

                write_lr_find(self._lr_test, r.run_dir)
        if self.state is not None:
            task.check_resume(self.state, s.data)
            r.start_epoch, r.best, r.best_epoch, r.history = self._restore(s)
            self._rescale_on_new_world(s.optimizer, s.strategy)
            best = (f"best {task.best_metric} {r.best:.4f} at epoch {r.best_epoch}" if r.best_epoch > 0 else
                    "not validated yet")
            self.say(f"resumed {r.run_dir} after epoch {r.start_epoch} ({best})")
        # the resolved configuration: what "auto" chose is written down (and resumes the same)
        cfg = self.cfg = task.resolved_config(s.data)
        if cfg.budget is not None:
            r.budget = BudgetState.from_dict(self.state.get("budget") if self.state else None,
                                             parse_duration(cfg.budget))
        self._write_config(r)
        if dist.is_main:
            r.tb = tensorboard_writer(r.run_dir) if cfg.tensorboard else None
        r.record = task.record(s.data, s.model)
        r.n_frozen = frozen_epochs(s.strategy, cfg)
        r.views = self._cache_views(s.model, s.data, r.n_frozen, s.precision) if r.start_epoch < r.n_frozen else 0
        r.fwd = None if dist.enabled else (torch.compile(s.model) if cfg.compile else s.model)
        return r

    def _write_config(self, r: _Run) -> None:
        """Rank 0: ``config.yaml``, the resolved configuration, with the process count and the budget's plans."""
        if not self.dist.is_main:
            return
        cfg, dist = self.cfg, self.dist
        path = r.run_dir / "config.yaml"
        save_yaml(cfg, path)
        lines = []
        if dist.enabled:
            lines.append(f"# trained with {dist.world} processes: global batch "
                         f"{cfg.batch_size * dist.world * cfg.accum_steps} = batch_size {cfg.batch_size} x "
                         f"{dist.world} processes x accum_steps {cfg.accum_steps}")
        for plan in r.budget.plans if r.budget else []:
            where = f" on {plan['machine']}" if plan["machine"] else ""
            lines.append(f"# budget plan at epoch {plan['at_epoch']}{where}: {Plan(**plan).describe()}")
        if lines:
            with path.open("a") as f:
                f.write("".join(line + "\n" for line in lines))

    # ---- the budget (--budget): measured, planned, re-planned

    def _spent(self, r: _Run) -> float:
        """Seconds of the budget spent so far (earlier sessions of a resumed run included), the same on every
        process (the slowest one's)."""
        assert r.budget is not None
        return self._spent_since(r.budget.spent_before)

    def _spent_since(self, before: float) -> float:
        """``before`` seconds of earlier sessions plus this one's so far, the slowest process's."""
        return self.dist.all_reduce_max(before + self.clock.now() - self.started)

    def _eval_estimate(self, s: _Setup, r: _Run) -> float:
        """Seconds of a validation and save: measured after the first one; before it, from the step time (an
        evaluation batch holds twice the images of a training micro-batch, and a forward pass costs about a third
        of a training step; precise BN adds a forward pass over the training batches)."""
        if r.eval_s is not None:
            return r.eval_s
        micro = (r.step_s or 0.0) / self.cfg.accum_steps
        forward = micro / 3.0
        return len(s.data.val) * 2 * forward + (len(s.data.train) * forward if s.precise_bn else 0.0) + 1.0

    def _reserve(self, s: _Setup, r: _Run) -> float:
        """Seconds kept for the end: the final evaluation (the test split, or the best checkpoint on the validation
        split when it is not the last epoch's), the report, and a margin (:func:`.budget.reserve_seconds`)."""
        assert r.budget is not None
        # validations on cached features run only the head; the final evaluation runs the whole network
        final = r.cache.val_seconds if r.cache is not None else self._eval_estimate(s, r)
        if s.data.test is not None:
            final *= max(1.0, len(s.data.test) / max(len(s.data.val), 1))
        elif r.best_epoch < 0 or (self._best_val is not None and self._best_val[0] == r.best_epoch):
            final = 0.0  # the best epoch's own validation is the final report's (see _finish)
        return reserve_seconds(r.budget.budget, final)

    def _plan(self, s: _Setup, r: _Run, done: int, into_epoch: int) -> tuple[int, float]:
        """The optimiser steps in all that fit the budget (:func:`.budget.plan_steps`), given ``done`` finished
        epochs and ``into_epoch`` steps of the current one, and the time the current epoch began (as if its steps
        took the measured time); raises the too-small-budget sentence when not even a quarter of the current epoch
        fits (unless --budget-partial)."""
        assert r.budget is not None and r.step_s is not None
        spent = self._spent(r)
        eval_s, reserve = self._eval_estimate(s, r), self._reserve(s, r)
        start = spent - into_epoch * r.step_s  # when the current epoch started, as if its steps took step_s
        total = plan_steps(r.budget.budget, start, done, s.steps_per_epoch, r.step_s, eval_s, reserve)
        done_steps = done * s.steps_per_epoch
        if total == done_steps and into_epoch == 0 and done > 0:
            return total, start  # at an epoch end: nothing more fits
        if total <= done_steps:
            if not self.cfg.budget_partial and done == 0:
                need = minimum_budget(start, s.steps_per_epoch, r.step_s, eval_s, reserve - 0.02 * r.budget.budget)
                raise ConfigError(
                    f"a budget of {format_duration(r.budget.budget)} cannot hold one epoch of this run: the set-up "
                    f"took {format_duration(start)} and an epoch ({s.steps_per_epoch} steps of "
                    f"{r.step_s:.3g} s and a validation) about {format_duration(s.steps_per_epoch * r.step_s + eval_s)}"
                    f"; give at least --budget {format_duration(need)}, or add --budget-partial to train on the "
                    "fraction of an epoch that fits.")
            total = done_steps + s.steps_per_epoch  # the current epoch, cut to what fits (the train loop stops it)
        return total, start

    def _apply_plan(self, s: _Setup, r: _Run, total: int, done: int, start: float, why: str) -> None:
        """Make ``total`` optimiser steps the plan (the last epoch may be shorter): the schedule's length follows
        (its shape is kept), it is printed, recorded (config.yaml, the run state) and noted."""
        assert r.budget is not None and r.step_s is not None
        from .hardware import machine_name

        changed = total != s.total_steps or not r.budget.plans
        epochs = -(-total // s.steps_per_epoch)
        self.cfg = self.cfg.replace(epochs=epochs)
        s.total_steps = total
        eval_s = self._eval_estimate(s, r)
        plan = Plan(epochs=epochs, steps=total, seconds_per_step=r.step_s, seconds_per_eval=eval_s,
                    spent=self._spent(r), budget=r.budget.budget, at_epoch=done, why=why, machine=machine_name(),
                    expected=start + (total - done * s.steps_per_epoch) * r.step_s + (epochs - done) * eval_s
                    + self._reserve(s, r) - 0.02 * r.budget.budget)
        if not changed:
            return
        r.budget.plans.append(dataclasses.asdict(plan))
        self.say(f"budget plan: {plan.describe()}")
        self._write_config(r)

    def _budget_step(self, s: _Setup, r: _Run, epoch: int, k: int, t_epoch: float) -> None:
        """After the ``k``-th optimiser step of ``epoch``: the first plan once the speed is measured (steps 2 to 6
        of the epoch, the first one being a warm-up), then a check that the end still fits."""
        assert r.budget is not None
        now = self.clock.now()
        if r.step_s is None:
            if k == 1:
                r.probe_t0 = now
            probe_end = min(1 + PROBE_STEPS, s.steps_per_epoch)
            if k < probe_end:
                return
            r.step_s = self.dist.all_reduce_max((now - t_epoch) / k if k == 1 else (now - r.probe_t0) / (k - 1))
            why = "first plan" if not r.budget.plans else "re-planned on resuming" if self.state is not None and \
                len(r.budget.plans) and r.budget.plans[-1]["at_epoch"] < epoch else "the step speed changed"
            total, start = self._plan(s, r, epoch, k)
            self._apply_plan(s, r, total, epoch, start, why)
            return
        if self.dist.enabled and k % 10:
            return
        if self._spent(r) + self._eval_estimate(s, r) + self._reserve(s, r) > r.budget.budget:
            r.out_of_time = True

    def _replan(self, s: _Setup, r: _Run, done: int) -> None:
        """At the end of epoch ``done``: the plan again from the measured speed (of the last :data:`SPEED_EPOCHS`
        epochs, so that one noisy epoch does not move it); it shrinks when the end would pass more than half the
        budget's 2% margin, and grows when a quarter of an epoch or more (and 2% of the budget) would be left unused."""
        assert r.budget is not None
        if r.step_s is None:
            return
        done_steps = done * s.steps_per_epoch
        if done_steps >= s.total_steps:
            return  # the schedule has ended: more steps now would start it again
        total, start = self._plan(s, r, done, 0)
        if (s.total_steps - total) * r.step_s > 0.01 * r.budget.budget:
            self._apply_plan(s, r, max(total, done_steps), done, start, "the run is slower than planned")
        elif total >= s.total_steps + max(1, s.steps_per_epoch // 4, int(0.02 * r.budget.budget / r.step_s)):
            self._apply_plan(s, r, total, done, start, "the run is faster than planned")

    def _epoch(self, s: _Setup, r: _Run, epoch: int) -> tuple[dict[str, float], bool]:
        """Train and evaluate one epoch, save what it gives; returns its row and whether it is the best so far."""
        dist, task, model, data = self.dist, self.task, s.model, s.data
        frozen = epoch < r.n_frozen
        cached = frozen and r.views > 0
        set_body_frozen(model, frozen, keep=s.freeze_at)
        if not cached:
            r.cache = None
        mode = "head" if cached else "frozen" if frozen else "model"
        if dist.enabled and mode != r.wrapped:
            r.fwd = None  # drop the old DDP wrapper (and its gradient hooks) before making the new one
            r.fwd = self.dist.wrap(task.head(model)) if cached else self._forward_module(model)
            r.wrapped = mode
        _debug_samples(dist, data.train, epoch)
        t0 = time.perf_counter()
        if cached and r.cache is None:
            from .features import build_cache

            r.cache = build_cache(model, data.train, data.val, r.views, data.num_train, s.precision, s.device, dist,
                                  self._progress, data.target_shape, clock=self.clock)
            self.say(f"cached the frozen backbone's features: {data.num_train} training images x {r.views} "
                     f"view(s) and the validation set in {r.cache.seconds:.1f}s; the head trains on them")
        assert r.fwd is not None
        step_fwd = r.fwd if dist.enabled or not cached else task.head(model)
        if r.budget is not None and mode != r.budget_mode:
            # head-only and whole-network steps (and validations) differ: time them again
            r.step_s, r.speeds, r.evals, r.eval_s, r.budget_mode = None, [], [], None, mode
        train_row, seen = self.train_one_epoch(step_fwd, model, r.cache.train if cached else data.train, s, epoch,
                                               features=cached, run=r)
        train_time = dist.all_reduce_max(time.perf_counter() - t0)
        t_eval = self.clock.now()
        if dist.enabled:  # every rank evaluates (and rank 0 saves) rank 0's BatchNorm statistics
            dist.sync_buffers(ckpt.unwrap(model))
            if s.ema is not None:
                names = {n for n, _ in ckpt.unwrap(model).named_buffers()}
                dist.broadcast_tensors([v for k, v in s.ema.shadow.items() if k in names])
        eval_model = self._ema_model(model, s.ema) if s.ema else model
        val = None
        if self._validates(epoch, r):
            if s.precise_bn and not frozen:
                self._recalibrate_bn(eval_model, data.train, s, epoch)
            if cached:  # the head on the cached validation features: the same numbers, no backbone pass
                val = self.evaluate(task.head(eval_model), r.cache.val, s, features=True)
            else:
                val = self.evaluate(eval_model, data.val, s)
            self._last_val = val if dist.is_main else None
        row = {"epoch": epoch + 1, **train_row, **(val.metrics if val is not None else {}),
               "lr": s.optimizer.param_groups[-1]["lr"], "seconds": time.perf_counter() - t0,
               "images_per_s": seen / max(train_time, 1e-9), "train_seconds": train_time}
        r.history.append(row)
        improved = False
        if val is not None:
            improved = row[task.best_metric] > r.best or r.best_epoch < 0
            if improved:
                r.best, r.best_epoch, r.bad_after = row[task.best_metric], epoch + 1, 0
                self._best_val = (epoch + 1, self._last_val)
            else:
                r.bad_after += 1
            self.clock.event("eval_features" if cached else "eval")
        if dist.is_main:
            self._save(s, r, eval_model, row, improved, task.evaluation_record(val) if val is not None else {})
        self.clock.event("save")
        if r.budget is not None:  # the mean of the recent validations and saves
            r.evals = [*r.evals, self.dist.all_reduce_max(self.clock.now() - t_eval)][-SPEED_EPOCHS:]
            r.eval_s = sum(r.evals) / len(r.evals)
        return row, improved

    def _validates(self, epoch: int, r: _Run) -> bool:
        """Whether epoch ``epoch`` (0-based) ends with a validation pass: every ``val_every``-th epoch, the last
        one, and one the budget cut short."""
        n = self.cfg.val_every
        return n == 1 or (epoch + 1) % n == 0 or epoch + 1 >= self.cfg.epochs or r.out_of_time

    def _budget_record(self, r: _Run) -> dict[str, Any] | None:
        """What a resumed budgeted run needs: the seconds spent so far (this save included, roughly) and the plans."""
        if r.budget is None:
            return None
        return {**r.budget.to_dict(), "spent_before": r.budget.spent_before + self.clock.now() - self.started}

    def _recalibrate_bn(self, model: nn.Module, loader: Any, s: _Setup, epoch: int) -> None:
        """Precise BN: the BatchNorm statistics of ``model`` recomputed over this epoch's training batches with the
        final weights of the epoch (each process its shard; rank 0's statistics are the ones evaluated and saved)."""
        def forward(m: nn.Module, batch: Any) -> None:
            x, y = self.task.to_device(batch[0], batch[1], s.device, s.channels_last)
            with s.precision.autocast(s.device):
                m(x)

        train_mode(model)
        loader.set_epoch(epoch)
        recalibrate_bn(model, loader, forward)
        if self.dist.enabled:
            self.dist.sync_buffers(ckpt.unwrap(model))

    def _save(self, s: _Setup, r: _Run, eval_model: nn.Module, row: dict[str, float], improved: bool,
              from_eval: dict[str, Any]) -> None:
        """Rank 0: the checkpoints (last, and best when improved; ``from_eval``: record fields the task took from
        this epoch's evaluation), the resume state, metrics.csv, TensorBoard."""
        cfg, task, epoch = self.cfg, self.task, int(row["epoch"])
        extra = {"epoch": epoch, "weights": "ema" if s.ema else "model", "strategy": s.strategy,
                 "pretrained": cfg.pretrained}
        metrics = {k: v for k, v in row.items() if k.startswith(("val_", "train_")) and k != "train_seconds"}
        rec = ckpt.model_record(eval_model, metrics=metrics, task=task.name,
                                extra={**r.record, **extra, **from_eval},
                                classes=s.data.classes, preprocessing=s.data.preprocessing)
        ckpt.save_checkpoint(r.run_dir / ckpt.LAST, eval_model, rec)
        if improved:
            ckpt.save_checkpoint(r.run_dir / ckpt.BEST, eval_model, rec)
        ckpt.save_state(r.run_dir / ckpt.STATE, {
            "task": task.name, "config": cfg.to_dict(), "epoch": epoch, "step": epoch * s.steps_per_epoch,
            "classes": list(s.data.classes),
            "model": {k: v.detach().cpu() for k, v in ckpt.unwrap(s.model).state_dict().items()},
            "optimizer": s.optimizer.state_dict(), "scaler": s.scaler.state_dict(),
            "ema": s.ema.state_dict() if s.ema else None,
            "lookahead": s.lookahead.state_dict() if s.lookahead else None, "guard": s.guard.state_dict(),
            "rng": ckpt.rng_state(),
            "budget": self._budget_record(r),
            "best": r.best,
            "best_epoch": r.best_epoch, "history": r.history, "world": self.dist.world,
        })
        write_metrics(r.run_dir / "metrics.csv", r.history, task.metric_columns)
        if r.tb is not None:
            for key, value in row.items():
                if key != "epoch":
                    r.tb.add_scalar(key, value, epoch)
            r.tb.flush()

    # ---- one epoch

    def train_one_epoch(self, fwd: nn.Module, model: nn.Module, loader: Any, s: _Setup, epoch: int,
                        features: bool = False, run: _Run | None = None) -> tuple[dict[str, float], int]:
        """One epoch of this process's shard; the row's training columns (over all processes) and the images."""
        cfg, task, dist = self.cfg, self.task, self.dist
        device, precision, optimizer, scaler = s.device, s.precision, s.optimizer, s.scaler
        train_mode(model)
        loader.set_epoch(epoch)
        g = torch.Generator().manual_seed(cfg.seed * 31 + epoch)  # batch-level augmentation (mixup, cutmix)
        step = epoch * s.steps_per_epoch
        t_epoch = self.clock.now()
        budget = run if run is not None and run.budget is not None else None
        total_loss = torch.zeros((), device=device)
        counts: dict[str, torch.Tensor] = {}
        seen = 0
        params = list(model.parameters())
        step_loss = 0.0  # the mean loss of the optimiser step's micro-batches (what the loss guard judges)
        bar = self._progress(loader, len(loader), f"epoch {epoch + 1}/{cfg.epochs}")
        show = bar is not loader
        optimizer.zero_grad(set_to_none=True)
        scale = 1.0 if features else scale_at(epoch, cfg.epochs, cfg.progressive_resize)
        for i, (x, y) in enumerate(bar):
            # dropout and drop-path draw from a seed of the micro-batch's place in the epoch: rank r's i-th batch
            # is micro-batch i * world + r of one process with `world` accumulation steps, and draws the same
            torch.manual_seed(((cfg.seed * 1_000_003 + epoch) * 1_000_033 + i * dist.world + dist.rank) % 2**63)
            x, y = (x.to(device, non_blocking=True), y.to(device, non_blocking=True)) if features else \
                task.to_device(x, y, device, s.channels_last)
            if scale < 1.0:
                x, y = task.resize_batch(x, y, (scaled_size(x.shape[-2], scale), scaled_size(x.shape[-1], scale)))
            last_micro = (i + 1) % cfg.accum_steps == 0
            # accumulation: gradients are averaged across processes on the last micro-step only
            with (dist.no_sync(fwd) if dist.enabled and not last_micro else contextlib.nullcontext()):
                with precision.autocast(device):
                    loss, out = task.train_loss(fwd, x, y, s.criterion, g)
                scaler.scale(loss / cfg.accum_steps).backward()
                # the loss is read once the backward pass is queued, so a GPU is not idle while its kernels are
                # launched (no measurable change on an H200: RESULTS.md, "GPU"); no optimiser step has used it yet
                loss_value = loss.detach().float().item()
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"the loss became {loss_value} at epoch {epoch + 1}, batch {i + 1}; lower the learning "
                        f"rate (now {optimizer.param_groups[-1]['lr']:.3g}) or use --precision fp32. No "
                        "checkpoint was written for this epoch; the last good one is untouched.")
                step_loss += loss_value / cfg.accum_steps
            if last_micro:
                judged = dist.all_reduce_sum([step_loss])[0] / dist.world if dist.enabled else step_loss
                step_loss = 0.0
                if not cfg.loss_guard or s.guard.check(judged):
                    set_lr(optimizer, lr_at(step, s.total_steps, cfg.schedule, s.warmup, power=cfg.poly_power)
                           * s.guard.scale)
                    if cfg.grad_clip > 0:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    if s.lookahead is not None:
                        s.lookahead.update(ckpt.unwrap(model), progress=(step + 1) / s.total_steps)
                    if s.ema is not None:
                        s.ema.update(ckpt.unwrap(model))
                else:
                    self._loss_jumped(judged, s.guard, epoch, i)
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if s.lookahead is not None and step == s.total_steps:
                    s.lookahead.finish(ckpt.unwrap(model))  # the schedule's last step (even a skipped one)
                self.clock.event("step")
                if budget is not None:
                    self._budget_step(s, budget, epoch, step - epoch * s.steps_per_epoch, t_epoch)
            n = y.shape[0]
            total_loss += loss.detach().float() * n
            for k, v in task.train_counts(out, y).items():
                counts[k] = counts[k] + v if k in counts else v
            seen += n
            if show and i % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if budget is not None and (budget.out_of_time or step >= s.total_steps):
                break  # the plan ends inside this epoch, or its rest would not leave time for the end
        if budget is not None and step > epoch * s.steps_per_epoch:  # the recent epochs' speed, for the next plan
            budget.speeds = [*budget.speeds, (self.clock.now() - t_epoch, step - epoch * s.steps_per_epoch)]
            recent = budget.speeds[-SPEED_EPOCHS:]
            budget.step_s = dist.all_reduce_max(sum(t for t, _ in recent) / sum(n for _, n in recent))
        if seen == 0:
            raise DataError("the training loader produced no batch; the training split is too small for the batch "
                            "size (lower --batch-size).")
        names = sorted(counts)
        values = [total_loss.item(), float(seen), *(float(counts[k].item()) for k in names)]
        if dist.enabled:
            values = dist.all_reduce_sum(values)
        loss_sum, n_seen, *rest = values
        return task.train_metrics(loss_sum / n_seen, dict(zip(names, rest)), int(n_seen)), int(n_seen)

    def _loss_jumped(self, loss: float, guard: LossGuard, epoch: int, batch: int) -> None:
        """Say that the loss guard skipped a step (the first few times; later ones are counted in the report)."""
        msg = (f"the training loss jumped to {loss:.4g} at epoch {epoch + 1}, batch {batch + 1} (the median of the "
               f"recent steps is {guard.reference():.4g}): the step was skipped and the learning rate halved (now "
               f"x{guard.scale:g} of the schedule)")
        if guard.skipped <= 3:
            self.say(f"note: {msg}")
            self.notes.append(msg)
        elif guard.skipped == 4:
            self.say("note: the loss guard skips further steps without a note; the report counts them")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, s: _Setup, features: bool = False) -> Evaluation:
        """The task's metrics over ``loader``, computed by all processes together: each evaluates its batches;
        integer counts are summed and per-batch parts put back in batch order, so the numbers are exactly those
        of one process with the same batches. Every rank gets the metrics; rank 0 also the details."""
        task, dist = self.task, self.dist
        t0 = time.perf_counter()
        model.eval()
        counts: dict[str, np.ndarray] = {}
        parts: list[tuple[int, Any]] = []
        ids = loader.batch_ids() if hasattr(loader, "batch_ids") else None
        for j, (x, y) in enumerate(loader):
            x, y = (x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)) if features else \
                task.to_device(x, y, s.device, s.channels_last)
            res = task.eval_batch(model, x, y, s.precision, s.device)
            for k, v in (res.counts or {}).items():
                counts[k] = counts[k] + v if k in counts else np.array(v, copy=True)
            parts.append((ids[j] if ids is not None else j, res.part))
        if dist.enabled:
            gathered = dist.gather_object((counts, parts))
            if gathered is None:
                return Evaluation(dist.broadcast_object(None))
            counts = {}
            for c, _ in gathered:
                for k, v in c.items():
                    counts[k] = counts[k] + v if k in counts else v
            parts = sorted((p for _, ps in gathered for p in ps), key=lambda t: t[0])
            batch_ids = [b for b, _ in parts]
            if batch_ids != list(range(len(batch_ids))):
                raise TrainingError(f"distributed evaluation returned batches {batch_ids}; expected each batch once.")
        result = task.eval_metrics(counts, [p for _, p in parts])
        result.seconds = time.perf_counter() - t0
        if dist.enabled:
            dist.broadcast_object(result.metrics)
        return result

    # ---- resume and bookkeeping

    def _restore(self, s: _Setup) -> tuple[int, float, int, list[dict[str, float]]]:
        st = self.state
        assert st is not None
        ckpt.unwrap(s.model).load_state_dict(st["model"])
        s.optimizer.load_state_dict(st["optimizer"])
        if st.get("scaler"):
            s.scaler.load_state_dict(st["scaler"])
        if s.ema is not None and st.get("ema"):
            s.ema.load_state_dict(st["ema"])
        if s.lookahead is not None and st.get("lookahead"):
            s.lookahead.load_state_dict(st["lookahead"])
        s.guard.load_state_dict(st.get("guard"))
        ckpt.set_rng_state(st["rng"])
        return int(st["epoch"]), float(st["best"]), int(st["best_epoch"]), list(st["history"])

    @staticmethod
    def _ema_model(model: nn.Module, ema: EMA) -> nn.Module:
        m = copy.deepcopy(ckpt.unwrap(model))
        m.load_state_dict(ema.shadow)
        return m

    def _rescale_on_new_world(self, optimizer: torch.optim.Optimizer, strategy: str) -> None:
        """A run resumed with another number of processes: say so, and keep the default learning rate
        scaled to the new global batch (the optimiser state restored the old one)."""
        assert self.state is not None
        old, new = int(self.state.get("world", 1)), self.dist.world
        if old == new:
            return
        factor = 1.0 if self.cfg.lr is not None else \
            self.task.default_lr(strategy, new) / self.task.default_lr(strategy, old)
        if factor != 1.0:
            for g in optimizer.param_groups:
                g["base_lr"] *= factor
        msg = (f"resumed with {new} process(es) where the run was saved with {old}: the global batch is now "
               f"{self.cfg.batch_size * new * self.cfg.accum_steps}"
               + (f" and the default learning rate x{factor:g}" if factor != 1.0 else "")
               + "; training continues from the last completed epoch, but not bit-identically to an "
                 "uninterrupted run")
        self.say(msg)
        self.notes.append(msg)

    def _cache_views(self, model: nn.Module, data: TaskData, n_frozen: int, precision: Precision) -> int:
        """How many augmented views of the training set to cache for the frozen-body epochs (0: none)."""
        from .features import cache_bytes, memory_budget

        views = min(getattr(self.cfg, "cache_views", 0), n_frozen)
        if views == 0 or not self.task.supports_feature_cache:
            return 0
        reason = self.task.feature_cache_refusal()
        if reason:
            self.notes.append(f"frozen-body epochs ran the backbone every epoch: {reason}")
            return 0
        if not hasattr(data.train, "view_batches") or not hasattr(model, "forward_head"):
            return 0
        need = cache_bytes(data.num_train, ckpt.unwrap(model).num_features, views, precision)
        budget = memory_budget()
        if need > budget:
            msg = (f"frozen-body epochs ran the backbone every epoch: caching {views} view(s) of the features "
                   f"would take {need / 1024**3:.1f} GiB, over the {budget / 1024**3:.1f} GiB allowed "
                   "(lower --cache-views)")
            self.say(msg)
            self.notes.append(msg)
            return 0
        self.notes.append(f"frozen-body epochs trained the head on cached backbone features ({views} augmented "
                          f"view(s) of the training set; --cache-views 0 turns this off)")
        return views

    # ---- the end

    def _best_model(self, best_path: Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
        """The best checkpoint, rebuilt from its file on every rank (rank 0 reads it and sends the bytes,
        so other machines need not see rank 0's disk)."""
        if not self.dist.enabled:
            return ckpt.load_checkpoint(best_path, device)
        blob = self.dist.broadcast_object(best_path.read_bytes() if self.dist.is_main else None)
        if self.dist.is_main:
            return ckpt.load_checkpoint(best_path, device)
        with tempfile.TemporaryDirectory(prefix="resnet-tune-best-") as tmp:
            path = Path(tmp) / ckpt.BEST
            path.write_bytes(blob)
            return ckpt.load_checkpoint(path, device)

    def _finish(self, run_dir: Path, s: _Setup, history: list[dict[str, float]], best: float,
                best_epoch: int) -> RunResult:
        data = s.data
        if s.guard.skipped:
            self.notes.append(f"the loss guard skipped {s.guard.skipped} step(s) whose loss jumped far above the "
                              f"recent ones; the learning rate ended at x{s.guard.scale:g} of the schedule")
        best_path = run_dir / ckpt.BEST
        split, loader = ("test", data.test) if data.test is not None else ("validation", data.val)
        if split == "validation" and self._best_val is not None and self._best_val[0] == best_epoch:
            # the best checkpoint holds the weights evaluated on this split at its epoch: their predictions stand
            # (a second pass would only cost time), and rank 0 alone writes the report
            if not self.dist.is_main:
                return RunResult(run_dir, best, best_epoch, history, best_path, None, self.notes)
            rec = ckpt.read_record(best_path)
            evaluation = self._best_val[1]
        else:
            model, rec = self._best_model(best_path, s.device)
            evaluation = self.evaluate(model, loader, s)
            self.clock.event("final_eval")
            if not self.dist.is_main:
                return RunResult(run_dir, best, best_epoch, history, best_path, None, self.notes)
        assert evaluation is not None
        report, summary = self.task.report(run_dir, data, history, best, best_epoch, rec, split, evaluation,
                                           self.notes)
        self.say(summary)
        self.say(f"done: model {best_path}, report {run_dir / 'report.md'}")
        return RunResult(run_dir, best, best_epoch, history, best_path, report, self.notes)


def _debug_die_at(dist: D.Dist, epoch: int, resumed: bool = False) -> None:
    """Test hooks: ``RESNET_TUNE_DEBUG_DIE_AT=RANK:EPOCH`` kills that rank at the start of that epoch (1-based),
    on a job's first attempt only (a torchrun restart does not die again); ``RESNET_TUNE_DEBUG_INTERRUPT_AT=EPOCH``
    interrupts a run that was not resumed as Ctrl-C would."""
    at_epoch = os.environ.get("RESNET_TUNE_DEBUG_INTERRUPT_AT")
    if at_epoch and not resumed:
        if not at_epoch.strip().isdigit():
            raise ConfigError(f"RESNET_TUNE_DEBUG_INTERRUPT_AT={at_epoch!r} must be an epoch number, e.g. 2.")
        if int(at_epoch) == epoch + 1:
            raise KeyboardInterrupt
    spec = os.environ.get("RESNET_TUNE_DEBUG_DIE_AT")
    if not spec or dist.launch.restart_count > 0:
        return
    rank, _, at = spec.partition(":")
    if not (rank.strip().isdigit() and at.strip().isdigit()):
        raise ConfigError(f"RESNET_TUNE_DEBUG_DIE_AT={spec!r} must be RANK:EPOCH, e.g. 1:2.")
    if int(rank) == dist.rank and int(at) == epoch + 1:
        print(f"rank {dist.rank}: exiting at the start of epoch {epoch + 1} (RESNET_TUNE_DEBUG_DIE_AT={spec})",
              file=sys.stderr, flush=True)
        os._exit(1)


def _debug_samples(dist: D.Dist, loader: Any, epoch: int) -> None:
    """Test hook: ``RESNET_TUNE_DEBUG_SAMPLES=DIR`` writes the indices this rank trains on in this epoch."""
    folder = os.environ.get("RESNET_TUNE_DEBUG_SAMPLES")
    if not folder or not hasattr(loader, "epoch_indices"):
        return
    loader.set_epoch(epoch)
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"rank{dist.rank}-epoch{epoch + 1}.txt").write_text(
        "".join(f"{i}\n" for i in loader.epoch_indices()))


def fit(cfg: RunConfig | None = None, *, resume: str | Path | None = None, quiet: bool = False,
        **options: Any) -> RunResult:
    """Deprecated: use :func:`resnet_tune.fit` (the same arguments, plus ``task=``)."""
    import warnings

    from ..tasks import fit as task_fit  # the one import upwards, for this deprecated name only

    warnings.warn("resnet_tune.engine.trainer.fit is deprecated and will be removed; use resnet_tune.fit",
                  DeprecationWarning, stacklevel=2)
    return task_fit(cfg, resume=resume, quiet=quiet, **options)
