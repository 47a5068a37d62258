"""Training configuration: one frozen dataclass, loaded from YAML and command-line flags.

Unknown keys are an error (a typo in a config file must not be silently ignored). The resolved
config is saved in every run folder as ``config.yaml`` and in every checkpoint's state.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
import reprlib
import typing
from dataclasses import dataclass
from functools import cache
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


# --------------------------------------------------------------------------------------- checking values
class _ShortRepr(reprlib.Repr):
    """``reprlib`` with small limits, and integers too long for ``repr`` (over 4300 digits) described by size."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxset = 2, 4, 4, 4, 4
        self.maxstring, self.maxlong, self.maxother = 40, 24, 40

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 1000:
            return f"<an integer of about {int(x.bit_length() * math.log10(2)) + 1} digits>"
        return super().repr_int(x, level)


_SHORT = _ShortRepr()


def show(value: Any) -> str:
    """A short repr of a user-given value for an error message, bounded even for huge or deeply nested values
    (a YAML file can build a list of billions of items from a few aliases)."""
    try:
        return _SHORT.repr(value)
    except Exception:  # noqa: BLE001 - a message must never fail on the value it describes
        return f"<a {type(value).__name__}>"


_EXPECTED = {bool: "true or false", int: "a whole number", float: "a number", str: "a text string"}


@cache
def _option_types(cls: type) -> dict[str, tuple[Any, bool]]:
    """``{option: (declared type without None, whether None is allowed)}`` of a config dataclass."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[Any, bool]] = {}
    for f in dataclasses.fields(cls):
        args = typing.get_args(hints[f.name])
        base = next((a for a in args if a is not type(None)), hints[f.name]) if args else hints[f.name]
        out[f.name] = (base, type(None) in args)
    return out


def _number(value: Any, base: type) -> int | float | None:
    """``value`` as an ``int`` or ``float`` (``base``), or None when it is not one.

    Whole floats are read as ints (``epochs: 10.0``) and numbers written as text are read too, because YAML 1.1
    (PyYAML) reads ``lr: 1e-3`` as the text "1e-3"; booleans are not numbers here.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if base is int else float(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    if base is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(value)
        return None
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:  # an integer beyond the float range
            return math.inf
    return None


def check_options(cfg: Any, choices: dict[str, tuple[Any, ...]]) -> None:
    """Check every option of the frozen config dataclass ``cfg`` against its declared type, in place.

    Options with ``choices`` must be one of them; ``bool`` options take true/false; ``int`` and ``float`` options
    take numbers (see :func:`_number`; floats must be finite); ``str`` options take text or a path (stored as
    text); ``Any`` options are left to the config's own checks.  Raises :class:`ConfigError` naming the option,
    the value given and what it must be.
    """
    for name, (base, optional) in _option_types(type(cfg)).items():
        value = getattr(cfg, name)
        if name in choices:
            if value not in choices[name]:
                raise ConfigError(f"{name}={show(value)} is not valid; choose one of {', '.join(choices[name])}.")
            continue
        if base is Any or (value is None and optional):
            continue
        if value is None:
            raise ConfigError(f"option {name} must be {_EXPECTED.get(base, base)}, got an empty value (null).")
        new: Any = None
        if base is bool:
            new = value if isinstance(value, bool) else None
        elif base in (int, float):
            new = _number(value, base)
            if base is float and new is not None and not math.isfinite(new):
                raise ConfigError(f"option {name} must be a finite number, got {show(value)}.")
        elif base is str:
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            new = value if isinstance(value, str) else None
        else:  # pragma: no cover - every option is declared with one of the types above
            continue
        if new is None:
            raise ConfigError(f"option {name} must be {_EXPECTED[base]}, got {show(value)}.")
        if new is not getattr(cfg, name):
            object.__setattr__(cfg, name, new)


def check_ranges(cfg: Any, rules: dict[str, tuple[float, float, str]]) -> None:
    """``rules``: ``{option: (low, high, what)}``; an option that is set (not None) must lie in [low, high]."""
    for name, (low, high, what) in rules.items():
        value = getattr(cfg, name)
        if value is not None and not low <= value <= high:
            raise ConfigError(f"{name} must be {what}, got {show(value)}.")


#: Ranges shared by the classification and segmentation configs (options that are set must lie in them).
SHARED_RANGES: dict[str, tuple[float, float, str]] = {
    "workers": (0, math.inf, "0 or more (0 decodes in the training process)"),
    "threads": (1, math.inf, "at least 1"),
    "seed": (0, 2**32 - 1, "between 0 and 4294967295"),
    "freeze_epochs": (0, math.inf, ">= 0"),
    "momentum": (0.0, 1.0, "between 0 and 1"),
    "weight_decay": (0.0, math.inf, ">= 0"),
    "warmup_epochs": (0.0, math.inf, ">= 0"),
    "grad_clip": (0.0, math.inf, ">= 0 (0 turns clipping off)"),
    "early_stop": (0, math.inf, ">= 0 (0 turns early stopping off)"),
}


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
        check_options(self, {"strategy": STRATEGIES, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
                             "precision": PRECISIONS, "augment": AUGMENTS, "balance": BALANCE, "loader": LOADERS})
        check_ranges(self, {**SHARED_RANGES, "mixup": (0.0, math.inf, ">= 0 (0 turns mixup off)"),
                            "cutmix": (0.0, math.inf, ">= 0 (0 turns cutmix off)"),
                            "ema_decay": (0.0, 1.0, "between 0 and 1")})
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"drop_path_rate must be at least 0 and below 1, got {self.drop_path_rate}.")
        if not self.lr_decay > 0:
            raise ConfigError(f"lr_decay must be positive, got {self.lr_decay}.")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "accum_steps": self.accum_steps}
        for key, value in positive.items():
            if value < 1:
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
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if not self.dist_timeout > 0:
            raise ConfigError(f"dist_timeout must be a positive number of minutes, got {self.dist_timeout}.")
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
            raise ConfigError(f"unknown option {show(key)} in {source}{hint}.")
        clean[k] = value
    return cls(**clean)  # the types and values are checked in the dataclass (check_options)


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist.")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except OSError as err:
        raise ConfigError(f"config file {p} cannot be read ({err.strerror or err}).") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte {err.start} cannot be decoded); save it as "
                          "UTF-8.") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {p} is not valid YAML: {err}".splitlines()[0].rstrip(".:") + ".") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(f"config file {p} nests lists or mappings too deeply; it must hold a mapping of "
                          "option: value.") from None
    except ValueError as err:  # PyYAML's constructors: a 13th month, an integer of more than 4300 digits, ...
        raise ConfigError(f"config file {p} holds a value YAML cannot convert ({show(str(err))}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of option: value.")
    return data


def save_yaml(cfg: TrainConfig, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
