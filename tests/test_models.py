"""The model library: every preset builds, trains, exports and matches its published size."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import resnet_tune as rt
from resnet_tune.errors import ConfigError
from resnet_tune.models import ResNetConfig, UnknownModelError, build_model, count_params, get_preset, model_info

ALL = rt.list_models()
LARGE = {"resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2", "resnext101_32x8d", "keras_resnet101",
         "keras_resnet152", "keras_resnet101v2", "keras_resnet152v2", "resnet_seed", "resnet110"}
SWEEP = [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n for n in ALL]


def _small_input(model: rt.ResNet, batch: int = 2) -> torch.Tensor:
    size = 32 if model.cfg.stem == "cifar" else 64
    return torch.randn(batch, model.in_chans, size, size)


@pytest.mark.parametrize("name", SWEEP)
def test_forward_backward_every_parameter_gets_a_gradient(name: str) -> None:
    torch.manual_seed(0)
    model = rt.create_model(name, num_classes=7)
    x = _small_input(model)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"


@pytest.mark.parametrize("name", SWEEP)
def test_param_count_matches_reference(name: str) -> None:
    preset = get_preset(name)
    if preset.reference_params is None:
        pytest.skip("no published parameter count")
    with torch.device("meta"):
        model = rt.create_model(name)
    assert count_params(model) == preset.reference_params


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_state_dict_moves_both_ways_with_torchvision(name: str) -> None:
    tv = getattr(torchvision.models, name)()
    ours = rt.create_model(name)
    ours.load_state_dict(tv.state_dict(), strict=True)
    tv.load_state_dict(ours.state_dict(), strict=True)
    tv.eval(), ours.eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=0)


def test_torchvision_macs_convention() -> None:
    # torchvision's model card says 4.09 "GFLOPS" for ResNet-50: those are multiply-accumulates.
    info = model_info("resnet50")
    assert info.gmacs == pytest.approx(4.09, abs=0.01)
    assert info.gflops == pytest.approx(2 * info.gmacs)
    assert info.num_params == 25_557_032
    assert info.input_size == (3, 224, 224)


def test_resnet_seed_matches_issue_figures() -> None:
    info = model_info("resnet_seed")
    assert info.num_params == 332_039_720
    assert info.gflops == pytest.approx(7.0, abs=0.05)
    assert [f["stride"] for f in info.feature_info] == [4, 8, 16, 32, 64, 128]
    assert [f["channels"] for f in info.feature_info] == [64, 128, 256, 512, 1024, 2048]


def test_cifar_resnet20_size_and_shortcuts() -> None:
    m = rt.create_model("resnet20")
    assert m.num_classes == 10
    assert 0.26e6 < count_params(m) < 0.28e6
    # option A shortcuts carry no parameters; projection ones do
    proj = rt.create_model("resnet20", shortcut="conv")
    assert count_params(proj) > count_params(m)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name,strides", [("resnet18", [4, 8, 16, 32]), ("resnet50", [4, 8, 16, 32]),
                                          ("resnet20", [1, 2, 4]), ("keras_resnet50v2", [8, 16, 32, 32])])
def test_feature_maps_strides_match_tensors(name: str, strides: list[int]) -> None:
    model = rt.create_model(name).eval()
    size = 64
    x = torch.randn(1, 3, size, size)
    feats = model.feature_maps(x)
    assert [f.stride for f in feats] == strides
    for f, info in zip(feats, model.feature_info):
        assert f.tensor.shape[-1] == size // f.stride
        assert f.tensor.shape[1] == info["channels"]
    torch.testing.assert_close(model.forward_head(feats[-1].tensor), model(x))


def test_dilation_keeps_resolution() -> None:
    model = rt.create_model("resnet50", replace_stride_with_dilation=(False, True, True)).eval()
    feats = model.feature_maps(torch.randn(1, 3, 64, 64))
    assert feats[-1].tensor.shape[-1] == 8
    assert [f.stride for f in feats] == [4, 8, 8, 8]


def test_forward_head_pre_logits_and_classifier_api() -> None:
    model = rt.create_model("resnet18").eval()
    x = torch.randn(2, 3, 64, 64)
    feat = model.forward_features(x)
    assert feat.shape == (2, 512, 2, 2)
    assert model.forward_head(feat, pre_logits=True).shape == (2, 512)
    assert model.get_classifier() is model.fc
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.num_classes == 5
    model.reset_classifier(0)
    assert model(x).shape == (2, 512)


def test_zero_init_residual_makes_blocks_identity_on_branch() -> None:
    model = rt.create_model("resnet50", zero_init_residual=True)
    assert all((b.bn3.weight == 0).all() for layer in [model.layer1, model.layer4] for b in layer)
    basic = rt.create_model("resnet18", zero_init_residual=True)
    assert (basic.layer1[0].bn2.weight == 0).all()


def test_drop_path_rises_linearly_and_is_off_in_eval() -> None:
    model = rt.create_model("resnet18", drop_path_rate=0.2)
    rates = [b.drop_path.p for layer in [model.layer1, model.layer2, model.layer3, model.layer4] for b in layer
             if b.drop_path is not None]
    assert rates == sorted(rates) and rates[-1] == pytest.approx(0.2)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), model(x))


def test_squeeze_excitation_and_groups() -> None:
    m = rt.create_model("seresnet50")
    assert m.layer1[0].se.fc1.out_channels == 16  # timm: 256/16 rounded to a multiple of 8
    rx = rt.create_model("resnext50_32x4d")
    assert rx.layer1[0].conv2.groups == 32


def test_grouped_basic_block_is_fastai_resnext_block_at_expansion_1() -> None:
    # fastai's XResNet(SEResNeXtBlock, expansion=1, layers=[1, 1, 1, 1], groups=64, reduction=8): the Imagenette
    # leaderboard's "mini net". Its parameter count, from fastai 2.8.12 with n_out=10, is 12,938,274; with its state
    # dict copied in order, its eval outputs equal ours exactly (checked once with fastai installed; fastai is not a
    # test dependency). Here the block is checked against the same function written out.
    torch.manual_seed(0)
    mini = rt.create_model("resnet18d", num_classes=10, layers=[1, 1, 1, 1], groups=64, base_width=4,
                           se_ratio=1 / 8)
    assert count_params(mini) == 12_938_274
    # the photo default, fastai's XResNet(SEResNeXtBlock, 1, [1, 1, 2, 1], groups=64, reduction=8): 15,353,666
    assert count_params(rt.create_model("seresnext12d_64x4d", num_classes=10)) == 15_353_666
    block = mini.layer2[0]
    assert (block.conv1.in_channels, block.conv1.out_channels, block.conv1.groups, block.conv1.stride) == \
        (64, 512, 64, (2, 2))
    assert (block.conv2.in_channels, block.conv2.out_channels, block.conv2.groups) == (512, 128, 1)
    for bn in (block.bn1, block.bn2, block.downsample[2]):
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
        bn.bias.data.normal_(0, 0.1)
    block.eval()
    x = torch.randn(2, 64, 16, 16)
    f = torch.nn.functional

    def bn(t: torch.Tensor, m: nn.BatchNorm2d) -> torch.Tensor:
        return f.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, eps=m.eps)

    mid = f.relu(bn(f.conv2d(x, block.conv1.weight, stride=2, padding=1, groups=64), block.bn1))
    out = bn(f.conv2d(mid, block.conv2.weight, padding=1), block.bn2)
    out = out * torch.sigmoid(block.se.fc2(f.relu(block.se.fc1(out.mean((2, 3), keepdim=True)))))
    shortcut = bn(f.conv2d(f.avg_pool2d(x, 2), block.downsample[1].weight), block.downsample[2])
    with torch.no_grad():
        torch.testing.assert_close(block(x), f.relu(out + shortcut))
    # the defaults are torchvision's block; a grouped one needs every input width to split into the groups
    assert rt.create_model("resnet18").layer1[0].conv1.groups == 1
    with pytest.raises(ValueError, match="multiples of 48"):
        ResNetConfig(block="basic", groups=48)
    with pytest.raises(ValueError, match="pre-activation basic blocks"):
        ResNetConfig(block="preact_basic", groups=32, base_width=4)


def test_conv_init_fan_in_is_fastais_init_cnn_and_fan_out_stays_torchvisions() -> None:
    # fastai's init_cnn (xresnet): He-normal over the fan-in for every conv and linear layer, biases zero (checked
    # once against fastai 2.8.12's mini net: every weight's sd within 2% of sqrt(2 / fan_in)); torchvision's default
    # spreads a grouped 3x3 over its fan-out: 16x smaller for the mini net's 64-group 3x3 with one input a group
    kw = dict(layers=[1, 1, 1, 1], groups=64, base_width=4, se_ratio=1 / 8, zero_init_residual=True)
    torch.manual_seed(0)
    ours = rt.create_model("resnet18d", num_classes=10, conv_init="fan_in", **kw)
    torch.manual_seed(0)
    tv = rt.create_model("resnet18d", num_classes=10, **kw)
    assert ours.cfg.conv_init == "fan_in" and tv.cfg.conv_init == "fan_out"
    layers = [m for m in ours.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 3 + 4 * 4 + 3 + 1  # stem, 4 blocks x (2 convs + SE's 2), 3 downsamples, fc
    for m in layers:
        fan_in = m.weight[0].numel()
        assert m.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.15), m
        assert m.bias is None or not m.bias.any()
    grouped = tv.layer1[0].conv1.weight  # 256 x 1 x 3 x 3
    assert grouped.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.1)
    assert ours.layer1[0].conv1.weight.std().item() > 10 * grouped.std().item()
    assert not ours.layer1[0].bn2.weight.any() and ours.layer1[0].bn1.weight.eq(1).all()  # zero_init_residual
    assert ours.state_dict().keys() == tv.state_dict().keys()
    with pytest.raises(ValueError, match="conv_init='xavier'; choose one of fan_out, fan_in"):
        ResNetConfig(conv_init="xavier")


def test_user_defined_network_from_dict() -> None:
    model = build_model({"block": "basic", "layers": [1, 1], "widths": [8, 16], "strides": [1, 2],
                         "stem": "cifar", "stem_width": 8, "num_classes": 3, "input_size": [3, 16, 16]})
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    custom = rt.create_model("custom", block="bottleneck", layers=[1, 1, 1], widths=[8, 16, 32],
                             strides=[1, 2, 2], num_classes=4)
    assert custom(torch.randn(1, 3, 64, 64)).shape == (1, 4)


def test_unknown_names_fail_loudly() -> None:
    with pytest.raises(UnknownModelError, match="resnet50"):
        rt.create_model("resnet5O")
    with pytest.raises(TypeError, match="drop_pth_rate"):
        rt.create_model("resnet18", drop_pth_rate=0.1)
    with pytest.raises(ValueError, match="block="):
        ResNetConfig(block="triple")
    with pytest.raises(ValueError, match="one entry per stage"):
        build_model({"layers": [1, 1], "widths": [8], "strides": [1, 2]})


def test_anti_alias_blurs_every_downsampling_and_keeps_the_state_dict() -> None:
    from resnet_tune.models.resnet import BlurPool2d

    plain, blurred = rt.create_model("resnet18"), rt.create_model("resnet18", anti_alias=True)
    assert plain.state_dict().keys() == blurred.state_dict().keys()  # the filter is not saved: weights interchange
    blurs = [m for m in blurred.modules() if isinstance(m, BlurPool2d)]
    assert len(blurs) == 4 and all(b.stride == 2 for b in blurs)  # the stem's pool and stages 2-4's first blocks
    assert blurred.layer2[0].conv1.stride == (1, 1) and plain.layer2[0].conv1.stride == (2, 2)
    blur = BlurPool2d(3)
    flat = torch.full((1, 3, 8, 8), 0.7)
    torch.testing.assert_close(blur(flat), torch.full((1, 3, 4, 4), 0.7))  # a low-pass filter: constants pass
    stripes = torch.zeros(1, 3, 8, 8)
    stripes[..., ::2] = 1.0  # the highest frequency: plain striding aliases it to all ones, the blur to its mean
    assert stripes[..., ::2, ::2].min() == 1.0
    torch.testing.assert_close(blur(stripes)[..., :, 1:-1], torch.full((1, 3, 4, 2), 0.5))
    with pytest.raises(ValueError, match="anti_alias is for post-activation"):
        rt.create_model("preact_resnet18", anti_alias=True)
    with pytest.raises(ValueError, match="anti_alias is for post-activation"):
        rt.create_model("resnet50", anti_alias=True, stride_in_1x1=True)


def with_atens_mish_at(model: nn.Module, paths: list[str]) -> nn.Module:
    """A copy of ``model`` with ATen's ``nn.Mish`` as the module at each of ``paths``."""
    out = copy.deepcopy(model)
    for path in paths:
        parent, _, attr = path.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, attr, nn.Mish())
    return out


