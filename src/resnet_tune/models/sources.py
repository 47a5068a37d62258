"""Where pretrained weights come from: :func:`resolve_source` finds, downloads and reads them (loading them into a
model is :mod:`.pretrained`).

Sources (the ``pretrained=`` argument of :func:`~resnet_tune.models.create_model`):

* ``torchvision:<Weights>.<TAG>``, e.g. ``torchvision:ResNet50_Weights.IMAGENET1K_V2`` (or
  ``.DEFAULT``): downloaded from torchvision's URL into torch.hub's cache
  (``$TORCH_HOME/hub/checkpoints``), hash-checked like torchvision does;
* ``keras:<name>``, e.g. ``keras:resnet50`` or ``keras:resnet101v2``: keras.applications' ImageNet weights,
  downloaded into Keras's cache (``~/.keras/models``) and checked against Keras's published MD5;
* ``timm:<name>``, e.g. ``timm:resnet50.a1_in1k``: the Hugging Face repository ``timm/<name>``;
* ``hf:<org>/<repo>[@revision]``, e.g. ``hf:microsoft/resnet-50``: a Hugging Face repository
  (transformers or timm layout), converted to our names;
* an ``http(s)://`` URL, downloaded into torch.hub's cache;
* a local file: ``.safetensors``, ``.pth`` / ``.pt`` / ``.bin`` (read with
  ``torch.load(weights_only=True)``: a file that needs to run pickled code is refused, never
  executed), ``.h5`` / ``.weights.h5`` / ``.keras`` (Keras), or a folder holding a Hugging Face
  ``config.json`` and ``model.safetensors`` / ``pytorch_model.bin``.

Weights in torchvision, timm, transformers and Keras names are converted to ours (torchvision's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import pickle
import re
import urllib.parse
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor

from ..errors import CheckpointError, ConfigError, PathNotFoundError
from . import hub

__all__ = ["KERAS_WEIGHTS", "VALID_SOURCES", "resolve_source", "weights_file"]

log = logging.getLogger(__name__)

VALID_SOURCES = (
    "'torchvision:<Weights>.<TAG>' (e.g. 'torchvision:ResNet50_Weights.IMAGENET1K_V2'), "
    "'keras:<name>' (e.g. 'keras:resnet50'), 'timm:<name>' (e.g. 'timm:resnet50.a1_in1k'), "
    "'hf:<org>/<repo>[@revision]' (e.g. 'hf:microsoft/resnet-50'), "
    "an http(s):// URL, a local file (.safetensors, .pth, .pt, .bin, .h5, .weights.h5, .keras) or a folder "
    "with a Hugging Face config.json, or 'default' for the preset's default weights"
)
TORCH_EXTS = (".pth", ".pt", ".bin", ".ckpt", ".pth.tar")
KERAS_EXTS = (".h5", ".hdf5", ".keras")
LOCAL_EXTS = (".safetensors",) + TORCH_EXTS + KERAS_EXTS
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "model_state")
RECORD_KEYS = ("resnet_tune", "record", "meta")
# keras.applications' ImageNet weights (with the classifier): name -> MD5 of the file, as Keras publishes them
# (keras/src/applications/resnet.py, WEIGHTS_HASHES).
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
KERAS_WEIGHTS = {
    "resnet50": "2cb95161c43110f7111970584f804107",
    "resnet101": "f1aeb4b969a6efcfb50fad2f0c20cfc5",
    "resnet152": "100835be76be38e30d865e96f2aaae62",
    "resnet50v2": "3ef43a0b657b3be2300d5770ece849e0",
    "resnet101v2": "6343647c601c52e1368623803854d971",
    "resnet152v2": "a49b44d1979771252814e80f8ec446f9",
}
# Config fields that do not change how weights must be read (free to differ from the checkpoint's).
_FREE_FIELDS = {"num_classes", "drop_path_rate", "zero_init_residual", "conv_init", "input_size",
                "replace_stride_with_dilation", "bn_momentum", "bn_scale", "dirac_init"}

State = dict[str, Tensor]


# --- sources -------------------------------------------------------------------------------------

def resolve_source(source: str | os.PathLike[str], *, cfg: Any = None, model_name: str = "") -> tuple[State, dict]:
    """Fetch and read the weights named by ``source``; returns ``(state_dict, meta)``.

    The state dict uses our (torchvision's) parameter names. ``meta`` holds what is known about
    the weights: ``source``, ``format`` and, where the source says, ``num_classes``,
    ``categories`` (class names), ``mean``, ``std``, ``input_size``, plus the record our own
    checkpoints carry.

    ``cfg`` (the :class:`ResNetConfig` of the model the weights are for) lets a Hugging Face
    config be checked against the model: a different architecture with the same parameter shapes
    (e.g. the stride in the 1x1 instead of the 3x3) would otherwise load silently.

    Raises:
        PathNotFoundError: a local path that does not exist (also a ``FileNotFoundError``).
        ConfigError: a source of unknown form (the message lists the valid forms) or unknown torchvision
            weights.
        CheckpointError: a file that cannot be read safely or holds no ResNet weights.
        hub.DownloadError: a download failed (the message says how to use a local file instead).
    All three are :class:`~resnet_tune.errors.ResnetTuneError` (and ``ValueError`` for the last two).
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise TypeError(f"pretrained must be a string naming the weights, got {type(source).__name__}; "
                        f"valid forms: {VALID_SOURCES}")
    s = source.strip()
    low = s.lower()
    if low.startswith("torchvision:"):
        state, meta = _from_torchvision(s.split(":", 1)[1].strip())
    elif low.startswith("keras:"):
        state, meta = _from_keras(s.split(":", 1)[1].strip(), cfg=cfg, model_name=model_name)
    elif low.startswith("timm:"):
        name, revision = _split_revision(s.split(":", 1)[1].strip())
        if not name or "/" in name:
            raise ConfigError(f"{source!r}: write timm weights as 'timm:<name>', e.g. 'timm:resnet50.a1_in1k' "
                              "(for another repository use 'hf:<org>/<repo>')")
        state, meta = _from_hf_repo(f"timm/{name}", revision, cfg=cfg, model_name=model_name)
    elif low.startswith("hf:"):
        repo, revision = _split_revision(s.split(":", 1)[1].strip())
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise ConfigError(f"{source!r}: write Hugging Face weights as 'hf:<org>/<repo>[@revision]', "
                              "e.g. 'hf:microsoft/resnet-50'")
        state, meta = _from_hf_repo(repo, revision, cfg=cfg, model_name=model_name)
    elif low.startswith(("http://", "https://")):
        state, meta = _from_url(s, cfg=cfg, model_name=model_name)
    elif low.startswith("file://"):
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(s).path))
        state, meta = _from_local(path, cfg=cfg, model_name=model_name, source=source)
    else:
        path = Path(s).expanduser()
        if path.exists():
            state, meta = _from_local(path, cfg=cfg, model_name=model_name, source=source)
        elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", s):  # a scheme (not a Windows drive letter)
            raise ConfigError(f"unknown weights source {source!r}; valid forms: {VALID_SOURCES}")
        elif os.sep in s or "/" in s or s.lower().endswith(LOCAL_EXTS) or s.startswith(("~", ".")):
            raise PathNotFoundError(f"the weights file {str(path)!r} does not exist; check the path "
                                    f"(relative paths are taken from {os.getcwd()!r})")
        else:
            raise ConfigError(f"unknown weights source {source!r} (no such file either); valid forms: {VALID_SOURCES}")
    meta["source"] = source
    return state, _reconcile(state, meta)


