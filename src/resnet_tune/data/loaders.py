"""Batches for training and evaluation.

Two paths with the same evaluation preprocessing:

* ``MemoryLoader`` for small images (CIFAR-size, digits), and on a CPU up to 160 px: every image is
  decoded and resized once into one uint8 tensor (on the GPU when there is one) and augmented in
  batches there, with no per-image Python in the hot loop (as airbench's ``CifarLoader``): random
  crop with reflect padding and flip, or (``scale``) a random resized crop and flip.
* ``FileDataset`` + ``torch.utils.data.DataLoader`` for folders of ordinary images: decoding and
  torchvision v2 transforms in worker processes.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset

from .options import FLIPS
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
        from .images import load_image

        path, label = self.samples[i]
        img = load_image(path)
        if self.seed is None:
            return self.transform(img), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
            return self.transform(img), label


def decode_to_memory(samples: Sequence[tuple[str, int]], pp: Preprocessing, workers: int | None = None,
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every image once, resized and centre-cropped for ``pp``: uint8 (N, 3, S, S) and labels.

    The images are written straight into one channels_last tensor (the layout :class:`MemoryLoader` keeps), so
    memory peaks at the dataset's size, not twice it."""
    from .images import load_image

    geo = geometry_transform(pp)
    size = pp.input_size
    pixels = torch.empty(len(samples), size, size, 3, dtype=torch.uint8)

    def one(i: int) -> None:
        pixels[i] = geo(load_image(samples[i][0])).permute(1, 2, 0)

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(one, range(len(samples)))
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=len(samples), desc="decode", unit="img", leave=False)
        for _ in it:
            pass
    x = pixels.permute(0, 3, 1, 2)
    y = torch.tensor([s[1] for s in samples], dtype=torch.long)
    return x, y


