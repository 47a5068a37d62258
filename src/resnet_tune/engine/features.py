"""Frozen-backbone epochs on cached features.

While the body is frozen (a linear probe, or the first phase of freeze-then-unfreeze) nothing in it
trains and its BatchNorm layers use their running statistics, so an image's pooled features are a fixed
function of the (augmented) image. The trainer computes them once, for ``cache_views`` augmented views of
the training set and for the validation set, and trains the head on them: a head epoch then costs one
matrix multiply per batch instead of a forward pass through the backbone.

- View ``v`` holds every training image with an augmentation of its own: with the file loader exactly
  the one the image gets in epoch ``v`` (:class:`~resnet_tune.data.loaders.FileDataset` seeds it with
  (seed, epoch, index)); the in-memory loader draws each image's crop and flip from (seed, v).
  Epoch ``e`` uses view ``e mod V``.
- Epoch ``e`` trains the same batches, in the same order, as an uncached epoch ``e`` would (the loader's
  own order, looked up in the table). With the file loader and ``V`` at least the number of frozen
  epochs, training on the cache is the same computation as training without it.
- Under torchrun each process computes its share of the rows and the processes exchange them, so every
  process holds the whole table and trains exactly the batches one process would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from .budget import Clock
from .hardware import Precision

# The cache stays out of the way of the data: at most this fraction of the machine's memory.
MAX_MEMORY_FRACTION = 0.25


@dataclass
class FeatureTable:
    """Pooled features of every training image, one (N, C) tensor per view, and the labels."""

    views: list[torch.Tensor]
    labels: torch.Tensor


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the classifier sees: the backbone's globally pooled features."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def cache_bytes(num_images: int, num_features: int, views: int, precision: Precision) -> int:
    per = 2 if precision.amp_dtype is not None else 4
    return num_images * num_features * views * per


def memory_budget() -> int:
    import os

    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * MAX_MEMORY_FRACTION)
    except (ValueError, OSError, AttributeError):  # not on Linux: be modest
        return 2 * 1024**3


@torch.no_grad()
def extract_table(model: nn.Module, loader: Any, views: int, num_images: int, precision: Precision,
                  device: torch.device, dist: Any, progress: Any, target_shape: tuple[int, ...] = ()) -> FeatureTable:
    """Features of all ``num_images`` training images for ``views`` views (each process computes its share).

    Targets are class indices, or float vectors of ``target_shape`` (e.g. a multi-label task's 0/1 rows)."""
    model.eval()
    tables = []
    labels = torch.full((num_images, *target_shape), -1, dtype=torch.float32 if target_shape else torch.long,
                        device=device)
    for v in range(views):
        table: torch.Tensor | None = None
        batches = loader.view_batches(v)
        for idx, x, y in progress(batches, loader.view_len(), f"caching features (view {v + 1}/{views})"):
            x = x.to(device, non_blocking=True)
            with precision.autocast(device):
                f = pooled_features(model, x)
            if table is None:
                table = torch.zeros(num_images, f.shape[1], dtype=f.dtype, device=device)
            idx = idx.to(device)
            table[idx] = f
            labels[idx] = y.to(device, labels.dtype)
        if table is None:  # this process had no rows (more processes than images): learn the width
            table = torch.zeros(num_images, model.num_features, dtype=precision.amp_dtype or torch.float32,
                                device=device)
        tables.append(_share(table, dist))
    return FeatureTable(tables, _share(labels + 1, dist) - 1)  # +1: rows a process did not fill hold 0


def _share(table: torch.Tensor, dist: Any) -> torch.Tensor:
    """Every process's rows on every process: each filled disjoint rows of a zero table, so a sum is exact."""
    if not dist.enabled or dist.world == 1:
        return table
    wide = table.to(torch.float64 if table.dtype == torch.long else torch.float32)
    return dist.all_reduce_tensor_(wide).to(table.dtype)


class CachedTrainLoader:
    """Head-training batches from a :class:`FeatureTable`, in the order of the image loader's epochs."""

    def __init__(self, table: FeatureTable, loader: Any) -> None:
        self.table, self.loader = table, loader
        self.batch_size = loader.batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        feats = self.table.views[self.epoch % len(self.table.views)]
        idx = torch.tensor(self.loader.epoch_indices(), dtype=torch.long, device=feats.device)
        for b in range(len(self)):
            sel = idx[b * self.batch_size:(b + 1) * self.batch_size]
            if len(sel) < 2:
                continue
            yield feats[sel], self.table.labels[sel]


class CachedEvalLoader:
    """The validation loader's batches (and batch ids, for distributed evaluation) as features."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], batch_ids: list[int]) -> None:
        self.batches, self._ids = batches, batch_ids

    def batch_ids(self) -> list[int]:
        return self._ids

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.batches)


@torch.no_grad()
def extract_eval(model: nn.Module, loader: Any, precision: Precision, device: torch.device, progress: Any
                 ) -> CachedEvalLoader:
    model.eval()
    out = []
    for x, y in progress(loader, len(loader), "caching features (validation)"):
        x = x.to(device, non_blocking=True)
        with precision.autocast(device):
            out.append((pooled_features(model, x), y.to(device)))
    ids = loader.batch_ids() if hasattr(loader, "batch_ids") else list(range(len(out)))
    return CachedEvalLoader(out, ids)


@dataclass
class FeatureCache:
    train: CachedTrainLoader
    val: CachedEvalLoader
    seconds: float  # building the whole cache
    views: int
    val_seconds: float = 0.0  # the validation set's pass through the whole network: what an uncached validation costs


def build_cache(model: nn.Module, train_loader: Any, val_loader: Any, views: int, num_images: int,
                precision: Precision, device: torch.device, dist: Any, progress: Any,
                target_shape: tuple[int, ...] = (), clock: Clock | None = None) -> FeatureCache:
    """The cache, timed by the run's ``clock`` (the monotonic one when None), which hears ``features`` after the
    training views and ``features_val`` after the validation set."""
    clock = clock or Clock()
    t0 = clock.now()
    table = extract_table(model, train_loader, views, num_images, precision, device, dist, progress, target_shape)
    clock.event("features")
    t1 = clock.now()
    val = extract_eval(model, val_loader, precision, device, progress)
    clock.event("features_val")
    return FeatureCache(CachedTrainLoader(table, train_loader), val, clock.now() - t0, views, clock.now() - t1)
