"""Classification data: class folders, split folders or a CSV (scanned before training), the embedded digits, or
synthetic images; in memory with batched crop and flip, or through DataLoader workers."""

from __future__ import annotations

import time
from typing import Any

import torch

from ...data.loaders import EpochLoader, FileDataset, MemoryLoader, decode_to_memory
from ...data.transforms import Preprocessing, eval_transform, train_transform
from ...engine.hardware import default_workers
from ...engine.task import TaskData, require_usable
from ...errors import ConfigError, DataError
from ...models import get_config, mean_std_for

__all__ = ["FEW_PER_CLASS", "balance_weights", "build_data", "choose_model_and_size", "class_weights",
           "image_loaders", "memory_by_default", "scratch_hint"]

#: below this many training images a class, a run from scratch says that pretrained weights usually help a lot
FEW_PER_CLASS = 100


def choose_model_and_size(cfg: Any, median_side: float | None) -> tuple[str, int]:
    """The model and input size when the user did not say: small images get a CIFAR ResNet at 32 px."""
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


def memory_by_default(device: torch.device, size: int, nbytes: int) -> bool:
    """``loader=auto``: decode once into memory (and crop and flip in batches) for small images, and on a
    CPU also up to 160 px: there decoding in worker processes competes with the model for the same cores
    (benchmarks/RESULTS.md, "End to end: an Imagenette epoch vs the model-only step"). Larger images, or a set of
    more than 2 GiB decoded, go through DataLoader workers (RandomResizedCrop + flip)."""
    return nbytes < 2 * 1024**3 and (size <= 64 or (device.type == "cpu" and size <= 160))


def balance_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-sample weights of a class-balanced sampler (``balance=sampler``)."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    return (1.0 / counts)[labels]


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights normalised to mean 1 (for ``balance=weighted_loss``)."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    w = counts.sum() / (num_classes * counts)
    return w / w.mean()


def scratch_hint(model_name: str, n_train: int, n_classes: int) -> str | None:
    """The one sentence for a run from scratch on few images a class (fewer than :data:`FEW_PER_CLASS`)."""
    per_class = n_train / max(n_classes, 1)
    if per_class >= FEW_PER_CLASS:
        return None
    from ...models import get_preset

    has = model_name != "custom" and get_preset(model_name).default_weights
    how = ("--pretrained auto (the default) once its published weights can be fetched" if has else
           "a model with published ImageNet weights, e.g. --model resnet18 (pretrained by default)")
    return (f"training from scratch on about {per_class:.0f} images a class: pretrained weights usually help a lot "
            f"with this little data; use {how}.")