def _split_revision(spec: str) -> tuple[str, str]:
    name, _, revision = spec.partition("@")
    return name.strip(), (revision.strip() or "main")


def _reconcile(state: State, meta: dict) -> dict:
    """Make ``num_classes`` and ``categories`` agree with the classifier actually in the weights."""
    fc = state.get("fc.weight")
    if fc is None:
        meta.pop("num_classes", None)
        meta.pop("categories", None)
        return meta
    n = int(fc.shape[0])
    cats = meta.get("categories")
    if cats is not None and len(cats) != n:
        log.warning("ignoring %d class names for a %d-class checkpoint (%s)", len(cats), n, meta.get("source"))
        meta.pop("categories")
    meta["num_classes"] = n
    return meta


# torchvision ------------------------------------------------------------------------------------

def _torchvision_weights(name: str) -> tuple[str, dict]:
    """URL and meta of a torchvision weights enum member (``ResNet50_Weights.IMAGENET1K_V2``)."""
    from torchvision.models import get_weight

    try:
        w = get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise ConfigError(
            f"unknown torchvision weights {name!r}; write them as 'torchvision:<Weights>.<TAG>', e.g. "
            "'torchvision:ResNet50_Weights.IMAGENET1K_V2' (torchvision.models.get_model_weights('resnet50') "
            "lists them)") from None
    meta: dict[str, Any] = {"format": "torchvision", "url": w.url, "weights": f"{type(w).__name__}.{w.name}"}
    cats = w.meta.get("categories")
    if cats:
        meta["categories"] = list(cats)
        meta["num_classes"] = len(cats)
    try:
        t = w.transforms()
        meta["mean"] = tuple(t.mean)
        meta["std"] = tuple(t.std)
        crop = int(t.crop_size[0])
        meta["input_size"] = (3, crop, crop)
        meta["resize_size"] = int(t.resize_size[0])
        meta["interpolation"] = getattr(t.interpolation, "value", str(t.interpolation))
    except Exception:  # noqa: BLE001 - transforms are informative only; other weight types differ
        pass
    if "_metrics" in w.meta:
        meta["metrics"] = w.meta["_metrics"]
    return w.url, meta


