"""The ResNet family: the architecture, the registry of presets, building by name, pretrained weights (sources,
converters, downloads), segmentation networks on a ResNet backbone, and batch-norm folding."""

from . import presets as _presets  # noqa: F401  (registers the presets)
from .factory import build_from_record, build_model, builder, create_model, model_kwargs
from .fold import fold_batchnorm
from .init import first_conv, whiten_first_conv
from .pretrained import load_weights
from .registry import (IMAGENET_MEAN, IMAGENET_STD, ModelInfo, Preset, UnknownModelError, get_config, get_preset,
                       list_models, mean_std_for, model_info, register_model)
from .resnet import (BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, ResNet, ResNetConfig, StageOutput,
                     count_macs, count_params, fix_bn_scale)
from .segmentation import Segmenter, build_segmenter, create_segmenter

__all__ = [
    "BasicBlock", "Bottleneck", "IMAGENET_MEAN", "IMAGENET_STD", "ModelInfo", "PreActBasicBlock", "PreActBottleneck",
    "Preset", "ResNet", "ResNetConfig", "Segmenter", "StageOutput", "UnknownModelError", "build_from_record",
    "build_model", "build_segmenter", "builder", "count_macs", "count_params", "create_model", "create_segmenter",
    "first_conv", "fix_bn_scale", "fold_batchnorm", "get_config", "get_preset", "list_models", "load_weights",
    "mean_std_for", "model_info", "model_kwargs", "register_model", "whiten_first_conv",
]
