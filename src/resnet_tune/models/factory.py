"""Building models: registered presets by name (``create_model``, with pretrained weights), user-defined
configurations (``build_model``), and the model a checkpoint's record describes (``build_from_record``)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

from ..errors import CheckpointError, ConfigError
from .registry import get_preset
from .resnet import ResNet, ResNetConfig

__all__ = ["build_from_record", "build_model", "builder", "create_model", "model_kwargs"]

#: ResNetConfig fields ``model_kwargs`` leaves to others: the data sets the classifier and the input, and stochastic
#: depth has its own option
_NOT_KWARGS = {"num_classes": "the number of classes comes from the data",
               "input_size": "the input size is --img-size",
               "drop_path_rate": "stochastic depth is --drop-path-rate"}


def model_kwargs(value: Any, model: str | None = None) -> dict[str, Any]:
    """Architecture options for :func:`create_model` from what a user wrote (timm's ``--model-kwargs``): a mapping
    (YAML), or ``KEY=VALUE`` texts (the command line; each value read as YAML, so ``true``, ``0.125`` and
    ``[1, 0, 1]`` are a bool, a number and a list). The names are :class:`ResNetConfig` fields; with ``model`` the
    result is checked against that preset's architecture too. Raises :class:`~resnet_tune.errors.ConfigError` in
    one sentence for an unknown name or a value the architecture refuses."""
    import yaml

    if value is None:
        return {}
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = []
        for word in value:
            key, eq, text = str(word).partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"model_kwargs takes KEY=VALUE pairs (e.g. global_pool=max), got {word!r}.")
            try:
                parsed = yaml.safe_load(text) if text.strip() else ""
            except yaml.YAMLError:
                parsed = text
            items.append((key.strip(), parsed))
    else:
        raise ConfigError(f"model_kwargs must be a mapping of architecture options or KEY=VALUE pairs, got a "
                          f"{type(value).__name__}.")
    fields = {f.name for f in ResNetConfig.__dataclass_fields__.values()}
    out: dict[str, Any] = {}
    for key, val in items:
        key = str(key).replace("-", "_")
        if key in _NOT_KWARGS:
            raise ConfigError(f"model_kwargs cannot set {key}: {_NOT_KWARGS[key]}.")
        if key not in fields:
            import difflib

            close = difflib.get_close_matches(key, sorted(fields - set(_NOT_KWARGS)), n=1)
            raise ConfigError(f"model_kwargs: {key!r} is not an architecture option"
                              + (f" (did you mean {close[0]!r}?)" if close else "")
                              + "; the options are the fields of ResNetConfig.")
        out[key] = list(val) if isinstance(val, tuple) else val
    if model is not None and out:
        try:
            base = get_preset(model).config
        except Exception:  # noqa: BLE001 - an unknown model name is reported by the option that names it
            return out
        try:
            base.replace(**out)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model_kwargs do not fit {model}: {str(err).removeprefix('invalid ResNet config: ')}."
                              ) from None
    return out


def build_model(config: ResNetConfig | dict[str, Any], *, num_classes: int | None = None, in_chans: int = 3,
                name: str = "custom") -> ResNet:
    """Build a user-defined ResNet from a config (a ``ResNetConfig`` or a dict, e.g. from YAML).

    Example::

        build_model({"block": "basic", "layers": [2, 2, 2], "widths": [32, 64, 128],
                     "strides": [1, 2, 2], "stem": "cifar", "num_classes": 10})
    """
    if isinstance(config, dict):
        config = ResNetConfig().replace(**config)
    return ResNet(config, num_classes=num_classes, in_chans=in_chans, name=name)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_chans: int = 3,
    pretrained: str | bool | None = None,
    **overrides: Any,
) -> ResNet:
    """Create a registered ResNet by name.

    Args:
        name: a registered name (``list_models()``), or ``"custom"`` with the architecture in
            ``overrides`` (see :class:`ResNetConfig`).
        num_classes: classifier size; ``None`` keeps the preset's default (1000 for ImageNet
            presets, 10 for CIFAR ones) or, with ``pretrained``, the checkpoint's. A value that
            differs from the checkpoint's asks for a new, freshly initialised classifier.
        in_chans: input channels; with ``pretrained`` the first convolution's weights are
            adapted (summed for 1 channel, repeated and rescaled otherwise), as timm does.
        pretrained: where to take weights from: ``torchvision:<WEIGHTS>`` (e.g.
            ``torchvision:ResNet50_Weights.IMAGENET1K_V2``), ``timm:<name>``, ``hf:<repo>``, a URL,
            a local file (``.safetensors``, ``.pth``, ``.h5``, ``.weights.h5``, ``.keras``), or
            ``"default"`` (or ``True``) for the preset's default weights.
        **overrides: architecture options (:class:`ResNetConfig` fields, e.g. ``drop_path_rate``,
            ``zero_init_residual``); an unknown name raises ``TypeError``.
    """
    if name == "custom":
        cfg = ResNetConfig().replace(**overrides)
        preset = None
    else:
        preset = get_preset(name)
        cfg = preset.config.replace(**overrides) if overrides else preset.config
    if pretrained is True:  # timm's spelling
        pretrained = "default"
    if pretrained is None or pretrained is False:
        return ResNet(cfg, num_classes=num_classes, in_chans=in_chans, name=name)

    from .pretrained import load_pretrained, resolve_source

    source = pretrained
    if pretrained == "default":
        if preset is None or not preset.default_weights:
            raise ConfigError(f"model {name!r} has no default pretrained weights; name a source explicitly.")
        source = preset.default_weights
    state, meta = resolve_source(source, cfg=cfg, model_name=name)
    ckpt_classes = meta.get("num_classes")
    if ckpt_classes is None and "fc.weight" in state:
        ckpt_classes = int(state["fc.weight"].shape[0])
    if ckpt_classes is not None and num_classes is None:
        num_classes = int(ckpt_classes)
    model = ResNet(cfg, num_classes=num_classes, in_chans=in_chans, name=name)
    reset = ckpt_classes is not None and num_classes != ckpt_classes
    load_pretrained(model, state, reset_head=reset, source=source)
    if reset:  # the checkpoint's class names describe the old head, not this one
        meta = {k: v for k, v in meta.items() if k not in ("categories", "num_classes")}
    model.pretrained_meta = meta  # type: ignore[assignment]
    return model


def builder(name: str) -> Callable[..., nn.Module]:
    """A torchvision-style builder function for a registered name."""

    def build(**kwargs: Any) -> nn.Module:
        return create_model(name, **kwargs)

    build.__name__ = name
    build.__doc__ = get_preset(name).description
    return build


def build_from_record(record: Mapping[str, Any]) -> nn.Module:
    """The untrained model a checkpoint's record describes: a classification :class:`ResNet`, or a
    :class:`~.segmentation.Segmenter` for ``task == "segmentation"``. Weights are loaded by the caller."""
    try:
        if record.get("task") == "segmentation":
            from .segmentation import build_segmenter

            return build_segmenter(record)
        cfg = ResNetConfig().replace(**record["model_config"])
        return ResNet(cfg, in_chans=int(record.get("in_chans", 3)), name=record.get("model", "custom"))
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"the record describes an architecture this resnet-tune cannot build ({err}).") from None
