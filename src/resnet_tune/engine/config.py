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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["LOADERS", "OPTIMIZERS", "PRECISIONS", "RunConfig", "SCHEDULES", "STRATEGIES", "from_dict", "load_yaml",
           "option", "option_help", "save_yaml"]

STRATEGIES = ("auto", "scratch", "full", "linear_probe", "freeze_unfreeze")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "poly", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOADERS = ("auto", "memory", "workers")


def option(default: Any, help: str | None = None, *, choices: tuple | None = None) -> Any:  # noqa: A002
    """A config field with its command-line help and allowed values. A subclass that only changes the default
    writes ``option(new_default)`` and keeps the help of the class it overrides."""
    metadata: dict[str, Any] = {}
    if help is not None:
        metadata["help"] = help
    if choices is not None:
        metadata["choices"] = tuple(choices)
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


@dataclass(frozen=True)
class RunConfig:
    """The options every training run has, whatever its task. ``None`` means "choose for me" where documented."""

    # data
    data: str | None = option(None, "training data")
    val_fraction: float = option(0.2, "validation share when the data has no val split (seeded)")
    loader: str = option("auto", "memory: decode once into RAM and augment in batches; workers: DataLoader "
                                 "workers reading files; auto picks", choices=LOADERS)
    workers: int | None = option(None, "DataLoader worker processes (default: chosen from the device)")
    # model
    model: str | None = option(None, "architecture (`resnet-tune models` lists them)")
    pretrained: str | None = option(None, "weights to start from: torchvision:<WEIGHTS>, timm:<name>, hf:<repo>, "
                                          "a URL or a file")
    # optimisation
    strategy: str = option("auto", "auto = freeze_unfreeze with --pretrained, scratch without", choices=STRATEGIES)
    freeze_epochs: int = option(1, "epochs with a frozen body in freeze_unfreeze")
    lr_decay: float = option(0.5, "discriminative learning rate: each earlier stage gets this factor of the next "
                                  "one's lr")
    epochs: int = option(15, "number of epochs")
    batch_size: int = option(64, "images per batch (per process)")
    lr: float | None = option(None, "peak learning rate (default: the task's rule, scaled to the global batch)")
    optimizer: str = option("sgd", "optimiser", choices=OPTIMIZERS)
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(True, "Nesterov momentum for SGD")
    weight_decay: float = option(5e-4, "weight decay (never applied to BatchNorm and biases)")
    schedule: str = option("onecycle", "learning-rate schedule (poly: (1 - t/T)^power)", choices=SCHEDULES)
    warmup_epochs: float = option(0.3, "warm-up epochs for the cosine and poly schedules (onecycle warms up over "
                                       "its first 25% of steps)")
    poly_power: float = option(0.9, "power of the poly schedule")
    ema: bool = option(False, "keep an exponential moving average of the weights and save it")
    ema_decay: float = option(0.999, "EMA decay per step")
    grad_clip: float = option(0.0, "clip the global gradient norm to this value (0 = off)")
    accum_steps: int = option(1, "gradient accumulation steps")
    early_stop: int = option(0, "stop after this many epochs without validation improvement (0 = off)")
    # hardware
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: str = option("auto", "auto = bf16 where the hardware has it, fp16 with a gradient scaler on older "
                                    "GPUs, fp32 elsewhere", choices=PRECISIONS)
    channels_last: bool | None = option(None, "channels-last memory format (default: where it pays)")
    compile: bool = option(False, "torch.compile the model (pays off on long runs)")
    threads: int | None = option(None, "CPU threads for PyTorch")
    # several processes (torchrun): batch_size is per process; see engine/distributed.py
    sync_bn: bool = option(False, "several processes: BatchNorm statistics over the global batch (SyncBatchNorm; "
                                  "CUDA only)")
    dist_timeout: float = option(10.0, "minutes a training process waits for the others before the run stops "
                                       "with an error")
    # reproducibility and output
    seed: int = option(0, "random seed")
    deterministic: bool = option(False, "deterministic algorithms (bit-exact resume on CPU in fp32)")
    output: str | None = option(None, "the run folder (default: runs/<model>-<date>-<time>)")
    progress: bool = option(True, "progress bars on a terminal")
    tensorboard: bool = option(False, "also log to TensorBoard (needs the tensorboard extra)")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            allowed = _meta(type(self), f.name, "choices")
            value = getattr(self, f.name)
            if allowed is not None and value not in allowed:
                raise ConfigError(f"{f.name}={value!r} is not valid; choose one of "
                                  f"{', '.join(str(a) for a in allowed)}.")
        for key in ("epochs", "batch_size", "accum_steps"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}.")
        if self.batch_size == 1:
            raise ConfigError("batch_size=1 cannot train BatchNorm layers (a batch of one has no statistics); "
                              "use a batch size of 2 or more.")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {self.val_fraction}.")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}.")
        if not self.dist_timeout > 0:
            raise ConfigError(f"dist_timeout must be a positive number of minutes, got {self.dist_timeout}.")
        if self.freeze_epochs < 0:
            raise ConfigError("freeze_epochs must be >= 0.")
        if self.strategy in ("linear_probe", "freeze_unfreeze") and not self.pretrained:
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
            raise ConfigError(f"unknown option {key!r} in {source}{hint}.")
        clean[k] = value
    try:
        return cls(**clean)
    except TypeError as err:  # pragma: no cover - guarded above
        raise ConfigError(str(err)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {p} is not valid YAML: {err}".splitlines()[0] + ".") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of option: value.")
    return data


def save_yaml(cfg: RunConfig, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
