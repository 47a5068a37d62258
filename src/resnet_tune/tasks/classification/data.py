"""Classification data: class folders, split folders or a CSV (scanned before training), the embedded digits, or
synthetic images; in memory with batched crop and flip, or through DataLoader workers."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from ...data.loaders import EpochLoader, FileDataset, MemoryLoader, decode_to_memory
from ...data.transforms import MIN_SCALE, SMALL, Preprocessing, eval_transform, train_transform
from ...engine.budget import Candidate
from ...engine.finetune import TransferFacts, choose_transfer, weights_input_size
from ...engine.hardware import default_workers
from ...engine.task import TaskData, no_published_weights, require_usable
from ...errors import ConfigError, DataError
from ...models import get_config, mean_std_for

__all__ = ["FEW_PER_CLASS", "MINI_RECIPE", "OTHER_DEFAULTS", "PHOTO_MODEL", "PHOTO_RECIPE", "PHOTO_RECIPES",
           "RECIPE_MODELS", "SCRATCH_ACT_LAYER", "SCRATCH_SIZES", "SMALL_MODEL", "SMALL_RECIPE", "apply_recipe",
           "budget_candidates", "balance_weights", "build_data", "choose_model", "choose_model_and_size",
           "class_weights", "image_loaders", "memory_by_default", "recipe_for", "scratch_act_layer",
           "scratch_activation", "scratch_hint", "scratch_photo_model", "worker_crop_note"]

#: below this many training images a class, a run from scratch says that pretrained weights usually help a lot
FEW_PER_CLASS = 100

#: ``--model auto`` with ``--budget``: what a step up (a deeper network or a larger input) needs, in epochs the
#: budget affords it, to be chosen over the cheaper candidate trained for longer. On a time budget the cheaper
#: network won every measured case (README "Which ResNet for my data?": ResNet-20 over ResNet-56 at 9 against 4
#: epochs, ResNet-18 over ResNet-34/50), and epochs buy more than pixels early on (fast.ai's Imagenette
#: leaderboard at 128 px: 85.8% at 5 epochs, 91.6% at 20); depth and size pay once the cheaper run has converged.
#: Small images: ``resnet9_narrow`` at E epochs matched ``resnet20`` at 2E on EuroSAT (93.3% at 10 against 20
#: epochs) and beat it on 100 CIFAR-10 images a class (61.0% at 30 against 59.8% at 60), for 1.4x (Intel Xeon with
#: AMX) to 2.1x (AMD EPYC) resnet20's time an image (benchmarks/RESULTS.md, "CIFAR-10 on a CPU, second round"): it
#: is chosen once the budget affords it 10 epochs.
STEP_UP_EPOCHS = {"scratch_photos": 30, "scratch_small": 10, "finetune": 5}
#: input sizes tried for photos trained from scratch, smallest first (at the weights' size when fine-tuning)
SCRATCH_SIZES = (128, 160, 224)
_DEEPER = {"resnet18": ("resnet34", "resnet50")}
#: the default network for small images (at most 64 px a side) and the cheaper one a short --budget falls back to
SMALL_MODEL, SMALL_FALLBACK = "resnet9_narrow", "resnet20"
#: networks with a measured recipe from scratch at up to 64 px, and the recipe: the values that options left unset
#: take (benchmarks/RESULTS.md, "CIFAR-10 on a CPU, second round": on CIFAR-10's held-out 10%, whitening +0.8 and
#: translate 2 +1.2 points at 5 epochs; weight decay 1e-3 +0.2; with them the network beat the previous default by
#: 4-5 points on EuroSAT and on 100 CIFAR-10 images a class, 3 seeds)
RECIPE_MODELS = ("resnet9", "resnet9_narrow")
SMALL_RECIPE = {"whiten": True, "weight_decay": 1e-3, "translate": 2}
#: the network that photos (more than 64 px a side) train from scratch when the user names none and the default
#: network's published weights are not used (``--pretrained none``, or they could not be fetched): the fast.ai
#: Imagenette leaderboard's mini net with a second third-stage block, at 128 px with Mish, with
#: :data:`PHOTO_RECIPE`. On Imagenette at 128 px and 5 epochs, all training images: 85.49% ± 0.52 on val against
#: the mini net's 84.94% ± 0.00 (3 seeds each); on 100 Imagenette photos a class 71.5% ± 1.1 against 71.1% ± 0.7
#: (held-out). The mini net's held-out 83.3% ± 0.7 was against 79.4% ± 0.2 for resnet18d with SGD and SiLU
#: (benchmarks/RESULTS.md, issue 12)
PHOTO_MODEL = "seresnext12d_64x4d"
#: the mini net's (``seresnext10d_64x4d``) recipe (fastai's leaderboard script's, with AdamW for RAdam and its
#: weight decay; benchmarks/RESULTS.md, "fastai's own recipe on our data"); ``lr`` and ``weight_decay`` are AdamW's
#: and apply only with it
MINI_RECIPE = {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4, "lookahead": 6, "schedule": "flat_cos"}
#: :data:`PHOTO_MODEL`'s: the mini net's, with training crops moved by up to 8 px instead of an eighth of the side
#: (16 px at 128; held-out +0.6, one seed; benchmarks/RESULTS.md, "tenth round")
PHOTO_RECIPE = {**MINI_RECIPE, "translate": 8}
#: the photo networks with a measured recipe from scratch
PHOTO_RECIPES = {"seresnext10d_64x4d": MINI_RECIPE, PHOTO_MODEL: PHOTO_RECIPE}
#: what those options are everywhere else (``lr`` left unset: the task's rule for the optimiser and batch)
OTHER_DEFAULTS = {"whiten": False, "weight_decay": 5e-4, "optimizer": "sgd", "lookahead": 0, "schedule": "onecycle"}
#: the recipe's values that belong to its optimiser: a user who names another optimiser gets that one's defaults
_OPTIMIZER_VALUES = ("lr", "weight_decay")
#: the activation of a network trained from scratch when ``model_kwargs`` does not name one (benchmarks/RESULTS.md,
#: "SiLU from scratch, on three datasets": held-out +1.3 points on Imagenette with resnet18d at 128 px, +0.6 on
#: EuroSAT and 0.0 on 100 CIFAR-10 images a class with resnet9_narrow at 32 px, 3 seeds, for 1.0-1.1x the time).
#: Pretrained weights keep the activation they were trained with (ReLU); a preset built for training from scratch
#: with another activation keeps its own (:func:`scratch_act_layer`).
SCRATCH_ACT_LAYER = "silu"


def choose_model_and_size(cfg: Any, median_side: float | None) -> tuple[str, int]:
    """The model and input size when the user did not say: small images (and the embedded digits) get Page's
    ResNet-9 for 32 px images (:data:`SMALL_MODEL`) at 32 px, photos ResNet-18 at its 224 px."""
    small = median_side is not None and median_side <= 64
    name = cfg.model or (SMALL_MODEL if small or cfg.data is None else "resnet18")
    if cfg.img_size:
        return name, cfg.img_size
    if cfg.data is None:
        return name, 32
    cfg_in = get_config(name).input_size[-1] if name != "custom" else 224
    if small and cfg_in > 64:
        return name, int(max(32, min(64, round(median_side or 32))))
    return name, cfg_in


def budget_candidates(cfg: Any, name: str, size: int, small: bool, finetune: bool) -> list[Candidate]:
    """``--model auto`` with ``--budget``: the networks and input sizes to choose from, cheapest first, given the
    default ``name`` and ``size`` (:func:`choose_model_and_size`) and whether the run fine-tunes published weights.
    What the user set (``--model``, ``--img-size``) stays fixed; small images keep their size and may go deeper;
    photos from scratch try :data:`SCRATCH_SIZES` (up to the default size) and then a deeper network; fine-tuning
    stays at the weights' size and may go deeper."""
    kind = "finetune" if finetune else "scratch_small" if small else "scratch_photos"
    need = STEP_UP_EPOCHS[kind]
    if kind == "scratch_small" and not cfg.model and name == SMALL_MODEL:
        return [Candidate(SMALL_FALLBACK, size), Candidate(name, size, need)]
    sizes = [size]
    if kind == "scratch_photos" and not cfg.img_size:
        sizes = [z for z in SCRATCH_SIZES if z < size] + [size]
    out = [Candidate(name, z, need if i else 0) for i, z in enumerate(sizes)]
    if not cfg.model:
        deeper = _DEEPER.get(name, ())[:1 if kind == "scratch_photos" else 2]
        out += [Candidate(m, size, need) for m in deeper]
    return out