def _from_torchvision(name: str) -> tuple[State, dict]:
    url, meta = _torchvision_weights(name)
    path = hub.download(url, hub.torch_cache_dir(), check_hash=True)
    state = _plain_state(_torch_load(path), path)[0]
    meta["path"] = str(path)
    return state, meta


# Keras ------------------------------------------------------------------------------------------

def _keras_file(name: str) -> tuple[str, str, str]:
    """URL, file name and MD5 of keras.applications' weights ``name`` (``resnet50``, ``resnet101v2``, ...)."""
    key = name.lower().removeprefix("keras_")
    if key not in KERAS_WEIGHTS:
        raise ConfigError(f"unknown Keras weights {name!r}; valid: {', '.join('keras:' + k for k in KERAS_WEIGHTS)}")
    filename = f"{key}_weights_tf_dim_ordering_tf_kernels.h5"
    return KERAS_WEIGHTS_URL + filename, filename, KERAS_WEIGHTS[key]


def _from_keras(name: str, *, cfg: Any, model_name: str) -> tuple[State, dict]:
    url, filename, md5 = _keras_file(name)
    path = hub.download(url, hub.keras_cache_dir(), filename, md5=md5)
    state, meta = _from_local(path, cfg=cfg, model_name=model_name, source=f"keras:{name}")
    meta.update(url=url, weights=f"keras:{name}")
    return state, meta


def weights_file(source: str) -> tuple[str, Path | None]:
    """Where the file of a downloadable ``source`` comes from and where it is cached: ``(url, path)``, the path
    ``None`` where the cache layout is not a plain file (Hugging Face repositories: pass the file instead).
    For a message that tells a user on a machine without internet access what to download and where to put it."""
    s = source.strip()
    low = s.lower()
    if low.startswith("torchvision:"):
        url, _ = _torchvision_weights(s.split(":", 1)[1].strip())
        return url, hub.torch_cache_dir() / Path(urllib.parse.urlparse(url).path).name
    if low.startswith("keras:"):
        url, filename, _ = _keras_file(s.split(":", 1)[1].strip())
        return url, hub.keras_cache_dir() / filename
    if low.startswith(("timm:", "hf:")):
        repo = s.split(":", 1)[1].strip()
        repo, revision = _split_revision(repo)
        return hub.hf_file_url(repo if low.startswith("hf:") else f"timm/{repo}", "model.safetensors", revision), None
    if low.startswith(("http://", "https://")):
        return s, _url_cache_path(s)
    raise ConfigError(f"{source!r} is not downloaded from anywhere.")


# URLs -------------------------------------------------------------------------------------------

def _url_cache_path(url: str) -> Path:
    """Where a URL's file is cached: torch.hub's folder, or for a name without a content hash (``model.safetensors``,
    not unique across URLs) a folder of its own for each URL, so that two of them never overwrite each other."""
    filename = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "download"
    if hub.hash_prefix_from_name(filename) is not None:
        return hub.torch_cache_dir() / filename
    return hub.torch_cache_dir() / f"url-{hashlib.sha256(url.encode()).hexdigest()[:16]}" / filename


