"""Segmentation training configuration: one frozen dataclass, from YAML and command-line flags.

It mirrors :class:`resnet_tune.engine.config.TrainConfig` (same names for the same things:
``data``, ``model``, ``pretrained``, ``strategy``, ``epochs``, ``batch_size``, ``lr``, ``device``,
``seed``, ``output`` ...) and adds the segmentation options. Unknown keys are an error.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

from ..engine.config import (OPTIMIZERS, PRECISIONS, SHARED_RANGES, STRATEGIES, check_options, check_ranges,
                             load_yaml, show)
from ..errors import ConfigError

__all__ = ["SegConfig", "from_dict", "load_yaml", "parse_size", "save_yaml"]

HEADS = ("fcn", "deeplabv3", "unet")
CLASS_WEIGHTS = ("none", "median", "inverse")
SCHEDULES = ("poly", "onecycle", "cosine", "constant")
LOADERS = ("auto", "memory", "workers")
EVAL_MODES = ("full", "sliding")


def _side(value: Any) -> int:
    """One side of a size: a whole number, as a number or as text (ValueError otherwise)."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, str):
        return int(value.strip())
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise ValueError


def parse_size(value: Any, what: str = "img_size") -> tuple[int, int] | None:
    """``256``, ``"256"``, ``"240,320"``, ``"240x320"`` or ``[240, 320]`` -> ``(H, W)``; None stays None."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            parts = [p for p in value.lower().replace("x", ",").split(",") if p.strip()]
            if len(parts) not in (1, 2):
                raise ValueError
            h, w = _side(parts[0]), _side(parts[-1])
        elif isinstance(value, (list, tuple)) and len(value) in (1, 2):
            h, w = _side(value[0]), _side(value[-1])
        else:
            h = w = _side(value)
    except ValueError:  # also int() of text with more than 4300 digits
        raise ConfigError(f"{what}={show(value)} is not a size; give one whole number or H,W (e.g. 240,320).") from None
    if h < 16 or w < 16:
        raise ConfigError(f"{what} must be at least 16 pixels on each side, got {h}x{w}.")
    return h, w


@dataclass(frozen=True)
class SegConfig:
    """Everything a segmentation training run needs. ``None`` means "choose for me" where documented."""

    # data
    data: str | None = None  # DIR/<split>/images + DIR/<split>/masks, or DIR/images + DIR/masks
    classes: str | None = None  # class table (classes.txt / CSV name,r,g,b); default: one found in the data folder
    num_classes: int | None = None  # default: from the class table, else the largest label in the masks + 1
    ignore_index: int = 255
    val_fraction: float = 0.2
    img_size: Any = None  # training crop: one int or H,W; default: the median image size, at most 512
    scale_min: float = 0.5  # scale jitter range
    scale_max: float = 2.0
    hflip: bool = True
    loader: str = "auto"  # memory: decode once into RAM; workers: DataLoader workers reading files
    workers: int | None = None
    limit: int | None = None  # use at most this many images per split (quick trials)
    # model
    model: str = "resnet18"
    pretrained: str | None = None
    head: str = "deeplabv3"
    output_stride: int | None = None  # default per head: fcn 8, deeplabv3 16, unet 32
    aux: bool = False  # auxiliary FCN head on layer3 (its loss weighted by aux_weight)
    aux_weight: float = 0.4
    # loss
    class_weights: str = "none"  # median: median-frequency balancing; inverse: inverse frequency
    dice: float = 0.0  # weight of a soft Dice loss added to the cross-entropy
    # optimisation
    strategy: str = "auto"  # auto: freeze_unfreeze with pretrained weights, scratch without
    freeze_epochs: int = 1
    lr_decay: float = 0.5  # discriminative lr: each earlier backbone stage gets this factor of the next one's lr
    epochs: int = 30
    batch_size: int = 8
    lr: float | None = None  # None: SGD 0.01 x batch/8 (0.02 from scratch); AdamW 3e-4 (1e-3 from scratch)
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "poly"
    poly_power: float = 0.9
    warmup_epochs: float = 0.0
    grad_clip: float = 0.0
    early_stop: int = 0
    # evaluation
    eval_mode: str = "full"  # full image, or sliding windows of the crop size (large inputs)
    eval_overlap: float = 1 / 3
    # hardware
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    threads: int | None = None
    # reproducibility and output
    seed: int = 0
    deterministic: bool = False
    output: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_options(self, {"strategy": STRATEGIES, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
                             "precision": PRECISIONS, "head": HEADS, "class_weights": CLASS_WEIGHTS,
                             "loader": LOADERS, "eval_mode": EVAL_MODES})
        check_ranges(self, {**SHARED_RANGES, "poly_power": (0.0, math.inf, ">= 0")})
        if not self.lr_decay > 0:
            raise ConfigError(f"lr_decay must be positive, got {self.lr_decay}.")
        object.__setattr__(self, "img_size", list(parse_size(self.img_size)) if self.img_size is not None else None)
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}.")
        if self.batch_size == 1:
            raise ConfigError("batch_size=1 cannot train BatchNorm layers (a batch of one has no statistics); use a "
                              "batch size of 2 or more.")
        if self.output_stride is not None and self.output_stride not in (8, 16, 32):
            raise ConfigError(f"output_stride must be 8, 16 or 32, got {self.output_stride}.")
        if self.num_classes is not None and not 1 <= self.num_classes <= 256:
            raise ConfigError(f"num_classes must be between 1 and 256, got {self.num_classes}.")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {self.val_fraction}.")
        if not 0.0 < self.scale_min <= self.scale_max:
            raise ConfigError(f"the scale range must satisfy 0 < scale_min <= scale_max, got {self.scale_min}, "
                              f"{self.scale_max}.")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}.")
        if self.dice < 0 or self.aux_weight < 0:
            raise ConfigError("the dice and aux_weight loss weights must be >= 0.")
        if self.limit is not None and self.limit < 2:
            raise ConfigError(f"limit must be at least 2 images, got {self.limit}.")
        if not 0.0 <= self.eval_overlap < 1.0:
            raise ConfigError(f"eval_overlap must be in [0, 1), got {self.eval_overlap}.")
        if self.strategy in ("linear_probe", "freeze_unfreeze") and not self.pretrained:
            raise ConfigError(f"strategy {self.strategy!r} freezes a pretrained backbone; give --pretrained or use "
                              "--strategy scratch.")

    @property
    def crop(self) -> tuple[int, int] | None:
        return (int(self.img_size[0]), int(self.img_size[1])) if self.img_size else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "SegConfig":
        return from_dict({**self.to_dict(), **changes})


def from_dict(values: dict[str, Any], source: str = "config") -> SegConfig:
    """Build a config, rejecting unknown keys with a suggestion (dashes and underscores both accepted)."""
    from ..engine.config import from_dict as _from_dict

    return _from_dict(values, source, cls=SegConfig)


def save_yaml(cfg: SegConfig, path: Any) -> None:
    from pathlib import Path

    import yaml

    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
