"""Weight converters: foreign checkpoints to resnet_tune's parameter names (torchvision's).

One module per format:

* :mod:`.torchvision` -- ``from_torchvision`` / ``to_torchvision`` (identity plus a key check),
* :mod:`.timm` -- ``from_timm`` (timm's ResNet names are ours),
* :mod:`.transformers` -- ``from_transformers`` and ``hf_config_to_overrides`` (Hugging Face),
* :mod:`.keras` -- ``from_keras_h5`` (``.h5``, ``.weights.h5``, ``.keras``), ``from_keras_model``
  and ``keras_arch_from_weights`` (Keras applications ResNet / ResNetV2).

:func:`detect_format` tells a PyTorch state dict's format from its keys and :func:`to_resnet_tune`
converts any of them. Keras weights come from files or live models, not state dicts, and have their
own entry points.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from torch import Tensor

from ...errors import CheckpointError
from ._common import RESNET_TUNE_KEY, check_tensors, list_keys, strip_prefix
from .keras import from_keras_h5, from_keras_model, keras_arch_from_weights, read_keras_h5
from .timm import from_timm
from .torchvision import from_torchvision, to_torchvision
from .transformers import from_transformers, hf_config_to_overrides, is_transformers_state

__all__ = [
    "FORMATS", "detect_format", "from_keras_h5", "from_keras_model", "from_timm", "from_torchvision",
    "from_transformers", "hf_config_to_overrides", "keras_arch_from_weights", "read_keras_h5", "to_resnet_tune",
    "to_torchvision",
]

FORMATS = ("resnet_tune", "torchvision", "timm", "transformers")
_KERAS_NAME = re.compile(r"(^|/)(conv\d_block\d+_\w+|conv1_conv|predictions)(/|$)")


def detect_format(state: Mapping[str, Tensor]) -> str:
    """The format of a PyTorch state dict, from its keys.

    Returns ``"resnet_tune"`` for our names, which are also torchvision's and timm's (a
    ``module.`` prefix is allowed), or ``"transformers"`` for a Hugging Face ResNet. Anything else
    raises ``ValueError`` with a sentence saying what was found.
    """
    check_tensors(state)
    state = strip_prefix(state)
    keys = list(state)
    if is_transformers_state(keys):
        return "transformers"
    unknown = [k for k in keys if not RESNET_TUNE_KEY.match(k)]
    if not unknown:
        return "resnet_tune"
    if any(_KERAS_NAME.search(k) for k in unknown):
        raise CheckpointError("these weights use Keras layer names (conv2_block1_1_conv, ...); load the Keras file "
                              "with resnet_tune.models.convert.from_keras_h5 instead")
    if any(k.startswith(("stem.", "stages.")) for k in unknown):
        raise CheckpointError("these weights look like timm's ResNetV2/BiT or another 'stem./stages.' model, which "
                              "is a different architecture from resnet_tune's ResNet; unrecognised keys: "
                              f"{list_keys(unknown)}")
    if len(unknown) < len(keys):
        raise CheckpointError(f"these weights look like a torchvision/timm ResNet but {len(unknown)} key(s) have no "
                              f"counterpart in resnet_tune's ResNet: {list_keys(unknown)}")
    raise CheckpointError("cannot tell the format of these weights: none of their keys is a ResNet parameter in a "
                          f"known layout (torchvision/timm, Hugging Face); first keys: {list_keys(keys, 6)}")


def to_resnet_tune(state: Mapping[str, Tensor], fmt: str | None = None, **kwargs: Any) -> dict[str, Tensor]:
    """Convert a state dict in ``fmt`` (one of :data:`FORMATS`; ``None`` = :func:`detect_format`) to our names.

    Extra keyword arguments go to the converter (``config=`` for ``"transformers"``).
    """
    if fmt is None:
        fmt = detect_format(state)
    fmt = {"hf": "transformers", "huggingface": "transformers", "tv": "torchvision"}.get(fmt, fmt)
    if fmt == "keras":
        raise CheckpointError("Keras weights are converted from files or models: use from_keras_h5(path) or "
                              "from_keras_model(model)")
    if fmt in ("resnet_tune", "timm"):
        return from_timm(state, **kwargs)
    if fmt == "torchvision":
        return from_torchvision(state, **kwargs)
    if fmt == "transformers":
        return from_transformers(state, **kwargs)
    raise CheckpointError(f"unknown weights format {fmt!r}; choose one of {', '.join(FORMATS)}")
