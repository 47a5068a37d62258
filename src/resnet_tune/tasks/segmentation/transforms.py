"""Joint image/mask augmentation that keeps the two aligned.

Every geometric step is applied to both with the same parameters: the image is resampled
bilinearly (antialiased when shrinking), the mask with nearest-neighbour (``nearest-exact``, whose
pixel centres match the bilinear resampling's, so class boundaries do not shift by half a pixel);
padding fills the image with the mean colour and the mask with the ignore index, so padded pixels
never count in the loss or the metrics.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["joint_train_transform", "resize_pair", "pad_pair", "crop_pair"]


def resize_pair(img: Tensor, mask: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Resize a uint8 (3, H, W) image bilinearly and its (H, W) mask with nearest-neighbour."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    if tuple(img.shape[-2:]) == tuple(size):
        return img, mask
    img = TF.resize(img, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    mask = TF.resize(mask[None], list(size), interpolation=InterpolationMode.NEAREST_EXACT)[0]
    return img, mask


def pad_pair(img: Tensor, mask: Tensor, size: tuple[int, int], fill: Sequence[int], ignore_index: int
             ) -> tuple[Tensor, Tensor]:
    """Pad bottom/right up to at least ``size``: the image with ``fill`` (per channel), the mask with ignore."""
    h, w = img.shape[-2:]
    ph, pw = max(size[0] - h, 0), max(size[1] - w, 0)
    if not ph and not pw:
        return img, mask
    out = torch.empty((img.shape[0], h + ph, w + pw), dtype=img.dtype)
    out[:] = torch.tensor(list(fill), dtype=img.dtype).view(-1, 1, 1)
    out[:, :h, :w] = img
    m = F.pad(mask, (0, pw, 0, ph), value=ignore_index)
    return out, m


def crop_pair(img: Tensor, mask: Tensor, top: int, left: int, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    h, w = size
    return img[:, top:top + h, left:left + w], mask[top:top + h, left:left + w]


def joint_train_transform(img: Tensor, mask: Tensor, *, crop: tuple[int, int], scale: tuple[float, float] = (0.5, 2.0),
                          hflip: bool = True, ignore_index: int = 255, fill: Sequence[int] = (0, 0, 0),
                          generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Scale jitter, pad (mask with ``ignore_index``), random crop to ``crop`` (H, W), horizontal flip.

    ``img`` is uint8 (3, H, W), ``mask`` integer (H, W); returns the same types. The random draws
    come from ``generator`` in a fixed order (scale, top, left, flip).
    """
    g = generator
    lo, hi = scale
    s = lo + (hi - lo) * float(torch.rand((), generator=g)) if hi > lo else lo
    h, w = img.shape[-2:]
    if s != 1.0:
        img, mask = resize_pair(img, mask, (max(1, round(h * s)), max(1, round(w * s))))
    img, mask = pad_pair(img, mask, crop, fill, ignore_index)
    h, w = img.shape[-2:]
    top = int(torch.randint(0, h - crop[0] + 1, (), generator=g))
    left = int(torch.randint(0, w - crop[1] + 1, (), generator=g))
    img, mask = crop_pair(img, mask, top, left, crop)
    if hflip and float(torch.rand((), generator=g)) < 0.5:
        img, mask = img.flip(-1), mask.flip(-1)
    return img.contiguous(), mask.contiguous()