def choose_model(task: Any, median_side: float | None, n_train: int, n_val: int, n_classes: int, world: int
                 ) -> tuple[str, int, Any]:
    """The model, input size and pretrained weights of a run (``task.cfg`` holds the options): the defaults of
    :func:`choose_model_and_size` and :meth:`~resnet_tune.engine.task.Task.load_pretrained`, or with ``--budget``
    the candidate of :func:`budget_candidates` that the time left affords
    (:meth:`~resnet_tune.engine.task.Task.choose_within_budget`). Fine-tuning candidates are only tried when the
    first one's published weights could be read. Also resolves the batch size (the timed steps use it) and the
    options that follow the chosen network (:func:`apply_recipe`)."""
    name, size, weights = _choose(task, median_side, n_train, n_val, n_classes, world)
    apply_recipe(task, name, size)
    return name, size, weights


def _choose(task: Any, median_side: float | None, n_train: int, n_val: int, n_classes: int, world: int
            ) -> tuple[str, int, Any]:
    cfg = task.cfg
    name, size = choose_model_and_size(cfg, median_side)
    small = median_side is not None and median_side <= 64
    task.resolve_batch_size(n_train, world)
    weights = task.load_pretrained(name)
    name, size = scratch_photo_model(task, name, size, small)
    scratch_activation(task, name)  # before a budget times the candidates: they are timed as they will train
    if weights is not None:  # fine-tuning: the strategy and input size from the data and the weights
        task.transfer = choose_transfer(TransferFacts(n_train, n_classes, median_side, weights_input_size(weights[1]),
                                                      cfg.budget is not None, cfg.img_size or None))
        if not cfg.img_size and task.transfer.img_size and task.transfer.img_size != size:
            size = task.transfer.img_size
            task.plan_notes.append(f"fine-tunes {task.transfer.reason}; --img-size overrides")
    if task.budget_view is None or (cfg.model and cfg.img_size):
        return name, size, weights
    candidates = budget_candidates(cfg, name, size, small, finetune=weights is not None)
    chosen = task.choose_within_budget(candidates, n_train, n_val, n_classes)
    if chosen.model != name and task.weights_reason == no_published_weights(name):
        task.weights_reason = no_published_weights(chosen.model)  # the fallback network of small images
    if chosen.model != name and weights is not None:
        first = task.cfg.pretrained
        task.cfg = task.cfg.replace(pretrained="auto")
        other = task.load_pretrained(chosen.model)
        if other is None:  # its weights could not be fetched: the first candidate, whose weights are at hand
            task.cfg = task.cfg.replace(pretrained=first)
            task.pretrained, task.weights_warning = weights, None
            task.weights_reason = f"{name}'s published weights, --pretrained auto"
            task.plan_notes.append(f"{chosen.model}'s weights could not be read, so {name} fine-tunes instead")
            return name, size, weights
        weights = other
    return chosen.model, chosen.size, weights


