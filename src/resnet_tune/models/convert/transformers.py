"""Hugging Face ``transformers`` ResNet (``ResNetForImageClassification``, ``ResNetModel``, ``ResNetBackbone``).

Key mapping (``N`` = stage from 0, ``M`` = block, ``K`` = conv in the block from 0)::

    resnet.embedder.embedder.convolution.weight          -> conv1.weight
    resnet.embedder.embedder.normalization.*             -> bn1.*
    resnet.encoder.stages.N.layers.M.layer.K.convolution -> layer{N+1}.M.conv{K+1}
    resnet.encoder.stages.N.layers.M.layer.K.normalization -> layer{N+1}.M.bn{K+1}
    resnet.encoder.stages.N.layers.M.shortcut.convolution -> layer{N+1}.M.downsample.0
    resnet.encoder.stages.N.layers.M.shortcut.normalization -> layer{N+1}.M.downsample.1
    classifier.1.*                                        -> fc.*

The architecture is torchvision's, with three switches in ``config.json`` that
:func:`hf_config_to_overrides` turns into our options: ``downsample_in_bottleneck`` (stride in the
first 1x1, as the original v1: ``stride_in_1x1=True``; ``microsoft/resnet-50`` has it False, i.e.
v1.5), ``downsample_in_first_stage`` (stride 2 in stage 1) and ``embedding_size`` (stem width).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from torch import Tensor

from ...errors import CheckpointError
from ._common import check_tensors, list_keys, strip_prefix

__all__ = ["from_transformers", "hf_config_to_overrides", "is_transformers_state"]

_STEM = re.compile(r"^embedder\.embedder\.(convolution|normalization)\.(.+)$")
_BLOCK = re.compile(
    r"^encoder\.stages\.(\d+)\.layers\.(\d+)\."
    r"(?:layer\.(\d+)\.(convolution|normalization)|shortcut\.(convolution|normalization))\.(.+)$"
)
_HEAD = re.compile(r"^classifier\.1\.(weight|bias)$")

# (block, depths) -> our preset
_PRESETS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}


def is_transformers_state(keys: Any) -> bool:
    """Whether these keys look like a Hugging Face ResNet's."""
    return any(k.startswith(("resnet.embedder.", "embedder.embedder.", "resnet.encoder.stages.", "encoder.stages."))
               for k in keys)


def _config_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):  # a transformers.ResNetConfig
        return config.to_dict()
    raise CheckpointError("config must be a config.json dict or a transformers ResNetConfig, got "
                          f"{type(config).__name__}")


