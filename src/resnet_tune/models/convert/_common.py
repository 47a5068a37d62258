"""Helpers shared by the weight converters: prefix stripping and key checks."""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from torch import Tensor

from ...errors import CheckpointError

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"

# torchvision's ResNet / Wide ResNet / ResNeXt state dict (a subset of ours).
TORCHVISION_KEY = re.compile(
    rf"^(conv1\.weight|bn1\.{_BN}|fc\.(weight|bias)"
    rf"|layer\d+\.\d+\.(conv[123]\.weight|bn[123]\.{_BN}|downsample\.0\.weight|downsample\.1\.{_BN}))$"
)

# Every name a ``resnet_tune`` ResNet can have: torchvision's, plus conv biases (Keras), the deep stem
# ``conv1.0/1/3/4/6`` and average-pool shortcut ``downsample.1/2`` (timm), squeeze-excitation
# ``se.fc1/fc2`` (timm), a bare-conv pre-activation shortcut ``downsample.weight`` and the final
# ``norm`` of pre-activation networks.
RESNET_TUNE_KEY = re.compile(
    rf"^(conv1\.(weight|bias)|conv1\.[036]\.weight|conv1\.[14]\.{_BN}|bn1\.{_BN}|norm\.{_BN}|fc\.(weight|bias)"
    rf"|layer\d+\.\d+\.(conv[123]\.(weight|bias)|bn[123]\.{_BN}|se\.fc[12]\.(weight|bias)"
    rf"|downsample\.(weight|bias)|downsample\.[012]\.{_BN}))$"
)

MAX_LISTED = 12


def list_keys(keys: Iterable[str], limit: int = MAX_LISTED) -> str:
    """``'a', 'b', ... (and N more)`` for error messages."""
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def check_tensors(state: Mapping[str, object], what: str = "state dict") -> None:
    """Raise a helpful ``ValueError`` for something that is not a flat ``{name: tensor}`` mapping."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"expected a {what} (a mapping of names to tensors), got {type(state).__name__}")
    if not state:
        raise CheckpointError(f"the {what} is empty: there are no weights to convert")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        wrappers = [k for k in bad if k in ("state_dict", "model", "model_state_dict", "module", "ema", "params")]
        hint = (f" It looks like a training checkpoint: pass its {wrappers[0]!r} entry instead." if wrappers
                else "")
        raise CheckpointError(f"the {what} has entries that are not tensors: {list_keys(bad)}.{hint}")


def strip_prefix(state: Mapping[str, Tensor],
                 prefixes: tuple[str, ...] = ("module.", "_orig_mod.")) -> dict[str, Tensor]:
    """Remove wrapper prefixes (``DataParallel``'s ``module.``, ``torch.compile``'s ``_orig_mod.``)
    when every key carries them."""
    out = dict(state)
    changed = True
    while changed and out:
        changed = False
        for p in prefixes:
            if all(k.startswith(p) for k in out):
                out = {k[len(p):]: v for k, v in out.items()}
                changed = True
    return out


def check_keys(state: Mapping[str, Tensor], pattern: re.Pattern[str], source: str, target: str) -> None:
    """Raise ``ValueError`` naming every key that ``pattern`` does not accept."""
    bad = [k for k in state if not pattern.match(k)]
    if bad:
        raise CheckpointError(
            f"{len(bad)} key(s) of this {source} state dict have no counterpart in {target}: {list_keys(bad)}. "
            "Nothing was converted; check that the checkpoint is a ResNet of this family."
        )
