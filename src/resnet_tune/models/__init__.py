"""The ResNet family: presets, the registry and weight converters."""

from . import presets as _presets  # noqa: F401  (registers the presets)
from ._registry import (ModelInfo, Preset, UnknownModelError, build_model, create_model, get_config, get_preset,
                        list_models, model_info, register_model)
from .pretrained import load_weights
from .resnet import (BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, ResNet, ResNetConfig, StageOutput,
                     count_macs, count_params)

__all__ = [
    "BasicBlock", "Bottleneck", "ModelInfo", "PreActBasicBlock", "PreActBottleneck", "Preset", "ResNet",
    "ResNetConfig", "StageOutput", "UnknownModelError", "build_model", "count_macs", "count_params",
    "create_model", "get_config", "get_preset", "list_models", "load_weights", "model_info", "register_model",
]
