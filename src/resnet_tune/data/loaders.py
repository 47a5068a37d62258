"""Batches for training and evaluation.

Two paths with the same evaluation preprocessing:

* ``MemoryLoader`` for small images (CIFAR-size, digits): every image is decoded and resized
  once into one uint8 tensor (on the GPU when there is one) and augmented in batches there:
  random crop with reflect padding and flip, with no per-image Python in the hot loop (as
  airbench's ``CifarLoader``).
* ``FileDataset`` + ``torch.utils.data.DataLoader`` for folders of ordinary images: decoding and
  torchvision v2 transforms in worker processes.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset

from .transforms import Preprocessing, geometry_transform, normalize_batch


class FileDataset(Dataset):
    """(path, label) samples decoded with :func:`resnet_tune.data.datasets.load_image`.

    With ``seed`` set, each sample's random augmentation is drawn from a generator seeded with
    (seed, epoch, sample index), so it does not depend on the number of loader workers or
    processes: an interrupted run resumes exactly, and N ranks see what one process would.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable, seed: int | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from .datasets import load_image

        path, label = self.samples[i]
        img = load_image(path)
        if self.seed is None:
            return self.transform(img), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
            return self.transform(img), label


def decode_to_memory(samples: Sequence[tuple[str, int]], pp: Preprocessing, workers: int | None = None,
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every image once, resized and centre-cropped for ``pp``: uint8 (N, 3, S, S) and labels."""
    from .datasets import load_image

    geo = geometry_transform(pp)

    def one(s: tuple[str, int]) -> torch.Tensor:
        return geo(load_image(s[0]))

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(one, samples)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=len(samples), desc="decode", unit="img", leave=False)
        images = list(it)
    x = torch.stack(images) if images else torch.empty(0, 3, pp.input_size, pp.input_size, dtype=torch.uint8)
    y = torch.tensor([s[1] for s in samples], dtype=torch.long)
    return x, y


def batch_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random crop with reflect padding and horizontal flip for a whole uint8 batch at once."""
    n, _, h, w = x.shape
    if pad > 0:
        xp = torch.nn.functional.pad(x.float(), (pad, pad, pad, pad), mode="reflect").to(x.dtype)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # (n, h)
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # (n, w)
        idx_n = torch.arange(n, device=x.device)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(n, generator=generator, device=generator.device).to(x.device) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x.contiguous()


class MemoryLoader:
    """Batches from an in-memory uint8 dataset, augmented on the tensor's device.

    Shuffling and augmentation draw from a generator seeded with ``(seed, epoch)``, so an epoch is
    the same whether or not the run was interrupted before it. With ``world > 1`` each rank takes
    a disjoint, equal-size shard of every epoch's permutation.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool,
                 mean: Sequence[float], std: Sequence[float], seed: int = 0, dtype: torch.dtype = torch.float32,
                 weights: torch.Tensor | None = None, rank: int = 0, world: int = 1,
                 channels_last: bool = False, augment: bool = True) -> None:
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.train = train
        self.mean, self.std = mean, std
        self.seed = seed
        self.dtype = dtype
        self.weights = weights
        self.rank, self.world = rank, world
        self.channels_last = channels_last
        self.augment = augment
        self.epoch = 0
        self.pad = max(images.shape[-1] // 8, 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if not self.train:
            idx = torch.arange(n)
            return idx[self.rank::self.world] if self.world > 1 else idx
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            idx = torch.multinomial(self.weights, n, replacement=True, generator=g)
        else:
            idx = torch.randperm(n, generator=g)
        if self.world > 1:
            per = n // self.world
            idx = idx[self.rank * per:(self.rank + 1) * per]
        return idx

    def __len__(self) -> int:
        n = len(self._indices())
        if not self.train:
            return math.ceil(n / self.batch_size)
        # drop the last partial batch (a batch of one cannot train BatchNorm); a dataset smaller
        # than one batch still gives one batch
        return n // self.batch_size if n >= self.batch_size else int(n >= 2)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices().to(self.images.device)
        g = torch.Generator(device=self.images.device).manual_seed(self.seed * 7_919 + self.epoch + 1)
        steps = len(self)
        for b in range(steps):
            sel = idx[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[sel]
            if self.train and self.augment:
                x = batch_crop_flip(x, self.pad, g)
            x = normalize_batch(x, self.mean, self.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[sel.to(self.labels.device)]
