"""The cost of an activation on this machine: forward + backward of ReLU, Mish and SiLU on a tensor the size of
``resnet18d``'s first-stage activations at 128 px (batch 64, 64 channels, 32 x 32), bf16, channels-last, in place
as the network runs them (``act_layer``), and ATen's own ``nn.Mish`` (what ``mish`` ran before its compiled
kernels). Then the forward alone without gradients (a validation pass; ``mish`` runs its compiled forward there
once training built it, as the first part did). ReLU is the baseline; each figure is the median of ``--repeats``
windows.

    python benchmarks/activations.py [--repeats 5 --steps 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from resnet_tune.models.resnet import ACT_LAYERS, make_act

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, timed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="forward + backward passes a timed window")
    ap.add_argument("--shape", type=int, nargs=4, default=[64, 64, 32, 32])
    args = ap.parse_args()
    print(header(args.repeats))
    torch.manual_seed(0)
    x0 = torch.randn(*args.shape, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    base = None
    acts = {name: make_act(name) for name in ACT_LAYERS}  # relu first: the baseline
    acts["mish (ATen's nn.Mish)"] = torch.nn.Mish(inplace=True)
    for name, act in acts.items():

        def window() -> None:
            for _ in range(args.steps):
                x = x0.clone().requires_grad_()
                y = act(x * 1.0)  # in place on a non-leaf, as after a BatchNorm
                y.backward(torch.ones_like(y))

        ms = timed(window, repeats=args.repeats) / args.steps * 1000
        base = base or ms
        print(f"{name}: {ms:.2f} ms forward + backward of {tuple(args.shape)} bf16 ({ms / base:.2f}x ReLU)")
    base = None
    for name, act in acts.items():

        def forward_only() -> None:
            with torch.inference_mode():
                for _ in range(args.steps):
                    act(x0.clone())

        ms = timed(forward_only, repeats=args.repeats) / args.steps * 1000
        base = base or ms
        print(f"{name}: {ms:.2f} ms forward without gradients ({ms / base:.2f}x ReLU)")


if __name__ == "__main__":
    main()