def _from_url(url: str, *, cfg: Any, model_name: str) -> tuple[State, dict]:
    cached = _url_cache_path(url)
    path = hub.download(url, cached.parent, cached.name, check_hash=hub.hash_prefix_from_name(cached.name) is not None)
    state, meta = _from_local(path, cfg=cfg, model_name=model_name, source=url)
    meta["url"] = url
    return state, meta


# Hugging Face -----------------------------------------------------------------------------------

def _hf_optional_json(repo: str, filename: str, revision: str) -> dict | None:
    """A JSON file of the repository, or ``None`` when it has none (or, offline, it is not cached)."""
    try:
        path = hub.hf_hub_download(repo, filename, revision, progress=False)
    except hub.RemoteFileNotFoundError:
        return None
    except hub.DownloadError:
        if hub.hf_offline():
            return None
        raise
    return _read_json(path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"could not read {path} as JSON ({' '.join(str(e).split())}).") from None


def _from_hf_repo(repo: str, revision: str, *, cfg: Any, model_name: str) -> tuple[State, dict]:
    try:
        weights = hub.hf_hub_download(repo, "model.safetensors", revision)
    except hub.RemoteFileNotFoundError:
        try:
            weights = hub.hf_hub_download(repo, "pytorch_model.bin", revision)
        except hub.RemoteFileNotFoundError:
            hint = (" (timm names include the pretrained tag, e.g. 'timm:resnet50.a1_in1k')"
                    if repo.startswith("timm/") and "." not in repo else "")
            raise hub.RemoteFileNotFoundError(
                f"{hub.hf_endpoint()}/{repo} (revision {revision}) has neither model.safetensors nor "
                f"pytorch_model.bin: check the repository name{hint}, or {hub.LOCAL_HINT}.") from None
    except hub.DownloadError:
        cached = hub._hf_cached(repo, "pytorch_model.bin", revision) if hub.hf_offline() else None
        if cached is None:
            raise
        weights = cached
    config = _hf_optional_json(repo, "config.json", revision)
    preprocessor = None
    if config is not None and "model_type" in config:
        preprocessor = _hf_optional_json(repo, "preprocessor_config.json", revision)
    state, meta = _read_hf_files(weights, config, preprocessor, cfg=cfg, model_name=model_name)
    meta.update(repo=repo, revision=revision, path=str(weights))
    return state, meta


def _read_hf_files(weights: Path, config: dict | None, preprocessor: dict | None, *, cfg: Any,
                   model_name: str) -> tuple[State, dict]:
    """Weights plus the config of a Hugging Face repository (timm or transformers layout)."""
    if weights.name.endswith(".safetensors"):
        state, meta = _read_safetensors(weights)
    else:
        state, meta = _plain_state(_torch_load(weights), weights)
    if meta.get("format") == "resnet_tune":
        return state, meta
    with _converting(weights):
        if config is not None and "architecture" in config and "model_type" not in config:
            state = _from_timm_names(state)
            meta.update(_timm_meta(config))
        elif config is not None and "model_type" in config:
            state = _from_transformers_names(state, config, cfg=cfg, model_name=model_name, meta=meta)
            meta.update(_transformers_meta(config, preprocessor))
        else:
            state, fmt = _to_ours(state)
            meta["format"] = fmt
    return state, meta


@contextlib.contextmanager
def _converting(path: Path) -> Iterator[None]:
    """The converters (resnet_tune.models.convert) say why weights cannot be used with a ``ValueError`` about a
    state dict; while converting the weights read from ``path``, that is a :class:`CheckpointError` naming it."""
    try:
        yield
    except ValueError as e:  # the converters' CheckpointErrors too: they describe a state dict, not a file
        if str(path) in str(e):
            raise
        raise CheckpointError(f"cannot use the weights in {str(path)!r}: {str(e).rstrip('.')}.") from None


def _timm_meta(config: dict) -> dict:
    meta: dict[str, Any] = {"format": "timm", "architecture": config.get("architecture")}
    pcfg = config.get("pretrained_cfg") or {}
    for key in ("mean", "std", "input_size"):
        if pcfg.get(key) is not None:
            meta[key] = tuple(pcfg[key])
    if pcfg.get("crop_pct") is not None:
        meta["crop_pct"] = pcfg["crop_pct"]
    if pcfg.get("interpolation"):
        meta["interpolation"] = pcfg["interpolation"]
    labels = config.get("label_names") or pcfg.get("label_names")
    if labels:
        meta["categories"] = list(labels)
    n = config.get("num_classes", pcfg.get("num_classes"))
    if n is not None:
        meta["num_classes"] = int(n)
    return meta