def from_transformers(state: Mapping[str, Tensor], config: Mapping[str, Any] | Any | None = None) -> dict[str, Tensor]:
    """A Hugging Face ResNet state dict in our (torchvision's) names.

    Args:
        state: the state dict of ``ResNetForImageClassification`` (keys ``resnet.*`` and
            ``classifier.1.*``), or of ``ResNetModel`` / ``ResNetBackbone`` (no ``resnet.`` prefix,
            no classifier).
        config: the model's ``config.json`` as a dict (or a ``ResNetConfig``), optional. When given,
            the stage depths, block type and activation are checked against the weights. The
            config also decides where the stride goes (``downsample_in_bottleneck``), which the
            weights cannot show: build the model from :func:`hf_config_to_overrides`.

    Raises ``ValueError`` naming every key that has no counterpart (nothing is dropped silently).
    """
    check_tensors(state, "Hugging Face state dict")
    stripped = strip_prefix(state)
    original = dict(zip(stripped, state))  # our error messages name the keys as the caller has them
    state = stripped
    if all(k.startswith("resnet.") or k.startswith("classifier.") for k in state):
        original = {(k[len("resnet."):] if k.startswith("resnet.") else k): original[k] for k in state}
        state = {(k[len("resnet."):] if k.startswith("resnet.") else k): v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    bad: list[str] = []
    blocks: dict[int, set[int]] = {}
    convs_per_block: set[int] = set()
    for key, value in state.items():
        m = _STEM.match(key)
        if m:
            out[("conv1." if m.group(1) == "convolution" else "bn1.") + m.group(2)] = value
            continue
        m = _BLOCK.match(key)
        if m:
            stage, block, conv_idx, conv_kind, short_kind, rest = m.groups()
            prefix = f"layer{int(stage) + 1}.{int(block)}."
            blocks.setdefault(int(stage), set()).add(int(block))
            if conv_idx is not None:
                k = int(conv_idx) + 1
                if k > 3:
                    bad.append(key)
                    continue
                convs_per_block.add(k)
                out[prefix + (f"conv{k}." if conv_kind == "convolution" else f"bn{k}.") + rest] = value
            else:
                out[prefix + ("downsample.0." if short_kind == "convolution" else "downsample.1.") + rest] = value
            continue
        m = _HEAD.match(key)
        if m:
            out["fc." + m.group(1)] = value
            continue
        bad.append(key)
    if bad:
        raise CheckpointError(
            f"{len(bad)} key(s) of this Hugging Face state dict have no counterpart in resnet_tune's ResNet: "
            f"{list_keys(original[k] for k in bad)}. Nothing was converted."
        )
    if not blocks:
        raise CheckpointError("this does not look like a Hugging Face ResNet state dict: it has no "
                              "'encoder.stages.' keys")

    cfg = _config_dict(config)
    if cfg:
        depths = tuple(len(blocks[i]) for i in sorted(blocks))
        want = tuple(cfg.get("depths", depths))
        if depths != want:
            raise CheckpointError(f"the weights have {depths} blocks per stage but the config says "
                                  f"depths={list(want)}")
        kind = "bottleneck" if 3 in convs_per_block else "basic"
        if cfg.get("layer_type", kind) != kind:
            raise CheckpointError(f"the weights hold {kind} blocks but the config says "
                                  f"layer_type={cfg['layer_type']!r}")
        _check_hidden_act(cfg)
    return out


def _check_hidden_act(cfg: Mapping[str, Any]) -> None:
    """Refuse a config whose ``hidden_act`` is not ReLU: Hugging Face applies it only to the stem and after each
    residual addition, a mix that ``act_layer`` (one activation everywhere) does not build."""
    act = cfg.get("hidden_act", "relu")
    if act != "relu":
        raise CheckpointError(f"hidden_act={act!r} is not supported: Hugging Face applies it to the stem and "
                              "after each residual addition while the convolutions inside a block keep ReLU, a "
                              "mix resnet_tune's act_layer (one activation everywhere) does not build")


def hf_config_to_overrides(config: Mapping[str, Any] | Any) -> tuple[str, dict[str, Any]]:
    """Our preset name and keyword overrides for a Hugging Face ResNet ``config.json``.

    ``create_model(name, **overrides)`` then builds the matching architecture. The preset is
    ``resnet18/34/50/101/152`` from ``layer_type`` and ``depths`` (other depths: ``resnet18`` or
    ``resnet50`` with a ``layers`` override). Overrides appear only where the config departs from
    that preset: ``stride_in_1x1=True`` for ``downsample_in_bottleneck``, ``strides`` for
    ``downsample_in_first_stage``, ``stem_width`` for ``embedding_size``, ``widths`` for
    ``hidden_sizes``, ``num_classes`` for the label count (``id2label`` or ``num_labels``) and
    ``in_chans`` for ``num_channels``.

    Raises ``ValueError`` for a config this architecture cannot express.
    """
    cfg = _config_dict(config)
    if not cfg:
        raise CheckpointError("the Hugging Face config is empty")
    model_type = cfg.get("model_type", "resnet")
    if model_type != "resnet":
        raise CheckpointError(f"expected a Hugging Face 'resnet' config, got model_type={model_type!r}")
    layer_type = cfg.get("layer_type", "bottleneck")
    if layer_type not in ("basic", "bottleneck"):
        raise CheckpointError(f"unknown layer_type {layer_type!r}; Hugging Face ResNets use 'basic' or 'bottleneck'")
    _check_hidden_act(cfg)
    depths = tuple(int(d) for d in cfg.get("depths", (3, 4, 6, 3)))
    hidden = tuple(int(h) for h in cfg.get("hidden_sizes", (256, 512, 1024, 2048)))
    if len(depths) != len(hidden):
        raise CheckpointError(f"depths {list(depths)} and hidden_sizes {list(hidden)} need one entry per stage")
    expansion = 4 if layer_type == "bottleneck" else 1
    if any(h % expansion for h in hidden):
        raise CheckpointError(f"bottleneck hidden_sizes must be multiples of 4, got {list(hidden)}")
    widths = tuple(h // expansion for h in hidden)

    name = _PRESETS.get((layer_type, depths), "resnet50" if layer_type == "bottleneck" else "resnet18")
    from ..registry import get_config

    base = get_config(name)
    overrides: dict[str, Any] = {}
    if depths != base.layers:
        overrides["layers"] = depths
    if widths != base.widths:
        overrides["widths"] = widths
    strides = ((2 if cfg.get("downsample_in_first_stage", False) else 1),) + (2,) * (len(depths) - 1)
    if strides != base.strides:
        overrides["strides"] = strides
    stem_width = int(cfg.get("embedding_size", 64))
    if stem_width != base.stem_width:
        overrides["stem_width"] = stem_width
    if layer_type == "bottleneck" and cfg.get("downsample_in_bottleneck", False):
        overrides["stride_in_1x1"] = True
    id2label = cfg.get("id2label")
    num_classes = len(id2label) if id2label else cfg.get("num_labels")
    if num_classes is not None and int(num_classes) != base.num_classes:
        overrides["num_classes"] = int(num_classes)
    in_chans = int(cfg.get("num_channels", 3))
    if in_chans != 3:
        overrides["in_chans"] = in_chans
    return name, overrides
