"""Numerical parity of the weight converters against the reference libraries.

Every reference model gets random weights *and* random BatchNorm statistics (default statistics
hide mapping bugs: a swapped BN with mean 0, var 1, gamma 1, beta 0 is invisible). Statistics are
calibrated with one training-mode pass (so activations stay O(1) through 150 layers) and then
perturbed, the weights are converted into ``resnet_tune.create_model(name)``, and both models run
the same input in eval mode.
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"  # keras reads this once, at import; there is no TensorFlow here

import json
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

from resnet_tune import create_model
from resnet_tune.models import count_params, get_preset
from resnet_tune.models.convert import (detect_format, from_keras_h5, from_keras_model, from_timm, from_torchvision,
                                        from_transformers, hf_config_to_overrides, keras_arch_from_weights,
                                        to_resnet_tune, to_torchvision)
from resnet_tune.models.convert.keras import keras_layer_order

# keras (torch backend) converts variables with np.array(tensor), which numpy 2 flags; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

# Non-square and small (Keras needs >= 32): odd feature-map sizes exercise the padding of strided
# layers, and a small input keeps the 50-layer cases fast on two cores.
H, W = 48, 40


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(1))


def assert_parity(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    assert torch.isfinite(ref).all()
    scale = ref.abs().max().item()
    assert 1e-2 < scale < 1e4, f"degenerate reference logits (max |logit| = {scale}); the test would prove little"
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * scale)
    assert torch.equal(ours.topk(5).indices, ref.topk(5).indices)


def ours_from(name: str, state: dict[str, torch.Tensor], **kwargs: Any) -> nn.Module:
    model = create_model(name, **kwargs)
    model.load_state_dict(state, strict=True)
    return model.eval()


# --- randomising the reference models -------------------------------------------------------------

@torch.no_grad()
def randomize_torch_(model: nn.Module, calib: torch.Tensor, forward: Callable[[nn.Module, torch.Tensor], Any],
                     seed: int = 0) -> nn.Module:
    """Random convs/linears/BN affine, BN statistics calibrated on ``calib`` and then perturbed."""
    g = torch.Generator().manual_seed(seed)
    bns = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        elif isinstance(m, nn.Linear):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
            m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            bns.append(m)
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch gives that batch's statistics
    model.train()
    forward(model, calib)
    model.eval()
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
        m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.mul_(torch.exp(0.2 * torch.randn(m.running_var.shape, generator=g)))  # stays positive
        m.num_batches_tracked.fill_(123)
    return model


def _keras():
    return pytest.importorskip("keras")


def randomize_keras_(model: Any, calib: torch.Tensor, seed: int = 0) -> Any:
    """The same randomisation for a Keras model (statistics from one ``training=True`` pass, momentum 0)."""
    rng = np.random.default_rng(seed)
    bns = []
    for layer in model.layers:
        kind = type(layer).__name__
        weights = layer.get_weights()
        if kind == "Conv2D":
            k, *b = weights
            fan_in = k.shape[0] * k.shape[1] * k.shape[2]
            layer.set_weights([(rng.standard_normal(k.shape) * (2.0 / fan_in) ** 0.5).astype("float32")]
                              + [(0.1 * rng.standard_normal(v.shape)).astype("float32") for v in b])
        elif kind == "Dense":
            k, b = weights
            layer.set_weights([(rng.standard_normal(k.shape) / k.shape[0] ** 0.5).astype("float32"),
                               (0.1 * rng.standard_normal(b.shape)).astype("float32")])
        elif kind == "BatchNormalization":
            gamma, beta, mean, var = weights
            layer.set_weights([(0.5 + rng.random(gamma.shape)).astype("float32"),
                               (0.2 * rng.standard_normal(beta.shape)).astype("float32"), mean, var])
            layer.momentum = 0.0  # moving statistic = this batch's statistic
            bns.append(layer)
        elif weights:
            raise AssertionError(f"unexpected weighted layer {layer.name} ({kind})")
    model(calib.permute(0, 2, 3, 1).numpy(), training=True)
    for layer in bns:
        gamma, beta, mean, var = layer.get_weights()
        layer.set_weights([gamma, beta,
                           (mean + 0.1 * np.sqrt(var) * rng.standard_normal(mean.shape)).astype("float32"),
                           (var * np.exp(0.2 * rng.standard_normal(var.shape))).astype("float32")])
        layer.momentum = 0.99
    return model


def keras_forward(model: Any, x: torch.Tensor) -> torch.Tensor:
    keras = _keras()
    out = model(x.permute(0, 2, 3, 1).numpy(), training=False)
    return torch.from_numpy(np.asarray(keras.ops.convert_to_numpy(out)))


_KERAS_CACHE: dict[str, Any] = {}


def keras_resnet(ctor: str, calib: torch.Tensor, randomize: bool = True, **kwargs: Any) -> Any:
    keras = _keras()
    key = ctor + repr(sorted(kwargs.items())) + str(randomize)
    if key not in _KERAS_CACHE:
        model = getattr(keras.applications, ctor)(weights=None, classifier_activation=None,
                                                  input_shape=(H, W, 3), **kwargs)
        if randomize:
            randomize_keras_(model, calib)
        if ctor in ("ResNet50", "ResNet50V2"):  # reused by the file round trips; the big ones are not kept
            _KERAS_CACHE[key] = model
        return model
    return _KERAS_CACHE[key]


# --- torchvision ----------------------------------------------------------------------------------

TV_FAST = ["resnet18", "resnet34", "resnet50", "wide_resnet50_2", "resnext50_32x4d"]
TV_SLOW = ["resnet101", "resnet152", "wide_resnet101_2", "resnext101_32x8d"]


@pytest.mark.parametrize("name", TV_FAST + [pytest.param(n, marks=pytest.mark.slow) for n in TV_SLOW])
def test_torchvision_parity(name: str, x: torch.Tensor, calib: torch.Tensor) -> None:
    torchvision = pytest.importorskip("torchvision")
    ref = randomize_torch_(getattr(torchvision.models, name)(weights=None), calib, lambda m, t: m(t))
    state = ref.state_dict()
    assert detect_format(state) == "resnet_tune"
    ours = ours_from(name, from_torchvision(state))
    with torch.no_grad():
        assert_parity(ours(x), ref(x))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_to_torchvision_round_trip(name: str, x: torch.Tensor, calib: torch.Tensor) -> None:
    torchvision = pytest.importorskip("torchvision")
    ours = create_model(name).eval()
    if name == "resnet18":  # the forward check; the others compare tensors only
        randomize_torch_(ours, calib, lambda m, t: m(t), seed=3)
    tv = getattr(torchvision.models, name)(weights=None)
    tv.load_state_dict(to_torchvision(ours.state_dict()), strict=True)
    back = from_torchvision(tv.state_dict())
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in back.items())
    ours_from(name, back)
    if name == "resnet18":
        with torch.no_grad():
            assert_parity(tv.eval()(x), ours(x))


@pytest.mark.parametrize("name, expected", [
    ("keras_resnet50", ["conv1.bias", "convolution biases"]),
    ("keras_resnet50v2", ["layer1.0.downsample.weight", "pre-activation"]),
    ("resnet50d", ["conv1.0.weight", "deep stem"]),
    ("seresnet50", ["layer1.0.se.fc1.weight", "squeeze-excitation"]),
])
def test_to_torchvision_refuses_other_families(name: str, expected: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        to_torchvision(create_model(name).state_dict())
    for text in expected:
        assert text in str(info.value)


def test_from_torchvision_names_bad_keys() -> None:
    state = create_model("resnet18").state_dict()
    state["layer1.0.conv9.weight"] = torch.zeros(1)
    state["head.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"layer1\.0\.conv9\.weight") as info:
        from_torchvision(state)
    assert "head.weight" in str(info.value)


# --- timm -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18d", "resnet26d", "resnet34d", "resnet50d", "seresnet50", "resnetblur18",
                                  "resnetblur50", "resnetblur50d"])
def test_timm_parity(name: str, x: torch.Tensor, calib: torch.Tensor) -> None:
    timm = pytest.importorskip("timm")
    ref = randomize_torch_(timm.create_model(name, pretrained=False), calib, lambda m, t: m(t))
    state = ref.state_dict()
    assert detect_format(state) == "resnet_tune"
    ours = ours_from(name, from_timm(state))
    with torch.no_grad():
        assert_parity(ours(x), ref(x))
    # DataParallel checkpoints: the prefix goes, the weights stay.
    wrapped = {f"module.{k}": v for k, v in state.items()}
    assert detect_format(wrapped) == "resnet_tune"
    assert from_timm(wrapped).keys() == state.keys()
    assert to_resnet_tune(wrapped).keys() == state.keys()


def test_from_timm_names_bad_keys() -> None:
    state = create_model("resnet50d").state_dict()
    state["layer2.1.attn.conv.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"layer2\.1\.attn\.conv\.weight"):
        from_timm(state)
    with pytest.raises(ValueError, match="ResNetV2"):
        from_timm({"stem.conv.weight": torch.zeros(1), "stages.0.blocks.0.conv1.weight": torch.zeros(1)})


# --- Hugging Face transformers --------------------------------------------------------------------

HF_CONFIGS = {
    "resnet-18": (dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], num_labels=1000),
                  "resnet18", {}),
    "resnet-50": (dict(layer_type="bottleneck", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                       num_labels=1000), "resnet50", {}),
    # The original v1 (stride in the first 1x1).
    "resnet-50-v1": (dict(layer_type="bottleneck", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                          num_labels=1000, downsample_in_bottleneck=True), "resnet50", {"stride_in_1x1": True}),
    # Every other switch at once, small.
    "tiny": (dict(layer_type="bottleneck", depths=[1, 2, 1], hidden_sizes=[64, 128, 256], embedding_size=32,
                  downsample_in_first_stage=True, num_labels=10),
             "resnet50", {"layers": (1, 2, 1), "widths": (16, 32, 64), "strides": (2, 2, 2), "stem_width": 32,
                          "num_classes": 10}),
}


@pytest.mark.parametrize("key", list(HF_CONFIGS))
def test_transformers_parity(key: str, x: torch.Tensor, calib: torch.Tensor) -> None:
    transformers = pytest.importorskip("transformers")
    kwargs, want_name, want_overrides = HF_CONFIGS[key]
    config = transformers.ResNetConfig(**kwargs)
    ref = transformers.ResNetForImageClassification(config)
    randomize_torch_(ref, calib, lambda m, t: m(pixel_values=t))
    config_json = json.loads(config.to_json_string())  # what config.json holds (string label ids)
    name, overrides = hf_config_to_overrides(config_json)
    assert (name, overrides) == (want_name, want_overrides)
    state = ref.state_dict()
    assert detect_format(state) == "transformers"
    ours = ours_from(name, from_transformers(state, config_json), **overrides)
    with torch.no_grad():
        assert_parity(ours(x), ref(pixel_values=x).logits)
    # The headless ResNetModel converts too (no classifier, no 'resnet.' prefix).
    body = to_resnet_tune(ref.resnet.state_dict())
    assert not any(k.startswith("fc.") for k in body)
    assert body.keys() == {k for k in ours.state_dict() if not k.startswith("fc.")}


@pytest.mark.parametrize("layer_type, depths, name", [
    ("basic", [3, 4, 6, 3], "resnet34"),
    ("bottleneck", [3, 4, 23, 3], "resnet101"),
    ("bottleneck", [3, 8, 36, 3], "resnet152"),
])
def test_hf_config_to_overrides_presets(layer_type: str, depths: list[int], name: str) -> None:
    hidden = [64, 128, 256, 512] if layer_type == "basic" else [256, 512, 1024, 2048]
    config = {"model_type": "resnet", "layer_type": layer_type, "depths": depths, "hidden_sizes": hidden,
              "embedding_size": 64, "hidden_act": "relu", "downsample_in_first_stage": False,
              "downsample_in_bottleneck": False, "num_channels": 3,
              "id2label": {str(i): f"class {i}" for i in range(1000)}}
    assert hf_config_to_overrides(config) == (name, {})
    assert hf_config_to_overrides({**config, "num_channels": 1, "id2label": {"0": "a", "1": "b"}}) == (
        name, {"num_classes": 2, "in_chans": 1})
    with pytest.raises(ValueError, match="gelu"):
        hf_config_to_overrides({**config, "hidden_act": "gelu"})
    # Hugging Face's hidden_act is not our act_layer: its blocks keep ReLU inside (checked against transformers'
    # ResNetBasicLayer / ResNetBottleNeckLayer), so even Mish, which act_layer has, is refused
    with pytest.raises(ValueError, match="'mish' is not supported: .* inside a block keep ReLU"):
        hf_config_to_overrides({**config, "hidden_act": "mish"})


def test_from_transformers_checks() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8)
    state = transformers.ResNetForImageClassification(config).state_dict()
    with pytest.raises(ValueError, match=r"resnet\.encoder\.stages\.0\.extra\.weight"):
        from_transformers({**state, "resnet.encoder.stages.0.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="depths"):
        from_transformers(state, {**config.to_dict(), "depths": [1, 2]})
    with pytest.raises(ValueError, match="layer_type"):
        from_transformers(state, {**config.to_dict(), "layer_type": "bottleneck"})


# --- format detection -----------------------------------------------------------------------------

def test_detect_format_errors() -> None:
    t = torch.zeros(1)
    with pytest.raises(ValueError, match="Keras"):
        detect_format({"conv2_block1_1_conv/kernel:0": t})
    with pytest.raises(ValueError, match="cannot tell the format"):
        detect_format({"encoder.layer.0.attention.weight": t})
    with pytest.raises(ValueError, match="'state_dict'"):
        detect_format({"state_dict": {"conv1.weight": t}, "epoch": 3})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"layer1\.0\.mystery\.weight"):
        detect_format({"conv1.weight": t, "layer1.0.mystery.weight": t})
    with pytest.raises(ValueError, match="unknown weights format"):
        to_resnet_tune({"conv1.weight": t}, fmt="caffe")


# --- Keras ----------------------------------------------------------------------------------------

KERAS_FAST = [("keras_resnet50", "ResNet50"), ("keras_resnet50v2", "ResNet50V2")]
KERAS_SLOW = [("keras_resnet101", "ResNet101"), ("keras_resnet152", "ResNet152"),
              ("keras_resnet101v2", "ResNet101V2"), ("keras_resnet152v2", "ResNet152V2")]
KERAS_ALL = KERAS_FAST + KERAS_SLOW


@pytest.mark.parametrize("name, ctor", KERAS_FAST + [pytest.param(*c, marks=pytest.mark.slow) for c in KERAS_SLOW])
def test_keras_parity(name: str, ctor: str, x: torch.Tensor, calib: torch.Tensor) -> None:
    km = keras_resnet(ctor, calib)
    state = from_keras_model(km)
    assert keras_arch_from_weights(state) == name
    assert keras_arch_from_weights(km) == name
    ours = ours_from(name, state)
    with torch.no_grad():
        assert_parity(ours(x), keras_forward(km, x))


@pytest.mark.parametrize("name, ctor", KERAS_ALL)
def test_keras_reference_params(name: str, ctor: str) -> None:
    """Our parameter count equals Keras's trainable count (its BN moving statistics are our buffers)."""
    km = keras_resnet(ctor, torch.empty(0), randomize=False)
    trainable = sum(int(np.prod(w.shape)) for w in km.trainable_weights)
    assert count_params(create_model(name)) == trainable == get_preset(name).reference_params


