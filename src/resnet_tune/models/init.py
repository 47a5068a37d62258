"""Data-dependent initialisation: the first convolution set to whiten its input patches (airbench, Jordan 2024;
after Coates & Ng 2011's whitened patch features)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["first_conv", "whiten_first_conv"]


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The convolution that sees the images: the first ``nn.Conv2d`` registered in ``model`` (the stem, or its first
    layer for a deep stem)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise ValueError(f"{type(model).__name__} has no Conv2d layer to whiten.")


@torch.no_grad()
def whiten_first_conv(model: nn.Module, images: torch.Tensor, eps: float = 5e-4, max_patches: int = 500_000,
                      generator: torch.Generator | None = None) -> dict[str, int | float]:
    """Set the first convolution's filters to the principal directions of the ``images``' patches, each scaled by
    one over the square root of its variance (plus ``eps``), in pairs of opposite sign so that a following ReLU keeps
    both halves (airbench's whitening layer). ``images``: a batch as the model sees it (normalised, N x C x H x W).

    A layer with ``2 x D`` or more filters (``D`` = channels x kernel area) gets all ``D`` directions and keeps its
    random init in the filters beyond them; one with fewer gets the ``out_channels // 2`` directions of largest
    variance. The bias, if any, is zeroed. Patches are a random subset of at most ``max_patches`` (``generator``
    chooses them). Returns the share of the patch variance that the set directions capture and their count."""
    conv = first_conv(model)
    if conv.groups != 1 or images.ndim != 4 or images.shape[1] != conv.in_channels:
        raise ValueError(f"cannot whiten {conv}: the images are {tuple(images.shape)} and the layer takes "
                         f"{conv.in_channels} channels in one group.")
    kh, kw = conv.kernel_size
    if images.shape[-2] < kh or images.shape[-1] < kw:
        raise ValueError(f"cannot whiten a {kh}x{kw} convolution from {tuple(images.shape[-2:])} images.")
    x = images.detach().float().cpu()
    patches = nn.functional.unfold(x, (kh, kw), dilation=conv.dilation).transpose(1, 2).reshape(-1, conv.in_channels
                                                                                                * kh * kw)
    if len(patches) > max_patches:
        patches = patches[torch.randperm(len(patches), generator=generator)[:max_patches]]
    patches = patches.double()
    cov = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    d = len(eigenvalues)
    keep = min(d, conv.out_channels // 2)
    if keep == 0:
        raise ValueError(f"cannot whiten {conv}: it has fewer than 2 filters.")
    values, vectors = eigenvalues[d - keep:], eigenvectors[:, d - keep:]  # the directions of largest variance
    filters = (vectors.T / torch.sqrt(values.clamp(min=0) + eps)[:, None]).reshape(keep, conv.in_channels, kh, kw)
    weight = conv.weight
    weight[:2 * keep] = torch.cat([filters, -filters]).to(device=weight.device, dtype=weight.dtype)
    if conv.bias is not None:
        conv.bias.zero_()
    total = float(eigenvalues.clamp(min=0).sum())
    return {"directions": keep, "variance_share": float(values.clamp(min=0).sum()) / total if total else 1.0}
