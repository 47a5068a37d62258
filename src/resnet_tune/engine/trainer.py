"""Fine-tuning and training from scratch: ``fit(config)`` reads top to bottom.

setup -> data -> model -> strategy -> optimiser -> (resume) -> epochs -> final evaluation -> report.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import datetime as _dt
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.datasets import VAL_SPLIT_FILE, write_split
from ..errors import ConfigError, DataError, ResnetTuneError, TrainingError
from ..fileio import write_text_atomic
from . import checkpoint as ckpt
from . import distributed as D
from .config import TrainConfig, save_yaml
from .hardware import (Precision, default_channels_last, default_workers, forward_chunked, resolve_device,
                       resolve_precision, seed_everything, set_threads)
from .optim import EMA, lr_at, make_optimizer, param_groups, set_lr

# Options that may differ when a run is resumed: they change where and how visibly it runs, not
# what it computes.
RESUME_OVERRIDES = frozenset({"device", "progress", "workers", "threads", "dist_timeout"})
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"]


def log(msg: str) -> None:
    print(msg, flush=True)


# --- data ---------------------------------------------------------------------------------------

@dataclass
class DataBundle:
    classes: list[str]
    train: Any  # a loader yielding (x, y)
    val: Any
    test: Any | None
    preprocessing: Any  # transforms.Preprocessing
    num_train: int
    val_files: list[str] | None
    test_files: list[str] | None
    description: str
    scan_summary: str | None = None
    scan: Any | None = None
    train_labels: torch.Tensor | None = None
    in_memory: bool = False
    channels_last: bool = False
    notes: list[str] = field(default_factory=list)  # what discovery left out on purpose, one sentence each
    val_samples: list[tuple[str, int]] | None = None  # (file, class index) of the validation split


def _mean_std_for(model_name: str, pretrained_meta: dict | None) -> tuple[tuple, tuple]:
    from ..models import get_preset

    if pretrained_meta and pretrained_meta.get("mean") and pretrained_meta.get("std"):
        return tuple(pretrained_meta["mean"]), tuple(pretrained_meta["std"])
    try:
        p = get_preset(model_name)
        return p.mean, p.std
    except KeyError:
        from ..models import IMAGENET_MEAN, IMAGENET_STD

        return IMAGENET_MEAN, IMAGENET_STD


def choose_model_and_size(cfg: TrainConfig, median_side: float | None) -> tuple[str, int]:
    """The model and input size when the user did not say: small images get a CIFAR ResNet at 32 px."""
    from ..models import get_config

    small = median_side is not None and median_side <= 64
    name = cfg.model or ("resnet20" if small or cfg.data is None else "resnet18")
    if cfg.img_size:
        return name, cfg.img_size
    if cfg.data is None:
        return name, 32
    cfg_in = get_config(name).input_size[-1] if name != "custom" else 224
    if small and cfg_in > 64:
        return name, int(max(32, min(64, round(median_side or 32))))
    return name, cfg_in


def build_data(cfg: TrainConfig, device: torch.device, mean_std: Callable[[str], tuple[tuple, tuple]],
               channels_last: bool, rank: int = 0, world: int = 1) -> tuple[DataBundle, str]:
    """Discover, scan and load the data; returns the bundle and the chosen model name."""
    from ..data.loaders import FileDataset, MemoryLoader, decode_to_memory
    from ..data.transforms import Preprocessing, eval_transform, train_transform

    if cfg.data is None:
        from ..data.default import load_digits_images

        name, size = choose_model_and_size(cfg, None)
        (xt, yt), (xv, yv), classes = load_digits_images(size, cfg.val_fraction, cfg.seed)
        from ..data import default as dflt

        pp = Preprocessing.for_size(size, dflt.MEAN, dflt.STD)
        desc = (f"embedded default: scikit-learn handwritten digits, {len(yt)} train / {len(yv)} held-out images, "
                f"10 classes, at {size}x{size}")
        xt, yt, xv, yv = xt.to(device), yt.to(device), xv.to(device), yv.to(device)
        weights = _balance_weights(yt.cpu(), len(classes)) if cfg.balance == "sampler" else None
        train = MemoryLoader(xt, yt, cfg.batch_size, train=True, mean=pp.mean, std=pp.std, seed=cfg.seed,
                             weights=weights, rank=rank, world=world, channels_last=channels_last)
        val = MemoryLoader(xv, yv, cfg.batch_size * 2, train=False, mean=pp.mean, std=pp.std, rank=rank,
                           world=world, channels_last=channels_last)
        return DataBundle(classes, train, val, None, pp, len(yt), None, None, desc, train_labels=yt.cpu(),
                          in_memory=True, channels_last=channels_last), name

    if cfg.data.startswith("synthetic:"):
        return _synthetic_data(cfg, device, channels_last, rank, world)

    from ..data.datasets import discover
    from ..data.scan import scan

    splits = discover(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    all_samples = splits.train + splits.val + (splits.test or [])
    report = scan(all_samples, splits.classes, workers=cfg.workers, progress=cfg.progress and rank == 0)
    train_s, val_s = report.good(splits.train), report.good(splits.val)
    test_s = report.good(splits.test) if splits.test else None
    if len(train_s) < 2:
        raise DataError(f"the training split of {cfg.data} has {len(train_s)} usable image(s); training needs at "
                        "least two (see the scan report above for skipped files).")
    if not val_s:
        raise DataError(f"the validation split of {cfg.data} has no usable images; add images or raise "
                        "--val-fraction.")
    missing = sorted(set(range(len(splits.classes))) - {y for _, y in train_s})
    if missing:
        raise DataError(f"class(es) {', '.join(splits.classes[i] for i in missing)} have no usable training "
                        "images; add images or remove the class folder(s).")
    median = report.median_size()
    name, size = choose_model_and_size(cfg, float(min(median)) if median else None)
    mean, std = mean_std(name)
    pp = Preprocessing.for_size(size, mean, std)
    labels = torch.tensor([y for _, y in train_s])
    weights = _balance_weights(labels, len(splits.classes)) if cfg.balance == "sampler" else None
    nbytes = (len(train_s) + len(val_s) + len(test_s or [])) * 3 * size * size
    use_memory = cfg.loader == "memory" or (cfg.loader == "auto" and _memory_by_default(device, size, nbytes)
                                            and cfg.augment == "default")
    desc = f"{cfg.data} ({splits.describe()}) at {size}x{size}"
    if use_memory:
        t0 = time.perf_counter()
        xt, yt = decode_to_memory(train_s, pp, progress=cfg.progress and rank == 0)
        xv, yv = decode_to_memory(val_s, pp)
        dev = device
        train = MemoryLoader(xt.to(dev), yt.to(dev), cfg.batch_size, train=True, mean=pp.mean, std=pp.std,
                             seed=cfg.seed, weights=weights, rank=rank, world=world, channels_last=channels_last)
        val = MemoryLoader(xv.to(dev), yv.to(dev), cfg.batch_size * 2, train=False, mean=pp.mean, std=pp.std,
                           rank=rank, world=world, channels_last=channels_last)
        test = None
        if test_s:
            xs, ys = decode_to_memory(test_s, pp)
            test = MemoryLoader(xs.to(dev), ys.to(dev), cfg.batch_size * 2, train=False, mean=pp.mean, std=pp.std,
                                rank=rank, world=world, channels_last=channels_last)
        desc += f"; decoded into memory in {time.perf_counter() - t0:.1f}s"
    else:
        workers = cfg.workers if cfg.workers is not None else default_workers(device)
        ttf = train_transform(pp, cfg.augment)
        etf = eval_transform(pp)
        train = _EpochLoader(FileDataset(train_s, ttf, seed=cfg.seed), cfg.batch_size, True, workers, device, cfg.seed, weights,
                               rank, world)
        val = _EpochLoader(FileDataset(val_s, etf), cfg.batch_size * 2, False, workers, device, cfg.seed, None,
                             rank, world)
        test = (_EpochLoader(FileDataset(test_s, etf), cfg.batch_size * 2, False, workers, device, cfg.seed, None,
                               rank, world) if test_s else None)
    return DataBundle(splits.classes, train, val, test, pp, len(train_s), [p for p, _ in val_s],
                      [p for p, _ in test_s] if test_s else None, desc, report.summary(), report,
                      train_labels=labels, in_memory=use_memory, channels_last=channels_last,
                      notes=list(splits.notes), val_samples=val_s), name


def _memory_by_default(device: torch.device, size: int, nbytes: int) -> bool:
    """``loader=auto``: decode once into memory (and crop and flip in batches) for small images, and on a
    CPU also up to 160 px: there decoding in worker processes competes with the model for the same cores
    (an Imagenette epoch at 128 px on 2 cores: workers 83% of the model-only speed, in memory 101%). Larger
    images, or a set of more than 2 GiB decoded, go through DataLoader workers (RandomResizedCrop + flip)."""
    return nbytes < 2 * 1024**3 and (size <= 64 or (device.type == "cpu" and size <= 160))


def _synthetic_data(cfg: TrainConfig, device: torch.device, channels_last: bool, rank: int, world: int) -> tuple[DataBundle, str]:
    """``data="synthetic:N"``: N random uint8 images of 10 classes in memory, for throughput benchmarks."""
    from ..data.loaders import MemoryLoader
    from ..data.transforms import Preprocessing

    try:
        n = int(cfg.data.split(":", 1)[1])  # type: ignore[union-attr]
    except ValueError:
        raise ConfigError(f"synthetic data is written synthetic:N with N images, got {cfg.data!r}.") from None
    if n < 2:
        raise ConfigError("synthetic:N needs at least two images.")
    name, size = choose_model_and_size(cfg, None if cfg.img_size else 224.0)
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    pp = Preprocessing.for_size(size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    nv = max(2, n // 8)
    train = MemoryLoader(x.to(device), y.to(device), cfg.batch_size, train=True, mean=pp.mean, std=pp.std,
                         seed=cfg.seed, rank=rank, world=world, channels_last=channels_last)
    val = MemoryLoader(x[:nv].to(device), y[:nv].to(device), cfg.batch_size * 2, train=False, mean=pp.mean,
                       std=pp.std, rank=rank, world=world, channels_last=channels_last)
    return DataBundle([str(i) for i in range(10)], train, val, None, pp, n, None, None,
                      f"synthetic: {n} random images at {size}x{size} (for benchmarks)", train_labels=y,
                      in_memory=True, channels_last=channels_last), name


class _EpochLoader:
    """A DataLoader whose shuffling and worker seeds depend only on (seed, epoch): exact resume.

    With ``world > 1`` it shards as :class:`~resnet_tune.data.loaders.MemoryLoader` does
    (:func:`~resnet_tune.data.loaders.train_shard`, :func:`~resnet_tune.data.loaders.eval_shard`).
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
        from ..data.loaders import eval_shard, train_shard

        n = len(self.dataset)
        if not self.train:
            return eval_shard(n, self.batch_size, self.rank, self.world)
        g = g or self._generator()
        if self.weights is not None:
            order = torch.multinomial(self.weights, n, replacement=True, generator=g)
        else:
            order = torch.randperm(n, generator=g)
        return train_shard(order, self.rank, self.world)[0]

    def epoch_indices(self) -> list[int]:
        """The dataset indices this rank trains on in the current epoch (after dropping remainders)."""
        from ..data.loaders import train_seen

        idx = self._indices()
        return idx[:train_seen(len(idx), self.batch_size)].tolist() if self.train else idx.tolist()

    def batch_ids(self) -> list[int]:
        """For evaluation: the global batch index of each batch this rank yields."""
        from ..data.loaders import eval_batch_ids

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
        from ..data.loaders import eval_batch_ids

        return len(eval_batch_ids(len(self.dataset), self.batch_size, self.rank, self.world))

    def view_batches(self, view: int):
        """(indices, images, labels) for this rank's share of *all* images, each augmented as in epoch
        ``view`` (the dataset seeds each image's augmentation with (seed, epoch, index)): one view of the
        dataset for cached backbone features (:mod:`.features`)."""
        from torch.utils.data import DataLoader, Subset

        from ..data.loaders import eval_shard

        self.set_epoch(view)
        idx = eval_shard(len(self.dataset), self.batch_size, self.rank, self.world)
        dl = DataLoader(Subset(self.dataset, idx.tolist()), batch_size=self.batch_size, shuffle=False,
                        num_workers=self.workers, pin_memory=self.device.type == "cuda")
        pos = 0
        for x, y in dl:
            yield idx[pos:pos + len(y)], x, y
            pos += len(y)

    def __len__(self) -> int:
        from ..data.loaders import eval_batch_ids, train_batches

        n = len(self.dataset)
        if self.train:
            return train_batches(n // max(self.world, 1), self.batch_size)
        return len(eval_batch_ids(n, self.batch_size, self.rank, self.world))

    def __iter__(self):
        for x, y in self._loader():
            if self.train and len(y) < 2:
                continue
            yield x, y


def _balance_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    return (1.0 / counts)[labels]


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights normalised to mean 1 (for ``balance=weighted_loss``)."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    w = counts.sum() / (num_classes * counts)
    return w / w.mean()


# --- strategy ----------------------------------------------------------------------------------

def resolve_strategy(cfg: TrainConfig) -> str:
    if cfg.strategy != "auto":
        return cfg.strategy
    return "freeze_unfreeze" if cfg.pretrained else "scratch"


def default_lr(cfg: TrainConfig, strategy: str, world: int = 1) -> float:
    """``cfg.lr``, or the default peak rate: with SGD 0.4 x B/256 from scratch or for a linear probe and
    0.05 x B/256 when fine-tuning the whole network, B the global batch (batch_size per process x processes x
    accum_steps); with AdamW 1e-3 from scratch or for a linear probe, else 3e-4."""
    if cfg.lr is not None:
        return cfg.lr
    head_or_scratch = strategy in ("scratch", "linear_probe")
    if cfg.optimizer == "adamw":
        return 1e-3 if head_or_scratch else 3e-4
    return (0.4 if head_or_scratch else 0.05) * cfg.batch_size * world * cfg.accum_steps / 256


def set_body_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze or unfreeze everything but the classifier; frozen BN layers keep their statistics."""
    body, head = model.body_and_head()
    for block in body:
        for p in block.parameters():
            p.requires_grad_(not frozen)
    for p in head.parameters():
        p.requires_grad_(True)
    model._body_frozen = frozen  # type: ignore[attr-defined]


def train_mode(model: nn.Module) -> None:
    """``model.train()``, except that a frozen body stays in eval mode: its BatchNorm layers keep their
    statistics and stochastic depth is off, so its features are a fixed function of the image (what
    lets the trainer cache them, :mod:`.features`)."""
    model.train()
    if getattr(model, "_body_frozen", False):
        body, _ = model.body_and_head()
        for block in body:
            block.eval()


# --- the loop ----------------------------------------------------------------------------------

@dataclass
class RunResult:
    run_dir: Path
    best_metric: float
    best_epoch: int
    history: list[dict[str, float]]
    checkpoint: Path
    eval_report: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def _mix(x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, g: torch.Generator
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) on a batch; returns x, y_a, y_b, lambda."""
    use_cutmix = cfg.cutmix > 0 and (cfg.mixup <= 0 or torch.rand(1, generator=g).item() < 0.5)
    alpha = cfg.cutmix if use_cutmix else cfg.mixup
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=g))).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=g).to(x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        rh, rw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
        y0, y1, x0, x1 = max(cy - rh // 2, 0), min(cy + rh // 2, h), max(cx - rw // 2, 0), min(cx + rw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, y, y[perm], lam


class Trainer:
    """One training run. ``Trainer(cfg).fit()`` or the :func:`fit` shortcut.

    Under torchrun each process builds its own ``Trainer``; :meth:`fit` joins the process group
    (:mod:`.distributed`), trains its shard of every epoch in DistributedDataParallel, and only rank 0
    writes the run folder. Test hooks (environment variables, for drills and tests):
    ``RESNET_TUNE_DEBUG_SAMPLES=DIR`` makes every rank write the dataset indices it trains on to
    ``DIR/rank<R>-epoch<E>.txt``; ``RESNET_TUNE_DEBUG_DIE_AT=RANK:EPOCH`` makes that rank exit with code 1
    at the start of that (1-based) epoch, on the first attempt of a torchrun job only.
    """

    def __init__(self, cfg: TrainConfig | None = None, *, resume: str | Path | None = None, quiet: bool = False,
                 overrides: dict[str, Any] | None = None) -> None:
        self.resume_dir: Path | None = None
        self.state: dict[str, Any] | None = None
        if resume:
            cfg = self._load_resume(Path(resume), overrides)
        elif cfg is None:
            cfg = TrainConfig(**(overrides or {}))
        self.cfg = cfg
        self.quiet = quiet
        self.notes: list[str] = []
        self.dist = D.Dist()  # one process until fit() joins torchrun's process group
        self._run_dir_path: Path | None = None
        # the last validation pass of this session (predictions on rank 0, None elsewhere), for the report
        self._val_done = False
        self._last_val: tuple[torch.Tensor, torch.Tensor, float] | None = None

    def _load_resume(self, resume_dir: Path, overrides: dict[str, Any] | None) -> TrainConfig:
        state = ckpt.load_state(resume_dir / ckpt.STATE)
        saved = TrainConfig(**state["config"])
        changes = dict(overrides or {})
        bad = sorted(set(changes) - RESUME_OVERRIDES)
        if bad:
            raise ConfigError(f"a resumed run keeps its saved configuration; {', '.join(bad)} cannot change on "
                              f"resume (only {', '.join(sorted(RESUME_OVERRIDES))} can).")
        self.resume_dir, self.state = resume_dir, state
        return saved.replace(**changes, output=str(resume_dir))

    def say(self, msg: str) -> None:
        if not self.quiet and self.dist.is_main:
            log(msg)

    # ---- setup

    def _check_output(self) -> None:
        """Before any work: ``--output`` must not hold another run (decided on rank 0, raised everywhere)."""
        def check() -> None:
            out = Path(self.cfg.output) if self.cfg.output and self.resume_dir is None else None
            if out is not None and (out / ckpt.STATE).exists():
                raise ConfigError(f"{out} already holds a training run; resume it with --resume {out} or choose "
                                  "another --output folder.")

        self.dist.run_on_main(check, "the check of the run folder")

    def _run_dir(self, model_name: str) -> Path:
        """The run folder: decided on rank 0 (its clock names it) and handed to every rank."""
        return Path(self.dist.run_on_main(lambda: str(self.decide_run_dir(model_name)), "the choice of the run folder"))

    def decide_run_dir(self, model_name: str) -> Path:
        """``--output``, the resumed folder, or ``runs/<model>-<date>-<time>``; created here."""
        cfg = self.cfg
        if self.resume_dir is not None:
            return self.resume_dir
        if cfg.output:
            out = Path(cfg.output)
        else:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path("runs") / f"{model_name}-{stamp}"
            pointer = self._restart_pointer()
            if pointer is not None:
                pointer.parent.mkdir(parents=True, exist_ok=True)
                pointer.write_text(str(out))
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create the run folder {out} ({err.strerror or err}); choose another "
                              "--output.") from None
        return out

    def _restart_pointer(self) -> Path | None:
        """Where a torchrun job that may be restarted (--max-restarts) without --output notes its run folder,
        so that the restarted job finds it: runs/.torchrun-<rendezvous id>."""
        launch = self.dist.launch
        if not launch.under_torchrun or launch.max_restarts <= 0 or launch.run_id in ("", "none"):
            return None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in launch.run_id)
        return Path("runs") / f".torchrun-{safe}"

    def _find_restart_state(self) -> str | None:
        """In a job torchrun restarted: the run folder whose last checkpoint to continue from, if any."""
        if self.cfg.output:
            out = Path(self.cfg.output)
        else:
            pointer = self._restart_pointer()
            if pointer is None or not pointer.is_file():
                return None
            out = Path(pointer.read_text().strip())
        return str(out) if (out / ckpt.STATE).is_file() else None

    def prepare(self) -> dict[str, Any]:
        """Device, data, model, strategy and optimiser: everything before the first step."""
        cfg = self.cfg
        dist = self.dist
        if cfg.model:
            from ..models import get_preset

            get_preset(cfg.model)  # a misspelt name stops here, before the data is read
        set_threads(cfg.threads)
        device = dist.device if dist.enabled else resolve_device(cfg.device)
        precision = resolve_precision(cfg.precision, device)
        seed_everything(cfg.seed, cfg.deterministic)

        # data
        pretrained_meta: dict | None = None
        if cfg.pretrained:
            from ..models import get_config
            from ..models.pretrained import resolve_source

            if not cfg.model:
                raise ConfigError("--pretrained needs --model to say which architecture the weights are for "
                                  "(e.g. --model resnet50).")
            state, pretrained_meta = resolve_source(cfg.pretrained, cfg=get_config(cfg.model),
                                                    model_name=cfg.model)
            self._pretrained_state = state
        data, model_name = build_data(cfg, device, lambda n: _mean_std_for(n, pretrained_meta),
                                      cfg.channels_last if cfg.channels_last is not None
                                      else default_channels_last(device),
                                      rank=dist.rank, world=dist.world)
        channels_last = data.channels_last
        self.say(f"data: {data.description}")
        for note in data.notes:
            self.say(f"note: {note}")
            self.notes.append(note)
        if data.scan_summary:
            self.say(data.scan_summary)

        # model
        model = self._build_model(model_name, len(data.classes))
        strategy = resolve_strategy(cfg)
        if not cfg.pretrained:
            self.notes.append("no pretrained weights were given: trained from scratch (pass --pretrained to "
                              "fine-tune)")
            self.say(f"model: {model_name}, training from scratch (no --pretrained given)")
        else:
            self.say(f"model: {model_name}, pretrained from {cfg.pretrained}, strategy {strategy}")
        model = model.to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.sync_bn:
            if not dist.enabled:
                self.notes.append("sync_bn has no effect in a single process")
            elif device.type != "cuda":
                raise ConfigError("--sync-bn needs CUDA GPUs: PyTorch's SyncBatchNorm does not run on CPUs. Drop "
                                  "--sync-bn (each process then normalises over its own batch).")
            else:
                model = dist.convert_sync_bn(model)
        self.say(f"device: {device}, precision {precision.name}, channels_last {channels_last}"
                 + (", compiled" if cfg.compile else "")
                 + (f", {dist.world} processes ({dist.backend})" if dist.enabled else ""))

        # strategy and optimiser
        lr = default_lr(cfg, strategy, dist.world)
        if dist.enabled:
            global_batch = cfg.batch_size * dist.world * cfg.accum_steps
            msg = (f"global batch {global_batch} = batch size {cfg.batch_size} per process x {dist.world} "
                   f"process(es) x {cfg.accum_steps} accumulation step(s); learning rate {lr:.4g}"
                   + (" (the default, scaled to the global batch)" if cfg.lr is None else ""))
            self.say(msg)
            self.notes.append(f"trained with {dist.world} processes: {msg}")
        decay = cfg.lr_decay if strategy == "freeze_unfreeze" else 1.0
        groups = param_groups(model, lr, cfg.weight_decay, decay)
        optimizer = make_optimizer(cfg.optimizer, groups, lr, cfg.momentum, cfg.nesterov, cfg.weight_decay)
        steps_per_epoch = max(len(data.train) // cfg.accum_steps, 1)
        weight = class_weights(data.train_labels, len(data.classes)).to(device) \
            if cfg.balance == "weighted_loss" else None
        return {
            "device": device, "precision": precision, "channels_last": channels_last, "data": data,
            "model": model, "model_name": model_name, "strategy": strategy, "optimizer": optimizer,
            "steps_per_epoch": steps_per_epoch, "total_steps": steps_per_epoch * cfg.epochs,
            "warmup": int(cfg.warmup_epochs * steps_per_epoch),
            "scaler": torch.amp.GradScaler(device.type) if precision.scaler else None,
            "ema": EMA(model, cfg.ema_decay) if cfg.ema else None,
            "criterion": nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing),
            # several processes: wrapped in DDP by fit() once the frozen layers of the epoch are known
            "fwd": None if dist.enabled else (torch.compile(model) if cfg.compile else model),
        }

    def _forward_module(self, model: nn.Module) -> nn.Module:
        """What the training step calls: the model in DDP (only its trainable parameters), maybe compiled."""
        wrapped = self.dist.wrap(model)
        return torch.compile(wrapped) if self.cfg.compile else wrapped

    def fit(self) -> RunResult:
        launch = D.launch_info()
        self.dist = D.setup(resolve_device(self.cfg.device), self.cfg.dist_timeout, launch)
        failed = False
        try:
            return self._fit()
        except BaseException as err:
            failed = True
            if self.dist.enabled and self.dist.world > 1 and not isinstance(err, ResnetTuneError) \
                    and D.is_peer_failure(err):
                run_dir = self._run_dir_path
                saved = run_dir is not None and (run_dir / ckpt.STATE).is_file()
                raise self.dist.failure(err, run_dir if saved else None) from None
            raise
        finally:
            self.dist.cleanup(failed=failed)

    def _fit(self) -> RunResult:
        launch = self.dist.launch
        if launch.restarted and self.state is None:
            found = self.dist.run_on_main(self._find_restart_state, "the search for a checkpoint to resume")
            if found:
                self.cfg = self._load_resume(Path(found), {k: getattr(self.cfg, k) for k in RESUME_OVERRIDES})
                self.say(f"torchrun restarted the job (restart {launch.restart_count} of {launch.max_restarts}): "
                         f"resuming {found} from its last checkpoint")
            else:
                self.say(f"torchrun restarted the job (restart {launch.restart_count} of {launch.max_restarts}); "
                         "no checkpoint to resume yet: starting again"
                         + ("" if self.cfg.output or self._restart_pointer() else
                            " (pass --output so that a restarted job finds its run folder)"))
        dist = self.dist
        self._check_output()
        s = self.prepare()
        cfg = self.cfg
        run_dir = self._run_dir(s["model_name"])
        self._run_dir_path = run_dir
        device, precision, data, model = s["device"], s["precision"], s["data"], s["model"]
        if dist.is_main:
            if data.scan is not None:
                data.scan.write(run_dir)
            if data.val_samples is not None:  # what `resnet-tune evaluate RUN` evaluates on without --data
                write_split(run_dir / VAL_SPLIT_FILE, data.val_samples, data.classes)
        strategy, optimizer, scaler, ema, criterion, fwd = (s["strategy"], s["optimizer"], s["scaler"], s["ema"],
                                                            s["criterion"], s["fwd"])
        steps_per_epoch, total_steps, warmup = s["steps_per_epoch"], s["total_steps"], s["warmup"]

        history: list[dict[str, float]] = []
        start_epoch, best, best_epoch = 0, -math.inf, -1
        if self.state is not None:
            start_epoch, best, best_epoch, history = self._restore(model, optimizer, scaler, ema)
            self._rescale_on_new_world(optimizer, strategy)
            self.say(f"resumed {run_dir} after epoch {start_epoch} (best val acc {best:.4f} at epoch {best_epoch})")
        # the resolved configuration: what "auto" chose is written down (and resumes the same)
        cfg = self.cfg = cfg.replace(model=s["model_name"], img_size=data.preprocessing.input_size)
        tb = _tensorboard(run_dir) if cfg.tensorboard and dist.is_main else None
        if dist.is_main:
            save_yaml(cfg, run_dir / "config.yaml")
            if dist.enabled:
                with (run_dir / "config.yaml").open("a") as f:
                    f.write(f"# trained with {dist.world} processes: global batch "
                            f"{cfg.batch_size * dist.world * cfg.accum_steps} = batch_size {cfg.batch_size} x "
                            f"{dist.world} processes x accum_steps {cfg.accum_steps}\n")

        record_base = dict(classes=data.classes, preprocessing=data.preprocessing.to_dict())
        bad_after = 0
        wrapped: str | None = None  # what the DDP wrapper holds: "model", "frozen" or "head"
        frozen_epochs = cfg.epochs if strategy == "linear_probe" else \
            min(cfg.freeze_epochs, cfg.epochs) if strategy == "freeze_unfreeze" else 0
        views = self._cache_views(model, data, frozen_epochs, precision) if start_epoch < frozen_epochs else 0
        cache: Any = None
        for epoch in range(start_epoch, cfg.epochs):
            _debug_die_at(dist, epoch)
            frozen = epoch < frozen_epochs
            cached = frozen and views > 0
            set_body_frozen(model, frozen)
            if not cached:
                cache = None
            mode = "head" if cached else "frozen" if frozen else "model"
            if dist.enabled and mode != wrapped:
                fwd = None  # drop the old DDP wrapper (and its gradient hooks) before making the new one
                fwd = self.dist.wrap(model.fc) if cached else self._forward_module(model)
                wrapped = mode
            _debug_samples(dist, data.train, epoch)
            t0 = time.perf_counter()
            if cached and cache is None:
                from .features import build_cache

                show = cfg.progress and not self.quiet and dist.is_main and sys.stderr.isatty()
                cache = build_cache(model, data.train, data.val, views, data.num_train, precision, device, dist,
                                    lambda it, n, desc: _progress(it, n, desc, show))
                self.say(f"cached the frozen backbone's features: {data.num_train} training images x {views} "
                         f"view(s) and the validation set in {cache.seconds:.1f}s; the head trains on them")
            step_fwd = fwd if dist.enabled or not cached else model.fc
            train_loss, train_acc, seen = self.train_one_epoch(
                step_fwd, model, cache.train if cached else data.train, optimizer, scaler, ema, criterion,
                precision, device, epoch, steps_per_epoch, total_steps, warmup)
            train_time = dist.all_reduce_max(time.perf_counter() - t0)
            if dist.enabled:  # every rank evaluates (and rank 0 saves) rank 0's BatchNorm statistics
                dist.sync_buffers(ckpt.unwrap(model))
                if ema is not None:
                    names = {n for n, _ in ckpt.unwrap(model).named_buffers()}
                    dist.broadcast_tensors([v for k, v in ema.shadow.items() if k in names])
            eval_model = self._ema_model(model, ema) if ema else model
            if cached:  # the head on the cached validation features: the same numbers, no backbone pass
                val_loss, val_acc = self.evaluate_loss(eval_model.fc, cache.val, precision, device)
            else:
                val_loss, val_acc = self.evaluate_loss(eval_model, data.val, precision, device)
            row = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                   "val_acc": val_acc, "lr": optimizer.param_groups[-1]["lr"],
                   "seconds": time.perf_counter() - t0, "images_per_s": seen / max(train_time, 1e-9),
                   "train_seconds": train_time}
            history.append(row)
            improved = val_acc > best
            if improved:
                best, best_epoch, bad_after = val_acc, epoch + 1, 0
            else:
                bad_after += 1
            if dist.is_main:
                weights_src = eval_model
                extra = {"epoch": epoch + 1, "weights": "ema" if ema else "model", "strategy": strategy,
                         "pretrained": cfg.pretrained}
                metrics = {"val_acc": val_acc, "val_loss": val_loss, "train_loss": train_loss,
                           "train_acc": train_acc}
                ckpt.save_checkpoint(run_dir / ckpt.LAST, weights_src,
                                     ckpt.model_record(weights_src, metrics=metrics, extra=extra, **record_base))
                if improved:
                    ckpt.save_checkpoint(run_dir / ckpt.BEST, weights_src,
                                         ckpt.model_record(weights_src, metrics=metrics, extra=extra, **record_base))
                ckpt.save_state(run_dir / ckpt.STATE, {
                    "config": cfg.to_dict(), "epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch,
                    "model": {k: v.detach().cpu() for k, v in ckpt.unwrap(model).state_dict().items()},
                    "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                    "ema": ema.state_dict() if ema else None, "rng": ckpt.rng_state(), "best": best,
                    "best_epoch": best_epoch, "history": history, "world": dist.world,
                })
                write_metrics(run_dir / "metrics.csv", history)
                if tb is not None:
                    for key, value in row.items():
                        if key != "epoch":
                            tb.add_scalar(key, value, epoch + 1)
                    tb.flush()
            # no process starts the next epoch before this one is saved: a process that fails in it then
            # always leaves a complete checkpoint to resume from
            dist.barrier()
            self.say(f"epoch {epoch + 1}/{cfg.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
                     f"val loss {val_loss:.4f} acc {val_acc:.4f}  lr {row['lr']:.2e}  {row['seconds']:.1f}s  "
                     f"{row['images_per_s']:.0f} img/s" + ("  *" if improved else "") + ("  (frozen body)" if
                                                                                        frozen else "")
                     + (", cached features" if cached else ""))
            if cfg.early_stop and bad_after >= cfg.early_stop:
                self.say(f"early stop: no improvement in validation accuracy for {cfg.early_stop} epochs")
                self.notes.append(f"stopped early after epoch {epoch + 1}")
                break

        fwd = None
        return self._finish(run_dir, data, history, best, best_epoch, device, precision)

    def _cache_views(self, model: nn.Module, data: DataBundle, frozen_epochs: int, precision: Precision) -> int:
        """How many augmented views of the training set to cache for the frozen-body epochs (0: none)."""
        from .features import cache_bytes, memory_budget

        cfg = self.cfg
        views = min(cfg.cache_views, frozen_epochs)
        if views == 0:
            return 0
        if cfg.mixup > 0 or cfg.cutmix > 0:
            self.notes.append("frozen-body epochs ran the backbone every epoch: mixup and cutmix mix images, "
                              "which cached features cannot")
            return 0
        if not hasattr(data.train, "view_batches") or not hasattr(model, "forward_head"):
            return 0
        need = cache_bytes(data.num_train, ckpt.unwrap(model).num_features, views, precision)
        budget = memory_budget()
        if need > budget:
            msg = (f"frozen-body epochs ran the backbone every epoch: caching {views} view(s) of the features "
                   f"would take {need / 1024**3:.1f} GiB, over the {budget / 1024**3:.1f} GiB allowed "
                   "(lower --cache-views)")
            self.say(msg)
            self.notes.append(msg)
            return 0
        self.notes.append(f"frozen-body epochs trained the head on cached backbone features ({views} augmented "
                          f"view(s) of the training set; --cache-views 0 turns this off)")
        return views

    def _rescale_on_new_world(self, optimizer: torch.optim.Optimizer, strategy: str) -> None:
        """A run resumed with another number of processes: say so, and keep the default learning rate
        scaled to the new global batch (the optimiser state restored the old one)."""
        assert self.state is not None
        old, new = int(self.state.get("world", 1)), self.dist.world
        if old == new:
            return
        factor = default_lr(self.cfg, strategy, new) / default_lr(self.cfg, strategy, old)
        if factor != 1.0:
            for g in optimizer.param_groups:
                g["base_lr"] *= factor
        msg = (f"resumed with {new} process(es) where the run was saved with {old}: the global batch is now "
               f"{self.cfg.batch_size * new * self.cfg.accum_steps}"
               + (f" and the default learning rate x{factor:g}" if factor != 1.0 else "")
               + "; training continues from the last completed epoch, but not bit-identically to an "
                 "uninterrupted run")
        self.say(msg)
        self.notes.append(msg)

    def _build_model(self, name: str, num_classes: int) -> nn.Module:
        from ..models import create_model

        cfg = self.cfg
        overrides = {"drop_path_rate": cfg.drop_path_rate} if cfg.drop_path_rate else {}
        model = create_model(name, num_classes=num_classes, **overrides)
        if cfg.pretrained:
            from ..models.pretrained import load_pretrained

            state = getattr(self, "_pretrained_state")
            load_pretrained(model, state, reset_head=True, source=cfg.pretrained)
            del self._pretrained_state
        return model

    def _restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, ema: EMA | None
                 ) -> tuple[int, float, int, list[dict[str, float]]]:
        st = self.state
        assert st is not None
        ckpt.unwrap(model).load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        if ema is not None and st.get("ema"):
            ema.load_state_dict(st["ema"])
        ckpt.set_rng_state(st["rng"])
        return int(st["epoch"]), float(st["best"]), int(st["best_epoch"]), list(st["history"])

    @staticmethod
    def _ema_model(model: nn.Module, ema: EMA) -> nn.Module:
        m = copy.deepcopy(ckpt.unwrap(model))
        m.load_state_dict(ema.shadow)
        return m

    def train_one_epoch(self, fwd: nn.Module, model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer,
                        scaler: Any, ema: EMA | None, criterion: nn.Module, precision: Precision,
                        device: torch.device, epoch: int, steps_per_epoch: int, total_steps: int, warmup: int
                        ) -> tuple[float, float, int]:
        """One epoch of this process's shard; loss, accuracy and images are over all processes."""
        cfg = self.cfg
        dist = self.dist
        train_mode(model)
        loader.set_epoch(epoch)
        # dropout / drop-path: a function of the epoch (and of the rank: each draws its own)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch + 7_919_777 * dist.rank)
        g = torch.Generator().manual_seed(cfg.seed * 31 + epoch)
        step = epoch * steps_per_epoch
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        params = [p for p in model.parameters()]
        show = cfg.progress and not self.quiet and dist.is_main and sys.stderr.isatty()
        bar = _progress(loader, len(loader), f"epoch {epoch + 1}/{cfg.epochs}", show)
        optimizer.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(bar):
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            mixed = cfg.mixup > 0 or cfg.cutmix > 0
            if mixed:
                x, ya, yb, lam = _mix(x, y, cfg, g)
            last_micro = (i + 1) % cfg.accum_steps == 0
            # accumulation: gradients are averaged across processes on the last micro-step only
            with (dist.no_sync(fwd) if dist.enabled and not last_micro else contextlib.nullcontext()):
                with precision.autocast(device):
                    out = fwd(x)
                    loss = (lam * criterion(out, ya) + (1 - lam) * criterion(out, yb)) if mixed \
                        else criterion(out, y)
                if not torch.isfinite(loss.detach()).item():
                    raise TrainingError(
                        f"the loss became {loss.item()} at epoch {epoch + 1}, batch {i + 1}; lower the learning "
                        f"rate (now {optimizer.param_groups[-1]['lr']:.3g}) or use --precision fp32. No "
                        "checkpoint was written for this epoch; the last good one is untouched.")
                (scaler.scale(loss / cfg.accum_steps) if scaler else loss / cfg.accum_steps).backward()
            if last_micro:
                set_lr(optimizer, lr_at(step, total_steps, cfg.schedule, warmup))
                if cfg.grad_clip > 0:
                    if scaler:
                        scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], cfg.grad_clip)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(ckpt.unwrap(model))
                step += 1
            n = y.shape[0]
            total_loss += loss.detach().float() * n
            correct += (out.detach().argmax(1) == y).sum()
            seen += n
            if show and i % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if seen == 0:
            raise DataError("the training loader produced no batch; the training split is too small for the batch "
                            "size (lower --batch-size).")
        if dist.enabled:
            loss_sum, n_correct, n_seen = dist.all_reduce_sum([total_loss.item(), correct.item(), float(seen)])
            return loss_sum / n_seen, n_correct / n_seen, int(n_seen)
        return total_loss.item() / seen, correct.item() / seen, seen

    @torch.no_grad()
    def predict(self, model: nn.Module, loader: Any, precision: Precision, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """:func:`predict_loader` over all processes: each computes its batches, rank 0 puts them back in
        order and returns exactly what one process would; other ranks get ``None``."""
        if not self.dist.enabled:
            return predict_loader(model, loader, precision, device)
        mine = list(zip(loader.batch_ids(), predict_batches(model, loader, precision, device)))
        parts = self.dist.gather_object(mine)
        if parts is None:
            return None
        ordered = sorted((b for part in parts for b in part), key=lambda t: t[0])
        ids = [b for b, _ in ordered]
        if ids != list(range(len(ids))):
            raise TrainingError(f"distributed evaluation returned batches {ids}; expected each batch once.")
        return combine_batches([r for _, r in ordered])

    @torch.no_grad()
    def evaluate_loss(self, model: nn.Module, loader: Any, precision: Precision, device: torch.device
                      ) -> tuple[float, float]:
        def metrics(res: tuple[torch.Tensor, torch.Tensor, float] | None) -> tuple[float, float] | None:
            if res is None:
                return None
            probs, targets, loss = res
            return loss, float((probs.argmax(1) == targets).float().mean()) if len(targets) else float("nan")

        res = self.predict(model, loader, precision, device)
        self._last_val, self._val_done = res, True
        return self.dist.broadcast_object(metrics(res))

    def _best_model(self, best_path: Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
        """The best checkpoint, rebuilt from its file on every rank (rank 0 reads it and sends the bytes,
        so other machines need not see rank 0's disk)."""
        if not self.dist.enabled:
            return ckpt.load_checkpoint(best_path, device)
        blob = self.dist.broadcast_object(best_path.read_bytes() if self.dist.is_main else None)
        if self.dist.is_main:
            return ckpt.load_checkpoint(best_path, device)
        with tempfile.TemporaryDirectory(prefix="resnet-tune-best-") as tmp:
            path = Path(tmp) / ckpt.BEST
            path.write_bytes(blob)
            return ckpt.load_checkpoint(path, device)

    def _finish(self, run_dir: Path, data: DataBundle, history: list[dict[str, float]], best: float,
                best_epoch: int, device: torch.device, precision: Precision) -> RunResult:
        from ..eval import metrics as M
        from ..eval import report as R

        best_path = run_dir / ckpt.BEST
        split, loader, files = ("test", data.test, data.test_files) if data.test is not None else \
            ("validation", data.val, data.val_files)
        last_is_best = bool(history) and history[-1]["epoch"] == best_epoch
        if split == "validation" and last_is_best and self._val_done:
            # the best checkpoint holds the weights just evaluated on this split: their predictions stand
            # (a second pass would only cost time), and rank 0 alone writes the report
            rec = ckpt.read_record(best_path)
            res = self._last_val
        else:
            model, rec = self._best_model(best_path, device)
            res = self.predict(model, loader, precision, device)
        if res is None:  # not rank 0: rank 0 writes the report
            return RunResult(run_dir, best, best_epoch, history, best_path, None, self.notes)
        probs, targets, _ = res
        report = M.classification_report(probs.numpy(), targets.numpy(), data.classes, files=files)
        report["split"] = split
        import json

        (run_dir / "eval.json").write_text(json.dumps(report, indent=2))
        images = {"Training curves": R.plot_curves(history, run_dir / "curves.png").name,
                  "Confusion matrix": R.plot_confusion(np.array(report["confusion_matrix"]), data.classes,
                                                       run_dir / "confusion.png").name}
        worst = R.plot_worst(report["worst"], run_dir / "worst.png") if files else None
        if worst is not None:
            images["Worst-classified images"] = worst.name
        R.write_report(run_dir, title=f"resnet-tune run: {rec['model']}", config=self.cfg.to_dict(), rows=history,
                       eval_report=report, classes=data.classes, scan_summary=data.scan_summary, notes=self.notes,
                       images=images)
        self.say(f"{split} accuracy of the best checkpoint (epoch {best_epoch}): {report['accuracy']:.4f}")
        self.say(f"done: model {best_path}, report {run_dir / 'report.md'}")
        return RunResult(run_dir, best, best_epoch, history, best_path, report, self.notes)


def _debug_die_at(dist: D.Dist, epoch: int) -> None:
    """Test hook: ``RESNET_TUNE_DEBUG_DIE_AT=RANK:EPOCH`` kills that rank at the start of that epoch (1-based),
    on a job's first attempt only (a torchrun restart does not die again)."""
    spec = os.environ.get("RESNET_TUNE_DEBUG_DIE_AT")
    if not spec or dist.launch.restart_count > 0:
        return
    rank, _, at = spec.partition(":")
    if not (rank.strip().isdigit() and at.strip().isdigit()):
        raise ConfigError(f"RESNET_TUNE_DEBUG_DIE_AT={spec!r} must be RANK:EPOCH, e.g. 1:2.")
    if int(rank) == dist.rank and int(at) == epoch + 1:
        print(f"rank {dist.rank}: exiting at the start of epoch {epoch + 1} (RESNET_TUNE_DEBUG_DIE_AT={spec})",
              file=sys.stderr, flush=True)
        os._exit(1)


def _debug_samples(dist: D.Dist, loader: Any, epoch: int) -> None:
    """Test hook: ``RESNET_TUNE_DEBUG_SAMPLES=DIR`` writes the indices this rank trains on in this epoch."""
    folder = os.environ.get("RESNET_TUNE_DEBUG_SAMPLES")
    if not folder or not hasattr(loader, "epoch_indices"):
        return
    loader.set_epoch(epoch)
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"rank{dist.rank}-epoch{epoch + 1}.txt").write_text(
        "".join(f"{i}\n" for i in loader.epoch_indices()))


@torch.no_grad()
def predict_batches(model: nn.Module, loader: Any, precision: Precision, device: torch.device
                    ) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Per batch: softmax probabilities (float32, CPU), targets and the summed cross-entropy."""
    model.eval()
    out_batches = []
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with precision.autocast(device):
            out = forward_chunked(model, x)
        out = out.float()
        loss_sum = F.cross_entropy(out, y, reduction="sum").item()
        out_batches.append((out.softmax(1).cpu(), y.cpu(), loss_sum))
    return out_batches


def combine_batches(batches: list[tuple[torch.Tensor, torch.Tensor, float]]
                    ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Probabilities, targets and mean cross-entropy from per-batch results, summed in batch order."""
    if not batches:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long), float("nan")
    total, n = 0.0, 0
    for _, y, loss_sum in batches:
        total += loss_sum
        n += y.shape[0]
    return torch.cat([p for p, _, _ in batches]), torch.cat([y for _, y, _ in batches]), total / max(n, 1)


@torch.no_grad()
def predict_loader(model: nn.Module, loader: Any, precision: Precision, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Softmax probabilities (float32, CPU), targets and mean cross-entropy over a loader."""
    return combine_batches(predict_batches(model, loader, precision, device))


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'resnet-tune[tensorboard]'.") \
            from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def write_metrics(path: Path, history: list[dict[str, float]], columns: list[str] = METRIC_COLUMNS) -> None:
    """metrics.csv, written atomically: ``columns`` first, then any other keys of the rows."""
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns + sorted(set().union(*history) - set(columns)))
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text_atomic(path, buf.getvalue())


def fit(cfg: TrainConfig | None = None, *, resume: str | Path | None = None, quiet: bool = False,
        **options: Any) -> RunResult:
    """Train a model: ``fit(data="photos/", model="resnet50", pretrained="...", epochs=5)``."""
    if resume is not None:
        return Trainer(resume=resume, quiet=quiet, overrides=options).fit()
    if cfg is None:
        from .config import from_dict

        cfg = from_dict(options, source="fit()")
    elif options:
        cfg = cfg.replace(**options)
    return Trainer(cfg, quiet=quiet).fit()
