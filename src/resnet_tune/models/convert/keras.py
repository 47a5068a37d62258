"""Keras applications ResNet weights (``ResNet50/101/152`` and ``ResNet50V2/101V2/152V2``).

Files are read with ``h5py`` and ``zipfile`` only: keras is not imported and nothing is unpickled.
Three layouts are understood:

* legacy Keras 2 HDF5 (``model.save_weights('x.h5')``, ``model.save('x.h5')`` and the files
  ``keras.applications`` downloads): one group per layer, listed in the ``layer_names`` attribute,
  each with a ``weight_names`` attribute (``conv2_block1_1_conv/kernel:0``) naming its datasets;
  ``model.save`` puts them under ``model_weights``.
* Keras 3 ``.weights.h5``: ``layers/<class>[_n]/vars/0, 1, ...``; the group is named after the
  layer's *class* (``conv2d_17``), and recent Keras records the layer name in the ``vars``
  group's ``name`` attribute. Files without it are resolved from the model config (``.keras``) or,
  failing that, from the fixed layer order of ``keras.applications``' ResNets.
* Keras 3 ``.keras``: a zip holding ``model.weights.h5`` (as above) and ``config.json``.

Layer names map to ours as follows (``S`` = Keras stage 2..5 = our ``layer{S-1}``, ``B`` = block from 1)::

    v1 (ResNet50/101/152)                     v2 (ResNet50V2/101V2/152V2)
    conv1_conv -> conv1 (with bias)           conv1_conv -> conv1 (with bias)
    conv1_bn   -> bn1                         convS_blockB_preact_bn -> layer.b.bn1
    convS_blockB_0_conv -> downsample.0       convS_blockB_0_conv -> downsample (plain conv)
    convS_blockB_0_bn   -> downsample.1       convS_blockB_1_conv, _1_bn -> conv1, bn2
    convS_blockB_K_conv -> convK              convS_blockB_2_conv, _2_bn -> conv2, bn3
    convS_blockB_K_bn   -> bnK                convS_blockB_3_conv -> conv3
                                              post_bn -> norm
    predictions -> fc                         predictions -> fc

Conv kernels go from HWIO to OIHW, the Dense kernel from (in, out) to (out, in), and BatchNorm's
``gamma/beta/moving_mean/moving_variance`` to ``weight/bias/running_mean/running_var``.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from ...errors import CheckpointError, PathNotFoundError
from ._common import list_keys

__all__ = ["from_keras_h5", "from_keras_model", "keras_arch_from_weights", "keras_layer_order", "read_keras_h5"]

KerasLayers = dict[str, dict[str, np.ndarray]]

_BLOCK_LAYER = re.compile(r"^conv([2-9])_block(\d+)_(0|1|2|3|preact)_(conv|bn)$")
_TOP_LAYERS = ("conv1_conv", "conv1_bn", "post_bn", "predictions")
_VARS = {
    "conv": ("kernel", "bias"),
    "bn": ("gamma", "beta", "moving_mean", "moving_variance"),
    "dense": ("kernel", "bias"),
}
_BN_TO_OURS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
_LAYERS_OF_DEPTH = {v: k for k, v in _DEPTHS.items()}


def _is_resnet_layer(name: str) -> bool:
    return name in _TOP_LAYERS or bool(_BLOCK_LAYER.match(name))


def _kind(name: str) -> str:
    if name == "predictions":
        return "dense"
    return "bn" if name.endswith("_bn") else "conv"


# --- reading files --------------------------------------------------------------------------------

def _decode(x: Any) -> str:
    return x.decode("utf8") if isinstance(x, bytes) else str(x)


def _attr_list(group: Any, name: str) -> list[str]:
    """A list-valued HDF5 attribute, including Keras's chunked ``name0``, ``name1``... form."""
    if name in group.attrs:
        return [_decode(x) for x in np.atleast_1d(group.attrs[name])]
    out: list[str] = []
    i = 0
    while f"{name}{i}" in group.attrs:
        out += [_decode(x) for x in np.atleast_1d(group.attrs[f"{name}{i}"])]
        i += 1
    return out