def scratch_act_layer(name: str) -> str:
    """The activation network ``name`` trains with from scratch unless ``model_kwargs`` names one: its preset's own
    where that is not ReLU (``seresnext10d_64x4d``: Mish, as the leaderboard's mini net), else
    :data:`SCRATCH_ACT_LAYER`."""
    own = get_config(name).act_layer
    return own if own != "relu" else SCRATCH_ACT_LAYER


def scratch_activation(task: Any, name: str) -> None:
    """A run from scratch of network ``name`` whose ``model_kwargs`` name no activation trains with
    :func:`scratch_act_layer`'s, written into ``task.cfg.model_kwargs`` (``config.yaml`` records it, checkpoints
    rebuild it) with one plan note; a run with pretrained weights, and a resumed one (which keeps what it
    recorded), are left as they are."""
    given = dict(task.cfg.model_kwargs or {})
    if task.pretrained is not None or task.resuming or "act_layer" in given:
        return
    act = scratch_act_layer(name)
    task.cfg = task.cfg.replace(model_kwargs={**given, "act_layer": act})
    task.plan_notes.append(f"from scratch with {act.upper() if act == 'silu' else act.capitalize()} activations "
                           "(measured better than ReLU from scratch, or equal); --model-kwargs act_layer=relu "
                           "overrides")


def recipe_for(name: str, size: int, scratch: bool) -> dict[str, Any]:
    """The measured recipe of network ``name`` at ``size`` px (options and their values), or {}:
    :data:`SMALL_RECIPE` for :data:`RECIPE_MODELS` from scratch at up to 64 px, :data:`PHOTO_RECIPES` from
    scratch."""
    if scratch and name in RECIPE_MODELS and size <= 64:
        return SMALL_RECIPE
    return PHOTO_RECIPES.get(name, {}) if scratch else {}


