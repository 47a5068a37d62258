"""Segmentation losses and class weights (the poly schedule is :func:`resnet_tune.engine.optim.lr_at`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SegLoss", "class_weights", "dice_loss"]


def class_weights(counts: np.ndarray, image_pixels: np.ndarray | None, method: str) -> Tensor | None:
    """Loss weights per class from the training masks' pixel counts.

    ``median`` (median-frequency balancing, Eigen & Fergus 2015): ``freq_c = pixels of c / pixels of
    the images where c appears`` and ``w_c = median(freq) / freq_c``. ``inverse``: ``w_c = total /
    (C * pixels of c)``, normalised to mean 1 over the classes present. Classes without pixels get 0
    (they are never a target). ``none``: None.
    """
    if method == "none":
        return None
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    w = np.zeros_like(counts)
    if not present.any():
        return None
    if method == "median":
        if image_pixels is None:
            raise ValueError("median-frequency weights need the pixels of the images each class appears in")
        freq = counts[present] / np.asarray(image_pixels, dtype=np.float64)[present]
        w[present] = np.median(freq) / freq
    elif method == "inverse":
        w[present] = counts[present].sum() / (present.sum() * counts[present])
        w[present] /= w[present].mean()
    else:
        raise ValueError(f"unknown class weighting {method!r}")
    return torch.tensor(w, dtype=torch.float32)


def dice_loss(logits: Tensor, target: Tensor, ignore_index: int = 255, eps: float = 1.0) -> Tensor:
    """Soft multi-class Dice loss (Milletari et al. 2016) over the labelled pixels.

    ``1 - mean_c (2 |P_c ∩ T_c| + eps) / (|P_c| + |T_c| + eps)`` with softmax probabilities ``P``,
    averaged over the classes present in ``target``; ignored pixels count in neither term.
    """
    c = logits.shape[1]
    valid = (target != ignore_index) & (target >= 0) & (target < c)
    probs = logits.float().softmax(1) * valid.unsqueeze(1)
    onehot = F.one_hot(torch.where(valid, target, 0), c).permute(0, 3, 1, 2).to(probs.dtype) * valid.unsqueeze(1)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    card = probs.sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims) > 0
    if not present.any():
        return logits.sum() * 0.0
    dice = (2 * inter + eps) / (card + eps)
    return 1.0 - dice[present].mean()


class SegLoss(nn.Module):
    """Cross-entropy with an ignore index and optional class weights, plus ``dice`` x Dice loss.

    The cross-entropy is the (weighted) mean over labelled pixels; a batch with no labelled pixel
    gives a zero loss (not NaN).
    """

    def __init__(self, weight: Tensor | None = None, ignore_index: int = 255, dice: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.ignore_index = ignore_index
        self.dice = dice

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        valid = target != self.ignore_index
        if not bool(valid.any()):
            return logits.sum() * 0.0
        loss = F.cross_entropy(logits, target, weight=self.weight, ignore_index=self.ignore_index)
        if self.dice > 0:
            loss = loss + self.dice * dice_loss(logits, target, self.ignore_index)
        return loss