@pytest.mark.parametrize("depth, v2, ctor", [(50, False, "ResNet50"), (50, True, "ResNet50V2"),
                                             pytest.param(101, False, "ResNet101", marks=pytest.mark.slow),
                                             pytest.param(152, True, "ResNet152V2", marks=pytest.mark.slow)])
def test_keras_layer_order(depth: int, v2: bool, ctor: str, calib: torch.Tensor) -> None:
    """The fixed order used to name files that record no layer names matches keras's own."""
    km = keras_resnet(ctor, calib, randomize=depth == 50)
    assert keras_layer_order(depth, v2) == [layer.name for layer in km.layers if layer.weights]


def _strip_names(path: Path) -> None:
    """Remove the layer names Keras >= 3.x records in ``vars`` groups (what older Keras 3 files look like)."""
    import h5py

    with h5py.File(path, "a") as f:
        groups = []
        f.visititems(lambda n, o: groups.append(o) if n.endswith("/vars") and "name" in o.attrs else None)
        assert groups
        for g in groups:
            del g.attrs["name"]


def _write_legacy_h5(model: Any, path: Path, chunked: bool = False, under_model_weights: bool = False) -> None:
    """A Keras 2 ``save_weights('x.h5')`` file (layer groups, ``layer_names`` / ``weight_names`` attributes)."""
    import h5py

    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if under_model_weights else f
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.15.0"
        names = np.array([layer.name.encode() for layer in model.layers])
        if chunked:  # Keras 2 splits attributes over 64 KiB into name0, name1, ...
            half = len(names) // 2
            root.attrs["layer_names0"], root.attrs["layer_names1"] = names[:half], names[half:]
        else:
            root.attrs["layer_names"] = names
        for layer in model.layers:
            g = root.create_group(layer.name)
            weight_names = [f"{layer.name}/{w.name}:0" for w in layer.weights]
            g.attrs["weight_names"] = np.array([n.encode() for n in weight_names]) if weight_names else np.array([])
            for n, value in zip(weight_names, layer.get_weights()):
                g.create_dataset(n, data=value)