def apply_recipe(task: Any, name: str, size: int) -> None:
    """Fill the options the user left unset (None) whose best value depends on the network: its measured recipe
    (:func:`recipe_for`), else :data:`OTHER_DEFAULTS` (``translate`` then stays unset: an eighth of the side, and
    ``lr`` the task's rule). A user who names another optimiser than the recipe's keeps that optimiser's
    defaults for the learning rate and weight decay. ``task.cfg`` gets the values (``config.yaml`` records them, a
    resumed run keeps them) and the recipe one plan note."""
    cfg = task.cfg
    # a resumed run keeps what it started with: one recorded before a recipe existed has None where it meant the
    # other defaults (an eighth of the side for translate, SGD)
    recipe = dict(recipe_for(name, size, task.pretrained is None and not task.resuming))
    if cfg.optimizer is not None and recipe.get("optimizer", cfg.optimizer) != cfg.optimizer:
        recipe = {k: v for k, v in recipe.items() if k not in _OPTIMIZER_VALUES}
    values = {**OTHER_DEFAULTS, **recipe}
    unset = {k: v for k, v in values.items() if getattr(cfg, k) is None}
    if not unset:
        return
    task.cfg = cfg.replace(**unset)
    said = {"whiten": "a whitened first convolution (--no-whiten)",
            "weight_decay": f"weight decay {unset.get('weight_decay')} (--weight-decay)",
            "translate": f"crops moved up to {unset.get('translate')} px (--translate)",
            "optimizer": f"{str(unset.get('optimizer')).replace('adamw', 'AdamW')} (--optimizer)",
            "lr": f"a peak learning rate of {unset.get('lr')} (--lr)",
            "lookahead": f"Lookahead every {unset.get('lookahead')} steps (--lookahead)",
            "schedule": f"the {unset.get('schedule')} schedule (--schedule)"}
    used = [said[k] for k in recipe if k in unset]
    if used:
        task.plan_notes.append(f"{name} from scratch at {size} px trains with its measured recipe: "
                               + ", ".join(used) + "; the options in brackets override")


def scratch_photo_model(task: Any, name: str, size: int, small: bool) -> tuple[str, int]:
    """Photos trained from scratch with no network named (no published weights used): :data:`PHOTO_MODEL` at its
    input size (or ``--img-size``) instead of the default network, with one plan note; else ``name`` and
    ``size``."""
    cfg = task.cfg
    if cfg.model or small or cfg.data is None or task.pretrained is not None or task.resuming:
        return name, size
    size = cfg.img_size or get_config(PHOTO_MODEL).input_size[-1]
    if task.weights_warning:
        task.weights_reason = f"{name}'s published weights could not be fetched"
    task.plan_notes.append(f"photos from scratch ({task.weights_reason}) train {PHOTO_MODEL} at {size} px, the "
                           f"network measured best for that, instead of {name}; --model overrides")
    return PHOTO_MODEL, size


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
    name, size, pretrained = choose_model(task, float(min(median)) if median else None, len(train_s), len(val_s),
                                          len(splits.classes), world)
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
    notes = [n for n in (hint, None if use_memory else worker_crop_note(cfg, size)) if n]
    return TaskData(splits.classes, loaders["train"], loaders["val"], loaders.get("test"), len(train_s), desc, name,
                    pp.to_dict(), notes=list(splits.notes) + notes, scan_summary=report.summary(),
                    extra={"scan": report, "train_labels": labels, "val_samples": val_s, "test_samples": test_s,
                           "input_size": size, "in_memory": use_memory})


def worker_crop_note(cfg: Any, size: int) -> str | None:
    """The sentence for a run whose photos (over ``SMALL`` px) go through DataLoader workers with a ``translate``
    set (by the user or a recipe): the workers take random resized crops, so the crops are not moved by it."""
    if size <= SMALL or not cfg.translate:
        return None
    return (f"the photos are read by DataLoader workers, which train on random resized crops of at least "
            f"{cfg.min_scale or MIN_SCALE:.0%} of the image's area (--min-scale), not on a crop moved by up to "
            f"{cfg.translate} px (--translate: the in-memory loader's, --loader memory where the decoded images fit "
            "in memory)")