def draw_crop_flip(n: int, pad: int, generator: torch.Generator, flip: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Random crop offsets (dy, dx) in ``[0, 2 * pad]`` and flip flags for ``n`` images."""
    dev = generator.device
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    mask = torch.rand(n, generator=generator, device=dev) < 0.5 if flip else None
    return dy, dx, mask


#: aspect ratios (width / height) of a random resized crop, log-uniform between these (torchvision's default)
CROP_RATIO = (3 / 4, 4 / 3)


def draw_resized_crop(n: int, scale: tuple[float, float], generator: torch.Generator, flip: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random resized crop boxes ``(x0, y0, w, h)``, in fractions of the stored image's side, and flip flags for
    ``n`` images: the area a uniform share in ``scale`` of the image's, the aspect ratio log-uniform in
    :data:`CROP_RATIO` narrowed to the ratios at which that area fits in the image, the position uniform. As
    torchvision's ``RandomResizedCrop`` except that the ratio is drawn where the box fits (torchvision draws again,
    up to ten times, then falls back to a centre crop), so every box has the drawn area."""
    dev = generator.device
    area = torch.empty(n, device=dev).uniform_(scale[0], scale[1], generator=generator)
    # w = sqrt(area * r) <= 1 and h = sqrt(area / r) <= 1 when area <= r <= 1 / area
    lo = area.log().clamp(min=math.log(CROP_RATIO[0]))
    hi = (-area.log()).clamp(max=math.log(CROP_RATIO[1]))
    ratio = (lo + (hi - lo) * torch.rand(n, generator=generator, device=dev)).exp()
    w, h = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)  # clamp: rounding only
    x0 = torch.rand(n, generator=generator, device=dev) * (1 - w)
    y0 = torch.rand(n, generator=generator, device=dev) * (1 - h)
    mask = torch.rand(n, generator=generator, device=dev) < 0.5 if flip else None
    return torch.stack([x0, y0, w, h], 1), mask


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor | None, size: int,
                 mean: Sequence[float], std: Sequence[float], index: torch.Tensor | None = None,
                 channels_last: bool = False) -> torch.Tensor:
    """Each image of a uint8 batch (``x[index]`` with ``index``) cropped to its box (:func:`draw_resized_crop`),
    resized to ``size`` x ``size`` (bilinear, pixel centres as ``F.interpolate(align_corners=False)``, no
    antialiasing) and flipped where ``mask``, then normalised as
    :func:`~resnet_tune.data.transforms.normalize_batch`: all images in one ``grid_sample`` call. A box on whole
    pixels at the stored scale gives those pixels (up to float rounding). The sampling grid is built element by
    element (not by a batched matrix product), so an image's crop does not depend on the batch it is in."""
    import torch.nn.functional as F

    src = (x[index.to(x.device)] if index is not None else x).float()
    x0, y0, w, h = (v[:, None] for v in boxes.to(src.device, torch.float32).unbind(1))
    # output pixel centres in [-1, 1], mapped into each box (mirrored where flipped)
    base = (torch.arange(size, device=src.device, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    sx = torch.where(mask.to(src.device)[:, None], -w, w) if mask is not None else w
    gx = (2 * x0 + w - 1) + sx * base  # (n, size)
    gy = (2 * y0 + h - 1) + h * base
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # the layout before the in-place normalisation: one float copy, not two
    out = out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return normalize_batch(out, mean, std)  # in place on `out` (a float tensor of our own)


def _reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    """Indices outside ``[0, size)`` mirrored back in, as ``F.pad(mode="reflect")`` does (for |i| < size)."""
    i = i.abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


def crop_flip(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor, mask: torch.Tensor | None,
              index: torch.Tensor | None = None) -> torch.Tensor:
    """Crop each image of a uint8 batch at its offset after reflect padding, and flip where ``mask``.

    With ``index``, the batch is ``x[index]`` (picked in the same gather). One gather of whole pixels does it all
    (the padding is folded into the indices and the flip into the column order; from a channels_last ``x`` the
    pixels are rows of one contiguous table), and the result is channels_last in memory: a quarter of the traffic
    of padding a float copy. Values equal ``F.pad(x, reflect)`` + crop + flip exactly.
    """
    _, c, h, w = x.shape
    dev = x.device
    n = len(dy)
    rows = torch.arange(h, device=dev)[None, :].expand(n, h)
    cols = torch.arange(w, device=dev)[None, :].expand(n, w)
    if pad > 0:
        rows = _reflect(dy.to(dev)[:, None] - pad + rows, h)
        cols = _reflect(dx.to(dev)[:, None] - pad + cols, w)
    if mask is not None:
        cols = torch.where(mask.to(dev)[:, None], cols.flip(1), cols)
    first = (index.to(dev) if index is not None else torch.arange(n, device=dev)) * (h * w)
    pixels = (first[:, None, None] + rows[:, :, None] * w + cols[:, None, :]).view(-1)
    table = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view when x is channels_last, else one copy
    return table.index_select(0, pixels).view(n, h, w, c).permute(0, 3, 1, 2)


# --- sharding across processes ------------------------------------------------------------------
#
# Training: every rank draws the same (seed, epoch) permutation and cuts it into global batches of
# B * N samples (N ranks, batch size B per rank); rank r takes the r-th block of B samples of each global
# batch, and the samples past the last full global batch are dropped. So step s of the N ranks together
# trains exactly positions [s * B * N, (s + 1) * B * N) of the permutation (the same samples, in the same
# global batches, as one process with batch size B * N), and rank r's batch is the r-th micro-batch one
# process with batch size B and N accumulation steps trains: the same BatchNorm batches too.
# Datasets too small for one batch a rank are split in N equal parts.
#
# Evaluation: the data is cut into batches in order, as one process cuts it; rank r evaluates
# batches r, r + world, ... Every sample is evaluated once, in the same batch as in one process
# (so with the same numerics); the trainer gathers the per-batch results and puts them back in order.


def train_shard(order: torch.Tensor, rank: int = 0, world: int = 1, batch_size: int = 1
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of an epoch's sample order, and the positions of its samples in that order."""
    if world <= 1:
        return order, torch.arange(len(order))
    per = len(order) // world
    if per < batch_size:  # less than one batch a rank: equal parts
        pos = torch.arange(rank * per, (rank + 1) * per)
    else:
        steps = per // batch_size
        block = torch.arange(batch_size)
        pos = (torch.arange(steps)[:, None] * (world * batch_size) + rank * batch_size + block[None, :]).reshape(-1)
    return order[pos], pos


def train_batches(n: int, batch_size: int) -> int:
    """Batches trained from ``n`` samples: the partial last batch is dropped (a batch of one cannot train
    BatchNorm); fewer samples than one batch still give one batch (of two or more)."""
    return n // batch_size if n >= batch_size else int(n >= 2)


def train_seen(n: int, batch_size: int) -> int:
    """How many of a rank's ``n`` samples are trained in an epoch."""
    return train_batches(n, batch_size) * batch_size if n >= batch_size else (n if n >= 2 else 0)


def eval_batch_ids(n: int, batch_size: int, rank: int = 0, world: int = 1) -> range:
    """The global indices of the evaluation batches this rank computes."""
    return range(rank, math.ceil(n / batch_size), max(world, 1))


def eval_shard(n: int, batch_size: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """The sample indices of this rank's evaluation batches, batch after batch."""
    if world <= 1:
        return torch.arange(n)
    parts = [torch.arange(b * batch_size, min((b + 1) * batch_size, n))
             for b in eval_batch_ids(n, batch_size, rank, world)]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)


def crop_padding(side: int, translate: int | None = None) -> int:
    """How far the training crop may move each way, in pixels (reflect padding of that width, then a crop at the
    image's size): ``translate``, or an eighth of the side (4 px at 32, as He et al. 2015) when it is None."""
    pad = max(side // 8, 1) if translate is None else int(translate)
    if not 0 <= pad < side:
        from ..errors import ConfigError

        raise ConfigError(f"--translate {pad} must be at least 0 and smaller than the {side} px input.")
    return pad


class MemoryLoader:
    """Batches from an in-memory uint8 dataset, augmented on the tensor's device.

    Shuffling and augmentation draw from a generator seeded with ``(seed, epoch)``, so an epoch is
    the same whether or not the run was interrupted before it. With ``world > 1`` each rank takes
    a disjoint, equal-size shard of every epoch's permutation (see :func:`train_shard`), and each
    image's crop and flip depend on its position in that permutation, not on the rank: N processes
    with batch size B train on exactly the batches one process with batch size N x B would.

    With ``scale`` (the smallest and largest share of the image's area a crop covers), training batches are random
    resized crops (:func:`draw_resized_crop`) of the stored images, resized to ``size`` x ``size``; the stored
    images are then larger than ``size`` (the centre square of the evaluation resize), and batches without
    augmentation are their centre ``size`` crop (evaluation's crop, to a pixel where the two margins' rounding
    differs). Without it, crops move by ``translate`` px (reflect padding).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool,
                 mean: Sequence[float], std: Sequence[float], seed: int = 0, dtype: torch.dtype = torch.float32,
                 weights: torch.Tensor | None = None, rank: int = 0, world: int = 1,
                 channels_last: bool = False, augment: bool = True, accum_steps: int = 1,
                 translate: int | None = None, flip: str = "random", scale: tuple[float, float] | None = None,
                 size: int | None = None) -> None:
        if flip not in FLIPS:
            raise ValueError(f"flip={flip!r}; choose one of {', '.join(FLIPS)}")
        side = images.shape[-1]
        self.size = side if size is None else int(size)
        if not 0 < self.size <= side:
            raise ValueError(f"size={size} must be positive and at most the stored images' side ({side})")
        if scale is not None and not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale={scale} must be 0 < min <= max <= 1")
        if scale is None and self.size != side:
            raise ValueError("a size other than the stored images' needs scale (random resized crops)")
        self.scale = tuple(scale) if scale is not None else None
        # stored channels_last: a batch's crop and flip is then one gather of whole pixels (see crop_flip)
        self.images, self.labels = images.contiguous(memory_format=torch.channels_last), labels
        self.batch_size = batch_size
        self.train = train
        self.mean, self.std = mean, std
        self.seed = seed
        self.dtype = dtype
        self.weights = weights
        self.rank, self.world = rank, world
        self.channels_last = channels_last
        self.augment = augment
        self.accum_steps = max(int(accum_steps), 1)
        self.epoch = 0
        self.pad = crop_padding(side, translate) if self.scale is None else 0
        self.flip = flip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        """The whole epoch's sample order (the same on every rank)."""
        n = len(self.labels)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, n, replacement=True, generator=g)
        return torch.randperm(n, generator=g)

    def _indices(self) -> torch.Tensor:
        if not self.train:
            return eval_shard(len(self.labels), self.batch_size, self.rank, self.world)
        return train_shard(self._order(), self.rank, self.world, self.batch_size)[0]

    def epoch_indices(self) -> list[int]:
        """The dataset indices this rank trains on in the current epoch (after dropping remainders)."""
        idx = self._indices()
        return idx[:train_seen(len(idx), self.batch_size)].tolist() if self.train else idx.tolist()

    def batch_ids(self) -> list[int]:
        """For evaluation: the global batch index of each batch this rank yields."""
        return list(eval_batch_ids(len(self.labels), self.batch_size, self.rank, self.world))

    def __len__(self) -> int:
        if not self.train:
            return len(eval_batch_ids(len(self.labels), self.batch_size, self.rank, self.world))
        per = len(self.labels) // max(self.world, 1)
        return train_batches(per, self.batch_size)

    def _augment_draws(self, pos: torch.Tensor) -> tuple:
        """Crop offsets and flips for this rank's samples, drawn per optimiser step's *global* batch in order
        (batch size x processes x accumulation steps), so that an image gets the same crop and flip whatever the
        split of that batch into processes and accumulation steps (one process with the whole batch draws
        exactly this, batch after batch)."""
        per = len(pos)
        bs = self.batch_size if per >= self.batch_size else per
        g = torch.Generator(device=self.images.device).manual_seed(self.seed * 7_919 + self.epoch + 1)
        steps = -(-len(self) // self.accum_steps)
        draws = [self._draw(bs * max(self.world, 1) * self.accum_steps, g) for _ in range(steps)]
        if not draws:
            return self._draw(0, g)
        p = pos[:len(self) * bs].to(g.device)
        return tuple(torch.cat(parts)[p] if parts[0] is not None else None for parts in zip(*draws))

    def _draw(self, n: int, g: torch.Generator) -> tuple:
        """The augmentation of ``n`` images: crop offsets (dy, dx) or boxes (random resized crops), then the flips
        (always last)."""
        if self.scale is not None:
            return draw_resized_crop(n, self.scale, g)
        return draw_crop_flip(n, self.pad, g)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.train:
            idx, pos = train_shard(self._order(), self.rank, self.world, self.batch_size)
        else:
            idx = self._indices()
            pos = None
        idx = idx.to(self.images.device)
        aug = None
        if self.train and self.augment:
            aug = self._augment_draws(pos)
            if self.flip == "alternate":
                aug = (*aug[:-1], self._alternate(idx[:len(aug[0])], self.epoch))
        for b in range(len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            sel = idx[sl]
            yield self._batch(sel, aug, sl)

    def _batch(self, sel: torch.Tensor, aug: tuple | None, pick: slice | torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``sel``, cropped and flipped by the ``pick`` entries of ``aug``, in the model's layout and
        normalised; and their labels."""
        mask = aug[-1][pick] if aug is not None and aug[-1] is not None else None
        if aug is not None and self.scale is not None:
            x = resized_crop(self.images, aug[0][pick], mask, self.size, self.mean, self.std, index=sel,
                             channels_last=self.channels_last)
            return x, self.labels[sel.to(self.labels.device)]
        if aug is not None:
            x = crop_flip(self.images, self.pad, aug[0][pick], aug[1][pick], mask, index=sel)
        else:
            x = self.images[sel]
            if self.size != x.shape[-1]:  # the stored square's centre crop
                from torchvision.transforms.v2.functional import center_crop

                x = center_crop(x, [self.size, self.size])
        # the layout is set on the uint8 batch (a quarter of the bytes); crop_flip's output is already
        # channels_last
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return normalize_batch(x, self.mean, self.std), self.labels[sel.to(self.labels.device)]

    def _alternate(self, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """Alternating flips (airbench, Jordan 2024): each image has a coin drawn once from the seed; it is flipped
        where the coin says in even epochs and the other way in odd ones, so every two epochs show each image both
        ways (random flips leave a quarter of the images unmirrored, or only mirrored, two epochs running)."""
        g = torch.Generator(device=self.images.device).manual_seed(self.seed * 7_919 + 31_337)
        coin = torch.rand(len(self.labels), generator=g, device=self.images.device) < 0.5
        return coin[index.to(coin.device)] ^ bool(epoch % 2)

    def view_len(self) -> int:
        return len(eval_batch_ids(len(self.labels), self.batch_size, self.rank, self.world))

    def view_batches(self, view: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(indices, images, labels) for this rank's share of *all* images, each with a crop and flip drawn
        from (seed, view, index): one augmented view of the dataset, whatever the number of processes
        (for cached backbone features, :mod:`resnet_tune.engine.features`)."""
        n = len(self.labels)
        aug = None
        if self.train and self.augment:
            g = torch.Generator(device=self.images.device).manual_seed(self.seed * 7_919 + 104_729 * (view + 1))
            aug = self._draw(n, g)
            if self.flip == "alternate":
                aug = (*aug[:-1], self._alternate(torch.arange(n, device=self.images.device), view))
        idx = eval_shard(n, self.batch_size, self.rank, self.world).to(self.images.device)
        for b in range(0, len(idx), self.batch_size):
            sel = idx[b:b + self.batch_size]
            yield (sel, *self._batch(sel, aug, sel))


class EpochLoader:
    """A DataLoader whose shuffling and worker seeds depend only on (seed, epoch): exact resume.

    With ``world > 1`` it shards as :class:`MemoryLoader` does (:func:`train_shard`, :func:`eval_shard`). Used
    for file datasets of every task (``FileDataset``, the segmentation pair dataset).
    """

    def __init__(self, dataset: Any, batch_size: int, train: bool, workers: int, device: torch.device, seed: int,
                 weights: torch.Tensor | None, rank: int, world: int) -> None:
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.workers, self.device, self.seed, self.weights = workers, device, seed, weights
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def _indices(self, g: torch.Generator | None = None) -> torch.Tensor:
        n = len(self.dataset)
        if not self.train:
            return eval_shard(n, self.batch_size, self.rank, self.world)
        g = g or self._generator()
        if self.weights is not None:
            order = torch.multinomial(self.weights, n, replacement=True, generator=g)
        else:
            order = torch.randperm(n, generator=g)
        return train_shard(order, self.rank, self.world, self.batch_size)[0]

    def epoch_indices(self) -> list[int]:
        """The dataset indices this rank trains on in the current epoch (after dropping remainders)."""
        idx = self._indices()
        return idx[:train_seen(len(idx), self.batch_size)].tolist() if self.train else idx.tolist()

    def batch_ids(self) -> list[int]:
        """For evaluation: the global batch index of each batch this rank yields."""
        return list(eval_batch_ids(len(self.dataset), self.batch_size, self.rank, self.world))

    def _loader(self) -> torch.utils.data.DataLoader:
        from torch.utils.data import DataLoader, Subset

        g = self._generator()  # the order, then the workers' seeds
        ds = Subset(self.dataset, self._indices(g).tolist())
        drop_last = self.train and len(ds) >= self.batch_size
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=self.workers,
                          pin_memory=self.device.type == "cuda", drop_last=drop_last, generator=g,
                          persistent_workers=False)

    def view_len(self) -> int:
        return len(eval_batch_ids(len(self.dataset), self.batch_size, self.rank, self.world))

    def view_batches(self, view: int):
        """(indices, images, labels) for this rank's share of *all* images, each augmented as in epoch
        ``view`` (the dataset seeds each image's augmentation with (seed, epoch, index)): one view of the
        dataset for cached backbone features (:mod:`.features`)."""
        from torch.utils.data import DataLoader, Subset

        self.set_epoch(view)
        idx = eval_shard(len(self.dataset), self.batch_size, self.rank, self.world)
        dl = DataLoader(Subset(self.dataset, idx.tolist()), batch_size=self.batch_size, shuffle=False,
                        num_workers=self.workers, pin_memory=self.device.type == "cuda")
        pos = 0
        for x, y in dl:
            yield idx[pos:pos + len(y)], x, y
            pos += len(y)

    def __len__(self) -> int:
        n = len(self.dataset)
        if self.train:
            return train_batches(n // max(self.world, 1), self.batch_size)
        return len(eval_batch_ids(n, self.batch_size, self.rank, self.world))

    def __iter__(self):
        for x, y in self._loader():
            if self.train and len(y) < 2:
                continue
            yield x, y
