"""The registered presets: one named configuration per standard ResNet variant."""

from __future__ import annotations

from .registry import Preset, register_model
from .resnet import ResNetConfig

_TV = "torchvision.models"
_KERAS = dict(stem_bias=True, conv_bias=True, bn_eps=1.001e-5)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

# --- ImageNet ResNet v1.5 (torchvision) ---------------------------------------------------------
for _name, _block, _layers, _params, _weights in [
    ("resnet18", "basic", (2, 2, 2, 2), 11_689_512, "ResNet18_Weights.IMAGENET1K_V1"),
    ("resnet34", "basic", (3, 4, 6, 3), 21_797_672, "ResNet34_Weights.IMAGENET1K_V1"),
    ("resnet50", "bottleneck", (3, 4, 6, 3), 25_557_032, "ResNet50_Weights.IMAGENET1K_V2"),
    ("resnet101", "bottleneck", (3, 4, 23, 3), 44_549_160, "ResNet101_Weights.IMAGENET1K_V2"),
    ("resnet152", "bottleneck", (3, 8, 36, 3), 60_192_808, "ResNet152_Weights.IMAGENET1K_V2"),
]:
    register_model(Preset(
        _name, ResNetConfig(block=_block, layers=_layers),
        f"ResNet-{_name[6:]} v1.5 (stride in the 3x3), torchvision's layout and names",
        reference_params=_params, reference=f"{_TV}.{_name}", default_weights=f"torchvision:{_weights}",
        tags=("imagenet", "torchvision"),
    ))

for _name, _layers, _params, _weights in [
    ("wide_resnet50_2", (3, 4, 6, 3), 68_883_240, "Wide_ResNet50_2_Weights.IMAGENET1K_V2"),
    ("wide_resnet101_2", (3, 4, 23, 3), 126_886_696, "Wide_ResNet101_2_Weights.IMAGENET1K_V2"),
]:
    register_model(Preset(
        _name, ResNetConfig(layers=_layers, base_width=128),
        "Wide ResNet (Zagoruyko & Komodakis 2016): bottleneck 3x3 twice as wide",
        reference_params=_params, reference=f"{_TV}.{_name}", default_weights=f"torchvision:{_weights}",
        tags=("imagenet", "torchvision"),
    ))

for _name, _layers, _groups, _bw, _params, _weights in [
    ("resnext50_32x4d", (3, 4, 6, 3), 32, 4, 25_028_904, "ResNeXt50_32X4D_Weights.IMAGENET1K_V2"),
    ("resnext101_32x8d", (3, 4, 23, 3), 32, 8, 88_791_336, "ResNeXt101_32X8D_Weights.IMAGENET1K_V2"),
]:
    register_model(Preset(
        _name, ResNetConfig(layers=_layers, groups=_groups, base_width=_bw),
        f"ResNeXt (Xie et al. 2017): {_groups} groups of width {_bw} in each 3x3",
        reference_params=_params, reference=f"{_TV}.{_name}", default_weights=f"torchvision:{_weights}",
        tags=("imagenet", "torchvision"),
    ))

# --- timm variants (timm's names) --------------------------------------------------------------
for _name, _block, _layers, _params, _weights in [
    ("resnet18d", "basic", (2, 2, 2, 2), 11_708_744, "resnet18d.ra2_in1k"),
    ("resnet26d", "bottleneck", (2, 2, 2, 2), 16_014_408, "resnet26d.bt_in1k"),
    ("resnet34d", "basic", (3, 4, 6, 3), 21_816_904, "resnet34d.ra2_in1k"),
    ("resnet50d", "bottleneck", (3, 4, 6, 3), 25_576_264, "resnet50d.ra2_in1k"),
]:
    register_model(Preset(
        _name, ResNetConfig(block=_block, layers=_layers, stem="deep", shortcut="avg"),
        f"ResNet-{_name[6:-1]}-D (He et al. 2019, 'Bag of Tricks'): deep 3x3 stem, average-pool shortcut "
        f"(timm layout)", reference_params=_params, reference=f"timm {_name}", default_weights=f"timm:{_weights}",
        tags=("imagenet", "timm"),
    ))
for _name, _block, _layers, _params, _weights, _d in [
    ("resnetblur18", "basic", (2, 2, 2, 2), 11_689_512, None, False),
    ("resnetblur50", "bottleneck", (3, 4, 6, 3), 25_557_032, "resnetblur50.bt_in1k", False),
    ("resnetblur50d", "bottleneck", (3, 4, 6, 3), 25_576_264, None, True),
]:
    register_model(Preset(
        _name, ResNetConfig(block=_block, layers=_layers, anti_alias=True,
                            **(dict(stem="deep", shortcut="avg") if _d else {})),
        f"ResNet-{_name[10:].rstrip('d')}{'-D' if _d else ''} with blur-pool anti-aliased downsampling (Zhang 2019): "
        f"every stride-2 3x3 and the stem's max-pool followed by a 3x3 binomial blur (timm layout)",
        reference_params=_params, reference=f"timm {_name}",
        default_weights=f"timm:{_weights}" if _weights else None, tags=("imagenet", "timm"),
    ))