def _read_dataset(ds: Any) -> np.ndarray:
    arr = ds[()]
    if _decode(ds.attrs.get("dtype", b"")) == "bfloat16":  # Keras 3 stores bfloat16 as raw 16-bit words
        return np.asarray(arr).view(np.uint16)  # _to_tensor reads uint16 as bfloat16 words
    return np.asarray(arr)


def _to_tensor(arr: np.ndarray) -> Tensor:
    arr = np.ascontiguousarray(arr)
    if arr.dtype == np.uint16 or arr.dtype.name == "bfloat16":  # raw bfloat16 words, or ml_dtypes' bfloat16
        return torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
    if arr.dtype.kind != "f":
        raise CheckpointError(f"expected floating-point weights, got dtype {arr.dtype}")
    return torch.from_numpy(arr.copy())


def _read_legacy(root: Any) -> KerasLayers:
    layers: KerasLayers = {}
    for group_name in _attr_list(root, "layer_names"):
        group = root[group_name]
        for weight_name in _attr_list(group, "weight_names"):
            parts = weight_name.split("/")
            var = parts[-1].split(":")[0]
            layer = parts[-2] if len(parts) >= 2 else group_name
            if not _is_resnet_layer(layer) and _is_resnet_layer(group_name):
                layer = group_name
            if var in layers.get(layer, {}):
                raise CheckpointError(f"the file holds the weight {layer}/{var} twice")
            layers.setdefault(layer, {})[var] = _read_dataset(group[weight_name])
    return layers


def _snake(name: str) -> str:  # keras.src.utils.naming.to_snake_case
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _unique(name: str, used: dict[str, int]) -> str:  # keras.src.saving.saving_lib._get_unique_name
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name


def _paths_from_config(config: Mapping[str, Any], prefix: str = "layers") -> dict[str, str]:
    """``{h5 group path: layer name}`` for a Keras 3 model config (``config.json``)."""
    out: dict[str, str] = {}
    used: dict[str, int] = {}
    for layer in (config.get("config") or {}).get("layers") or []:
        path = f"{prefix}/{_unique(_snake(layer.get('class_name', '')), used)}"
        inner = layer.get("config") or {}
        if inner.get("name"):
            out[path] = inner["name"]
        if inner.get("layers"):
            out.update(_paths_from_config(layer, path + "/layers"))
    return out


def keras_layer_order(depth: int, v2: bool = False) -> list[str]:
    """The names of the weighted layers of ``keras.applications.ResNet{depth}[V2]``, in ``model.layers`` order."""
    if depth not in _LAYERS_OF_DEPTH:
        raise CheckpointError(f"Keras ResNets have depth 50, 101 or 152, not {depth}")
    out = ["conv1_conv"] + ([] if v2 else ["conv1_bn"])
    for s, n in enumerate(_LAYERS_OF_DEPTH[depth], start=2):
        for b in range(1, n + 1):
            p = f"conv{s}_block{b}_"
            if v2:
                out += [p + "preact_bn", p + "1_conv", p + "1_bn", p + "2_conv", p + "2_bn"]
                out += ([p + "0_conv"] if b == 1 else []) + [p + "3_conv"]
            else:
                out += [p + "1_conv", p + "1_bn", p + "2_conv", p + "2_bn"]
                out += [p + "0_conv", p + "3_conv", p + "0_bn", p + "3_bn"] if b == 1 else [p + "3_conv", p + "3_bn"]
    return out + (["post_bn"] if v2 else []) + ["predictions"]


_CLASS_GROUP = re.compile(r"^(conv2d|batch_normalization|dense)(?:_(\d+))?$")


