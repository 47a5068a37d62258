"""The model registry: ``register_model``, ``create_model``, ``list_models``, ``model_info``."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError, ResnetTuneError
from .resnet import ResNet, ResNetConfig, count_macs, count_params

__all__ = ["register_model", "create_model", "list_models", "model_info", "get_config", "ModelInfo",
           "UnknownModelError", "Preset"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UnknownModelError(ResnetTuneError, KeyError):
    """Raised for a model name that is not registered (a user error; also a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError quotes its message; this one is a sentence.
        return str(self.args[0])


@dataclass(frozen=True)
class Preset:
    """A registered architecture: its config plus the facts a user looks up."""

    name: str
    config: ResNetConfig
    description: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Published parameter count (with the preset's default classifier), where a reference exists.
    reference_params: int | None = None
    reference: str = ""
    # Default pretrained source, used by ``pretrained="default"``.
    default_weights: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, Preset] = {}


def register_model(preset: Preset) -> Preset:
    """Register a preset under its name; registering a name twice is an error."""
    if preset.name in _REGISTRY:
        raise ValueError(f"a model named {preset.name!r} is already registered")
    _REGISTRY[preset.name] = preset
    return preset


def _get_preset(name: str) -> Preset:
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} `resnet-tune models` lists the {len(_REGISTRY)} available models."
        ) from None


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, in registration order."""
    return [n for n in _REGISTRY if fnmatch.fnmatch(n, pattern)]


def get_preset(name: str) -> Preset:
    return _get_preset(name)


def get_config(name: str) -> ResNetConfig:
    return _get_preset(name).config


def build_model(config: ResNetConfig | dict[str, Any], *, num_classes: int | None = None, in_chans: int = 3,
                name: str = "custom") -> ResNet:
    """Build a user-defined ResNet from a config (a ``ResNetConfig`` or a dict, e.g. from YAML).

    Example::

        build_model({"block": "basic", "layers": [2, 2, 2], "widths": [32, 64, 128],
                     "strides": [1, 2, 2], "stem": "cifar", "num_classes": 10})
    """
    if isinstance(config, dict):
        config = ResNetConfig().replace(**config)
    return ResNet(config, num_classes=num_classes, in_chans=in_chans, name=name)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_chans: int = 3,
    pretrained: str | bool | None = None,
    **overrides: Any,
) -> ResNet:
    """Create a registered ResNet by name.

    Args:
        name: a registered name (``list_models()``), or ``"custom"`` with the architecture in
            ``overrides`` (see :class:`ResNetConfig`).
        num_classes: classifier size; ``None`` keeps the preset's default (1000 for ImageNet
            presets, 10 for CIFAR ones) or, with ``pretrained``, the checkpoint's. A value that
            differs from the checkpoint's asks for a new, freshly initialised classifier.
        in_chans: input channels; with ``pretrained`` the first convolution's weights are
            adapted (summed for 1 channel, repeated and rescaled otherwise), as timm does.
        pretrained: where to take weights from: ``torchvision:<WEIGHTS>`` (e.g.
            ``torchvision:ResNet50_Weights.IMAGENET1K_V2``), ``timm:<name>``, ``hf:<repo>``, a URL,
            a local file (``.safetensors``, ``.pth``, ``.h5``, ``.weights.h5``, ``.keras``), or
            ``"default"`` (or ``True``) for the preset's default weights.
        **overrides: architecture options (:class:`ResNetConfig` fields, e.g. ``drop_path_rate``,
            ``zero_init_residual``); an unknown name raises ``TypeError``.
    """
    if name == "custom":
        cfg = ResNetConfig().replace(**overrides)
        preset = None
    else:
        preset = _get_preset(name)
        cfg = preset.config.replace(**overrides) if overrides else preset.config
    if pretrained is True:  # timm's spelling
        pretrained = "default"
    if pretrained is None or pretrained is False:
        return ResNet(cfg, num_classes=num_classes, in_chans=in_chans, name=name)

    from .pretrained import load_pretrained, resolve_source

    source = pretrained
    if pretrained == "default":
        if preset is None or not preset.default_weights:
            raise ConfigError(f"model {name!r} has no default pretrained weights; name a source explicitly.")
        source = preset.default_weights
    state, meta = resolve_source(source, cfg=cfg, model_name=name)
    ckpt_classes = meta.get("num_classes")
    if ckpt_classes is None and "fc.weight" in state:
        ckpt_classes = int(state["fc.weight"].shape[0])
    if ckpt_classes is not None and num_classes is None:
        num_classes = int(ckpt_classes)
    model = ResNet(cfg, num_classes=num_classes, in_chans=in_chans, name=name)
    reset = ckpt_classes is not None and num_classes != ckpt_classes
    load_pretrained(model, state, reset_head=reset, source=source)
    if reset:  # the checkpoint's class names describe the old head, not this one
        meta = {k: v for k, v in meta.items() if k not in ("categories", "num_classes")}
    model.pretrained_meta = meta  # type: ignore[assignment]
    return model


@dataclass(frozen=True)
class ModelInfo:
    """What a user needs to know about a model before using it."""

    name: str
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    num_params: int
    gmacs: float
    gflops: float  # 2 x GMACs
    feature_info: list[dict[str, Any]]
    reference_params: int | None
    description: str

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def model_info(name_or_model: str | ResNet, input_size: tuple[int, int, int] | None = None) -> ModelInfo:
    """Parameters, MACs/FLOPs at the default input size, preprocessing and stage strides.

    The architecture is built on the ``meta`` device, so even the largest preset costs no memory.
    """
    if isinstance(name_or_model, str):
        preset = _get_preset(name_or_model)
        with torch.device("meta"):
            model = ResNet(preset.config, name=preset.name)
    else:
        model = name_or_model
        preset = _REGISTRY.get(model.name)
    size = input_size or model.cfg.input_size
    size = (model.in_chans, size[1], size[2])
    macs = count_macs(model, size)
    return ModelInfo(
        name=model.name,
        input_size=size,
        mean=preset.mean if preset else IMAGENET_MEAN,
        std=preset.std if preset else IMAGENET_STD,
        num_classes=model.num_classes,
        num_params=count_params(model),
        gmacs=macs / 1e9,
        gflops=2 * macs / 1e9,
        feature_info=list(model.feature_info),
        reference_params=preset.reference_params if preset else None,
        description=preset.description if preset else "user-defined ResNet",
    )


def builder(name: str) -> Callable[..., nn.Module]:
    """A torchvision-style builder function for a registered name."""

    def build(**kwargs: Any) -> nn.Module:
        return create_model(name, **kwargs)

    build.__name__ = name
    build.__doc__ = _get_preset(name).description
    return build
