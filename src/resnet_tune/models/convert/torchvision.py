"""torchvision ResNet / Wide ResNet / ResNeXt state dicts.

Our parameter names *are* torchvision's, so both directions are the identity; what they add is a
check that every key exists on the other side, so a state dict from another family fails loudly
(naming the keys) instead of loading half-way.
"""

from __future__ import annotations

import re
from typing import Mapping

from torch import Tensor

from ...errors import CheckpointError
from ._common import TORCHVISION_KEY, check_keys, check_tensors, list_keys, strip_prefix

__all__ = ["from_torchvision", "to_torchvision"]


def from_torchvision(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision ``resnet*`` / ``wide_resnet*`` / ``resnext*`` state dict in our names (unchanged).

    A ``module.`` prefix (``DataParallel``) is stripped. Raises ``ValueError`` naming any key that is
    not a torchvision ResNet parameter or buffer.
    """
    check_tensors(state, "torchvision state dict")
    state = strip_prefix(state)
    check_keys(state, TORCHVISION_KEY, "torchvision", "a torchvision ResNet")
    return dict(state)


def to_torchvision(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict for ``torchvision.models.resnet*`` (and wide/ResNeXt), loadable with ``strict=True``.

    Only the torchvision-shaped presets convert: a state with conv biases (Keras presets), a deep
    stem or average-pool shortcut (resnet50d), squeeze-excitation (seresnet50) or pre-activation
    blocks has parameters torchvision's ResNet cannot hold, and raises ``ValueError`` naming them.
    """
    check_tensors(state, "state dict")
    state = strip_prefix(state)
    bad = [k for k in state if not TORCHVISION_KEY.match(k)]
    if bad:
        checks = [
            ("convolution biases (a Keras preset)",
             lambda k: re.search(r"(^conv1|\.conv[123]|\.downsample(\.0)?)\.bias$", k) is not None),
            ("a deep stem (a timm '-D' preset)", lambda k: re.match(r"^conv1\.\d+\.", k) is not None),
            ("average-pool shortcuts", lambda k: ".downsample.2." in k),
            ("squeeze-excitation modules", lambda k: ".se." in k),
            ("pre-activation blocks", lambda k: k.startswith("norm.") or ".downsample.weight" in k),
        ]
        reasons = []
        for text, test in checks:
            example = next((k for k in bad if test(k)), None)
            if example is not None:
                reasons.append(f"{text}, e.g. {example!r}")
        why = f" (it has {'; '.join(reasons)})" if reasons else ""
        raise CheckpointError(
            f"this state dict cannot be expressed as a torchvision ResNet{why}: {len(bad)} key(s) have no "
            f"counterpart there: {list_keys(bad)}"
        )
    return dict(state)
