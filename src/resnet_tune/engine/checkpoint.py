"""Checkpoints: one ``.safetensors`` file with the weights and a JSON record in its header.

A single file means a single atomic rename publishes it: a crash while saving leaves the
previous good checkpoint in place. The record carries everything needed to rebuild the model and
its preprocessing (architecture, classes, mean/std, input size), so training, evaluation,
export and serving cannot disagree. ``last.state.pt`` holds what resume needs and loads with
``torch.load(weights_only=True)``: no pickled code is ever executed.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..fileio import atomic_write, write_text_atomic

FORMAT_VERSION = 1
RECORD_KEY = "resnet_tune"
BEST, LAST, STATE = "best.safetensors", "last.safetensors", "last.state.pt"

# Readers for older format versions: version -> function upgrading a record to the next version.
_MIGRATIONS: dict[int, Any] = {}


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP / DataParallel
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model


def versions() -> dict[str, str]:
    from .. import __version__
    import torchvision

    return {"resnet_tune": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


def model_record(model: nn.Module, *, classes: list[str], preprocessing: dict[str, Any], task: str = "classification",
                 metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    m = unwrap(model)
    rec: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "model": getattr(m, "name", type(m).__name__),
        "model_config": m.cfg.to_dict() if hasattr(m, "cfg") else None,
        "num_classes": len(classes),
        "in_chans": getattr(m, "in_chans", 3),
        "classes": list(classes),
        "preprocessing": preprocessing,
        "metrics": metrics or {},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    if extra:
        rec.update(extra)
    return rec


def save_checkpoint(path: str | Path, model: nn.Module | dict[str, torch.Tensor], record: dict[str, Any],
                    sidecar: bool = True) -> Path:
    """Write weights + record atomically; a human-readable copy of the record goes beside it."""
    from safetensors.torch import save_file

    path = Path(path)
    state = model if isinstance(model, dict) else unwrap(model).state_dict()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    meta = {RECORD_KEY: json.dumps(record)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    if sidecar:
        side = path.with_suffix(".json")
        write_text_atomic(side, json.dumps(record, indent=2))
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder (its best checkpoint, else its last) or a checkpoint file."""
    p = Path(path)
    if p.is_dir():
        for name in (BEST, LAST):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"run folder {p} holds no checkpoint ({BEST} or {LAST}); train first, or pass the "
                              "path of a .safetensors checkpoint.")
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist; pass a run folder or a .safetensors checkpoint.")
    if p.suffix != ".safetensors":
        raise CheckpointError(f"{p} is not a resnet-tune checkpoint (expected a .safetensors file or a run folder).")
    return p


def read_record(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    p = resolve_checkpoint(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{p} is not a readable safetensors file ({err}).") from None
    if RECORD_KEY not in meta:
        raise CheckpointError(f"{p} has no resnet-tune record in its header; it is a plain weights file "
                              "(load it with create_model(..., pretrained=PATH) instead).")
    try:
        rec = json.loads(meta[RECORD_KEY])
    except json.JSONDecodeError:
        raise CheckpointError(f"{p} has a damaged record in its header.") from None
    return _upgrade(rec, p)


def _upgrade(rec: dict[str, Any], p: Path) -> dict[str, Any]:
    version = rec.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{p} has no format_version in its record; it was not written by resnet-tune.")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{p} uses checkpoint format version {version}, newer than this resnet-tune reads "
                              f"(up to {FORMAT_VERSION}); upgrade resnet-tune.")
    while version < FORMAT_VERSION:
        if version not in _MIGRATIONS:
            raise CheckpointError(f"{p} uses checkpoint format version {version}, which this resnet-tune cannot read "
                                  f"(it reads versions {min([FORMAT_VERSION, *_MIGRATIONS])}-{FORMAT_VERSION}).")
        rec = _MIGRATIONS[version](rec)
        version = rec["format_version"]
    return rec


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a checkpoint's record and load its weights (strict)."""
    from safetensors.torch import load_file

    from ..models import build_from_record

    p = resolve_checkpoint(path)
    rec = read_record(p)
    if rec.get("model_config") is None:
        raise CheckpointError(f"{p} does not record its architecture and cannot be rebuilt.")
    try:
        model = build_from_record(rec)
    except CheckpointError as err:
        raise CheckpointError(f"{p}: {err}") from None
    state = load_file(str(p), device=str(device))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1:3]
        raise CheckpointError(f"the weights in {p} do not fit the architecture its record describes: "
                              f"{' '.join(s.strip() for s in first)}") from None
    return model.to(device).eval(), rec


# --- resume state ------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def load_state(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p} does not exist; a run can only be resumed from a folder holding {STATE}.")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{p} cannot be read safely ({type(err).__name__}); it may be damaged or not "
                              "written by resnet-tune.") from None