def _names_from_layer_order(paths: list[str]) -> dict[str, str]:
    """Name class-named groups (``conv2d_3``) by the fixed layer order of keras.applications' ResNets."""
    by_class: dict[str, list[tuple[int, str]]] = {"conv2d": [], "batch_normalization": [], "dense": []}
    for path in paths:
        m = _CLASS_GROUP.match(path.rsplit("/", 1)[-1])
        if not m:
            raise CheckpointError(f"cannot tell which layer the weights at {path!r} belong to (the file records no "
                                  "layer names)")
        by_class[m.group(1)].append((int(m.group(2) or 0), path))
    n_conv, n_bn, n_dense = (len(by_class[c]) for c in ("conv2d", "batch_normalization", "dense"))
    v2 = n_bn == n_conv - 4
    blocks, rem = divmod(n_conv - 5, 3)
    depth = {16: 50, 33: 101, 50: 152}.get(blocks)
    if rem or depth is None or not (v2 or n_bn == n_conv) or n_dense > 1:
        raise CheckpointError(
            f"this weights file records no layer names and its {n_conv} convolutions / {n_bn} batch norms / {n_dense} "
            "dense layers do not match a keras.applications ResNet; load the .keras file (which has the model "
            "config) or re-save the weights with a recent Keras"
        )
    order = keras_layer_order(depth, v2)
    names: dict[str, str] = {}
    for cls, kind in (("conv2d", "conv"), ("batch_normalization", "bn"), ("dense", "dense")):
        expected = [n for n in order if _kind(n) == kind]
        for (_, path), name in zip(sorted(by_class[cls]), expected):
            names[path] = name
    return names


def _read_keras3(f: Any, config: Mapping[str, Any] | None) -> KerasLayers:
    entries: list[tuple[str, str | None, list[np.ndarray]]] = []

    def visit(name: str, obj: Any) -> None:
        if name.rsplit("/", 1)[-1] != "vars" or not hasattr(obj, "keys") or len(obj) == 0:
            return
        keys = sorted(obj.keys(), key=lambda k: (0, int(k)) if k.isdigit() else (1, k))
        arrays = [_read_dataset(obj[k]) for k in keys]
        layer_name = _decode(obj.attrs["name"]) if "name" in obj.attrs else None
        entries.append((name[: -len("/vars")], layer_name, arrays))

    # Only the layer tree: a compiled model's file also holds optimizer (and metric) variables.
    for top in ("layers", "_layer_checkpoint_dependencies"):
        if top in f:
            f[top].visititems(lambda name, obj, top=top: visit(f"{top}/{name}", obj))
    unnamed = []
    for path, layer_name, _ in entries:
        if layer_name is None and not _is_resnet_layer(path.rsplit("/", 1)[-1]):
            unnamed.append(path)
    guessed: dict[str, str] = {}
    if unnamed:
        if config is not None:
            guessed = _paths_from_config(config)
            guessed = {p: guessed[p] for p in unnamed if p in guessed}
        if len(guessed) < len(unnamed):
            guessed = _names_from_layer_order(unnamed)

    layers: KerasLayers = {}
    for path, layer_name, arrays in entries:
        name = layer_name or guessed.get(path) or path.rsplit("/", 1)[-1]
        if name in layers:
            raise CheckpointError(f"the file holds two layers named {name!r}")
        kind = _kind(name)
        var_names = _VARS[kind]
        if not _is_resnet_layer(name):
            var_names = tuple(str(i) for i in range(len(arrays)))
        elif len(arrays) > len(var_names) or (kind == "bn" and len(arrays) != 4):
            raise CheckpointError(f"layer {name!r} has {len(arrays)} weights; a Keras ResNet's {kind} layer has "
                                  f"{' and '.join(var_names) if kind != 'bn' else 'four'}")
        layers[name] = dict(zip(var_names, arrays))
    return layers


def read_keras_h5(path: str | os.PathLike[str]) -> KerasLayers:
    """The raw weights of a Keras file: ``{layer name: {variable name: array}}`` (Keras layouts, no conversion)."""
    path = Path(path)
    if not path.exists():
        raise PathNotFoundError(f"no such Keras weights file: {path}")
    import h5py

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            members = z.namelist()
            if "model.weights.h5" not in members:
                extra = " (sharded weights are not supported)" if "model.weights.json" in members else ""
                raise CheckpointError(f"{path} is a zip but holds no model.weights.h5{extra}; is it a .keras file?")
            data = z.read("model.weights.h5")
            config = json.loads(z.read("config.json")) if "config.json" in members else None
        with h5py.File(io.BytesIO(data), "r") as f:
            return _read_keras3(f, config)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CheckpointError(f"{path} is neither an HDF5 file nor a .keras zip: {e}") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs or "layer_names0" in root.attrs:
            return _read_legacy(root)
        if any(k in f for k in ("layers", "_layer_checkpoint_dependencies")):
            return _read_keras3(f, None)
    raise CheckpointError(f"{path} is an HDF5 file but not Keras weights (no 'layer_names' attribute and no 'layers' "
                          "group)")