register_model(Preset(
    "seresnet50", ResNetConfig(se_ratio=1 / 16),
    "SE-ResNet-50 (Hu et al. 2018): squeeze-and-excitation in every bottleneck (timm layout)",
    reference_params=28_088_024, reference="timm seresnet50", default_weights="timm:seresnet50.a1_in1k",
    tags=("imagenet", "timm"),
))

# --- For training from scratch on photos --------------------------------------------------------
# The fast.ai Imagenette leaderboard's "mini net" (fastai ``XResNet(SEResNeXtBlock, 1, [1, 1, 1, 1], groups=64,
# reduction=8)``) in timm's naming, and the same net with a second block in its third stage, the network this project
# trains photos from scratch with (issue 12). Their squeeze-and-excitation keeps ReLU inside, as timm's; fastai's
# takes the block's Mish (``se_act_layer="mish"``), which was level on Imagenette's held-out images (-0.1 +- 0.2
# points over three seeds, benchmarks/RESULTS.md).
_MINI = dict(block="basic", stem="deep", shortcut="avg", groups=64, base_width=4, se_ratio=1 / 8, act_layer="mish",
             zero_init_residual=True, conv_init="fan_in", input_size=(3, 128, 128))
register_model(Preset(
    "seresnext10d_64x4d", ResNetConfig(layers=(1, 1, 1, 1), **_MINI),
    "SE-ResNeXt-10-D for training photos from scratch on a CPU: the fast.ai Imagenette leaderboard's 'mini net' "
    "(fastai's xresnet with SEResNeXtBlock, one block a stage): deep 3x3 stem, average-pool shortcuts, one basic "
    "block a stage whose first 3x3 has 64 groups of width 4 (256-2048 channels), squeeze-and-excitation 1/8, "
    "Mish, residual branches starting at zero and fastai's fan-in initialisation; 128 px. 84.9% on Imagenette's "
    "val in 5 epochs from scratch (3 seeds, 17 min a run on a 2-core CPU; held-out: 83.3%, 82.4% with SiLU, "
    "79.4% for resnet18d with SiLU) (benchmarks/RESULTS.md, issue 12)",
    reference_params=13_446_144, tags=("imagenet", "fastai"),
    reference="fastai XResNet(SEResNeXtBlock, 1, [1, 1, 1, 1], groups=64, reduction=8), the Imagenette leaderboard's "
              "mini net (same parameter count)",
))
register_model(Preset(
    "seresnext12d_64x4d", ResNetConfig(layers=(1, 1, 2, 1), **_MINI),
    "SE-ResNeXt-12-D, the default for training photos from scratch on a CPU: seresnext10d_64x4d (the fast.ai "
    "Imagenette leaderboard's 'mini net') with a second block in the third stage (256 channels, 1024 inside the "
    "grouped 3x3, at a sixteenth of the input side); 128 px. 85.49% on Imagenette's val in 5 epochs from scratch "
    "with its recipe (crops moved by up to 8 px; 3 seeds, 19 min a run on a 2-core CPU; the mini net 84.94%) "
    "(benchmarks/RESULTS.md, issue 12)",
    reference_params=15_861_536, tags=("imagenet", "fastai"),
    reference="fastai XResNet(SEResNeXtBlock, 1, [1, 1, 2, 1], groups=64, reduction=8) (same parameter count)",
))

# --- Keras applications -----------------------------------------------------------------------
# Reference counts are Keras's *trainable* parameters: its "Total params" also counts the BN
# moving statistics (53,120 for ResNet50), which are buffers here. The parity tests check them
# against keras itself.
for _depth, _layers, _params in [(50, (3, 4, 6, 3), 25_583_592), (101, (3, 4, 23, 3), 44_601_832),
                                 (152, (3, 8, 36, 3), 60_268_520)]:
    register_model(Preset(
        f"keras_resnet{_depth}",
        ResNetConfig(layers=_layers, stride_in_1x1=True, **_KERAS),
        f"keras.applications.ResNet{_depth}: original v1 (stride in the first 1x1, conv biases, BN eps 1.001e-5)",
        reference_params=_params, reference=f"keras.applications.ResNet{_depth}", tags=("imagenet", "keras"),
        default_weights=f"keras:resnet{_depth}",
    ))
for _depth, _layers, _params in [(50, (3, 4, 6, 3), 25_568_360), (101, (3, 4, 23, 3), 44_577_896),
                                 (152, (3, 8, 36, 3), 60_236_904)]:
    register_model(Preset(
        f"keras_resnet{_depth}v2",
        ResNetConfig(block="preact_bottleneck", layers=_layers, strides=(2, 2, 2, 1), stem="preact",
                     stride_in_last_block=True, stem_pool_zero_pad=True, **_KERAS),
        f"keras.applications.ResNet{_depth}V2: pre-activation, stride in the last block of a stage, "
        "1x1 max-pool shortcut",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        reference_params=_params, reference=f"keras.applications.ResNet{_depth}V2", tags=("imagenet", "keras"),
        default_weights=f"keras:resnet{_depth}v2",
    ))