def assert_mish_at(mish: nn.Module, relu: nn.Module, paths: list[str]) -> None:
    """``mish`` (ReLU network's weights loaded) computes ``relu`` with ATen's Mish at ``paths``, not ``relu``."""
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(mish(x), with_atens_mish_at(relu, paths)(x))
        assert not torch.allclose(mish(x), relu(x))


@pytest.mark.parametrize("name", ["resnet18d", "preact_resnet18", "resnet9_narrow", "resnet50"])
def test_act_layer_replaces_every_activation_and_keeps_the_state_dict(name: str) -> None:
    """``act_layer`` (timm's name): every activation of the stem, blocks, stage entries and final norm becomes the
    one asked for (the SE bottleneck keeps ReLU, as timm's: ``se_act_layer``); weights interchange with the ReLU
    network, which with each ReLU module swapped for Mish computes the same function."""

    def acts(model: torch.nn.Module, cls: type) -> list[str]:
        return [n for n, m in model.named_modules() if isinstance(m, cls) and ".se." not in n]

    relu = rt.create_model(name, num_classes=10, se_ratio=0.25 if name == "resnet18d" else 0.0).eval()
    mish = rt.create_model(name, num_classes=10, act_layer="mish",
                           se_ratio=0.25 if name == "resnet18d" else 0.0).eval()
    assert relu.state_dict().keys() == mish.state_dict().keys()
    mish.load_state_dict(relu.state_dict())
    assert not acts(mish, torch.nn.ReLU) and acts(mish, torch.nn.Mish) == acts(relu, torch.nn.ReLU) != []
    if name == "resnet18d":
        assert all(isinstance(b.se.act, torch.nn.ReLU) for b in mish.layer1)
    assert_mish_at(mish, relu, acts(relu, torch.nn.ReLU))
    with pytest.raises(ValueError, match="act_layer='gelu'; choose one of relu, mish, silu"):
        rt.create_model(name, act_layer="gelu")


