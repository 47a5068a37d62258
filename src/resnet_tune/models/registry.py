"""The model registry: ``register_model``, ``get_preset``, ``get_config``, ``list_models``, ``model_info``.

Building models (``create_model``, ``build_model``) lives in :mod:`.factory`, which also loads weights.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ResnetTuneError
from .resnet import ResNet, ResNetConfig, count_macs, count_params

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ModelInfo", "Preset", "UnknownModelError", "get_config", "get_preset",
           "list_models", "mean_std_for", "model_info", "register_model"]

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


def mean_std_for(name: str, pretrained_meta: dict[str, Any] | None = None) -> tuple[tuple, tuple]:
    """The normalisation a model expects: the pretrained weights' own mean/std where they say, else the preset's,
    else ImageNet's."""
    if pretrained_meta and pretrained_meta.get("mean") and pretrained_meta.get("std"):
        return tuple(pretrained_meta["mean"]), tuple(pretrained_meta["std"])
    preset = _REGISTRY.get(name)
    return (preset.mean, preset.std) if preset else (IMAGENET_MEAN, IMAGENET_STD)