# --- He et al. 2016 pre-activation ------------------------------------------------------------
register_model(Preset(
    "preact_resnet18", ResNetConfig(block="preact_basic", layers=(2, 2, 2, 2), stem="preact"),
    "Pre-activation ResNet-18 (He et al. 2016, 'Identity Mappings'): BN-ReLU-conv, final BN-ReLU",
    tags=("imagenet", "preact"),
))
register_model(Preset(
    "preact_resnet50", ResNetConfig(block="preact_bottleneck", layers=(3, 4, 6, 3), stem="preact"),
    "Pre-activation ResNet-50 (He et al. 2016, 'Identity Mappings'): BN-ReLU-conv, final BN-ReLU",
    tags=("imagenet", "preact"),
))

# --- CIFAR ResNets (He et al. 2015, section 4.2) ------------------------------------------------
for _depth, _params in [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018), (110, 1_727_962)]:
    _n = (_depth - 2) // 6
    register_model(Preset(
        f"resnet{_depth}",
        ResNetConfig(block="basic", layers=(_n, _n, _n), widths=(16, 32, 64), strides=(1, 2, 2), stem="cifar",
                     stem_width=16, shortcut="pad", num_classes=10, input_size=(3, 32, 32)),
        f"CIFAR ResNet-{_depth} (He et al. 2015): 3x3 stem, 3 stages of {_n} basic blocks at 16/32/64 "
        "channels, option-A (zero-pad) shortcuts; shortcut='conv' for projections",
        mean=CIFAR_MEAN, std=CIFAR_STD, reference_params=_params, reference="He et al. 2015, Table 6 (0.27M-1.7M); exact counts as akamaster/pytorch_resnet_cifar10",
        tags=("cifar",),
    ))

# Page's ResNet-9 (conv-pool stage entries, residual blocks in the first and last stage): the DAWNBench layout at
# its widths, and the final layout of Page's series (max-pool before BN, max-pooled features, logits x 1/8) at
# airbench94's widths, the fast one
_PAGE9 = dict(block="basic", layers=(1, 0, 1), strides=(2, 2, 2), stem="cifar", stem_width=64, num_classes=10,
              input_size=(3, 32, 32))
for _name, _arch, _description, _params, _reference in [
    ("resnet9", dict(widths=(128, 256, 512), stage_entry="conv_pool"),
     "ResNet-9 for 32 px images (Page 2018, the DAWNBench CIFAR-10 network): a 64-channel 3x3 stem, three stages "
     "that each enter by conv-BN-ReLU and a 2x2 max-pool (128, 256, 512 channels), one basic residual block in "
     "the first and the last; 6.6M parameters, 0.38 GMACs at 32x32 (this layout closes with average pooling "
     "and a plain linear classifier where Page's used max pooling and logits scaled by 1/8)",
     6_573_130, "Page, 'How to train your ResNet' (2018); myrtle.ai cifar10-fast"),
    ("resnet9_narrow", dict(widths=(64, 256, 256), stage_entry="conv_pool_bn", global_pool="max", logit_scale=0.125),
     "ResNet-9 as Page's series left it, at airbench94's widths (64, 256, 256 channels; Jordan 2024), for fast "
     "training on 32 px images: a 64-channel 3x3 stem, three stage entries of conv, 2x2 max-pool, BN-ReLU (the "
     "pool before the BN: BN and ReLU on a quarter of the pixels), one basic residual block in the first and the "
     "last stage, global max pooling and logits x 1/8; 2.0M parameters, 2.5x fewer multiply-adds than resnet9. "
     "Each of the pool order and the head gained about a point on CIFAR-10 at 5 epochs (benchmarks/RESULTS.md)",
     None, "Page (2018) ResNet-9, final layout, with the widths of Jordan, 'airbench' (2024)"),
]:
    register_model(Preset(
        _name, ResNetConfig(**_PAGE9, **_arch), _description, mean=CIFAR_MEAN, std=CIFAR_STD,
        reference_params=_params, reference=_reference, tags=("cifar",),
    ))

# --- The network of the project's founding document, made correct ------------------------------
register_model(Preset(
    "resnet_seed",
    ResNetConfig(block="basic", layers=(2, 2, 2, 2, 2, 4), widths=(64, 128, 256, 512, 1024, 2048),
                 strides=(1, 2, 2, 2, 2, 2)),
    "The 14-block network sketched in this project's founding document, made correct. That "
    "sketch added an unprojected input to blocks of another shape (a shape error), applied BN "
    "after ReLU, and downsampled only once, which left 2048-channel 3x3 convolutions running at "
    "112x112. Here it has the standard 7x7/2 stem with max-pool, conv-BN-ReLU ordering, stride 2 "
    "in the first block of each new width and conv+BN projections where the shape changes: 332M "
    "parameters for 3.5 GMACs (7.0 GFLOPs) at 224x224. Its 1024/2048-wide basic blocks spend 20x the parameters of "
    "ResNet-34 for a 0.1x-0.2x smaller feature map; prefer resnet18/34/50, which were tuned "
    "for this budget and have pretrained weights.",
    reference_params=332_039_720, reference="resnet-tune issue 2", tags=("imagenet",),
))