@pytest.mark.parametrize("name, ctor", KERAS_FAST)
@pytest.mark.parametrize("layout", ["weights.h5", "keras", "legacy.h5", "legacy-chunked.h5", "keras-legacy-save.h5",
                                    "weights.h5-no-names", "keras-no-names"])
def test_keras_file_round_trip(name: str, ctor: str, layout: str, tmp_path: Path, x: torch.Tensor,
                               calib: torch.Tensor) -> None:
    km = keras_resnet(ctor, calib)
    if layout.startswith("weights.h5"):
        path = tmp_path / "model.weights.h5"
        km.save_weights(path)
        if layout.endswith("no-names"):
            _strip_names(path)
    elif layout.startswith("keras") and not layout.endswith(".h5"):
        path = tmp_path / "model.keras"
        km.save(path)
        if layout.endswith("no-names"):  # rewrite the archive with a nameless model.weights.h5
            with zipfile.ZipFile(path) as z:
                members = {n: z.read(n) for n in z.namelist()}
            inner = tmp_path / "inner.weights.h5"
            inner.write_bytes(members["model.weights.h5"])
            _strip_names(inner)
            members["model.weights.h5"] = inner.read_bytes()
            with zipfile.ZipFile(path, "w") as z:
                for n, data in members.items():
                    z.writestr(n, data)
    elif layout == "keras-legacy-save.h5":  # Keras 3's own legacy writer: model.save('x.h5')
        path = tmp_path / "model.h5"
        km.save(path)
    else:
        path = tmp_path / "model.h5"
        _write_legacy_h5(km, path, chunked="chunked" in layout, under_model_weights="chunked" in layout)
    assert keras_arch_from_weights(path) == name
    state = from_keras_h5(path)
    ref_state = from_keras_model(km)
    assert state.keys() == ref_state.keys()
    for k in state:
        assert torch.equal(state[k], ref_state[k]), k
    ours = ours_from(name, state)
    with torch.no_grad():
        assert_parity(ours(x), keras_forward(km, x))