def image_loaders(cfg: Any, parts: dict[str, list[tuple[str, Any]] | None], targets: dict[str, torch.Tensor],
                  pp: Preprocessing, device: torch.device, channels_last: bool, rank: int, world: int,
                  weights: torch.Tensor | None = None) -> tuple[dict[str, Any], bool, str]:
    """Loaders of the ``train``, ``val`` and (where given) ``test`` images of a run: decoded once into memory and
    cropped and flipped in batches, or read by DataLoader workers (:func:`memory_by_default`, ``cfg.loader``).

    ``parts`` holds each split's ``(path, target)`` samples (what a worker yields), ``targets`` the same targets as
    one tensor a split (what the memory loader holds); ``weights`` feeds the training sampler. Returns the loaders
    by split, whether they are in memory, and the description's suffix."""
    size = pp.input_size
    # random resized crops (min_scale, large images): the training images are kept as the centre square of the
    # evaluation resize, the crops taken from it in batches
    rrc = cfg.min_scale is not None and size > SMALL
    nbytes = sum(len(v) * 3 * (pp.resize if rrc and k == "train" else size) ** 2 for k, v in parts.items() if v)
    use_memory = cfg.loader == "memory" or (cfg.loader == "auto" and memory_by_default(device, size, nbytes)
                                            and cfg.augment == "default")
    loaders: dict[str, Any] = {}
    if use_memory:
        t0 = time.perf_counter()
        common = dict(mean=pp.mean, std=pp.std, rank=rank, world=world, channels_last=channels_last,
                      accum_steps=cfg.accum_steps, translate=cfg.translate, flip=cfg.flip)
        for k, samples in parts.items():
            if not samples:
                continue
            train = k == "train"
            canvas = train and rrc
            x, _ = decode_to_memory([(p, 0) for p, _ in samples], replace(pp, input_size=pp.resize) if canvas else pp,
                                    progress=cfg.progress and rank == 0 and train)
            loaders[k] = MemoryLoader(x.to(device), targets[k].to(device), cfg.batch_size * (1 if train else 2),
                                      train=train, seed=cfg.seed, weights=weights if train else None,
                                      scale=(cfg.min_scale, 1.0) if canvas else None, size=size, **common)
        return loaders, True, f"; decoded into memory in {time.perf_counter() - t0:.1f}s"
    if cfg.flip != "random":
        raise ConfigError(f"--flip {cfg.flip} needs the in-memory loader (--loader memory): DataLoader workers flip "
                          "each image by its own coin.")
    workers = cfg.workers if cfg.workers is not None else default_workers(device)
    for k, samples in parts.items():
        if not samples:
            continue
        train = k == "train"
        tf = train_transform(pp, cfg.augment, cfg.translate, cfg.min_scale) if train else eval_transform(pp)
        loaders[k] = EpochLoader(FileDataset(samples, tf, seed=cfg.seed if train else None),
                                 cfg.batch_size * (1 if train else 2), train, workers, device, cfg.seed,
                                 weights if train else None, rank, world)
    return loaders, False, ""


def _digits(task: Any, device: torch.device, channels_last: bool, rank: int, world: int) -> TaskData:
    """The embedded default: scikit-learn's handwritten digits in memory."""
    from ...data import default as dflt

    name, size = choose_model_and_size(task.cfg, None)
    task.load_pretrained(name)  # the default small-image ResNet has no published weights: from scratch, offline
    scratch_activation(task, name)
    apply_recipe(task, name, size)
    (xt, yt), (xv, yv), classes = dflt.load_digits_images(size, task.cfg.val_fraction, task.cfg.seed)
    task.resolve_batch_size(len(yt), world)
    cfg = task.cfg
    pp = Preprocessing.for_size(size, dflt.MEAN, dflt.STD)
    desc = (f"embedded default: scikit-learn handwritten digits, {len(yt)} train / {len(yv)} held-out images, "
            f"10 classes, at {size}x{size}")
    weights = balance_weights(yt, len(classes)) if cfg.balance == "sampler" else None
    common = dict(mean=pp.mean, std=pp.std, rank=rank, world=world, channels_last=channels_last,
                  accum_steps=cfg.accum_steps, translate=cfg.translate, flip=cfg.flip)
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
    apply_recipe(task, name, size)  # (no scratch_activation: throughput benchmarks time the named network as it is)
    task.resolve_batch_size(n, world)
    cfg = task.cfg
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    pp = Preprocessing.for_size(size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    nv = max(2, n // 8)
    common = dict(mean=pp.mean, std=pp.std, rank=rank, world=world, channels_last=channels_last,
                  accum_steps=cfg.accum_steps, translate=cfg.translate, flip=cfg.flip)
    train = MemoryLoader(x.to(device), y.to(device), cfg.batch_size, train=True, seed=cfg.seed, **common)
    val = MemoryLoader(x[:nv].to(device), y[:nv].to(device), cfg.batch_size * 2, train=False, **common)
    return TaskData([str(i) for i in range(10)], train, val, None, n,
                    f"synthetic: {n} random images at {size}x{size} (for benchmarks)", name, pp.to_dict(),
                    extra={"train_labels": y, "input_size": size, "in_memory": True})
