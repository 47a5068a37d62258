"""timm ``resnet*`` state dicts (``resnet18`` ... ``resnet152``, ``resnet50d``, ``seresnet50``, ...).

timm's ResNet uses torchvision's names and keeps its own for the parts torchvision lacks (deep stem
``conv1.0/1/3/4/6``, average-pool shortcut ``downsample.1/2``, squeeze-excitation ``se.fc1/fc2``);
our model uses the same names, so the conversion only strips wrapper prefixes and checks that every
key has a place here: nothing is dropped silently. timm's other families (``resnetv2_*``, whose keys
start with ``stem.`` / ``stages.``) are different architectures and are refused.
"""

from __future__ import annotations

from typing import Mapping

from torch import Tensor

from ...errors import CheckpointError
from ._common import RESNET_TUNE_KEY, check_tensors, list_keys, strip_prefix

__all__ = ["from_timm"]


def from_timm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A timm ResNet state dict in our names (unchanged apart from a ``module.`` prefix).

    Raises ``ValueError`` naming the keys that our ResNet has no place for.
    """
    check_tensors(state, "timm state dict")
    state = strip_prefix(state)
    bad = [k for k in state if not RESNET_TUNE_KEY.match(k)]
    if bad:
        hint = ""
        if any(k.startswith(("stem.", "stages.")) for k in bad):
            hint = (" These look like timm's ResNetV2 / BiT ('stem.', 'stages.') names, a different "
                    "architecture that this converter does not map.")
        raise CheckpointError(
            f"{len(bad)} key(s) of this timm state dict have no counterpart in resnet_tune's ResNet: "
            f"{list_keys(bad)}. Nothing was converted.{hint}"
        )
    return dict(state)
