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
import math
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


def _one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters."""
    text = " ".join((str(err) or type(err).__name__).split())
    return text if len(text) <= limit else text[:limit] + "..."


def read_record(path: str | Path) -> dict[str, Any]:
    """The record in a checkpoint's header, upgraded to the current format and checked field by field."""
    from safetensors import safe_open

    p = resolve_checkpoint(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{p} is not a readable safetensors file ({_one_line(err)}).") from None
    if RECORD_KEY not in meta:
        raise CheckpointError(f"{p} has no resnet-tune record in its header; it is a plain weights file "
                              "(load it with create_model(..., pretrained=PATH) instead).")
    try:
        rec = json.loads(meta[RECORD_KEY])
    except (ValueError, RecursionError):  # not JSON, nested too deeply, or an integer of over 4300 digits
        raise CheckpointError(f"{p} has a damaged record in its header.") from None
    if not isinstance(rec, dict):
        raise CheckpointError(f"{p} has a damaged record in its header (a {type(rec).__name__}, not a mapping).")
    rec = _upgrade(rec, p)
    problem = record_problem(rec)
    if problem:
        raise CheckpointError(f"{p} has a damaged record in its header: {problem}.")
    return rec


def _whole(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _numbers(value: Any, positive: bool = False) -> bool:
    """A non-empty list of finite numbers (all above 0 with ``positive``)."""
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
        for v in value)


_INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
# (field, test, what it must be); a field that is present must pass its test
_RECORD_FIELDS: tuple[tuple[str, Any, str], ...] = (
    # any task's name (the tasks register above the engine; a predictor for an unknown one says so by name)
    ("task", lambda v: isinstance(v, str) and v.isidentifier() and v.islower() and len(v) <= 40,
     "a task name (e.g. 'classification')"),
    ("model", lambda v: isinstance(v, str), "a model name"),
    ("model_config", lambda v: v is None or isinstance(v, dict), "a mapping of architecture options"),
    ("in_chans", lambda v: _whole(v, 1), "a whole number of at least 1"),
    ("num_classes", lambda v: _whole(v, 0), "a whole number of at least 0"),
    ("classes", lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of class names"),
    ("preprocessing", lambda v: isinstance(v, dict), "a mapping"),
    ("head", lambda v: isinstance(v, str), "a head name"),
    ("output_stride", lambda v: v is None or _whole(v, 1), "a whole number"),
    ("aux", lambda v: isinstance(v, bool), "true or false"),
    ("decoder_widths", lambda v: v is None or (isinstance(v, list) and all(_whole(w, 1) for w in v)),
     "a list of whole numbers"),
    ("ignore_index", lambda v: _whole(v, -(2**31)), "a whole number"),
    ("colours", lambda v: v is None or (isinstance(v, list) and all(
        isinstance(c, list) and len(c) == 3 and all(_whole(x, 0) and x <= 255 for x in c) for c in v)),
     "a list of r, g, b colours"),
)
_PREPROCESSING_FIELDS: tuple[tuple[str, Any, str], ...] = (
    ("input_size", lambda v: _whole(v, 1), "a whole number of at least 1"),
    ("resize", lambda v: _whole(v, 1), "a whole number of at least 1"),
    ("mean", _numbers, "a list of numbers"),
    ("std", lambda v: _numbers(v, positive=True), "a list of positive numbers"),
    ("interpolation", lambda v: v in _INTERPOLATIONS, f"one of {', '.join(_INTERPOLATIONS)}"),
    ("crop_size", lambda v: v is None or (isinstance(v, list) and len(v) == 2 and all(_whole(x, 1) for x in v)),
     "a pair of whole numbers"),
    ("eval_mode", lambda v: v in ("full", "sliding"), "full or sliding"),
    ("eval_overlap", lambda v: _numbers([v]) and 0 <= v < 1, "a number in [0, 1)"),
)


def record_problem(rec: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a checkpoint record (a phrase), or None when they are as resnet-tune
    writes them: the fields that training, evaluation, export and serving read have the right types."""
    from .config import show

    for key, ok, what in _RECORD_FIELDS:
        if key in rec and not ok(rec[key]):
            return f"{key} is {show(rec[key])}, not {what}"
    segmentation = rec.get("task") == "segmentation"
    missing = [k for k in ("classes", "num_classes" if segmentation else "preprocessing") if k not in rec]
    if missing:
        return f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
    classes, n = rec["classes"], rec.get("num_classes")
    if n is not None and len(classes) != n:
        return f"it names {len(classes)} classes but num_classes is {n}"
    outputs = (rec.get("model_config") or {}).get("num_classes")
    if not segmentation and outputs is not None and outputs != len(classes):
        return f"it names {len(classes)} classes but its model_config has {show(outputs)} outputs"
    pp = rec.get("preprocessing")
    if pp is None:
        return None
    required = ("mean", "std") if segmentation else ("input_size", "mean", "std", "resize")
    missing = [k for k in required if k not in pp]
    if missing:
        return f"its preprocessing has no {' or '.join(missing)}"
    for key, ok, what in _PREPROCESSING_FIELDS:
        if key in pp and not ok(pp[key]):
            return f"preprocessing {key} is {show(pp[key])}, not {what}"
    return None


def _upgrade(rec: dict[str, Any], p: Path) -> dict[str, Any]:
    version = rec.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
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


def _tensor_shapes(p: Path) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor in a safetensors file, from its header (no weights are read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{p} is not a readable safetensors file ({_one_line(err)}).") from None


def _listing(items: list[str], limit: int = 4) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _check_fit(model: nn.Module, shapes: dict[str, tuple[int, ...]], p: Path) -> None:
    """Raise a CheckpointError when the tensors in the file are not exactly the ones ``model`` holds."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    parts = []
    wrong = [f"{k} {shapes[k]} in the file vs {own[k]}" for k in own if k in shapes and shapes[k] != own[k]]
    if wrong:
        parts.append("shape mismatches: " + _listing(wrong))
    missing = [k for k in own if k not in shapes]
    if missing:
        parts.append("missing in the file: " + _listing(missing))
    unexpected = [k for k in shapes if k not in own]
    if unexpected:
        parts.append("unexpected in the file: " + _listing(unexpected))
    if parts:
        raise CheckpointError(f"the weights in {p} do not fit the architecture its record describes "
                              f"({'; '.join(parts)}).")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a checkpoint's record and load its weights (strict).

    The architecture is first built on the ``meta`` device and compared with the tensor shapes in the file's
    header, so a damaged record cannot make this allocate more memory (or build more blocks) than the file's own
    weights: a mismatch is a :class:`CheckpointError` before anything is allocated.
    """
    from safetensors.torch import load_file

    from ..models import ResNetConfig, build_from_record

    p = resolve_checkpoint(path)
    rec = read_record(p)
    if rec.get("model_config") is None:
        raise CheckpointError(f"{p} does not record its architecture and cannot be rebuilt.")
    shapes = _tensor_shapes(p)
    try:
        cfg = ResNetConfig().replace(**rec["model_config"])
        blocks = sum(cfg.layers)
        if blocks > len(shapes):  # every block holds several tensors: do not build what the file cannot fill
            raise CheckpointError(f"the weights in {p} do not fit the architecture its record describes "
                                  f"({blocks} residual blocks, but the file holds only {len(shapes)} tensors).")
        with torch.device("meta"):
            skeleton = build_from_record(rec)
    except (TypeError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise CheckpointError(f"{p}: {err}") from None
        raise CheckpointError(f"{p} records an architecture this resnet-tune cannot build "
                              f"({_one_line(err).rstrip('.')}).") from None
    _check_fit(skeleton, shapes, p)
    model = build_from_record(rec)
    state = load_file(str(p), device=str(device))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # shapes were checked above; e.g. a dtype that cannot be cast
        raise CheckpointError(f"the weights in {p} cannot be loaded ({_one_line(err).rstrip('.')}).") from None
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
