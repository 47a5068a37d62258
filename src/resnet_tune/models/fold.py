"""Folding batch-norm into the preceding convolutions: the same maths in fewer kernels, for inference and export."""

from __future__ import annotations

from torch import nn

__all__ = ["fold_batchnorm"]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode ``Conv2d -> BatchNorm2d`` pair into the convolution (in place).

    Works on the module tree of our ResNets: a BN whose input is the output of the conv that
    precedes it in the same block (``convN``/``bnN`` pairs, stem, projection shortcuts) is folded
    and replaced by ``Identity``. Pre-activation BNs (before a conv) are left alone.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    pairs: list[tuple[nn.Module, str, str]] = []
    for parent in model.modules():
        names = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            keys = list(names)
            for a, b in zip(keys, keys[1:]):
                if isinstance(names[a], nn.Conv2d) and isinstance(names[b], nn.BatchNorm2d):
                    pairs.append((parent, a, b))
        for cname, child in names.items():
            if not (cname.startswith("conv") and isinstance(child, nn.Conv2d)):
                continue
            bname = "bn" + cname[4:]
            if bname in names and isinstance(names[bname], nn.BatchNorm2d) and not _is_preact(parent):
                pairs.append((parent, cname, bname))
    for parent, cname, bname in dict.fromkeys(pairs):  # a named pair inside a Sequential is found by both rules
        conv, bn = getattr(parent, cname), getattr(parent, bname)
        if conv.out_channels != bn.num_features:
            continue
        setattr(parent, cname, fuse_conv_bn_eval(conv, bn))
        setattr(parent, bname, nn.Identity())
    return model


def _is_preact(block: nn.Module) -> bool:
    from .resnet import PreActBasicBlock, PreActBottleneck

    return isinstance(block, (PreActBasicBlock, PreActBottleneck))