def _transformers_meta(config: dict, preprocessor: dict | None) -> dict:
    meta: dict[str, Any] = {"format": "transformers", "model_type": config.get("model_type")}
    id2label = config.get("id2label")
    if id2label:
        labels = {int(k): v for k, v in id2label.items()}
        if sorted(labels) == list(range(len(labels))):
            meta["categories"] = [labels[i] for i in range(len(labels))]
    if preprocessor:
        if preprocessor.get("image_mean") is not None:
            meta["mean"] = tuple(preprocessor["image_mean"])
        if preprocessor.get("image_std") is not None:
            meta["std"] = tuple(preprocessor["image_std"])
        if preprocessor.get("crop_pct") is not None:
            meta["crop_pct"] = preprocessor["crop_pct"]
    return meta


# converters (written alongside this module; imported lazily) ------------------------------------

def _missing_converter(e: ImportError) -> bool:
    """Whether ``e`` says the converter package (or the function asked for) does not exist."""
    return bool(e.name) and e.name.startswith(f"{__package__}.convert")


def _looks_like_ours(state: Mapping[str, Any]) -> bool:
    return ("conv1.weight" in state or "conv1.0.weight" in state) and any(k.startswith("layer1.") for k in state)


def _to_ours(state: State, config: dict | None = None) -> tuple[State, str]:
    """Detect the naming of ``state`` and convert it to ours; returns ``(state, format)``."""
    try:
        from .convert import detect_format, to_resnet_tune
    except ImportError as e:
        if not _missing_converter(e):
            raise
        if _looks_like_ours(state):
            return state, "resnet_tune"
        raise CheckpointError("these weights are not in torchvision/timm names and the weight converters "
                              "(resnet_tune.models.convert) are not available to convert them") from None
    fmt = detect_format(state)
    if fmt == "transformers" and config is not None:
        from .convert.transformers import from_transformers

        return from_transformers(state, config), fmt
    return to_resnet_tune(state, fmt), fmt


def _from_timm_names(state: State) -> State:
    try:
        from .convert.timm import from_timm
    except ImportError as e:
        if not _missing_converter(e):
            raise
        return state  # timm's ResNet names are ours (see resnet.py)
    return from_timm(state)


def _from_transformers_names(state: State, config: dict, *, cfg: Any, model_name: str, meta: dict) -> State:
    try:
        from .convert.transformers import from_transformers, hf_config_to_overrides
    except ImportError as e:
        if not _missing_converter(e):
            raise
        raise CheckpointError("converting Hugging Face transformers weights needs resnet_tune.models.convert, "
                              "which is not available") from None
    preset, overrides = hf_config_to_overrides(config)
    meta["arch"] = preset
    meta["arch_overrides"] = dict(overrides or {})
    _check_architecture(preset, overrides or {}, cfg, model_name, meta)
    return from_transformers(state, config)


def _check_architecture(preset: str | None, overrides: dict, cfg: Any, model_name: str, meta: dict) -> None:
    """Refuse weights whose architecture differs from the model's in ways shapes do not show."""
    if cfg is None:
        return
    from .registry import UnknownModelError, get_config
    from .resnet import ResNetConfig

    fields = set(ResNetConfig.__dataclass_fields__)
    overrides = {k: v for k, v in overrides.items() if k in fields and k not in _FREE_FIELDS}
    try:
        base = get_config(preset) if preset and preset != "custom" else ResNetConfig()
        expected = base.replace(**overrides)
    except (UnknownModelError, TypeError, ValueError) as e:
        log.debug("cannot check the architecture of %s: %s", meta.get("source"), e)
        return
    diffs = [f"{f}={getattr(cfg, f)!r} vs {getattr(expected, f)!r}"
             for f in type(cfg).__dataclass_fields__
             if f not in _FREE_FIELDS and getattr(cfg, f) != getattr(expected, f)]
    if diffs:
        raise CheckpointError(
            f"these Hugging Face weights are for another architecture than {model_name or 'this model'}'s "
            f"(model vs checkpoint: {', '.join(diffs)}); create the model as create_model({(preset or 'custom')!r}"
            f"{''.join(f', {k}={v!r}' for k, v in overrides.items())}, pretrained=...)")


