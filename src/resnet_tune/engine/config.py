"""Run configuration: frozen dataclasses, loaded from YAML and command-line flags.

:class:`RunConfig` declares, once, every option a training run of any task has (data, model, strategy,
optimisation, hardware, output); each task's config subclasses it, adds its own options and may change a
default. Every option is an :func:`option`: its default, one line of help and its choices live beside it, and
the command line is generated from them (``resnet_tune.cli.options``), so the tasks' commands cannot drift
apart. Unknown keys are an error (a typo in a config file must not be silently ignored). The resolved config is
saved in every run folder as ``config.yaml`` and in every checkpoint's state.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
import reprlib
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["LOADERS", "LOOKAHEAD_SCHEDULES", "NO_WEIGHTS", "OPTIMIZERS", "PRECISIONS", "RunConfig", "SCHEDULES",
           "STRATEGIES", "WHITEN_HELP", "check_options", "from_dict", "has_weights", "load_yaml", "option",
           "option_help", "option_nargs", "save_yaml", "show"]

STRATEGIES = ("auto", "scratch", "full", "linear_probe", "freeze_unfreeze")
OPTIMIZERS = ("sgd", "adamw", "radam", "lamb")
SCHEDULES = ("onecycle", "cosine", "flat_cos", "poly", "triangle", "constant")
#: how Lookahead's pull-back weight changes over a run (:class:`~resnet_tune.engine.optim.Lookahead`)
LOOKAHEAD_SCHEDULES = ("constant", "airbench")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOADERS = ("auto", "memory", "workers")


def option(default: Any, help: str | None = None, *, choices: tuple | None = None,  # noqa: A002
           range: tuple[float, float, str] | None = None, nargs: str | None = None) -> Any:  # noqa: A002
    """A config field with its command-line help, allowed values and allowed range (``(low, high, "what it must
    be")``, checked when the option is set). A subclass that only changes the default writes
    ``option(new_default)`` and keeps the help, choices and range of the class it overrides. ``nargs``: the flag
    takes several words (argparse's ``nargs``; the option then receives a list of texts)."""
    metadata: dict[str, Any] = {}
    if nargs is not None:
        metadata["nargs"] = nargs
    if help is not None:
        metadata["help"] = help
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if range is not None:
        metadata["range"] = tuple(range)
    return dataclasses.field(default=default, metadata=metadata)


def _meta(cls: type, name: str, key: str) -> Any:
    """The first ``key`` of field ``name``'s metadata along ``cls``'s classes, most derived first."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and key in f.metadata:
            return f.metadata[key]
    return None


def option_help(cls: type, name: str) -> tuple[str, tuple | None]:
    """The help text and choices of option ``name`` of config class ``cls``."""
    return _meta(cls, name, "help") or name.replace("_", " "), _meta(cls, name, "choices")


def option_nargs(cls: type, name: str) -> str | None:
    """How many command-line words option ``name`` of ``cls`` takes (argparse's ``nargs``; None: one)."""
    return _meta(cls, name, "nargs")


# --------------------------------------------------------------------------------------- checking values
class _ShortRepr(reprlib.Repr):
    """``reprlib`` with small limits, and integers too long for ``repr`` (over 4300 digits) described by size."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxset = 2, 4, 4, 4, 4
        self.maxstring, self.maxlong, self.maxother = 40, 24, 40

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 1000:
            return f"<an integer of about {int(x.bit_length() * math.log10(2)) + 1} digits>"
        return super().repr_int(x, level)


_SHORT = _ShortRepr()


def show(value: Any) -> str:
    """A short repr of a user-given value for an error message, bounded even for huge or deeply nested values
    (a YAML file can build a list of billions of items from a few aliases)."""
    try:
        return _SHORT.repr(value)
    except Exception:  # noqa: BLE001 - a message must never fail on the value it describes
        return f"<a {type(value).__name__}>"


_EXPECTED = {bool: "true or false", int: "a whole number", float: "a number", str: "a text string"}


@cache
def _option_types(cls: type) -> dict[str, tuple[Any, bool]]:
    """``{option: (declared type without None, whether None is allowed)}`` of a config dataclass."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[Any, bool]] = {}
    for f in dataclasses.fields(cls):
        args = typing.get_args(hints[f.name])
        base = next((a for a in args if a is not type(None)), hints[f.name]) if args else hints[f.name]
        out[f.name] = (base, type(None) in args)
    return out


def _number(value: Any, base: type) -> int | float | None:
    """``value`` as an ``int`` or ``float`` (``base``), or None when it is not one.

    Whole floats are read as ints (``epochs: 10.0``) and numbers written as text are read too, because YAML 1.1
    (PyYAML) reads ``lr: 1e-3`` as the text "1e-3"; booleans are not numbers here.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if base is int else float(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    if base is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(value)
        return None
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:  # an integer beyond the float range
            return math.inf
    return None


def check_options(cfg: Any) -> None:
    """Check every option of the frozen config dataclass ``cfg`` against its declared type, choices and range, in
    place.

    Options with choices must be one of them; ``bool`` options take true/false; ``int`` and ``float`` options
    take numbers (see :func:`_number`; floats must be finite); ``str`` options take text or a path (stored as
    text); ``Any`` options are left to the config's own checks.  Raises :class:`ConfigError` naming the option,
    the value given and what it must be.
    """
    for name, (base, optional) in _option_types(type(cfg)).items():
        value = _typed(cfg, name, base, optional)
        allowed = _meta(type(cfg), name, "choices")
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{name}={show(value)} is not valid; choose one of "
                              f"{', '.join(str(a) for a in allowed if a is not None)}.")
        rule = _meta(type(cfg), name, "range")
        if rule is not None and value is not None and not rule[0] <= value <= rule[1]:
            raise ConfigError(f"{name} must be {rule[2]}, got {show(value)}.")


def _typed(cfg: Any, name: str, base: Any, optional: bool) -> Any:
    """Option ``name`` of ``cfg`` as its declared type (set in place when it was given as another, e.g. text);
    a ConfigError when it cannot be read as one."""
    value = getattr(cfg, name)
    if base is Any or (value is None and optional):
        return value
    if value is None:
        raise ConfigError(f"option {name} must be {_EXPECTED.get(base, base)}, got an empty value (null).")
    new: Any = None
    if base is bool:
        new = value if isinstance(value, bool) else None
    elif base in (int, float):
        new = _number(value, base)
        if base is float and new is not None and not math.isfinite(new):
            raise ConfigError(f"option {name} must be a finite number, got {show(value)}.")
    elif base is str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        new = value if isinstance(value, str) else None
    else:  # pragma: no cover - every option is declared with one of the types above
        return value
    if new is None:
        raise ConfigError(f"option {name} must be {_EXPECTED[base]}, got {show(value)}.")
    if new is not getattr(cfg, name):
        object.__setattr__(cfg, name, new)
    return new


#: ``pretrained`` values that mean "train from scratch"
NO_WEIGHTS = (None, "", "none")


def has_weights(pretrained: str | None) -> bool:
    """Whether ``pretrained`` names weights to start from (not scratch, and not ``auto`` before it is resolved)."""
    return isinstance(pretrained, str) and pretrained.strip().lower() not in ("", "none", "auto")


#: what ``whiten`` does (a task that chooses its default says so after this sentence)
WHITEN_HELP = ("from scratch: set the first convolution's filters to whiten the patches of the training images "
               "(airbench's whitening layer; opposite-sign pairs, the rest random)")


@dataclass(frozen=True)
class RunConfig:
    """The options every training run has, whatever its task. ``None`` means "choose for me" where documented."""

    # data
    data: str | None = option(None, "training data")
    val_fraction: float = option(0.2, "validation share when the data has no val split (seeded)")
    loader: str = option("auto", "memory: decode once into RAM and augment in batches; workers: DataLoader "
                                 "workers reading files; auto picks", choices=LOADERS)
    workers: int | None = option(None, "DataLoader worker processes (default: chosen from the device)",
                                 range=(0, math.inf, "0 or more (0 decodes in the training process)"))
    # model
    model: str | None = option(None, "architecture (`resnet-tune models` lists them); auto (the default) chooses "
                                     "from the data and --budget")
    pretrained: str | None = option(None, "weights to start from: auto (the model's published ImageNet weights, "
                                          "from scratch if it has none or they cannot be fetched), none, "
                                          "torchvision:<WEIGHTS>, timm:<name>, keras:<name>, hf:<repo>, a URL or a "
                                          "file")
    whiten: bool = option(False, WHITEN_HELP)
    # optimisation
    strategy: str = option("auto", "auto = with pretrained weights the task's choice (classification: full, "
                                   "segmentation: freeze_unfreeze), scratch without", choices=STRATEGIES)
    freeze_epochs: int = option(1, "epochs with a frozen body in freeze_unfreeze", range=(0, math.inf, ">= 0"))
    freeze_at: int | None = option(None, "fine-tuning: keep the first N blocks of the pretrained body frozen for "
                                         "the whole run (1 = the stem, 2 = the stem and the first stage, as "
                                         "detectron2's FREEZE_AT): no backward pass, no optimiser state, BatchNorm "
                                         "statistics kept (default: 0; 2 for a full fine-tune with --budget, "
                                         "where the time saved buys epochs)", range=(0, math.inf, ">= 0"))
    freeze_bn_stats: bool = option(False, "fine-tuning: keep the running statistics of the pretrained body's "
                                          "BatchNorm layers (eval mode, as mmdetection's norm_eval) while their "
                                          "scale and shift still train; a new head's adapt")
    lr_decay: float = option(0.5, "discriminative learning rate: each earlier stage gets this factor of the next "
                                  "one's lr", range=(1e-300, math.inf, "positive"))
    epochs: int | None = option(None, "number of epochs (default: 15 for classification, 30 for segmentation; "
                                      "from scratch on small images, enough to see about 128,000 images, at most "
                                      "60; 6 on the embedded digits; planned from --budget when it is given)",
                                range=(1, math.inf, "at least 1"))
    budget: str | None = option(None, "time for the whole run, e.g. 10m, 90s or 1h30m (scan, decoding, training, "
                                      "validation, checkpoints and report): the trainer measures its speed and plans "
                                      "the epochs to fit; instead of --epochs")
    budget_partial: bool = option(False, "with --budget: when not even one epoch fits, train on the fraction of an "
                                         "epoch that does instead of stopping with the minimum budget")
    batch_size: int = option(64, "images per batch (per process)", range=(1, math.inf, "at least 1"))
    lr: Any = option(None, "peak learning rate, or auto: a learning-rate range test on the training data picks it "
                           "(the curve is saved as lr_find.png in the run folder) (default: the task's rule, scaled "
                           "to the global batch)")
    optimizer: str = option("sgd", "optimiser", choices=OPTIMIZERS)
    momentum: float = option(0.9, "SGD momentum; AdamW's, RAdam's and LAMB's beta1",
                             range=(0.0, 1.0, "between 0 and 1"))
    beta2: float = option(0.999, "AdamW, RAdam and LAMB: decay of the squared-gradient average (fastai's sqr_mom: "
                                 "0.99)", range=(0.0, 0.999999, "at least 0 and below 1"))
    opt_eps: float | None = option(None, "AdamW, RAdam and LAMB: the epsilon added to the denominator (default: "
                                         "1e-8; LAMB 1e-6)", range=(0.0, 1.0, "between 0 and 1"))
    nesterov: bool = option(True, "Nesterov momentum for SGD")
    weight_decay: float = option(5e-4, "weight decay (never applied to BatchNorm and biases)",
                                 range=(0.0, math.inf, ">= 0"))
    bn_bias_lr_scale: float = option(1.0, "the BatchNorm shifts' learning rate as a multiple of the rest's (airbench: "
                                          "64 with SGD, with the scales fixed: --model-kwargs bn_scale=false; with "
                                          "AdamW, RAdam or LAMB, whose steps do not grow with the gradient, the "
                                          "shifts move about this many times as far each step)",
                                     range=(1e-6, math.inf, "positive"))
    schedule: str = option("onecycle", "learning-rate schedule (flat_cos: flat at the peak for 75% of the steps, "
                                       "then cosine; poly: (1 - t/T)^power; triangle: airbench's, 0.2 of the peak "
                                       "rising to it over 23% of the steps, then down to 0.07)", choices=SCHEDULES)
    warmup_epochs: float = option(0.3, "warm-up epochs for the cosine, flat_cos and poly schedules (onecycle and "
                                       "triangle warm up over their first 25% and 23% of steps)",
                                  range=(0.0, math.inf, ">= 0"))
    poly_power: float = option(0.9, "power of the poly schedule", range=(0.0, math.inf, ">= 0"))
    progressive_resize: float = option(1.0, "progressive resizing: the first epoch trains at this fraction of the "
                                             "image size (e.g. 0.5), growing linearly to the full size by three "
                                             "quarters of the epochs, in steps of 8 px; validation always at the full "
                                             "size (1 = off)", range=(0.1, 1.0, "between 0.1 and 1"))
    lookahead: int = option(0, "Lookahead (Zhang et al. 2019): every N optimiser steps the weights move back "
                               "halfway to their slow copy, which then takes their place (0 = off; the paper uses 5)",
                            range=(0, math.inf, ">= 0 (0 turns Lookahead off)"))
    lookahead_schedule: str = option("constant", "with --lookahead: constant (halfway back each time) or airbench "
                                                 "(airbench's lookahead-EMA: the pull-back grows from nothing at the "
                                                 "start to 0.95^N at the end as (t/T)^3, BatchNorm statistics "
                                                 "averaged too, and the run ends on the slow copy)",
                                     choices=LOOKAHEAD_SCHEDULES)
    ema: bool = option(False, "keep an exponential moving average of the weights and save it")
    ema_decay: float = option(0.999, "EMA decay per step", range=(0.0, 1.0, "between 0 and 1"))
    precise_bn: bool | None = option(None, "recompute the BatchNorm statistics on the epoch's training batches "
                                           "before each validation (default: when an epoch has fewer than 20 "
                                           "steps, where the running averages lag the weights)")
    loss_guard: bool = option(True, "skip a step whose loss jumps far above the recent steps' (5x their median) "
                                    "and halve the learning rate, with a note")
    grad_clip: float = option(0.0, "clip the global gradient norm to this value (0 = off)",
                              range=(0.0, math.inf, ">= 0 (0 turns clipping off)"))
    accum_steps: int = option(1, "gradient accumulation steps", range=(1, math.inf, "at least 1"))
    early_stop: int = option(0, "stop after this many validations without improvement (0 = off)",
                             range=(0, math.inf, ">= 0 (0 turns early stopping off)"))
    val_every: int = option(1, "validate after every N-th epoch and after the last one (Keras' validation_freq, "
                               "Lightning's check_val_every_n_epoch): the best checkpoint and early stopping see "
                               "only the validated epochs; the other epochs still save the last checkpoint and "
                               "their training metrics (1 = every epoch)", range=(1, math.inf, "at least 1"))
    # hardware
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: str = option("auto", "auto = bf16 where the hardware has it, fp16 with a gradient scaler on older "
                                    "GPUs, fp32 elsewhere", choices=PRECISIONS)
    channels_last: bool | None = option(None, "channels-last memory format (default: where it pays)")
    compile: bool = option(False, "torch.compile the model (pays off on long runs)")
    threads: int | None = option(None, "CPU threads for PyTorch", range=(1, math.inf, "at least 1"))
    # several processes (torchrun): batch_size is per process; see engine/distributed.py
    sync_bn: bool = option(False, "several processes: BatchNorm statistics over the global batch (SyncBatchNorm; "
                                  "CUDA only)")
    dist_timeout: float = option(10.0, "minutes a training process waits for the others before the run stops "
                                       "with an error")
    # reproducibility and output
    seed: int = option(0, "random seed", range=(0, 2**32 - 1, "between 0 and 4294967295"))
    deterministic: bool = option(False, "deterministic algorithms (bit-exact resume on CPU in fp32; on a CPU the "
                                        "default layout is then contiguous, not channels-last)")
    output: str | None = option(None, "the run folder (default: runs/<model>-<date>-<time>)")
    progress: bool = option(True, "progress bars on a terminal")
    tensorboard: bool = option(False, "also log to TensorBoard (needs the tensorboard extra)")

    def __post_init__(self) -> None:
        check_options(self)
        if self.model == "auto":
            object.__setattr__(self, "model", None)
        if self.batch_size == 1:
            raise ConfigError("batch_size=1 cannot train BatchNorm layers (a batch of one has no statistics); "
                              "use a batch size of 2 or more.")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {self.val_fraction}.")
        if self.optimizer not in (None, "sgd") and self.momentum >= 1.0:  # None: a task's recipe chooses it
            raise ConfigError(f"momentum is {self.optimizer}'s beta1 and must be below 1, got {show(self.momentum)}.")
        if self.lr is not None:
            auto = isinstance(self.lr, str) and self.lr.strip().lower() == "auto"
            value = "auto" if auto else _number(self.lr, float)
            if value is None or (not auto and not (math.isfinite(value) and value > 0)):
                raise ConfigError(f"lr must be a positive number or auto, got {show(self.lr)}.")
            object.__setattr__(self, "lr", value)
        if self.budget is not None:
            from .budget import parse_duration

            parse_duration(self.budget)
            if self.progressive_resize < 1.0:
                raise ConfigError("--progressive-resize with --budget is not supported yet: the plan measures the "
                                  "step time at one image size. Give --epochs instead, or drop --progressive-resize.")
            if self.val_every > 1:
                raise ConfigError("--val-every with --budget is not supported yet: the plan counts a validation "
                                  "after every epoch and may end the run after any of them. Give --epochs instead, "
                                  "or drop --val-every.")
        if not self.dist_timeout > 0:
            raise ConfigError(f"dist_timeout must be a positive number of minutes, got {self.dist_timeout}.")
        if self.strategy in ("linear_probe", "freeze_unfreeze") and self.pretrained in NO_WEIGHTS:
            raise ConfigError(f"strategy {self.strategy!r} freezes a pretrained backbone; give --pretrained "
                              "or use --strategy scratch.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes``, checked like a new config."""
        return from_dict({**self.to_dict(), **changes}, cls=type(self))


def from_dict(values: dict[str, Any], source: str = "config", cls: type = RunConfig) -> Any:
    """Build a config (``cls``, a dataclass), rejecting unknown keys with a suggestion; dashes and
    underscores both accepted."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    clean: dict[str, Any] = {}
    for key, value in values.items():
        k = str(key).replace("-", "_")
        if k not in known:
            close = difflib.get_close_matches(k, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown option {show(key)} in {source}{hint}.")
        clean[k] = value
    return cls(**clean)  # the types and values are checked in the dataclass (check_options)


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist.")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except OSError as err:
        raise ConfigError(f"config file {p} cannot be read ({err.strerror or err}).") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte {err.start} cannot be decoded); save it as "
                          "UTF-8.") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {p} is not valid YAML: {err}".splitlines()[0].rstrip(".:") + ".") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(f"config file {p} nests lists or mappings too deeply; it must hold a mapping of "
                          "option: value.") from None
    except ValueError as err:  # PyYAML's constructors: a 13th month, an integer of more than 4300 digits, ...
        raise ConfigError(f"config file {p} holds a value YAML cannot convert ({show(str(err))}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of option: value.")
    return data


def save_yaml(cfg: RunConfig, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