# --- mapping to our names -------------------------------------------------------------------------

def _our_prefix(name: str, v2: bool) -> str:
    top = {"conv1_conv": "conv1", "conv1_bn": "bn1", "post_bn": "norm", "predictions": "fc"}
    if name in top:
        return top[name]
    m = _BLOCK_LAYER.match(name)
    assert m is not None
    stage, block, part, kind = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
    base = f"layer{stage - 1}.{block - 1}."
    if not v2:
        if part == "preact":
            raise CheckpointError(f"layer {name!r} belongs to a V2 (pre-activation) model")
        if part == "0":
            return base + ("downsample.0" if kind == "conv" else "downsample.1")
        return base + f"{kind}{part}"
    if part == "preact":
        return base + "bn1"
    if part == "0":
        if kind == "bn":
            raise CheckpointError(f"layer {name!r} does not exist in ResNetV2 (its shortcut has no batch norm)")
        return base + "downsample"
    if kind == "bn":
        if part == "3":
            raise CheckpointError(f"layer {name!r} does not exist in ResNetV2")
        return base + f"bn{int(part) + 1}"
    return base + f"conv{part}"


def _layers_to_state(layers: Mapping[str, Mapping[str, np.ndarray]], strict: bool) -> dict[str, Tensor]:
    weighted = {n: v for n, v in layers.items() if v}
    if not weighted:
        raise CheckpointError("no weights found")
    unknown = [n for n in weighted if not _is_resnet_layer(n)]
    if unknown:
        msg = (f"{len(unknown)} Keras layer(s) with weights are not part of a keras.applications ResNet: "
               f"{list_keys(unknown)}")
        if strict:
            raise CheckpointError(msg + "; pass strict=False to skip them (e.g. a custom head)")
        warnings.warn(msg + "; they were skipped", stacklevel=3)
    v2 = any(n.endswith("_preact_bn") or n == "post_bn" for n in weighted)
    state: dict[str, Tensor] = {}
    for name, vars_ in weighted.items():
        if name in unknown:
            continue
        prefix = _our_prefix(name, v2)
        kind = _kind(name)
        extra = sorted(set(vars_) - set(_VARS[kind]))
        if extra:
            raise CheckpointError(f"layer {name!r} has unexpected weights {extra}")
        if kind == "bn":
            missing = [v for v in _VARS["bn"] if v not in vars_]
            if missing:
                raise CheckpointError(f"batch norm {name!r} lacks {missing}")
            for var, ours in _BN_TO_OURS.items():
                state[f"{prefix}.{ours}"] = _to_tensor(vars_[var])
            state[f"{prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
            continue
        if "kernel" not in vars_:
            raise CheckpointError(f"layer {name!r} has no kernel")
        kernel = _to_tensor(vars_["kernel"])
        if kind == "conv":
            if kernel.ndim != 4:
                raise CheckpointError(f"convolution {name!r} has a kernel of shape {tuple(kernel.shape)}, "
                                      "expected (h, w, in, out)")
            state[f"{prefix}.weight"] = kernel.permute(3, 2, 0, 1).contiguous()
        else:
            if kernel.ndim != 2:
                raise CheckpointError(f"dense layer {name!r} has a kernel of shape {tuple(kernel.shape)}, "
                                      "expected (in, out)")
            state[f"{prefix}.weight"] = kernel.t().contiguous()
        if "bias" in vars_:
            state[f"{prefix}.bias"] = _to_tensor(vars_["bias"])
    return state


def from_keras_h5(path: str | os.PathLike[str], *, strict: bool = True) -> dict[str, Tensor]:
    """Weights of a Keras ResNet / ResNetV2 file (``.h5``, ``.weights.h5`` or ``.keras``) in our names.

    The result loads into ``create_model(keras_arch_from_weights(path))``; a file saved with
    ``include_top=False`` has no ``fc.*`` entries. Layers with weights that are not part of the
    Keras ResNet (a custom head) raise ``ValueError`` naming them, or with ``strict=False`` are
    skipped with a warning.
    """
    return _layers_to_state(read_keras_h5(path), strict)


def _var_name(w: Any) -> str:
    name = getattr(w, "path", None) or w.name
    return str(name).split("/")[-1].split(":")[0]


def _model_layers(model: Any) -> KerasLayers:
    layers: KerasLayers = {}

    def collect(m: Any) -> None:
        for layer in m.layers:
            if getattr(layer, "layers", None) and not _is_resnet_layer(layer.name):
                collect(layer)  # a nested model (e.g. the ResNet inside a fine-tuning wrapper)
                continue
            weights = list(layer.weights)
            if not weights:
                continue
            if layer.name in layers:
                raise CheckpointError(f"the model has two layers named {layer.name!r}")
            values = layer.get_weights()
            layers[layer.name] = {_var_name(w): np.asarray(v) for w, v in zip(weights, values)}

    collect(model)
    return layers


def from_keras_model(model: Any, *, strict: bool = True) -> dict[str, Tensor]:
    """Weights of a live ``keras.applications.ResNet*`` model (Keras 2 or 3, any backend) in our names."""
    if not hasattr(model, "layers"):
        raise CheckpointError(f"expected a Keras model, got {type(model).__name__}")
    return _layers_to_state(_model_layers(model), strict)


def _arch_from_counts(blocks: Mapping[int, int], v2: bool, what: str) -> str:
    layers = tuple(blocks.get(s, 0) for s in range(min(blocks, default=0), max(blocks, default=-1) + 1))
    depth = _DEPTHS.get(layers)
    if depth is None:
        raise CheckpointError(f"{what} has {layers} blocks per stage, which is not a Keras ResNet "
                              f"(50: {_LAYERS_OF_DEPTH[50]}, 101: {_LAYERS_OF_DEPTH[101]}, "
                              f"152: {_LAYERS_OF_DEPTH[152]})")
    return f"keras_resnet{depth}{'v2' if v2 else ''}"


def keras_arch_from_weights(source: str | os.PathLike[str] | Mapping[str, Any] | Iterable[str] | Any) -> str:
    """Which preset (``keras_resnet50`` ... ``keras_resnet152v2``) some Keras weights belong to.

    ``source`` may be a Keras weights file, a live Keras model, a state dict already converted to
    our names, or Keras layer names. The depth comes from counting blocks per stage; V2 from its
    ``preact_bn`` / ``post_bn`` layers (``norm`` in our names).
    """
    if isinstance(source, (str, os.PathLike)):
        names: list[str] = list(read_keras_h5(source))
        what = f"the file {os.fspath(source)}"
    elif hasattr(source, "layers"):
        names = list(_model_layers(source))
        what = "the model"
    elif isinstance(source, Mapping) and any(k.startswith("layer") and "." in k for k in source):
        blocks: dict[int, set[int]] = {}
        for k in source:
            m = re.match(r"^layer(\d+)\.(\d+)\.", k)
            if m:
                blocks.setdefault(int(m.group(1)) + 1, set()).add(int(m.group(2)))
        v2 = any(k.startswith("norm.") for k in source)
        if "conv1.bias" not in source:
            raise CheckpointError("this state dict is not from a Keras ResNet (its stem convolution has no bias)")
        return _arch_from_counts({s: len(b) for s, b in blocks.items()}, v2, "the state dict")
    else:
        names = [str(n) for n in source]
        what = "these layers"
    blocks_k: dict[int, int] = {}
    for n in names:
        m = _BLOCK_LAYER.match(n)
        if m:
            s, b = int(m.group(1)), int(m.group(2))
            blocks_k[s] = max(blocks_k.get(s, 0), b)
    if not blocks_k:
        raise CheckpointError(f"{what} holds no Keras ResNet layers (convS_blockB_...)")
    v2 = any(n.endswith("_preact_bn") or n == "post_bn" for n in names)
    return _arch_from_counts(blocks_k, v2, what)