@pytest.mark.parametrize("name, blocks", [("resnet18d", 8), ("resnet50", 16), ("preact_resnet18", 8)])
def test_se_act_layer_changes_only_the_squeeze_and_excitation_activation(name: str, blocks: int) -> None:
    """``se_act_layer`` (fastai's ``SEModule`` takes its block's activation): every SE bottleneck's activation, and
    nothing else, becomes the one asked for; the state dict is unchanged, and the function equals the ReLU SE
    network with those modules swapped."""
    relu = rt.create_model(name, num_classes=10, se_ratio=0.25).eval()
    mish = rt.create_model(name, num_classes=10, se_ratio=0.25, se_act_layer="mish").eval()
    mish.load_state_dict(relu.state_dict())
    se_acts = [n for n, m in relu.named_modules() if n.endswith(".se.act")]
    assert len(se_acts) == blocks
    assert all(isinstance(mish.get_submodule(n), torch.nn.Mish) for n in se_acts)
    others = [(n, type(m)) for n, m in mish.named_modules() if not n.endswith(".se.act")]
    assert others == [(n, type(m)) for n, m in relu.named_modules() if not n.endswith(".se.act")]
    assert_mish_at(mish, relu, se_acts)
    with pytest.raises(ValueError, match="se_act_layer='gelu'; choose one of relu, mish, silu"):
        rt.create_model(name, se_act_layer="gelu")


