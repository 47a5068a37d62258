"""Segmentation networks: a registered ResNet backbone and an FCN, DeepLabV3 or U-Net head.

Parameter names follow torchvision's segmentation models: ``backbone.<ResNet names without fc>``,
``classifier.<head>`` and the optional ``aux_classifier.<FCN head on layer3>``, so torchvision's
``fcn_resnet50`` / ``deeplabv3_resnet50`` state dicts load with ``strict=True`` (the auxiliary
head may be dropped, see :func:`load_torchvision_segmentation`). The FCN and DeepLabV3 heads *are*
torchvision's modules (``FCNHead``, ``DeepLabHead``); the U-Net decoder is ours.

Output stride: 32 is the plain ResNet; 16 dilates ``layer4`` instead of striding; 8 dilates
``layer3`` and ``layer4`` (torchvision's FCN and DeepLabV3 use 8).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .resnet import ResNet, ResNetConfig

__all__ = ["HEADS", "Segmenter", "UNetDecoder", "build_segmenter", "create_segmenter", "default_output_stride",
           "load_torchvision_segmentation"]

HEADS = ("fcn", "deeplabv3", "unet")
OUTPUT_STRIDES = (8, 16, 32)
#: Which stages after the first dilate instead of striding, per output stride.
DILATION = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}
#: ASPP rates per output stride (DeepLabV3: (6, 12, 18) at 16, doubled at 8; halved at 32).
ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}
#: Default output stride per head: torchvision's 8 for FCN, 16 for DeepLabV3 (the usual training
#: setting, 4x cheaper in layer4 than 8), 32 for the U-Net, whose decoder recovers the detail.
DEFAULT_OUTPUT_STRIDE = {"fcn": 8, "deeplabv3": 16, "unet": 32}
UNET_WIDTHS = (128, 64, 32)


def default_output_stride(head: str) -> int:
    return DEFAULT_OUTPUT_STRIDE[head]


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNetDecoder(nn.Module):
    """A light U-Net-style decoder over the stride 4/8/16/32 feature maps (Ronneberger et al. 2015).

    From the deepest map up: upsample (bilinear) to the next skip's size, concatenate the skip, two
    3x3 conv-BN-ReLU; then a 1x1 classifier at stride 4. Few channels (128/64/32 by default), so it
    suits small datasets and CPUs.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, widths: Sequence[int] = UNET_WIDTHS,
                 dropout: float = 0.1) -> None:
        super().__init__()
        chans = list(in_channels)
        if len(chans) < 2 or len(widths) != len(chans) - 1:
            raise ValueError(f"the U-Net decoder needs one width per skip connection ({len(chans) - 1}), got "
                             f"{len(widths)}")
        blocks = []
        prev = chans[-1]
        for skip, width in zip(reversed(chans[:-1]), widths):
            blocks.append(nn.Sequential(_ConvBNReLU(prev + skip, width), _ConvBNReLU(width, width)))
            prev = width
        self.blocks = nn.ModuleList(blocks)
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.head = nn.Conv2d(prev, num_classes, 1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        x = feats[-1]
        for block, skip in zip(self.blocks, reversed(feats[:-1])):
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(self.dropout(x))


def _check_backbone(cfg: ResNetConfig, name: str) -> None:
    image_net_stem = cfg.stem in ("default", "deep", "preact")
    if len(cfg.layers) != 4 or tuple(cfg.strides) != (1, 2, 2, 2) or not image_net_stem:
        raise ConfigError(f"segmentation needs an ImageNet-style ResNet with four stages at strides 4, 8, 16 and 32; "
                          f"{name or 'this model'} is not one (CIFAR-style networks such as resnet20 are not "
                          "supported), choose e.g. --model resnet18 or resnet50.")


class Segmenter(nn.Module):
    """ResNet backbone + segmentation head; ``forward(x)`` returns logits (N, C, H, W) at the input size.

    Args:
        cfg: the backbone's :class:`ResNetConfig` (its classifier and dilation are set here).
        num_classes: output classes.
        head: ``fcn`` (torchvision's FCNHead), ``deeplabv3`` (ASPP, torchvision's DeepLabHead) or ``unet``.
        output_stride: 8, 16 or 32 (default per head: 8, 16, 32).
        aux: an auxiliary FCN head on ``layer3`` (torchvision's ``aux_loss=True``), for training only.
        in_chans: input channels.
        name: the backbone's registered name (recorded in checkpoints).
    """

    def __init__(self, cfg: ResNetConfig, num_classes: int, head: str = "deeplabv3", output_stride: int | None = None,
                 aux: bool = False, in_chans: int = 3, name: str = "custom",
                 decoder_widths: Sequence[int] = UNET_WIDTHS) -> None:
        super().__init__()
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead
        from torchvision.models.segmentation.fcn import FCNHead

        if head not in HEADS:
            raise ConfigError(f"head {head!r} is not valid; choose one of {', '.join(HEADS)}.")
        output_stride = output_stride or DEFAULT_OUTPUT_STRIDE[head]
        if output_stride not in OUTPUT_STRIDES:
            raise ConfigError(f"output stride {output_stride} is not valid; choose 8, 16 or 32.")
        if num_classes < 1:
            raise ConfigError(f"a segmentation model needs at least one class, got {num_classes}.")
        _check_backbone(cfg, name)
        cfg = cfg.replace(num_classes=0, replace_stride_with_dilation=DILATION[output_stride])
        self.backbone = ResNet(cfg, in_chans=in_chans, name=name)
        chans = [int(f["channels"]) for f in self.backbone.feature_info]
        self.classifier: nn.Module
        if head == "fcn":
            self.classifier = FCNHead(chans[-1], num_classes)
        elif head == "deeplabv3":
            self.classifier = DeepLabHead(chans[-1], num_classes, ASPP_RATES[output_stride])
        else:
            self.classifier = UNetDecoder(chans, num_classes, tuple(decoder_widths))
        self.aux_classifier: nn.Module | None = FCNHead(chans[-2], num_classes) if aux else None
        self.cfg = cfg
        self.name = name
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.head = head
        self.output_stride = output_stride
        self.decoder_widths = tuple(int(w) for w in decoder_widths)

    def forward_all(self, x: Tensor) -> dict[str, Tensor]:
        """``{"out": logits}`` plus ``"aux"`` when there is an auxiliary head (torchvision's contract)."""
        size = x.shape[-2:]
        feats = [f.tensor for f in self.backbone.feature_maps(x)]
        out = self.classifier(feats) if self.head == "unet" else self.classifier(feats[-1])
        result = {"out": F.interpolate(out, size=size, mode="bilinear", align_corners=False)}
        if self.aux_classifier is not None:
            aux = self.aux_classifier(feats[-2])
            result["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
        return result

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        """Logits (N, C, H, W); in training mode with an auxiliary head, ``{"out", "aux"}`` (both trained)."""
        out = self.forward_all(x)
        return out if self.training and "aux" in out else out["out"]

    def body_and_head(self) -> tuple[list[nn.Module], nn.Module]:
        """The backbone's parameter groups from input to output, and the head(s): for freezing and
        discriminative learning rates (:func:`resnet_tune.engine.optim.param_groups`)."""
        body, _ = self.backbone.body_and_head()
        return body, nn.ModuleList([m for m in (self.classifier, self.aux_classifier) if m is not None])

    def describe(self) -> dict[str, Any]:
        """What a checkpoint record needs to rebuild this model (besides the backbone config)."""
        return {"head": self.head, "output_stride": self.output_stride, "aux": self.aux_classifier is not None,
                "decoder_widths": list(self.decoder_widths)}


def build_segmenter(record: Mapping[str, Any]) -> Segmenter:
    """Rebuild the model a segmentation checkpoint's record describes (used by ``load_checkpoint``)."""
    cfg = ResNetConfig().replace(**record["model_config"])
    return Segmenter(cfg, int(record["num_classes"]), head=record.get("head", "deeplabv3"),
                     output_stride=record.get("output_stride"), aux=bool(record.get("aux", False)),
                     in_chans=int(record.get("in_chans", 3)), name=record.get("model", "custom"),
                     decoder_widths=tuple(record.get("decoder_widths") or UNET_WIDTHS))


def create_segmenter(model: str, num_classes: int, *, head: str = "deeplabv3", output_stride: int | None = None,
                     aux: bool = False, in_chans: int = 3, **overrides: Any) -> Segmenter:
    """A segmenter on a registered backbone, e.g. ``create_segmenter("resnet50", 21, head="fcn")``."""
    from .registry import get_config

    cfg = get_config(model).replace(**overrides) if overrides else get_config(model)
    return Segmenter(cfg, num_classes, head=head, output_stride=output_stride, aux=aux, in_chans=in_chans, name=model)


def backbone_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The backbone part of a state dict: ``backbone.*`` keys stripped of the prefix when there are any
    (a segmentation checkpoint), else everything but the classifier (a classification one)."""
    if any(k.startswith("backbone.") for k in state):
        return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def load_torchvision_segmentation(model: Segmenter, state: Mapping[str, Tensor]) -> None:
    """Load a torchvision ``fcn_resnet*`` / ``deeplabv3_resnet*`` state dict strictly.

    The auxiliary head is optional: a checkpoint's ``aux_classifier.*`` is dropped when ``model``
    has none (torchvision's published weights all carry one).
    """
    state = dict(state)
    if model.aux_classifier is None:
        state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    model.load_state_dict(state, strict=True)
