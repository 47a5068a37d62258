"""Folding batch-norm into the preceding convolutions: the same maths in fewer kernels, for inference and export."""

from __future__ import annotations

from torch import nn

__all__ = ["fold_batchnorm"]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode ``Conv2d -> BatchNorm2d`` pair into the convolution (in place).

    Works on the module tree of our ResNets: a BN whose input is the output of the conv that
    precedes it in the same block (``convN``/``bnN`` pairs, stem, deep stem, projection shortcuts) is folded
    and replaced by ``Identity``. Pre-activation BNs (before a conv) and BNs after a pooling layer (the
    ``conv_pool_bn`` stage entry) are left alone.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    # (conv's parent, conv's name, BN's parent, BN's name)
    pairs: list[tuple[nn.Module, str, nn.Module, str]] = []
    for parent in model.modules():
        names = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            # in a Sequential only neighbours pair: conv, max-pool, BN of a pooled stage entry cannot fold
            keys = list(names)
            for a, b in zip(keys, keys[1:]):
                if isinstance(names[a], nn.Conv2d) and isinstance(names[b], nn.BatchNorm2d):
                    pairs.append((parent, a, parent, b))
            continue
        for cname, child in names.items():
            bname = "bn" + cname[4:]
            if not (cname.startswith("conv") and isinstance(names.get(bname), nn.BatchNorm2d)) or _is_preact(parent):
                continue
            if isinstance(child, nn.Conv2d):
                pairs.append((parent, cname, parent, bname))
            elif isinstance(child, nn.Sequential) and len(child) and isinstance(child[-1], nn.Conv2d):
                pairs.append((child, str(len(child) - 1), parent, bname))  # a deep stem (ResNet-D) and its bn1
    for conv_parent, cname, bn_parent, bname in pairs:
        conv, bn = getattr(conv_parent, cname), getattr(bn_parent, bname)
        if conv.out_channels != bn.num_features:
            continue
        setattr(conv_parent, cname, fuse_conv_bn_eval(conv, bn))
        setattr(bn_parent, bname, nn.Identity())
    return model


def _is_preact(block: nn.Module) -> bool:
    from .resnet import PreActBasicBlock, PreActBottleneck

    return isinstance(block, (PreActBasicBlock, PreActBottleneck))