@pytest.mark.filterwarnings(r"ignore:`torch.jit.trace\w*` is deprecated:FutureWarning")
def test_mish_trains_on_the_cpu_through_its_compiled_kernels_with_atens_values(monkeypatch) -> None:
    """``act_layer=mish`` trains on a CPU through the one-exponential kernels (never ATen's ``F.mish``), with
    ATen's values and gradients in float32 and bfloat16, far tails included; a whole network's gradients equal
    those with ``nn.Mish`` swapped in. Without gradients the forward kernel runs once training built it (a run's
    validation), else ATen's, and tracing for export records ATen's operator."""
    import shutil

    from resnet_tune.models import activations

    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler: torch.compile cannot build the kernels here (the fallback has its own test)")
    x = torch.cat([torch.randn(4000) * 6, torch.tensor([-200.0, -30.0, -1e-3, 0.0, 1e-3, 19.9, 20.1, 25.0, 1e4])])
    ref_in = x.clone().requires_grad_()
    torch.nn.functional.mish(ref_in).backward(torch.linspace(-1, 1, x.numel()))
    mish = activations.Mish(inplace=True)
    aten_mish = torch.nn.functional.mish

    def no_aten(*a, **k):
        raise AssertionError("ATen's mish ran in training")

    with monkeypatch.context() as m:
        m.setattr(torch.nn.functional, "mish", no_aten)
        ours_in = x.clone().requires_grad_()
        out = mish(ours_in * 1.0)
        out.backward(torch.linspace(-1, 1, x.numel()))
        torch.testing.assert_close(out, aten_mish(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-5, atol=1e-6)
        xb = x.bfloat16().contiguous()
        xb_in = xb.clone().requires_grad_()
        ob = mish(xb_in * 1.0)
        ob.float().sum().backward()
        assert ob.dtype == xb_in.grad.dtype == torch.bfloat16
        ref_b = xb.clone().requires_grad_()
        aten_mish(ref_b).float().sum().backward()
        torch.testing.assert_close(ob, aten_mish(xb), rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(xb_in.grad, ref_b.grad, rtol=1e-2, atol=1e-2)

        net = rt.create_model("seresnext10d_64x4d", num_classes=5, act_layer="mish").train()
        ref = with_atens_mish_at(net, [n for n, m in net.named_modules() if isinstance(m, activations.Mish)])
        inp, target = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
        torch.nn.functional.cross_entropy(net(inp), target).backward()
    torch.nn.functional.cross_entropy(ref(inp), target).backward()
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)
    # without gradients, after training built the kernels for this type and layout (a run's validation): the
    # forward kernel, ATen's values; tracing for export still records ATen's operator
    with monkeypatch.context() as m, torch.no_grad():
        m.setattr(torch.nn.functional, "mish", no_aten)
        torch.testing.assert_close(mish(x.clone()), aten_mish(x), rtol=1e-5, atol=1e-6)
        with torch.inference_mode():
            torch.testing.assert_close(mish(xb.clone()), aten_mish(xb), rtol=1e-2, atol=1e-2)
    traced = torch.jit.trace(torch.nn.Sequential(activations.Mish()), (x,))
    assert "aten::mish" in str(traced.inlined_graph)
    exported = torch.export.export(torch.nn.Sequential(activations.Mish()).eval(), (x,))
    assert "aten.mish" in str(exported.graph)
    monkeypatch.setattr(activations, "_kernels", {})  # a fresh process: evaluation alone builds nothing
    with torch.no_grad():
        torch.testing.assert_close(mish(x.clone()), aten_mish(x))
    assert activations._kernels == {}


def test_mish_falls_back_to_atens_kernel_with_one_warning_where_compilation_fails(monkeypatch) -> None:
    """Where torch.compile cannot build the kernels (no C++ compiler, an unsupported Python): one warning naming
    the cause, then ATen's kernel with its values; no further warning."""
    import warnings

    from resnet_tune.models import activations

    x = torch.randn(1000) * 6
    mish = activations.Mish(inplace=True)

    def broken(*a, **k):
        raise RuntimeError("no C++ compiler\nmore lines")

    monkeypatch.setattr(activations, "_kernels", {})
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match=r"Mish trains with ATen's slower kernel: torch.compile could not build "
                                            r"the fast one \(RuntimeError: no C\+\+ compiler\)"):
        out = mish(x.clone().requires_grad_() * 1.0)
    torch.testing.assert_close(out, torch.nn.functional.mish(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mish(x.clone().requires_grad_() * 1.0).sum().backward()


def test_conv_pool_stages_make_page_resnet9() -> None:
    model = rt.create_model("resnet9")
    assert [f["stride"] for f in model.feature_info] == [2, 4, 8]
    assert [len(getattr(model, n)) for n in model.stage_names] == [2, 1, 2]  # entry + (1, 0, 1) residual blocks
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="at least one block"):
        build_model({"layers": [1, 0], "widths": [8, 16], "strides": [1, 2]})
    with pytest.raises(ValueError, match="conv_pool"):
        rt.create_model("resnet9", block="bottleneck")
    # the same layout at airbench94's widths: 64, 256, 256 channels, about 2.5x fewer multiply-adds
    narrow = rt.create_model("resnet9_narrow")
    assert [f["channels"] for f in narrow.feature_info] == [64, 256, 256]
    assert [len(getattr(narrow, n)) for n in narrow.stage_names] == [2, 1, 2]
    ratio = rt.model_info("resnet9").gmacs / rt.model_info("resnet9_narrow").gmacs
    assert 2.3 < ratio < 2.7 and narrow(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_fixed_batchnorm_scales_identity_init_and_bn_momentum_as_airbench() -> None:
    """``bn_scale=False``: no BatchNorm scale is a parameter (nothing trains it); each stays 1 as a buffer under the
    same name, so state dicts load both ways. ``bn_momentum`` reaches every BatchNorm. ``dirac_init``: a dense 3x3
    convolution starts by passing its input's channels through. Fixed scales with zero-initialised residual
    branches are refused (the zeros would stay)."""
    ref = rt.create_model("resnet9_narrow", num_classes=10)
    ours = rt.create_model("resnet9_narrow", num_classes=10, bn_scale=False, bn_momentum=0.4, dirac_init=True)
    bns = [m for m in ours.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 8 and all(m.momentum == 0.4 and not isinstance(m.weight, nn.Parameter) for m in bns)
    assert count_params(ref) - count_params(ours) == sum(m.weight.numel() for m in bns)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    ours.load_state_dict(rt.create_model("resnet9_narrow", num_classes=10, bn_scale=False).state_dict())
    shifts = [m.bias.detach().clone() for m in bns]
    opt = torch.optim.SGD(ours.parameters(), lr=0.5)
    nn.functional.cross_entropy(ours(torch.randn(8, 3, 32, 32)), torch.arange(8)).backward()
    opt.step()
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)  # the scales did not move
    assert any(not torch.equal(m.bias, b) for m, b in zip(bns, shifts))  # the shifts did
    x = torch.randn(2, 64, 8, 8)
    fresh = rt.create_model("resnet9_narrow", dirac_init=True)
    for conv in (fresh.layer1[0].conv, fresh.layer1[1].conv1, fresh.layer1[1].conv2):
        torch.testing.assert_close(conv(x), x)
    plain = rt.create_model("resnet9_narrow").layer1[1].conv1
    assert not torch.allclose(plain(x), x, atol=0.1)
    entry = fresh.layer2[0].conv  # 64 -> 256 channels: the first 64 filters pass the input through
    torch.testing.assert_close(entry(x)[:, :64], x)
    grouped = [m for m in rt.create_model("seresnext10d_64x4d", dirac_init=True).modules()
               if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(grouped) == 4  # the mini net's 64-group 3x3s: the first filter of each group passes its input on
    for conv in grouped[:2]:
        xg = torch.randn(2, conv.in_channels, 8, 8)
        s = conv.stride[0]  # (the second is strided: the centre tap reads every other pixel)
        torch.testing.assert_close(conv(xg)[:, ::conv.out_channels // conv.groups], xg[:, :, ::s, ::s])
        assert conv.weight[1::conv.out_channels // conv.groups].abs().sum() > 0  # the other filters keep their init
    with pytest.raises(ValueError, match="zero_init_residual .* bn_scale=False would keep at 0"):
        ResNetConfig(zero_init_residual=True, bn_scale=False)
    with pytest.raises(ValueError, match=r"bn_momentum=0.0 must be in \(0, 1\]"):
        ResNetConfig(bn_momentum=0.0)


def test_max_pool_and_scaled_logits_classifier_as_page_resnet9() -> None:
    from resnet_tune.models.resnet import ScaledLinear

    plain = rt.create_model("resnet9", stage_entry="conv_pool_bn").eval()  # (resnet9: avg pool, plain logits)
    page = rt.create_model("resnet9", stage_entry="conv_pool_bn", global_pool="max", logit_scale=0.125).eval()
    narrow = rt.create_model("resnet9_narrow").cfg  # the fast preset is Page's final layout
    assert (narrow.stage_entry, narrow.global_pool, narrow.logit_scale) == ("conv_pool_bn", "max", 0.125)
    assert page.state_dict().keys() == plain.state_dict().keys()  # no new parameters: the same checkpoints load
    page.load_state_dict(plain.state_dict())
    x = torch.randn(3, 3, 32, 32)
    feats = page.forward_features(x)
    assert torch.allclose(page.forward_head(feats, pre_logits=True), feats.amax((2, 3)))
    want = (feats.amax((2, 3)) @ page.fc.weight.T + page.fc.bias) * 0.125
    assert torch.allclose(page(x), want, atol=1e-6)
    assert torch.allclose(plain(x), plain.fc(feats.mean((2, 3))), atol=1e-6)
    # the scale lives in the classifier module: a head trained on cached features and a new head keep it
    assert isinstance(page.get_classifier(), ScaledLinear) and type(plain.get_classifier()) is nn.Linear
    page.reset_classifier(4)
    assert isinstance(page.fc, ScaledLinear) and page.fc.scale == 0.125 and page(x).shape == (3, 4)
    traced = torch.jit.trace(page, x)
    assert torch.allclose(traced(x), page(x))
    with pytest.raises(ValueError, match="global_pool='gem'; choose one of avg, max"):
        rt.create_model("resnet18", global_pool="gem")
    with pytest.raises(ValueError, match="logit_scale must be positive"):
        rt.create_model("resnet18", logit_scale=0)


def test_model_kwargs_read_command_line_words_and_yaml_and_refuse_in_one_sentence() -> None:
    from resnet_tune.models import model_kwargs

    assert model_kwargs(["global_pool=max", "logit_scale=0.125", "anti_alias=true", "layers=[1, 0, 1]"]) == \
        {"global_pool": "max", "logit_scale": 0.125, "anti_alias": True, "layers": [1, 0, 1]}
    assert model_kwargs({"zero-init-residual": True}) == {"zero_init_residual": True}
    assert model_kwargs("global_pool=max,logit_scale=0.5") == {"global_pool": "max", "logit_scale": 0.5}
    assert model_kwargs(None) == {}
    for value, message in [(["global_pool"], "takes KEY=VALUE pairs"),
                           (["globalpool=max"], "'globalpool' is not an architecture option \\(did you mean "
                                                "'global_pool'\\?\\)"),
                           (["num_classes=3"], "cannot set num_classes: the number of classes comes from the data"),
                           (["drop_path_rate=0.1"], "--drop-path-rate"),
                           (7, "must be a mapping")]:
        with pytest.raises(ConfigError, match=message):
            model_kwargs(value)
    with pytest.raises(ConfigError, match="do not fit resnet50: stage_entry='conv_pool' takes basic blocks"):
        model_kwargs(["stage_entry=conv_pool"], "resnet50")
    with pytest.raises(ConfigError, match="do not fit resnet18: logit_scale='x' must be a finite number"):
        model_kwargs({"logit_scale": "x"}, "resnet18")


def _correlated_images(n: int = 64, side: int = 16) -> torch.Tensor:
    """Images whose channels and neighbouring pixels are strongly correlated, as in photographs."""
    g = torch.Generator().manual_seed(0)
    base = nn.functional.avg_pool2d(torch.randn(n, 1, side + 2, side + 2, generator=g), 3, 1)
    return torch.cat([base, 0.8 * base, 0.5 * base], 1) + 0.1 * torch.randn(n, 3, side, side, generator=g)


def _patch_outputs(conv: nn.Conv2d, images: torch.Tensor, channels: slice) -> torch.Tensor:
    w = conv.weight[channels].reshape(conv.weight[channels].shape[0], -1)
    patches = nn.functional.unfold(images, conv.kernel_size).transpose(1, 2).reshape(-1, w.shape[1])
    return patches @ w.T


def test_whitened_first_conv_decorrelates_patches() -> None:
    from resnet_tune.models import first_conv, whiten_first_conv

    images = _correlated_images()
    # ResNet-9's stem has 64 filters >= 2 x 27 patch dimensions: all 27 directions, their negatives, 10 left random
    model = rt.create_model("resnet9")
    before = first_conv(model).weight.detach().clone()
    got = whiten_first_conv(model, images, eps=1e-6)
    conv = first_conv(model)
    assert conv is model.conv1 and got["directions"] == 27 and got["variance_share"] == pytest.approx(1.0)
    out = _patch_outputs(conv, images, slice(0, 27)).double()
    torch.testing.assert_close(out.T @ out / len(out), torch.eye(27, dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close(conv.weight[27:54], -conv.weight[:27])
    assert torch.equal(conv.weight[54:], before[54:])
    # ResNet-20's has 16: the 8 directions of largest variance, decorrelated, keeping most of the variance
    small = rt.create_model("resnet20")
    got = whiten_first_conv(small, images, eps=1e-6)
    assert got["directions"] == 8 and got["variance_share"] > 0.85  # the largest 8 of 27, not any 8
    out = _patch_outputs(first_conv(small), images, slice(0, 8)).double()
    torch.testing.assert_close(out.T @ out / len(out), torch.eye(8, dtype=torch.float64), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="takes 3 channels"):
        whiten_first_conv(small, images[:, :1])


def test_wrong_input_channels_or_rank_give_a_clear_error() -> None:
    model = rt.create_model("resnet18")
    with pytest.raises(ValueError, match="3-channel input but got 1 channels"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        model(torch.randn(3, 32, 32))
    gray = rt.create_model("resnet18", in_chans=1).eval()
    assert gray(torch.randn(1, 1, 32, 32)).shape == (1, 1000)


@pytest.mark.parametrize("name", SWEEP)
def test_torch_export_matches_eager(name: str) -> None:
    model = rt.create_model(name, num_classes=5).eval()
    x = _small_input(model)
    ep = torch.export.export(model, (x,))
    torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_torchscript_trace_matches_eager(name: str) -> None:
    # torch.jit.script is deprecated upstream; TorchScript files are made by tracing.
    model = rt.create_model(name, num_classes=5).eval()
    x = _small_input(model)
    traced = torch.jit.trace(model, (x,), check_trace=False)
    y = _small_input(model, batch=3)
    torch.testing.assert_close(traced(y), model(y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, kwargs", [
    ("resnet20", {}),  # a basic-block preset
    ("resnet50", {"layers": (1, 1, 1, 1)}),  # the bottleneck path, one block a stage: a quarter of the compile time
    pytest.param("resnet50", {}, marks=pytest.mark.slow),  # the whole preset
])
def test_torch_compile_matches_eager(name: str, kwargs: dict) -> None:
    # 10-25 s of compilation each on 2 CPU cores
    torch._dynamo.reset()
    model = rt.create_model(name, num_classes=5, **kwargs).eval()
    x = _small_input(model)
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_every_model_listed_with_info() -> None:
    names = rt.list_models()
    assert len(names) == len(set(names)) >= 24
    assert rt.list_models("keras_*") == ["keras_resnet50", "keras_resnet101", "keras_resnet152",
                                         "keras_resnet50v2", "keras_resnet101v2", "keras_resnet152v2"]
    with pytest.raises(ValueError, match="already registered"):
        from resnet_tune.models import register_model
        register_model(get_preset("resnet18"))


def test_preact_blocks_have_no_post_addition_activation() -> None:
    # In pre-activation ResNets the output of a block is the plain sum (He et al. 2016).
    model = rt.create_model("preact_resnet18").eval()
    block = model.layer2[1]
    x = torch.randn(1, 128, 8, 8)
    out = block(x)
    assert (out < 0).any()
    assert isinstance(model.norm, nn.BatchNorm2d)


def test_precomputed_model_table_matches_the_registry() -> None:
    """`resnet-tune models` reads models/model_table.json; it must say what model_info says today."""
    import json

    from resnet_tune.models.table import TABLE, model_table

    assert json.loads(TABLE.read_text()) == model_table(), "stale: run python -m resnet_tune.models.table"


def test_conv_pool_bn_pools_before_the_norm_and_folds_only_neighbours() -> None:
    """``stage_entry="conv_pool_bn"`` (Page's final ResNet-9, airbench): conv, max-pool, then BN-ReLU, with the
    state dict of ``conv_pool``. BN folding must not fold such a BN into the conv across the max-pool: with a
    negative BN scale max-pool and BN do not commute, so a wrong fold changes the outputs."""
    from resnet_tune.models import fold_batchnorm

    torch.manual_seed(0)
    model = rt.create_model("resnet9_narrow", stage_entry="conv_pool_bn")
    entry = model.layer1[0]
    assert [n for n, _ in entry.named_children()] == ["conv", "pool", "bn", "relu"]
    assert model.state_dict().keys() == rt.create_model("resnet9_narrow").state_dict().keys()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(-1.5, 1.5)
            m.bias.data.normal_()
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    want = model(x)
    folded = fold_batchnorm(copy.deepcopy(model))
    torch.testing.assert_close(folded(x), want, rtol=1e-4, atol=1e-4)
    assert isinstance(folded.layer1[0].bn, nn.BatchNorm2d)  # kept: it follows the pool
    assert isinstance(folded.conv1, nn.Conv2d) and isinstance(folded.bn1, nn.Identity)  # the stem's pair is folded
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 3  # one a stage entry
