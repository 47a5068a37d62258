"""Preprocessing shared by training, evaluation, prediction, export and serving.

A :class:`Preprocessing` record is stored in every checkpoint, so every later use of a model
applies exactly the preprocessing it was trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

SMALL = 64  # at or below this input size, images are treated like CIFAR (pad-crop, no resize-crop)


@dataclass(frozen=True)
class Preprocessing:
    """Input geometry and normalisation of a model.

    Evaluation resizes the shorter side to ``resize`` and takes the centre ``input_size`` crop;
    then scales to [0, 1] and normalises with ``mean`` / ``std``.
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: int
    interpolation: str = "bilinear"

    @classmethod
    def for_size(cls, size: int, mean: Sequence[float], std: Sequence[float]) -> "Preprocessing":
        # The usual 0.875 crop ratio for ImageNet-size inputs; none for small images, whose
        # objects fill the frame (CIFAR, digits).
        resize = size if size <= SMALL else int(round(size / 0.875))
        return cls(size, tuple(float(m) for m in mean), tuple(float(s) for s in std), resize)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        return cls(int(d["input_size"]), tuple(d["mean"]), tuple(d["std"]), int(d["resize"]),  # type: ignore[arg-type]
                   d.get("interpolation", "bilinear"))


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


def geometry_transform(pp: Preprocessing):
    """Resize + centre crop on a PIL image, returning a uint8 CHW tensor (no normalisation)."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.ToImage(),
        v2.Resize(pp.resize, interpolation=_interp(pp.interpolation), antialias=True),
        v2.CenterCrop(pp.input_size),
    ])


def eval_transform(pp: Preprocessing):
    """PIL image -> normalised float tensor, exactly as at evaluation time."""
    from torchvision.transforms import v2

    return v2.Compose([geometry_transform(pp), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(pp.mean), list(pp.std))])


#: random resized crops cover at least this share of the image's area unless told otherwise (``min_scale``)
MIN_SCALE = 0.25


def train_transform(pp: Preprocessing, augment: str = "default", translate: int | None = None,
                    min_scale: float | None = None):
    """PIL image -> augmented, normalised float tensor (for DataLoader workers). Small images (``SMALL`` px or
    less) are randomly translated by up to ``translate`` px (reflect padding; default an eighth of the side), larger
    ones get a random resized crop of at least ``min_scale`` of the area (default :data:`MIN_SCALE`)."""
    from torchvision.transforms import v2

    from .loaders import crop_padding

    size = pp.input_size
    if size <= SMALL:
        geo = [v2.ToImage(), v2.Resize(pp.resize, interpolation=_interp(pp.interpolation), antialias=True),
               v2.CenterCrop(size), v2.RandomCrop(size, padding=crop_padding(size, translate), padding_mode="reflect")]
    else:
        geo = [v2.ToImage(), v2.RandomResizedCrop(size, scale=(min_scale or MIN_SCALE, 1.0),
                                                  interpolation=_interp(pp.interpolation), antialias=True)]
    ops = [*geo, v2.RandomHorizontalFlip()]
    if augment == "trivialaugment":
        ops.append(v2.TrivialAugmentWide())
    elif augment == "randaugment":
        ops.append(v2.RandAugment())
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pp.mean), list(pp.std))]
    return v2.Compose(ops)


def normalize_batch(x: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 NCHW -> normalised float, the same arithmetic as ``ToDtype(scale=True)`` + ``Normalize``."""
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    # in place on one new tensor (which keeps x's memory format): on a CPU every fresh batch-sized
    # allocation costs page faults, and three of them took 12 ms of a 224 px batch of 32, the in-place
    # chain 0.5 ms; the arithmetic is unchanged
    return x.float().div_(255.0).sub_(m).div_(s).to(dtype)