# local files ------------------------------------------------------------------------------------

def _from_local(path: Path, *, cfg: Any, model_name: str, source: str) -> tuple[State, dict]:
    if path.is_dir():
        return _from_local_dir(path, cfg=cfg, model_name=model_name)
    if not path.is_file():
        raise PathNotFoundError(f"the weights file {str(path)!r} does not exist; check the path")
    name = path.name.lower()
    kind = ("safetensors" if name.endswith(".safetensors") else
            "keras" if name.endswith(KERAS_EXTS) else
            "torch" if name.endswith(TORCH_EXTS) else _sniff(path))
    if kind == "keras":
        return _read_keras(path), {"format": "keras", "path": str(path)}
    if kind == "safetensors":
        state, meta = _read_safetensors(path)
    elif kind == "torch":
        state, meta = _plain_state(_torch_load(path), path)
    else:
        raise CheckpointError(f"cannot tell what kind of weights file {str(path)!r} is; name it .safetensors, "
                              f".pth, .h5, .weights.h5 or .keras (valid sources: {VALID_SOURCES}).")
    meta["path"] = str(path)
    if meta.get("format") == "resnet_tune":
        return state, meta
    # An HF-style folder's config.json sits next to the weights; the transformers converter needs it.
    config_path = path.parent / "config.json"
    config = _read_json(config_path) if config_path.is_file() else None
    with _converting(path):
        if config is not None and "model_type" in config and not _looks_like_ours(state):
            state = _from_transformers_names(state, config, cfg=cfg, model_name=model_name, meta=meta)
            meta.update(_transformers_meta(config, None))
            return state, meta
        state, fmt = _to_ours(state)
    meta["format"] = fmt
    return state, meta


def _from_local_dir(path: Path, *, cfg: Any, model_name: str) -> tuple[State, dict]:
    for fname in ("model.safetensors", "pytorch_model.bin"):
        if (path / fname).is_file():
            weights = path / fname
            break
    else:
        raise PathNotFoundError(f"the folder {str(path)!r} holds neither model.safetensors nor pytorch_model.bin; "
                                "pass the weights file itself")
    config = _read_json(path / "config.json") if (path / "config.json").is_file() else None
    pre = path / "preprocessor_config.json"
    preprocessor = _read_json(pre) if pre.is_file() else None
    state, meta = _read_hf_files(weights, config, preprocessor, cfg=cfg, model_name=model_name)
    meta["path"] = str(weights)
    return state, meta


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "keras"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch zip archive or legacy pickle
        return "torch"
    if len(head) > 8 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        return "safetensors"
    return "unknown"


def _read_safetensors(path: Path) -> tuple[State, dict]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"could not read {str(path)!r} as a safetensors file ({' '.join(str(e).split())}); "
                              "the file may be truncated or not a safetensors file.") from None
    meta: dict[str, Any] = {}
    record = metadata.get("resnet_tune")
    if record:
        try:
            rec = json.loads(record)
        except (ValueError, RecursionError):
            log.warning("ignoring the unreadable resnet_tune record in %s", path)
        else:
            if isinstance(rec, dict):
                meta.update(_normalise_record(rec, str(path)))
                meta["format"] = "resnet_tune"
    return dict(state), meta


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# What the informative fields of a record must hold to be used (see _normalise_record).
_META_CHECKS: dict[str, Any] = {
    "categories": lambda v: isinstance(v, (list, tuple)) and all(isinstance(c, str) for c in v),
    "mean": lambda v: isinstance(v, (list, tuple)) and bool(v) and all(_finite(x) for x in v),
    "std": lambda v: isinstance(v, (list, tuple)) and bool(v) and all(_finite(x) and x > 0 for x in v),
    "input_size": lambda v: (_whole(v) and v > 0) or (isinstance(v, (list, tuple)) and bool(v)
                                                      and all(_whole(x) and x > 0 for x in v)),
    "in_chans": lambda v: _whole(v) and v > 0,
    "num_classes": lambda v: _whole(v) and v >= 0,
    "interpolation": lambda v: isinstance(v, str),
    "resize": lambda v: _whole(v) and v > 0,
    "resize_size": lambda v: _whole(v) and v > 0,
}


