"""Loading pretrained weights into a model (:func:`load_pretrained`, :func:`load_weights`): names checked, the
classifier reset when the classes differ, the first convolution adapted to other input channels. Finding and
reading the weights is :mod:`.sources`."""

from __future__ import annotations

import logging
import math
import os
from typing import Mapping

from torch import Tensor, nn

from ..errors import CheckpointError
from .sources import VALID_SOURCES, resolve_source

__all__ = ["VALID_SOURCES", "adapt_input_conv", "load_pretrained", "load_weights", "resolve_source"]

log = logging.getLogger(__name__)


def adapt_input_conv(in_chans: int, weight: Tensor) -> Tensor:
    """Adapt a first-conv weight (out, C, kh, kw) trained on RGB to ``in_chans`` channels (as timm).

    One channel: the sum over RGB (a grey image is R = G = B, so the response is unchanged).
    Otherwise: RGB repeated to ``in_chans`` channels and scaled by ``3 / in_chans`` so the
    output keeps its scale.
    """
    dtype = weight.dtype
    w = weight.float()
    o, i, kh, kw = w.shape
    if in_chans == i:
        return weight
    if in_chans == 1:
        if i > 3:
            if i % 3:
                raise CheckpointError(f"cannot adapt a {i}-channel input convolution to 1 channel.")
            w = w.reshape(o, i // 3, 3, kh, kw).sum(dim=2)
        else:
            w = w.sum(dim=1, keepdim=True)
    else:
        if i != 3:
            raise CheckpointError(f"cannot adapt a {i}-channel input convolution to {in_chans} channels "
                                  "(only 3-channel weights are adapted).")
        w = w.repeat(1, math.ceil(in_chans / 3), 1, 1)[:, :in_chans] * (3 / float(in_chans))
    return w.to(dtype)


def load_pretrained(model: nn.Module, state: Mapping[str, Tensor], *, reset_head: bool = False,
                    source: str = "") -> None:
    """Load a state dict (our names) into ``model``, strictly.

    * The first convolution (``conv1.weight``, or ``conv1.0.weight`` for deep stems) is adapted
      when the model's ``in_chans`` differs from the checkpoint's (see :func:`adapt_input_conv`).
    * ``reset_head=True`` ignores the checkpoint's classifier (``fc.*``) and keeps the model's
      freshly initialised one; so does a model without a classifier (``num_classes=0``) and a
      checkpoint without one (a backbone).
    * Anything else that does not match raises ``ValueError`` naming the missing, unexpected and
      shape-mismatched keys.
    """
    where = source or "the checkpoint"
    state = dict(state)
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"the weights from {where} hold non-tensor values ({', '.join(bad[:5])}).")
    own = model.state_dict()

    for key in ("conv1.weight", "conv1.0.weight"):
        if key in state and key in own and state[key].ndim == 4 and state[key].shape[1] != own[key].shape[1]:
            state[key] = adapt_input_conv(int(own[key].shape[1]), state[key])

    own_head = [k for k in own if k.startswith("fc.")]
    ckpt_head = [k for k in state if k.startswith("fc.")]
    keep_own = set()
    if reset_head or not own_head or not ckpt_head:
        if ckpt_head == [] and own_head and not reset_head:
            log.info("%s has no classifier; %s keeps its freshly initialised one", where,
                     getattr(model, "name", "") or "the model")
        for k in ckpt_head:
            del state[k]
        keep_own = set(own_head)
    for k, v in own.items():  # old checkpoints lack BatchNorm's counter
        if k.endswith("num_batches_tracked") and k not in state:
            keep_own.add(k)

    missing = [k for k in own if k not in state and k not in keep_own]
    unexpected = [k for k in state if k not in own]
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in state
              if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(_mismatch_message(model, where, missing, unexpected, shapes))
    for k in keep_own:
        state[k] = own[k]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # e.g. dtype that cannot be cast; shapes were checked above
        reason = str(e).splitlines()[0].rstrip(".")
        raise CheckpointError(f"could not load the weights from {where}: {reason}.") from None


def _mismatch_message(model: nn.Module, where: str, missing: list[str], unexpected: list[str],
                      shapes: list[tuple[str, tuple, tuple]]) -> str:
    def listing(keys: list[str]) -> str:
        more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
        return ", ".join(keys[:8]) + more

    name = getattr(model, "name", "") or "model"
    parts = []
    if shapes:
        parts.append("shape mismatches: " + listing(
            [f"{k}: checkpoint {_fmt(a)} vs model {_fmt(b)}" for k, a, b in shapes]))
    if missing:
        parts.append("missing in the checkpoint: " + listing(missing))
    if unexpected:
        parts.append("unexpected in the checkpoint: " + listing(unexpected))
    msg = f"the weights from {where} do not fit {name}: " + "; ".join(parts) + "."
    head_only = all(k.startswith("fc.") for k in missing + unexpected + [s[0] for s in shapes])
    if head_only:
        ckpt = next((a for k, a, _ in shapes if k == "fc.weight"), None)
        n = f"num_classes={ckpt[0]}" if ckpt else "num_classes matching the checkpoint"
        msg += (f" Only the classifier differs: pass {n} to keep the checkpoint's classifier, or re-initialise "
                "the head with create_model(..., num_classes=<yours>, pretrained=...) or "
                "load_weights(model, source, reset_head=True).")
    else:
        msg += (" Check that the weights are for this architecture (the model name must match the checkpoint's); "
                "to re-initialise only the classifier pass num_classes to create_model or reset_head=True "
                "to load_weights.")
    return msg


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def load_weights(model: nn.Module, source: str | os.PathLike[str], *, reset_head: bool = False) -> dict:
    """Load weights from ``source`` (any form :func:`resolve_source` takes) into a built model.

    Returns the weights' meta (also stored as ``model.pretrained_meta``); with ``reset_head`` the
    checkpoint's class names are dropped from it, since the classifier is not the checkpoint's.
    """
    state, meta = resolve_source(source, cfg=getattr(model, "cfg", None), model_name=getattr(model, "name", ""))
    src = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
    load_pretrained(model, state, reset_head=reset_head, source=src)
    if reset_head:
        meta = dict(meta)
        meta["checkpoint_num_classes"] = meta.pop("num_classes", None)
        meta.pop("categories", None)
    model.pretrained_meta = meta  # type: ignore[assignment]
    return meta
