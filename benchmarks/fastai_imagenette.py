"""The peer reference for issue 12's Imagenette target: fastai's own leaderboard recipe, run by fastai, on our data.

The fast.ai Imagenette leaderboard's 128 px / 5 epoch figures come from fastai's ``nbs/examples/train_imagenette.py``
on the 320 px aspect-preserved copy. This runs that script's recipe unchanged where it can be (fastai's
``XResNet``, ``RandomResizedCrop(size, min_scale=0.35)`` + flip, ImageNet normalisation, ``ranger`` with mom 0.9,
sqr_mom 0.99, eps 1e-6, ``LabelSmoothingCrossEntropy``, ``fit_flat_cos(epochs, lr=1e-2, wd=1e-2)``, batch 64) on
the split ``benchmarks/recipes.py`` selects on (a CSV of ``path,label,split`` with ``train`` and ``val`` = the
held-out part of Imagenette's training folder), on this machine, so that our recipe and fastai's are compared on
the same images, the same held-out split and the same CPU. What differs from the leaderboard is then the data
(our copy is 160 px squashed squares) and the hardware, not the recipe.

fastai is not a dependency of resnet-tune: install it somewhere else, e.g.
``pip install --target /tmp/fat fastai`` and run with ``PYTHONPATH=/tmp/fat``::

    PYTHONPATH=/tmp/fat python benchmarks/fastai_imagenette.py --csv /work/bench_runs/recipes/imagenette_select.csv \\
        --arch mini --act mish --seed 0 --bf16

``--arch mini`` is the leaderboard's "mini net" (``XResNet(SEResNeXtBlock, 1, [1, 1, 1, 1], groups=64,
reduction=8)``); ``xresnet50`` is the script's default. Finished runs go into the ledger
(``benchmarks/results/fastai_imagenette/<arch>-<act>-<epochs>ep[-bf16]/seed<N>.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

from resnet_tune.models.resnet import ACT_LAYERS

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_name, ledger_write  # noqa: E402


class CpuBf16(nn.Module):
    """``model`` under CPU bfloat16 autocast with channels-last activations; float32 outputs for the loss (fastai's
    ``to_bf16()`` autocasts for CUDA only)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.m(x.contiguous(memory_format=torch.channels_last)).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", type=Path, required=True, help="path,label,split (train / val) as recipes.py writes")
    ap.add_argument("--arch", default="mini", choices=("mini", "xresnet50", "xresnet18"))
    ap.add_argument("--act", default="mish", choices=tuple(ACT_LAYERS))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast and channels-last on a CPU, as our "
                    "trainer runs there")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: fastai's)")
    args = ap.parse_args()

    import pandas as pd
    from fastai.vision.all import (CategoryBlock, ColReader, ColSplitter, DataBlock, FlipItem, ImageBlock, Learner,
                                   LabelSmoothingCrossEntropy, Normalize, RandomResizedCrop, accuracy,
                                   imagenet_stats, ranger, set_seed)
    from fastai.vision.models.xresnet import SEResNeXtBlock, XResNet, xresnet18, xresnet50

    act = ACT_LAYERS[args.act]
    df = pd.read_csv(args.csv)
    df = df[df["split"].isin(["train", "val"])].reset_index(drop=True)
    df["is_valid"] = df["split"] == "val"
    set_seed(args.seed, reproducible=False)
    dblock = DataBlock(blocks=(ImageBlock, CategoryBlock), get_x=ColReader("path"), get_y=ColReader("label"),
                       splitter=ColSplitter("is_valid"),
                       item_tfms=[RandomResizedCrop(args.size, min_scale=0.35), FlipItem(0.5)],
                       batch_tfms=[Normalize.from_stats(*imagenet_stats)])
    kw = {} if args.workers is None else {"num_workers": args.workers}
    dls = dblock.dataloaders(df, bs=args.bs, device=torch.device("cpu"), **kw)
    n_out = len(dls.vocab)
    if args.arch == "mini":
        model = XResNet(SEResNeXtBlock, 1, [1, 1, 1, 1], n_out=n_out, act_cls=act, groups=64, reduction=8)
    else:
        model = {"xresnet50": xresnet50, "xresnet18": xresnet18}[args.arch](n_out=n_out, act_cls=act)
    opt = partial(ranger, mom=0.9, sqr_mom=0.99, eps=1e-6, beta=0.0)  # the script's opt_func
    learn = Learner(dls, model, opt_func=opt, metrics=[accuracy], loss_func=LabelSmoothingCrossEntropy())
    if args.bf16:  # on a CPU, autocast the forward pass as our trainer does
        learn.model = CpuBf16(learn.model)
    print(f"CPU: {cpu_name()}; fastai recipe, {args.arch} ({args.act}), {len(dls.train_ds)} training / "
          f"{len(dls.valid_ds)} held-out images, {args.size} px, {args.epochs} epochs, seed {args.seed}", flush=True)
    t0 = time.perf_counter()
    with learn.no_bar():
        learn.fit_flat_cos(args.epochs, args.lr, wd=1e-2)
    seconds = time.perf_counter() - t0
    acc = float(learn.recorder.values[-1][2])
    print(f"held-out {acc:.4f} in {seconds / 60:.1f} min", flush=True)
    import fastai

    key = f"{args.arch}-{args.act}-{args.epochs}ep" + ("-bf16" if args.bf16 else "")
    res = {"test_acc": acc, "split": "validation", "seconds": seconds,
           "history": [[float(v) for v in row] for row in learn.recorder.values],
           "command": "python benchmarks/fastai_imagenette.py " + " ".join(sys.argv[1:])}
    print(ledger_write("fastai_imagenette", key, args.seed, res, fastai=fastai.__version__))


if __name__ == "__main__":
    main()