def test_keras_custom_head(calib: torch.Tensor, tmp_path: Path) -> None:
    keras = _keras()
    base = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(H, W, 3))
    out = keras.layers.Dense(10, name="my_head")(keras.layers.GlobalAveragePooling2D()(base.output))
    model = keras.Model(base.input, out)
    with pytest.raises(ValueError, match="my_head"):
        from_keras_model(model)
    with pytest.warns(UserWarning, match="my_head"):
        state = from_keras_model(model, strict=False)
    assert not any(k.startswith("fc.") for k in state)
    ours_from("keras_resnet50", state, num_classes=0)
    path = tmp_path / "m.weights.h5"
    model.save_weights(path)
    with pytest.raises(ValueError, match="my_head"):
        from_keras_h5(path)


def test_keras_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        from_keras_h5(tmp_path / "missing.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="neither an HDF5 file"):
        from_keras_h5(bad)
    with pytest.raises(ValueError, match="not a Keras ResNet"):
        keras_arch_from_weights(["conv1_conv", "conv2_block1_1_conv", "conv3_block1_1_conv"])


def test_keras_bfloat16(tmp_path: Path) -> None:
    """Keras 3 stores bfloat16 variables as raw 16-bit words tagged dtype=bfloat16."""
    keras = _keras()
    keras.config.set_dtype_policy("bfloat16")
    try:
        model = keras.applications.ResNet50V2(weights=None, input_shape=(H, W, 3))
    finally:
        keras.config.set_dtype_policy("float32")
    path = tmp_path / "bf16.weights.h5"
    model.save_weights(path)
    state, ref = from_keras_h5(path), from_keras_model(model)
    assert state["conv1.weight"].dtype == torch.bfloat16
    assert state.keys() == ref.keys() and all(torch.equal(state[k], ref[k]) for k in state)
