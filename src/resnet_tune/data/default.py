"""The embedded default dataset: scikit-learn's handwritten digits, as small RGB images.

1,797 8x8 grey-level scans (values 0-16) of the digits 0-9 (the UCI "optdigits" test set),
shipped inside scikit-learn, so ``resnet-tune train`` works without a download.
"""

from __future__ import annotations

import torch

CLASSES = [str(i) for i in range(10)]
MEAN = (0.3, 0.3, 0.3)
STD = (0.33, 0.33, 0.33)
#: epochs ``resnet-tune train`` trains on these digits when ``--epochs`` is not given: the demo must stay at
#: >= 97% held-out in under two minutes on every 2-core CPU it meets. On an AMD EPYC without AVX-512 (fp32) the
#: default network took 170 s for 15 epochs; 6 epochs gave 98.6-99.7% best held-out accuracy in 74-78 s, 8 epochs
#: 99.4-100% in 99-110 s (3 seeds each; benchmarks/RESULTS.md, "The main job")
DEMO_EPOCHS = 6


def load_digits_images(size: int = 32, val_fraction: float = 0.2, seed: int = 0
                       ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], list[str]]:
    """Train and held-out splits as uint8 (N, 3, size, size) tensors and labels (stratified, seeded)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().div(16.0).mul(255.0)[:, None]  # (N, 1, 8, 8) in 0..255
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(digits.target).long()
    idx_train, idx_val = train_test_split(torch.arange(len(y)).numpy(), test_size=val_fraction,
                                          random_state=seed, stratify=y.numpy())
    idx_train, idx_val = torch.from_numpy(idx_train), torch.from_numpy(idx_val)
    return (x[idx_train], y[idx_train]), (x[idx_val], y[idx_val]), list(CLASSES)