def _usable(key: str, value: Any, where: str) -> bool:
    """Whether a record's informative field holds what it should; a damaged one is logged and left out (the
    weights themselves are still read)."""
    ok = value is not None and _META_CHECKS[key](value)
    if not ok and value is not None:
        log.warning("ignoring %s=%.60r in the record of %s: not a valid value", key, value, where)
    return ok


def _normalise_record(rec: dict, where: str = "the checkpoint") -> dict:
    """Our checkpoints' record (engine/checkpoint.py) with the common meta keys filled in.

    Informative fields of the wrong type (a damaged or hand-edited record) are left out with a warning.
    """
    meta = {k: v for k, v in rec.items() if k not in _META_CHECKS or _usable(k, v, where)}
    if "categories" not in meta:
        for key in ("classes", "class_names", "labels"):
            if key in meta and _usable("categories", meta[key], where):
                meta["categories"] = list(meta[key])
                break
    pre = meta.get("preprocessing")
    if isinstance(pre, Mapping):  # {"input_size": 224, "mean": [...], "std": [...], "resize": 256, ...}
        for key in ("mean", "std", "interpolation"):
            if _usable(key, pre.get(key), where):
                meta.setdefault(key, pre[key])
        size = pre.get("input_size")
        if _usable("input_size", size, where):
            meta.setdefault("input_size", (meta.get("in_chans", 3), size, size) if _whole(size) else tuple(size))
        if _usable("resize", pre.get("resize"), where):
            meta.setdefault("resize_size", pre["resize"])
    for key in ("mean", "std", "input_size"):
        if isinstance(meta.get(key), list):
            meta[key] = tuple(meta[key])
    return meta


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never pickled code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if m is None:
            detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(e))
            raise CheckpointError(
                f"could not read {str(path)!r} as a PyTorch checkpoint"
                f"{f' ({detail.group(1).strip()})' if detail else ''}: it is damaged, in another format, or uses "
                "pickle features that torch.load(weights_only=True) refuses; save plain weights with "
                "torch.save(model.state_dict(), path) or as .safetensors.") from None
        what = f" (it refers to {m.group(1)})"
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it is not a plain-tensor checkpoint{what}, and reading it would run "
            "code stored in the file, which resnet-tune never does; if you trust the file, re-save only its "
            "weights, e.g. torch.save(model.state_dict(), 'weights.pth') or as .safetensors.") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"could not read {str(path)!r} as a PyTorch checkpoint ({reason}); "
                              "the file may be truncated or in another format.") from None


def _plain_state(obj: Any, path: Path) -> tuple[State, dict]:
    """The state dict inside a loaded checkpoint (unwrapping ``state_dict``/``model``) and its record."""
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and not _all_tensors(obj):
        for key in RECORD_KEYS:
            rec = obj.get(key)
            if isinstance(rec, str):
                try:
                    rec = json.loads(rec)
                except ValueError:
                    rec = None
            if isinstance(rec, Mapping):
                meta.update(_normalise_record(dict(rec), str(path)))
                if key == "resnet_tune":
                    meta["format"] = "resnet_tune"
                break
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and _all_tensors(inner):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not _all_tensors(obj):
        keys = ", ".join(map(repr, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{str(path)!r} does not hold a state dict of tensors (found {keys}); save weights "
                              "with torch.save(model.state_dict(), path).")
    state = {str(k): v for k, v in obj.items()}
    for prefix in ("module.", "_orig_mod."):  # DistributedDataParallel / torch.compile wrappers
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state, meta


def _all_tensors(d: Mapping) -> bool:
    return all(isinstance(v, Tensor) for v in d.values())


def _read_keras(path: Path) -> State:
    no_h5py = f"reading Keras weights ({path.name}) needs h5py: pip install 'resnet-tune[keras]'"
    try:
        from .convert.keras import from_keras_h5
    except ImportError as e:
        if e.name == "h5py":
            raise CheckpointError(no_h5py) from None
        if not _missing_converter(e):
            raise
        raise CheckpointError("reading Keras weights needs resnet_tune.models.convert.keras, "
                              "which is not available") from None
    try:
        return dict(from_keras_h5(path))
    except ModuleNotFoundError as e:
        if e.name == "h5py":
            raise CheckpointError(no_h5py) from None
        raise
