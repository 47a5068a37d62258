"""Every task by name, and :func:`fit`, which trains any of them. Importing this module registers every task's
predictor, so ``Predictor(checkpoint)`` (also ``resnet_tune.Predictor``) returns the right one for any checkpoint.

:func:`fit` trains any task: ``fit(data="photos/")``, ``fit(task="segmentation", data="camvid/")``, or
``fit(resume="runs/x")`` (the task is read from the run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..engine import checkpoint as ckpt
from ..engine.budget import Clock
from ..engine.config import RunConfig, from_dict
from ..engine.task import Task
from ..engine.trainer import RunResult, Trainer
from ..errors import ConfigError
from ..inference.predictor import Predictor
from .classification.config import ClassificationConfig
from .classification.predictor import ClassificationPredictor
from .classification.task import ClassificationTask
from .multilabel.config import MultiLabelConfig
from .multilabel.predictor import MultiLabelPredictor
from .multilabel.task import MultiLabelTask
from .segmentation.config import SegmentationConfig
from .segmentation.predictor import SegmentationPredictor
from .segmentation.task import SegmentationTask

__all__ = ["TASKS", "ClassificationConfig", "ClassificationPredictor", "ClassificationTask", "MultiLabelConfig",
           "MultiLabelPredictor", "MultiLabelTask", "Predictor",
           "SegmentationConfig", "SegmentationPredictor", "SegmentationTask", "fit", "get_task"]

#: Every task by the name its runs and checkpoints record.
TASKS: dict[str, type[Task]] = {t.name: t for t in (ClassificationTask, SegmentationTask, MultiLabelTask)}


def get_task(name_or_config: str | RunConfig) -> type[Task]:
    """The task class named ``name`` (``classification``, ``segmentation``, ``multilabel``), or the one a config
    belongs to."""
    if isinstance(name_or_config, RunConfig):
        for task in TASKS.values():  # the exact class first: a task's config may extend another's
            if type(name_or_config) is task.config_class:
                return task
        for task in TASKS.values():
            if isinstance(name_or_config, task.config_class):
                return task
        raise ConfigError(f"no task takes a {type(name_or_config).__name__}.")
    if name_or_config not in TASKS:
        raise ConfigError(f"unknown task {name_or_config!r}; choose one of {', '.join(TASKS)}.")
    return TASKS[name_or_config]


def fit(cfg: RunConfig | None = None, *, task: str = "classification", resume: str | Path | None = None,
        quiet: bool = False, clock: Clock | None = None, started: float | None = None, **options: Any) -> RunResult:
    """Train a model: ``fit(data="photos/", model="resnet50", pretrained="...", epochs=5)``, or
    ``fit(data="photos/", budget="10m")`` to let the trainer plan the epochs that fit ten minutes.

    ``task`` names the task (ignored when ``cfg`` is given: its class says); ``resume`` continues the run in that
    folder from its last completed epoch (its task and options as saved; ``options`` may change only where and
    how visibly it runs). ``clock`` and ``started`` (seconds by that clock; default: now) say where a budget is
    counted from: the command line passes the moment it started, tests a clock of their own.
    """
    timing = {"clock": clock, "started": started}
    if resume is not None:
        state = ckpt.load_state(Path(resume) / ckpt.STATE)
        task_class = get_task(state.get("task", "classification"))
        return Trainer(task_class, resume=resume, quiet=quiet, overrides=options, state=state, **timing).fit()
    task_class = get_task(cfg) if cfg is not None else get_task(task)
    if cfg is None:
        cfg = from_dict(options, source="fit()", cls=task_class.config_class)
    elif options:
        cfg = cfg.replace(**options)
    return Trainer(task_class, cfg, quiet=quiet, **timing).fit()
