"""Residual networks (He et al. 2015, 2016) with torchvision's parameter names.

One ``ResNet`` class covers every preset; a preset is a ``ResNetConfig``. Parameter and buffer
names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1`` ... ``fc``) so that
torchvision and timm state dicts load with ``strict=True`` and without remapping; the timm
variants keep timm's names where timm differs (deep stem ``conv1.0/1/3/4/6``, average-pool
shortcut ``downsample.1/2``, squeeze-excitation ``se.fc1/fc2``).

Residual learning: a block computes a residual branch F(x) and outputs ``act(F(x) + s(x))``
where the shortcut ``s`` is the identity when the shape is kept and a projection otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import reprlib
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import Mish

__all__ = [
    "BasicBlock",
    "BlurPool2d",
    "Bottleneck",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ResNet",
    "ResNetConfig",
    "StageOutput",
    "fix_bn_scale",
]

BLOCK_TYPES = ("basic", "bottleneck", "preact_basic", "preact_bottleneck")


def _whole(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


# The type of every ResNetConfig field: (test, what it must be); tuple fields are given per item.
_FIELD_TYPES: dict[str, tuple[Any, str]] = {
    **{k: (lambda v: isinstance(v, str), "a string")
       for k in ("block", "stem", "shortcut", "stage_entry", "global_pool", "act_layer", "se_act_layer",
                 "conv_init")},
    **{k: (_whole, "a whole number") for k in ("stem_width", "groups", "base_width", "num_classes")},
    **{k: (_finite, "a finite number")
       for k in ("bn_eps", "bn_momentum", "se_ratio", "drop_path_rate", "logit_scale")},
    **{k: (lambda v: isinstance(v, bool), "true or false")
       for k in ("stem_bias", "stem_pool_zero_pad", "stride_in_1x1", "stride_in_last_block", "conv_bias",
                 "zero_init_residual", "anti_alias", "bn_scale", "dirac_init")},
}
_TUPLE_TYPES: dict[str, tuple[Any, str]] = {
    **{k: (_whole, "whole numbers") for k in ("layers", "widths", "strides", "input_size")},
    "replace_stride_with_dilation": (lambda v: isinstance(v, bool), "true or false values"),
}
STEM_TYPES = ("default", "deep", "cifar", "preact")
SHORTCUT_TYPES = ("conv", "avg", "pad", "subsample")
STAGE_ENTRIES = ("block", "conv_pool", "conv_pool_bn")
GLOBAL_POOLS = ("avg", "max")
#: how random weights start: torchvision's He-normal over the fan-out, or fastai's over the fan-in
CONV_INITS = ("fan_out", "fan_in")
#: activations (timm's ``act_layer`` names): ReLU (every ResNet of He et al.), Mish (Misra 2019; fastai's xresnet
#: leaderboard runs; :class:`~resnet_tune.models.activations.Mish`), SiLU/Swish (Ramachandran et al. 2017)
ACT_LAYERS = {"relu": nn.ReLU, "mish": Mish, "silu": nn.SiLU}


def make_act(name: str = "relu") -> nn.Module:
    """The activation module called ``name`` (:data:`ACT_LAYERS`), in place."""
    return ACT_LAYERS[name](inplace=True)


@dataclass(frozen=True)
class ResNetConfig:
    """Everything that defines a ResNet's architecture.

    Args:
        block: ``basic`` (two 3x3), ``bottleneck`` (1x1-3x3-1x1, expansion 4), or their
            pre-activation forms ``preact_basic`` / ``preact_bottleneck`` (BN-ReLU before each conv).
        layers: number of blocks in each stage (0 allowed with ``stage_entry="conv_pool"``).
        widths: base width of each stage (output channels are ``width * expansion``).
        strides: stride of each stage.
        stem: ``default`` (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), ``deep`` (three 3x3 convs,
            the "C/D" stem), ``cifar`` (one 3x3/1 conv, BN, ReLU, no pooling), ``preact``
            (7x7/2 conv and max-pool with no BN: the first block normalises its input).
        stem_width: channels of the stem output (``deep``: the inner width is half of it).
        stem_bias: bias in the stem convolution (Keras).
        stem_pool_zero_pad: pad the stem max-pool with zeros instead of -inf (Keras V2, whose
            stem has no ReLU before the pool, so the padding value matters).
        groups: grouped 3x3 convolutions (ResNeXt cardinality). In a bottleneck the 3x3 is grouped; in a basic block
            the first 3x3 is grouped and widens to ``int(width * base_width / 64) * groups`` channels and the second
            3x3 is dense back to ``width`` (fastai's ``SEResNeXtBlock`` at expansion 1, the block of its xresnext
            and the Imagenette leaderboard's "mini net").
        base_width: width per group (64 = plain ResNet; 128 = wide ResNet-x2; 4 with 32 groups = ResNeXt 32x4d).
        shortcut: projection used when the shape changes: ``conv`` (1x1 conv + BN), ``avg``
            (2x2 average pool, then 1x1 conv + BN; the "D" variant), ``pad`` (option A of
            He et al. 2015: subsample and zero-pad channels, no parameters).
        stage_entry: how a stage changes width and resolution: ``block`` (its first block strides and a projection
            shortcut matches the shapes; every ResNet of He et al.), or ``conv_pool`` (a 3x3 conv-BN-ReLU to the
            stage's width, then a 2x2 max-pool with the stride, before the stage's residual blocks: Page's 9-layer
            ResNet for 32 px images, DAWNBench 2018), or ``conv_pool_bn`` (the same layers with the max-pool
            between the conv and its BN-ReLU, as Page's final version and airbench: BN and ReLU run on a quarter of
            the pixels; the same parameters and state dict, not the same function).
        stride_in_1x1: put the stride in the first 1x1 conv of a bottleneck (original v1 and
            Keras) instead of the 3x3 (v1.5, torchvision).
        stride_in_last_block: downsample in the last block of a stage instead of the first (Keras V2).
        conv_bias: biases in block convolutions (Keras v1: all; Keras V2: the last 1x1 and the
            projection).
        bn_eps: BatchNorm epsilon (1e-5 torchvision, 1.001e-5 Keras).
        bn_momentum: how much of each batch's statistics the BatchNorm running averages take (PyTorch's
            ``momentum``: 0.1; airbench's "momentum 0.6" is 0.4 here). Only affects training (state dicts are
            unchanged).
        bn_scale: every BatchNorm learns its scale (gamma), as every ResNet of He et al.; False fixes the scales (at
            1 in new weights; loaded weights bring their own) and only the shifts learn (airbench, Jordan 2024, with
            a higher learning rate for the shifts: the trainer's ``bn_bias_lr_scale``). The fixed scales stay in the
            state dict under the same names (as buffers), so checkpoints load either way; not with
            ``zero_init_residual``, whose zero scale would then stay zero.
        se_ratio: squeeze-and-excitation reduction (0 = off; timm's ``seresnet`` uses 1/16).
        drop_path_rate: stochastic depth, rising linearly to this rate over the blocks.
        anti_alias: anti-aliased downsampling (Zhang 2019, "Making Convolutional Networks Shift-Invariant
            Again"; timm's ``aa_layer=BlurPool2d``): each strided 3x3 convolution runs at stride 1 and is followed,
            after its BN and ReLU, by a fixed 3x3 binomial blur with the stride, and the stem's 3x3/2 max-pool
            becomes a 3x3/1 max-pool and the blur. Adds no parameters (state dicts are unchanged); post-activation
            blocks only.
        zero_init_residual: start each residual branch at zero (last BN gamma = 0), so every
            block starts as the identity (Goyal et al. 2017).
        conv_init: how random weights start (:data:`CONV_INITS`): ``fan_out`` (torchvision's and timm's: He-normal
            convolutions over their fan-out, the classifier uniform in +-1/sqrt(features) with its bias) or
            ``fan_in`` (fastai's ``init_cnn`` for xresnet: He-normal over the fan-in for every convolution, the
            squeeze-and-excitation's included, and for the classifier, biases zero). Grouped convolutions differ
            most: the mini net's 64-group 3x3s start 16-23x smaller over their fan-out, so an adaptive optimiser's
            steps, about the learning rate in size, move them that much further relative to their size. Only
            affects new weights (state dicts are unchanged).
        dirac_init: new weights of every 3x3 convolution start with their first min(in, out) filters (a grouped
            one's: in each group) as the identity (``torch.nn.init.dirac_`` over the initialisation above;
            airbench's identity initialisation, "an implicit residual"; the other filters keep it): at the start
            each such convolution passes its input's channels through. Only affects new weights.
        replace_stride_with_dilation: per stage after the first, dilate instead of striding
            (for segmentation at output stride 8 or 16).
        act_layer: the activation after each BN and residual addition (timm's name): ``relu``, ``mish`` or ``silu``
            (:data:`ACT_LAYERS`).
        se_act_layer: the activation inside the squeeze-and-excitation bottleneck: ``relu`` (timm's and Hu et
            al.'s) or, as fastai's ``SEModule``, which takes its block's activation, the block's ``act_layer``.
        global_pool: how the last feature map becomes one vector (timm's name): ``avg`` (every ResNet of He et
            al.) or ``max`` (Page's ResNet-9).
        logit_scale: a constant the classifier's outputs are multiplied by (Page's ResNet-9: 0.125); part of the
            classifier module ``fc``, so a head trained on cached features and the exported model include it.
        num_classes: default classifier size of this preset.
        input_size: default input (C, H, W) of this preset.
    """

    block: str = "bottleneck"
    layers: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    stem: str = "default"
    stem_width: int = 64
    stem_bias: bool = False
    stem_pool_zero_pad: bool = False
    groups: int = 1
    base_width: int = 64
    shortcut: str = "conv"
    stage_entry: str = "block"
    stride_in_1x1: bool = False
    stride_in_last_block: bool = False
    conv_bias: bool = False
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    bn_scale: bool = True
    se_ratio: float = 0.0
    drop_path_rate: float = 0.0
    zero_init_residual: bool = False
    conv_init: str = "fan_out"
    dirac_init: bool = False
    anti_alias: bool = False
    replace_stride_with_dilation: tuple[bool, ...] = ()
    global_pool: str = "avg"
    act_layer: str = "relu"
    se_act_layer: str = "relu"
    logit_scale: float = 1.0
    num_classes: int = 1000
    input_size: tuple[int, int, int] = (3, 224, 224)

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(f"invalid ResNet config: {msg}")

        for name, (ok, what) in _FIELD_TYPES.items():  # types first: the checks below compare values
            if not ok(getattr(self, name)):
                bad(f"{name}={reprlib.repr(getattr(self, name))} must be {what}")
        for name, (ok, what) in _TUPLE_TYPES.items():
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or not all(ok(v) for v in value):
                bad(f"{name}={reprlib.repr(value)} must be a sequence of {what}")
            object.__setattr__(self, name, tuple(value))
        if len(self.input_size) != 3 or min(self.input_size) < 1:
            bad(f"input_size={self.input_size} must be (channels, height, width), all positive")
        if not self.bn_eps > 0 or self.se_ratio < 0 or self.stem_width < 1:
            bad("bn_eps must be positive, se_ratio at least 0 and stem_width at least 1")
        if not 0 < self.bn_momentum <= 1:
            bad(f"bn_momentum={self.bn_momentum} must be in (0, 1] (PyTorch's convention: the weight of each batch)")
        if self.zero_init_residual and not self.bn_scale:
            bad("zero_init_residual starts the last BatchNorm scale of each block at 0, which bn_scale=False would "
                "keep at 0 for good; add zero_init_residual=false to fix the scales")
        if self.block not in BLOCK_TYPES:
            bad(f"block={self.block!r}; choose one of {', '.join(BLOCK_TYPES)}")
        if self.stem not in STEM_TYPES:
            bad(f"stem={self.stem!r}; choose one of {', '.join(STEM_TYPES)}")
        if self.shortcut not in SHORTCUT_TYPES:
            bad(f"shortcut={self.shortcut!r}; choose one of {', '.join(SHORTCUT_TYPES)}")
        n = len(self.layers)
        if n == 0 or len(self.widths) != n or len(self.strides) != n:
            bad(f"layers, widths and strides need one entry per stage (got {len(self.layers)}, "
                f"{len(self.widths)}, {len(self.strides)})")
        if self.stage_entry not in STAGE_ENTRIES:
            bad(f"stage_entry={self.stage_entry!r}; choose one of {', '.join(STAGE_ENTRIES)}")
        fewest = 0 if self.stage_entry != "block" else 1
        if any(d < fewest for d in self.layers) or any(w < 1 for w in self.widths):
            bad("every stage needs at least one block and a positive width" if fewest else
                "block counts must be at least 0 and widths positive")
        if self.stage_entry != "block" and (self.block != "basic" or self.replace_stride_with_dilation or
                                            self.stride_in_last_block or self.anti_alias):
            bad(f"stage_entry={self.stage_entry!r} takes basic blocks, without dilation, stride_in_last_block or "
                "anti_alias")
        if any(s not in (1, 2) for s in self.strides):
            bad(f"strides must be 1 or 2, got {self.strides}")
        if self.groups < 1 or self.base_width < 1:
            bad("groups and base_width must be positive")
        if self.block == "preact_basic" and (self.groups != 1 or self.base_width != 64):
            bad("pre-activation basic blocks only support groups=1 and base_width=64 (as torchvision)")
        if self.block == "basic" and self.groups > 1:
            if self.stem_width % self.groups or any(w % self.groups for w in self.widths):
                bad(f"a basic block with groups={self.groups} needs stem_width and every width to be multiples of "
                    f"{self.groups} (the grouped 3x3 splits its input channels)")
        if self.block == "basic" and min(self.widths) * self.base_width < 64:
            bad(f"base_width={self.base_width} leaves the narrowest stage (width {min(self.widths)}) no channels in a "
                "group")
        if self.replace_stride_with_dilation and len(self.replace_stride_with_dilation) != n - 1:
            bad(f"replace_stride_with_dilation needs {n - 1} entries (one per stage after the first)")
        if not 0.0 <= self.drop_path_rate < 1.0:
            bad("drop_path_rate must be in [0, 1)")
        if not self.stride_in_last_block and self.block.startswith("preact") and self.shortcut == "pad":
            bad("pad shortcuts are for post-activation CIFAR networks")
        if self.num_classes < 0:
            bad("num_classes must be >= 0 (0 = no classifier)")
        if self.global_pool not in GLOBAL_POOLS:
            bad(f"global_pool={self.global_pool!r}; choose one of {', '.join(GLOBAL_POOLS)}")
        if self.conv_init not in CONV_INITS:
            bad(f"conv_init={self.conv_init!r}; choose one of {', '.join(CONV_INITS)}")
        for name in ("act_layer", "se_act_layer"):
            if getattr(self, name) not in ACT_LAYERS:
                bad(f"{name}={getattr(self, name)!r}; choose one of {', '.join(ACT_LAYERS)}")
        if not self.logit_scale > 0:
            bad(f"logit_scale must be positive, got {self.logit_scale}")
        if self.anti_alias and (self.block.startswith("preact") or self.stem_pool_zero_pad or self.stride_in_1x1):
            bad("anti_alias is for post-activation blocks with the stride in the 3x3 and the usual stem (as timm's "
                "resnetblur models)")

    @property
    def expansion(self) -> int:
        return 4 if self.block.endswith("bottleneck") else 1

    def replace(self, **changes: Any) -> "ResNetConfig":
        """A copy with some fields changed; unknown field names raise ``TypeError``."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(
                f"unknown ResNet option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(names))}"
            )
        for key in ("layers", "widths", "strides", "replace_stride_with_dilation", "input_size"):
            if key in changes and changes[key] is not None:
                changes[key] = tuple(changes[key])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


class StageOutput(NamedTuple):
    """One stage's output from :meth:`ResNet.feature_maps`."""

    name: str
    stride: int
    tensor: Tensor


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth (Huang et al. 2016): drop the residual branch per sample."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SEModule(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) with timm's names (``fc1``, ``fc2``)."""

    def __init__(self, channels: int, ratio: float = 1 / 16, divisor: int = 8, act_layer: str = "relu") -> None:
        super().__init__()
        rd = _make_divisible(channels * ratio, divisor)
        self.fc1 = nn.Conv2d(channels, rd, 1, bias=True)
        self.act = make_act(act_layer)
        self.fc2 = nn.Conv2d(rd, channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.fc2(self.act(self.fc1(s)))
        return x * s.sigmoid()


def _make_divisible(v: float, divisor: int = 8) -> int:
    # timm's rule with round_limit=0: nearest multiple of ``divisor``, at least ``divisor``.
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


class BlurPool2d(nn.Module):
    """A fixed 3x3 binomial blur ([1, 2, 1] / 4 in each direction, reflect padding), then the stride: anti-aliased
    downsampling (Zhang 2019), timm's ``BlurPool2d`` with its defaults. The filter is a non-persistent buffer."""

    def __init__(self, channels: int, stride: int = 2) -> None:
        super().__init__()
        self.channels = channels
        self.stride = stride
        taps = torch.tensor([1.0, 2.0, 1.0]) / 4
        self.register_buffer("filt", (taps[:, None] * taps[None, :]).expand(channels, 1, 3, 3).clone(),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt.to(x.dtype), stride=self.stride,
                        groups=self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, stride={self.stride}"


def _anti_alias(channels: int, stride: int, dilation: int, first_dilation: int, enabled: bool
                ) -> tuple[int, nn.Module | None]:
    """(the 3x3 convolution's stride, the blur after it or None): timm's rule, blur wherever a block downsamples
    or changes its dilation."""
    if enabled and (stride == 2 or first_dilation != dilation):
        return 1, BlurPool2d(channels, stride)
    return stride, None


class ConvPool(nn.Sequential):
    """A stage's entry in Page's ResNet-9: 3x3 conv, BN, ReLU to the new width, then a 2x2 max-pool when it
    strides; with ``pool_first`` the max-pool comes right after the conv (the BN then normalises the pooled map)."""

    def __init__(self, cin: int, cout: int, stride: int, bias: bool = False, eps: float = 1e-5,
                 pool_first: bool = False, act_layer: str = "relu") -> None:
        super().__init__()
        self.conv = _conv3x3(cin, cout, bias=bias)
        pool = nn.MaxPool2d(stride) if stride > 1 else nn.Identity()
        if pool_first:
            self.pool = pool
        self.bn = nn.BatchNorm2d(cout, eps=eps)
        self.relu = make_act(act_layer)
        if not pool_first:
            self.pool = pool


class PadShortcut(nn.Module):
    """Option A shortcut (He et al. 2015, CIFAR): subsample, then zero-pad the new channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = out_channels - in_channels
        if self.pad < 0:
            raise ValueError("a pad shortcut cannot reduce channels")

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        lo = self.pad // 2
        return F.pad(x, (0, 0, 0, 0, lo, self.pad - lo))


class Subsample(nn.Module):
    """Parameter-free strided shortcut (Keras V2's 1x1 max-pool with stride)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, :: self.stride, :: self.stride]


def _conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1, dilation: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, groups=groups, dilation=dilation, bias=bias)


def _conv1x1(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=bias)


class BasicBlock(nn.Module):
    """Two 3x3 convs, each followed by BN; ReLU after the first and after the addition.

    With ``groups`` > 1 or ``base_width`` != 64 the first 3x3 is grouped and goes to a middle width of
    ``int(planes * base_width / 64) * groups``, the second 3x3 dense back to ``planes`` (fastai's ``ResBlock`` at
    expansion 1 with ``groups``, as its ``SEResNeXtBlock``); at the defaults it is torchvision's block.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1, first_dilation: int | None = None,
                 bias: bool = False, eps: float = 1e-5, se_ratio: float = 0.0, drop_path_rate: float = 0.0,
                 stride_in_1x1: bool = False, anti_alias: bool = False, act_layer: str = "relu",
                 se_act_layer: str = "relu") -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        width = int(planes * (base_width / 64.0)) * groups
        conv_stride, self.aa = _anti_alias(width, stride, dilation, first_dilation, anti_alias)
        self.conv1 = _conv3x3(inplanes, width, conv_stride, groups, first_dilation, bias=bias)
        self.bn1 = nn.BatchNorm2d(width, eps=eps)
        self.relu = make_act(act_layer)
        self.conv2 = _conv3x3(width, planes, dilation=dilation, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes, eps=eps)
        self.se = SEModule(planes, se_ratio, act_layer=se_act_layer) if se_ratio else None
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate else None
        self.downsample = downsample
        self.stride = stride

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        out = self.relu(self.bn1(self.conv1(x)))
        if self.aa is not None:
            out = self.aa(out)
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        if self.downsample is not None:
            shortcut = self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand (x4); BN after each conv.

    The stride sits in the 3x3 conv (ResNet v1.5, torchvision, timm) or, with
    ``stride_in_1x1``, in the first 1x1 conv (the original v1 and Keras).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1, first_dilation: int | None = None,
                 bias: bool = False, eps: float = 1e-5, se_ratio: float = 0.0, drop_path_rate: float = 0.0,
                 stride_in_1x1: bool = False, anti_alias: bool = False, act_layer: str = "relu",
                 se_act_layer: str = "relu") -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        width = int(planes * (base_width / 64.0)) * groups
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        s3, self.aa = _anti_alias(width, s3, dilation, first_dilation, anti_alias)
        self.conv1 = _conv1x1(inplanes, width, s1, bias=bias)
        self.bn1 = nn.BatchNorm2d(width, eps=eps)
        self.conv2 = _conv3x3(width, width, s3, groups, first_dilation, bias=bias)
        self.bn2 = nn.BatchNorm2d(width, eps=eps)
        self.conv3 = _conv1x1(width, planes * self.expansion, bias=bias)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, eps=eps)
        self.relu = make_act(act_layer)
        self.se = SEModule(planes * self.expansion, se_ratio, act_layer=se_act_layer) if se_ratio else None
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate else None
        self.downsample = downsample
        self.stride = stride

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        if self.aa is not None:
            out = self.aa(out)
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        if self.downsample is not None:
            shortcut = self.downsample(x)
        return self.relu(out + shortcut)


class PreActBasicBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016): BN-ReLU-conv twice, then a plain addition.

    A projection shortcut takes the pre-activated input; a parameter-free one takes the raw input.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1, first_dilation: int | None = None,
                 bias: bool = False, eps: float = 1e-5, se_ratio: float = 0.0, drop_path_rate: float = 0.0,
                 stride_in_1x1: bool = False, act_layer: str = "relu", se_act_layer: str = "relu") -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        self.bn1 = nn.BatchNorm2d(inplanes, eps=eps)
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation=first_dilation)
        self.bn2 = nn.BatchNorm2d(planes, eps=eps)
        self.conv2 = _conv3x3(planes, planes, dilation=dilation, bias=bias)
        self.relu = make_act(act_layer)
        self.se = SEModule(planes, se_ratio, act_layer=se_act_layer) if se_ratio else None
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate else None
        self.downsample = downsample
        self.stride = stride

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)
        if self.conv2.bias is not None:
            nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample(pre if _has_params(self.downsample) else x)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        return out + shortcut


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1, then a plain addition.

    Keras's ``ResNet50V2`` layout is this block with biases on the last 1x1 and the projection,
    and the stride in the last block of a stage (its shortcut then a 1x1 max-pool).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1, first_dilation: int | None = None,
                 bias: bool = False, eps: float = 1e-5, se_ratio: float = 0.0, drop_path_rate: float = 0.0,
                 stride_in_1x1: bool = False, act_layer: str = "relu", se_act_layer: str = "relu") -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        width = int(planes * (base_width / 64.0)) * groups
        self.bn1 = nn.BatchNorm2d(inplanes, eps=eps)
        self.conv1 = _conv1x1(inplanes, width)
        self.bn2 = nn.BatchNorm2d(width, eps=eps)
        self.conv2 = _conv3x3(width, width, stride, groups, first_dilation)
        self.bn3 = nn.BatchNorm2d(width, eps=eps)
        self.conv3 = _conv1x1(width, planes * self.expansion, bias=bias)
        self.relu = make_act(act_layer)
        self.se = SEModule(planes * self.expansion, se_ratio, act_layer=se_act_layer) if se_ratio else None
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate else None
        self.downsample = downsample
        self.stride = stride

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)
        if self.conv3.bias is not None:
            nn.init.zeros_(self.conv3.bias)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample(pre if _has_params(self.downsample) else x)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        return out + shortcut


def fix_bn_scale(bn: nn.Module) -> None:
    """A BatchNorm layer's scale fixed (``ResNetConfig.bn_scale=False``): its ``weight`` becomes a buffer with the
    same values under the same name, so the state dict keeps its keys and no optimiser sees it."""
    if isinstance(bn.weight, nn.Parameter):
        fixed = bn.weight.detach().clone()
        del bn.weight
        bn.register_buffer("weight", fixed)


def _has_params(m: nn.Module) -> bool:
    return not isinstance(m, (Subsample, PadShortcut))


_BLOCKS: dict[str, type[nn.Module]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneck,
}


class ResNet(nn.Module):
    """A residual network built from a :class:`ResNetConfig`.

    The classifier is ``fc`` after global average pooling; ``num_classes=0`` removes it and
    ``forward`` then returns pooled features.
    """

    def __init__(self, cfg: ResNetConfig, num_classes: int | None = None, in_chans: int = 3, name: str = "") -> None:
        super().__init__()
        if num_classes is not None:
            cfg = cfg.replace(num_classes=num_classes)
        if in_chans < 1:
            raise ValueError(f"in_chans must be at least 1, got {in_chans}")
        self.cfg = cfg
        self.name = name
        self.in_chans = in_chans
        block = _BLOCKS[cfg.block]
        preact = cfg.block.startswith("preact")
        eps = cfg.bn_eps

        # Stem.
        sw = cfg.stem_width
        if cfg.stem == "deep":
            mid = sw // 2
            self.conv1 = nn.Sequential(
                nn.Conv2d(in_chans, mid, 3, 2, 1, bias=False), nn.BatchNorm2d(mid, eps=eps), make_act(cfg.act_layer),
                nn.Conv2d(mid, mid, 3, 1, 1, bias=False), nn.BatchNorm2d(mid, eps=eps), make_act(cfg.act_layer),
                nn.Conv2d(mid, sw, 3, 1, 1, bias=False),
            )
        elif cfg.stem == "cifar":
            self.conv1 = nn.Conv2d(in_chans, sw, 3, 1, 1, bias=cfg.stem_bias)
        else:
            self.conv1 = nn.Conv2d(in_chans, sw, 7, 2, 3, bias=cfg.stem_bias)
        if cfg.stem == "preact":
            self.bn1: nn.Module = nn.Identity()
            self.relu: nn.Module = nn.Identity()
        else:
            self.bn1 = nn.BatchNorm2d(sw, eps=eps)
            self.relu = make_act(cfg.act_layer)
        if cfg.stem == "cifar":
            self.maxpool: nn.Module = nn.Identity()
        elif cfg.stem_pool_zero_pad:
            self.maxpool = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(3, 2))
        elif cfg.anti_alias:  # timm: max-pool at stride 1, then the blur downsamples
            self.maxpool = nn.Sequential(nn.MaxPool2d(3, 1, 1), BlurPool2d(sw, 2))
        else:
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        stem_stride = 1 if cfg.stem == "cifar" else 4

        # Stages.
        dilate = cfg.replace_stride_with_dilation or (False,) * (len(cfg.layers) - 1)
        total_blocks = sum(cfg.layers)
        inplanes, dilation, stride_so_far, block_idx = sw, 1, stem_stride, 0
        self.stage_names: list[str] = []
        self.feature_info: list[dict[str, Any]] = []
        for i, (depth, width, stride) in enumerate(zip(cfg.layers, cfg.widths, cfg.strides)):
            prev_dilation = dilation
            if i > 0 and dilate[i - 1] and stride > 1:
                dilation *= stride
                stride = 1
            blocks: list[nn.Module] = []
            out_ch = width * block.expansion
            if cfg.stage_entry != "block":
                blocks.append(ConvPool(inplanes, out_ch, stride, cfg.conv_bias, eps,
                                       pool_first=cfg.stage_entry == "conv_pool_bn", act_layer=cfg.act_layer))
                inplanes, stride_so_far, stride = out_ch, stride_so_far * stride, 1
            for j in range(depth):
                s = stride if (j == depth - 1 if cfg.stride_in_last_block else j == 0) else 1
                ds = self._make_shortcut(inplanes, out_ch, s, preact, eps) if (s != 1 or inplanes != out_ch) else None
                dpr = cfg.drop_path_rate * block_idx / max(total_blocks - 1, 1)
                blocks.append(block(
                    inplanes, width, s, ds, groups=cfg.groups, base_width=cfg.base_width, dilation=dilation,
                    first_dilation=prev_dilation if j == 0 else dilation, bias=cfg.conv_bias, eps=eps,
                    se_ratio=cfg.se_ratio, drop_path_rate=dpr, stride_in_1x1=cfg.stride_in_1x1,
                    act_layer=cfg.act_layer, se_act_layer=cfg.se_act_layer,
                    **({"anti_alias": True} if cfg.anti_alias else {}),
                ))
                inplanes = out_ch
                block_idx += 1
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            stride_so_far *= stride  # (1 where the stage's entry already pooled)
            self.feature_info.append({"name": name, "stride": stride_so_far, "channels": out_ch})

        self.num_features = inplanes
        self.norm: nn.Module = nn.BatchNorm2d(inplanes, eps=eps) if preact else nn.Identity()
        self.norm_act = make_act(cfg.act_layer) if preact else nn.Identity()  # no state: state dicts unchanged
        # (named as torchvision's, whichever pooling it is)
        self.avgpool = nn.AdaptiveAvgPool2d(1) if cfg.global_pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.fc: nn.Module = classifier(inplanes, cfg.num_classes, cfg.logit_scale) if cfg.num_classes > 0 \
            else nn.Identity()
        self.num_classes = cfg.num_classes
        self._init_weights()

    def _make_shortcut(self, cin: int, cout: int, stride: int, preact: bool, eps: float) -> nn.Module:
        cfg = self.cfg
        if cfg.shortcut == "pad":
            return PadShortcut(cin, cout, stride)
        if cin == cout and (cfg.shortcut == "subsample" or cfg.stride_in_last_block):
            return Subsample(stride)
        if preact:  # projection of the pre-activated input, no BN after it
            if cfg.shortcut == "avg" and stride > 1:
                return nn.Sequential(nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False),
                                     _conv1x1(cin, cout, bias=cfg.conv_bias))
            return _conv1x1(cin, cout, stride, bias=cfg.conv_bias)
        if cfg.shortcut == "avg":
            pool: nn.Module = (nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
                               if stride > 1 else nn.Identity())
            return nn.Sequential(pool, _conv1x1(cin, cout, bias=cfg.conv_bias), nn.BatchNorm2d(cout, eps=eps))
        return nn.Sequential(_conv1x1(cin, cout, stride, bias=cfg.conv_bias), nn.BatchNorm2d(cout, eps=eps))

    def _init_weights(self) -> None:
        """torchvision's initialisation (``conv_init="fan_out"``): He-normal convolutions over their fan-out, the
        classifier uniform in +-1/sqrt(features); or fastai's ``init_cnn`` (``"fan_in"``): every convolution and
        linear layer He-normal over its fan-in, biases zero. BN gamma 1 and beta 0 (the last BN of each block 0
        with ``zero_init_residual``)."""
        fan_in = self.cfg.conv_init == "fan_in"
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear) if fan_in else nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in" if fan_in else "fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if not fan_in:
            if isinstance(self.fc, nn.Linear):
                bound = 1 / math.sqrt(self.fc.in_features)
                nn.init.uniform_(self.fc.weight, -bound, bound)
                nn.init.uniform_(self.fc.bias, -bound, bound)
            for m in self.modules():
                if isinstance(m, SEModule):  # timm: SE starts neutral-ish, convs default init
                    nn.init.kaiming_normal_(m.fc1.weight, mode="fan_out", nonlinearity="relu")
        if self.cfg.dirac_init:
            for m in self.modules():
                if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                    per_group = m.weight.view(m.groups, -1, *m.weight.shape[1:])  # (groups, out, in, 3, 3)
                    with torch.no_grad():
                        for w in per_group:  # (dirac_ zeroes what it is given: only the first filters)
                            nn.init.dirac_(w[:min(w.shape[0], w.shape[1])])
        if self.cfg.zero_init_residual:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = self.cfg.bn_momentum
                if not self.cfg.bn_scale:
                    fix_bn_scale(m)

    # --- the timm-style interface -------------------------------------------------------------

    def _check_input(self, x: Tensor) -> None:
        if torch.jit.is_scripting() or torch.compiler.is_compiling():
            return
        if x.dim() != 4:
            raise ValueError(
                f"{self.name or 'ResNet'} expects a batch of images shaped (N, C, H, W); got a tensor of shape "
                f"{tuple(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"{self.name or 'ResNet'} was built for {self.in_chans}-channel input but got {x.shape[1]} channels; "
                f"convert the images or create the model with in_chans={x.shape[1]}"
            )

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map (before pooling), normalised for pre-activation networks."""
        self._check_input(x)
        x = self.forward_stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        if not isinstance(self.norm, nn.Identity):
            x = self.norm_act(self.norm(x))
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def feature_maps(self, x: Tensor) -> list[StageOutput]:
        """Every stage's output with its stride (for segmentation heads and feature pyramids)."""
        self._check_input(x)
        x = self.forward_stem(x)
        outs = []
        last = len(self.stage_names) - 1
        for i, (name, info) in enumerate(zip(self.stage_names, self.feature_info)):
            x = getattr(self, name)(x)
            y = self.norm_act(self.norm(x)) if i == last and not isinstance(self.norm, nn.Identity) else x
            outs.append(StageOutput(name, info["stride"], y))
        return outs

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one (``0`` removes it)."""
        if num_classes < 0:
            raise ValueError("num_classes must be >= 0")
        ref = next(self.parameters())
        self.num_classes = num_classes
        self.cfg = self.cfg.replace(num_classes=num_classes)
        if num_classes > 0:
            fc = classifier(self.num_features, num_classes, self.cfg.logit_scale, device=ref.device, dtype=ref.dtype)
            bound = 1 / math.sqrt(self.num_features)
            nn.init.uniform_(fc.weight, -bound, bound)
            nn.init.uniform_(fc.bias, -bound, bound)
            self.fc = fc
        else:
            self.fc = nn.Identity()

    def body_and_head(self) -> tuple[list[nn.Module], nn.Module]:
        """The parameter groups from input to output (stem, stages, final norm) and the head."""
        stem = nn.ModuleList([self.conv1, self.bn1])
        body = [stem] + [getattr(self, n) for n in self.stage_names]
        if not isinstance(self.norm, nn.Identity):
            body[-1] = nn.ModuleList([body[-1], self.norm])
        return body, self.fc


class ScaledLinear(nn.Linear):
    """A linear classifier whose outputs are multiplied by a constant ``scale`` (Page's ResNet-9: 0.125, which keeps
    the first logits small). Its parameters and state-dict keys are a plain ``nn.Linear``'s."""

    def __init__(self, in_features: int, out_features: int, scale: float, **kwargs: Any) -> None:
        super().__init__(in_features, out_features, **kwargs)
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}"


def classifier(in_features: int, num_classes: int, scale: float = 1.0, **kwargs: Any) -> nn.Linear:
    """The classifier of a ResNet: ``nn.Linear``, or :class:`ScaledLinear` when ``scale`` is not 1."""
    if scale == 1.0:
        return nn.Linear(in_features, num_classes, **kwargs)
    return ScaledLinear(in_features, num_classes, scale, **kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of convolutions and linear layers for one image (the usual convention)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: Any, out: Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * kh * kw

    def lin_hook(m: nn.Linear, _inp: Any, out: Tensor) -> None:
        nonlocal total
        total += out.numel() // out.shape[0] * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros((1, *input_size), device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total