def build_data(task: Any, device: torch.device, channels_last: bool, rank: int, world: int) -> TaskData:
    """Discover, scan and load the data of a classification run (``extra`` holds the scan report, the training
    labels and the validation samples). ``task`` chooses the weights once the model is known
    (:meth:`~resnet_tune.engine.task.Task.load_pretrained`) and the batch size once the image count is
    (:meth:`~resnet_tune.engine.task.Task.resolve_batch_size`); ``task.cfg`` is the configuration."""
    cfg = task.cfg
    if cfg.data is None:
        return _digits(task, device, channels_last, rank, world)
    if cfg.data.startswith("synthetic:"):
        return _synthetic(task, device, channels_last, rank, world)

    from ...data.datasets import discover
    from ...data.scan import scan

    splits = discover(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    all_samples = splits.train + splits.val + (splits.test or [])
    report = scan(all_samples, splits.classes, workers=cfg.workers, progress=cfg.progress and rank == 0)
    train_s, val_s = report.good(splits.train), report.good(splits.val)
    test_s = report.good(splits.test) if splits.test else None
    require_usable(len(train_s), len(val_s), cfg.data)
    missing = sorted(set(range(len(splits.classes))) - {y for _, y in train_s})
    if missing:
        raise DataError(f"class(es) {', '.join(splits.classes[i] for i in missing)} have no usable training "
                        "images; add images or remove the class folder(s).")
    median = report.median_size()
    name, size = choose_model_and_size(cfg, float(min(median)) if median else None)
    pretrained = task.load_pretrained(name)
    task.resolve_batch_size(len(train_s), world)
    cfg = task.cfg
    mean, std = mean_std_for(name, pretrained[1] if pretrained else None)
    pp = Preprocessing.for_size(size, mean, std)
    labels = torch.tensor([y for _, y in train_s])
    weights = balance_weights(labels, len(splits.classes)) if cfg.balance == "sampler" else None
    parts = {"train": train_s, "val": val_s, "test": test_s}
    targets = {k: torch.tensor([y for _, y in v], dtype=torch.long) for k, v in parts.items() if v}
    loaders, use_memory, how = image_loaders(cfg, parts, targets, pp, device, channels_last, rank, world, weights)
    desc = f"{cfg.data} ({splits.describe()}) at {size}x{size}{how}"
    hint = None if pretrained else scratch_hint(name, len(train_s), len(splits.classes))
    return TaskData(splits.classes, loaders["train"], loaders["val"], loaders.get("test"), len(train_s), desc, name,
                    pp.to_dict(), notes=list(splits.notes) + ([hint] if hint else []), scan_summary=report.summary(),
                    extra={"scan": report, "train_labels": labels, "val_samples": val_s, "test_samples": test_s,
                           "input_size": size, "in_memory": use_memory})


def image_loaders(cfg: Any, parts: dict[str, list[tuple[str, Any]] | None], targets: dict[str, torch.Tensor],
                  pp: Preprocessing, device: torch.device, channels_last: bool, rank: int, world: int,
                  weights: torch.Tensor | None = None) -> tuple[dict[str, Any], bool, str]:
    """Loaders of the ``train``, ``val`` and (where given) ``test`` images of a run: decoded once into memory and
    cropped and flipped in batches, or read by DataLoader workers (:func:`memory_by_default`, ``cfg.loader``).

    ``parts`` holds each split's ``(path, target)`` samples (what a worker yields), ``targets`` the same targets as
    one tensor a split (what the memory loader holds); ``weights`` feeds the training sampler. Returns the loaders
    by split, whether they are in memory, and the description's suffix."""
    size = pp.input_size
    nbytes = sum(len(v) for v in parts.values() if v) * 3 * size * size
    use_memory = cfg.loader == "memory" or (cfg.loader == "auto" and memory_by_default(device, size, nbytes)
                                            and cfg.augment == "default")
    loaders: dict[str, Any] = {}
    if use_memory:
        t0 = time.perf_counter()
        common = dict(mean=pp.mean, std=pp.std, rank=rank, world=world, channels_last=channels_last,
                      accum_steps=cfg.accum_steps)
        for k, samples in parts.items():
            if not samples:
                continue
            train = k == "train"
            x, _ = decode_to_memory([(p, 0) for p, _ in samples], pp, progress=cfg.progress and rank == 0 and train)
            loaders[k] = MemoryLoader(x.to(device), targets[k].to(device), cfg.batch_size * (1 if train else 2),
                                      train=train, seed=cfg.seed, weights=weights if train else None, **common)
        return loaders, True, f"; decoded into memory in {time.perf_counter() - t0:.1f}s"
    workers = cfg.workers if cfg.workers is not None else default_workers(device)
    for k, samples in parts.items():
        if not samples:
            continue
        train = k == "train"
        tf = train_transform(pp, cfg.augment) if train else eval_transform(pp)
        loaders[k] = EpochLoader(FileDataset(samples, tf, seed=cfg.seed if train else None),
                                 cfg.batch_size * (1 if train else 2), train, workers, device, cfg.seed,
                                 weights if train else None, rank, world)
    return loaders, False, ""


def _digits(task: Any, device: torch.device, channels_last: bool, rank: int, world: int) -> TaskData:
    """The embedded default: scikit-learn's handwritten digits in memory."""
    from ...data import default as dflt

    name, size = choose_model_and_size(task.cfg, None)
    task.load_pretrained(name)  # the default CIFAR ResNet has no published weights: from scratch, offline
    (xt, yt), (xv, yv), classes = dflt.load_digits_images(size, task.cfg.val_fraction, task.cfg.seed)
    task.resolve_batch_size(len(yt), world)
    cfg = task.cfg
    pp = Preprocessing.for_size(size, dflt.MEAN, dflt.STD)
    desc = (f"embedded default: scikit-learn handwritten digits, {len(yt)} train / {len(yv)} held-out images, "
            f"10 classes, at {size}x{size}")
    weights = balance_weights(yt, len(classes)) if cfg.balance == "sampler" else None
    common = dict(mean=pp.mean, std=pp.std, rank=rank, world=world, channels_last=channels_last,
                  accum_steps=cfg.accum_steps)
    train = MemoryLoader(xt.to(device), yt.to(device), cfg.batch_size, train=True, seed=cfg.seed, weights=weights,
                         **common)
    val = MemoryLoader(xv.to(device), yv.to(device), cfg.batch_size * 2, train=False, **common)
    return TaskData(classes, train, val, None, len(yt), desc, name, pp.to_dict(),
                    extra={"train_labels": yt, "input_size": size, "in_memory": True})


def _synthetic(task: Any, device: torch.device, channels_last: bool, rank: int, world: int) -> TaskData:
    """``data="synthetic:N"``: N random uint8 images of 10 classes in memory, for throughput benchmarks (random
    weights unless ``pretrained`` names some: ``auto`` means none here)."""
    cfg = task.cfg
    try:
        n = int(cfg.data.split(":", 1)[1])
    except ValueError:
        raise ConfigError(f"synthetic data is written synthetic:N with N images, got {cfg.data!r}.") from None
    if n < 2:
        raise ConfigError("synthetic:N needs at least two images.")
    name, size = choose_model_and_size(cfg, None if cfg.img_size else 224.0)
    if cfg.pretrained == "auto":
        task.cfg = cfg = cfg.replace(pretrained="none")
    task.load_pretrained(name)
    task.resolve_batch_size(n, world)
    cfg = task.cfg
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    pp = Preprocessing.for_size(size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    nv = max(2, n // 8)
    common = dict(mean=pp.mean, std=pp.std, rank=rank, world=world, channels_last=channels_last,
                  accum_steps=cfg.accum_steps)
    train = MemoryLoader(x.to(device), y.to(device), cfg.batch_size, train=True, seed=cfg.seed, **common)
    val = MemoryLoader(x[:nv].to(device), y[:nv].to(device), cfg.batch_size * 2, train=False, **common)
    return TaskData([str(i) for i in range(10)], train, val, None, n,
                    f"synthetic: {n} random images at {size}x{size} (for benchmarks)", name, pp.to_dict(),
                    extra={"train_labels": y, "input_size": size, "in_memory": True})
