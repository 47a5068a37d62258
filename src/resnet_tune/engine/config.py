"""Training configuration: one frozen dataclass, loaded from YAML and command-line flags.

Unknown keys are an error (a typo in a config file must not be silently ignored). The resolved
config is saved in every run folder as ``config.yaml`` and in every checkpoint's state.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

STRATEGIES = ("auto", "scratch", "full", "linear_probe", "freeze_unfreeze")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENTS = ("default", "none", "trivialaugment", "randaugment")
BALANCE = ("none", "weighted_loss", "sampler")
LOADERS = ("auto", "memory", "workers")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. ``None`` means "choose for me" where documented."""

    # data
    data: str | None = None  # None: the embedded default (scikit-learn's handwritten digits)
    val_fraction: float = 0.2
    img_size: int | None = None  # None: the model's default (32 for CIFAR presets, 224 otherwise; 32 for the default data)
    loader: str = "auto"  # memory: decode once, augment in batches; workers: DataLoader workers; see cli help
    workers: int | None = None
    augment: str = "default"  # default = crop + flip; or trivialaugment / randaugment on top
    mixup: float = 0.0  # alpha of mixup (0 = off)
    cutmix: float = 0.0  # alpha of cutmix (0 = off)
    balance: str = "none"
    # model
    model: str | None = None  # None: resnet20 for small images, resnet18 otherwise
    pretrained: str | None = None
    drop_path_rate: float = 0.0
    # optimisation
    strategy: str = "auto"  # auto: freeze_unfreeze with pretrained weights, scratch without
    freeze_epochs: int = 1
    cache_views: int = 1  # frozen-body epochs train the head on cached features of this many views (0 = off)
    lr_decay: float = 0.5  # discriminative lr: each earlier stage gets this factor of the next one's lr
    epochs: int = 15
    batch_size: int = 64
    lr: float | None = None  # None: engine.trainer.default_lr (scaled to the global batch; the rule lives there)
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_epochs: float = 0.3  # for cosine; onecycle warms up over its first 25% of steps
    label_smoothing: float = 0.1
    ema: bool = False
    ema_decay: float = 0.999
    grad_clip: float = 0.0  # max global grad norm (0 = off)
    accum_steps: int = 1
    early_stop: int = 0  # epochs without val improvement before stopping (0 = off)
    # hardware
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    threads: int | None = None
    # several processes (torchrun): batch_size is per process; see engine/distributed.py
    sync_bn: bool = False  # BatchNorm statistics over the global batch (SyncBatchNorm; CUDA only)
    dist_timeout: float = 10.0  # minutes a collective waits for the other processes before the run stops
    # reproducibility and output
    seed: int = 0
    deterministic: bool = False
    output: str | None = None  # the run folder itself; None: runs/<model>-<date>-<time>
    progress: bool = True
    tensorboard: bool = False

    def __post_init__(self) -> None:
        choices = {"strategy": STRATEGIES, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
                   "precision": PRECISIONS, "augment": AUGMENTS, "balance": BALANCE, "loader": LOADERS}
        for key, allowed in choices.items():
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(allowed)}.")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "accum_steps": self.accum_steps}
        for key, value in positive.items():
            if int(value) < 1:
                raise ConfigError(f"{key} must be at least 1, got {value}.")
        if self.batch_size == 1:
            raise ConfigError("batch_size=1 cannot train BatchNorm layers (a batch of one has no statistics); "
                              "use a batch size of 2 or more.")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {self.val_fraction}.")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}.")
        if self.img_size is not None and self.img_size < 8:
            raise ConfigError(f"img_size must be at least 8 pixels, got {self.img_size}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError("label_smoothing must be in [0, 1).")
        if not self.dist_timeout > 0:
            raise ConfigError(f"dist_timeout must be a positive number of minutes, got {self.dist_timeout}.")
        if self.freeze_epochs < 0:
            raise ConfigError("freeze_epochs must be >= 0.")
        if self.cache_views < 0:
            raise ConfigError(f"cache_views must be >= 0 (0 turns the feature cache off), got {self.cache_views}.")
        if self.strategy in ("linear_probe", "freeze_unfreeze") and not self.pretrained:
            raise ConfigError(f"strategy {self.strategy!r} freezes a pretrained backbone; give --pretrained "
                              "or use --strategy scratch.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return from_dict({**self.to_dict(), **changes})


def from_dict(values: dict[str, Any], source: str = "config", cls: type = TrainConfig) -> Any:
    """Build a config (``cls``, a dataclass), rejecting unknown keys with a suggestion; dashes and
    underscores both accepted."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    clean: dict[str, Any] = {}
    for key, value in values.items():
        k = str(key).replace("-", "_")
        if k not in known:
            close = difflib.get_close_matches(k, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown option {key!r} in {source}{hint}.")
        clean[k] = value
    try:
        return cls(**clean)
    except TypeError as err:  # pragma: no cover - guarded above
        raise ConfigError(str(err)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {p} is not valid YAML: {err}".splitlines()[0] + ".") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of option: value.")
    return data


def save_yaml(cfg: TrainConfig, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
