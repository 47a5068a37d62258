"""Segmentation options: the shared :class:`~resnet_tune.engine.config.RunConfig` (the same names for the same
things as classification) plus what a class for every pixel needs: masks and class tables, the head, the loss,
crops and scale jitter, sliding-window evaluation."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from ...engine.config import RunConfig, option, show
from ...engine.config import from_dict as _from_dict
from ...errors import ConfigError

__all__ = ["CLASS_WEIGHTS", "EVAL_MODES", "HEADS", "SegConfig", "SegmentationConfig", "from_dict", "parse_size"]

HEADS = ("fcn", "deeplabv3", "unet")
CLASS_WEIGHTS = ("none", "median", "inverse")
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
class SegmentationConfig(RunConfig):
    """Everything a segmentation run needs. ``None`` means "choose for me" where documented."""

    # shared options with the defaults that suit segmentation
    data: str | None = option(None, "DIR/train|val|test/images + masks (same file names), or DIR/images + "
                                    "DIR/masks")
    loader: str = option("auto", "memory: decode the data once into RAM; workers: read files in DataLoader "
                                 "workers; auto picks")
    model: str | None = option("resnet18", "backbone: an ImageNet-style ResNet (`resnet-tune models`)")
    pretrained: str | None = option(None, "weights to start from: a resnet-tune checkpoint (classification or "
                                          "segmentation), torchvision:<WEIGHTS>, timm:<name>, hf:<repo>, a URL or a "
                                          "file")
    epochs: int | None = option(None)
    batch_size: int = option(8, "crops per batch (per process)")
    lr: float | None = option(None, "peak learning rate (default: SGD 0.01 x global batch/8, 0.02 from scratch; "
                                    "AdamW 3e-4 / 1e-3)")
    nesterov: bool = option(False)
    weight_decay: float = option(1e-4)
    schedule: str = option("poly")
    warmup_epochs: float = option(0.0)
    output: str | None = option(None, "the run folder (default: runs/seg-<model>-<head>-<date>-<time>)")
    # masks and classes
    classes: str | None = option(None, "class table: classes.txt (id name [r g b] per line) or CSV name,r,g,b "
                                       "(default: one found in DIR)")
    num_classes: int | None = option(None, "number of classes (default: from the class table, else the largest "
                                           "mask label + 1)", range=(1, 256, "between 1 and 256"))
    ignore_index: int = option(255, "mask value left out of the loss and the metrics (CamVid: 11, 'Unlabelled')")
    img_size: Any = option(None, "training crop: one int or H,W (default: the median image size, at most 512)")
    scale_min: float = option(0.5, "smallest scale of the scale jitter")
    scale_max: float = option(2.0, "largest scale of the scale jitter")
    hflip: bool = option(True, "random horizontal flips")
    limit: int | None = option(None, "use at most this many images per split (quick trials)",
                               range=(2, math.inf, "at least 2 images"))
    # model
    head: str = option("deeplabv3", "fcn (torchvision's FCNHead), deeplabv3 (ASPP) or unet (light decoder, for "
                                    "small data)", choices=HEADS)
    output_stride: int | None = option(None, "8, 16 or 32 (default: fcn 8, deeplabv3 16, unet 32); smaller is "
                                             "finer and slower", choices=(None, 8, 16, 32))
    aux: bool = option(False, "auxiliary FCN head on layer3 during training")
    aux_weight: float = option(0.4, "weight of the auxiliary loss", range=(0.0, math.inf, ">= 0"))
    # loss
    class_weights: str = option("none", "loss weights from the training masks: median frequency or inverse "
                                        "frequency", choices=CLASS_WEIGHTS)
    dice: float = option(0.0, "weight of a soft Dice loss added to the cross-entropy (0 = off)",
                         range=(0.0, math.inf, ">= 0"))
    # evaluation
    eval_mode: str = option("full", "validation/evaluation on the full image, or in sliding windows of the crop "
                                    "size", choices=EVAL_MODES)
    eval_overlap: float = option(1 / 3, "overlap of the sliding windows", range=(0.0, 0.999999, "in [0, 1)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "img_size", list(parse_size(self.img_size)) if self.img_size is not None else None)
        if not self.model:
            raise ConfigError("segmentation needs a backbone: --model, e.g. resnet18 or resnet50.")
        if not 0.0 < self.scale_min <= self.scale_max:
            raise ConfigError(f"the scale range must satisfy 0 < scale_min <= scale_max, got {self.scale_min}, "
                              f"{self.scale_max}.")

    @property
    def crop(self) -> tuple[int, int] | None:
        return (int(self.img_size[0]), int(self.img_size[1])) if self.img_size else None


#: The name this configuration had before the one engine.
SegConfig = SegmentationConfig


def from_dict(values: dict[str, Any], source: str = "config") -> SegmentationConfig:
    """Build a config, rejecting unknown keys with a suggestion (dashes and underscores both accepted)."""
    return _from_dict(values, source, cls=SegmentationConfig)
