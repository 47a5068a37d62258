"""Training throughput: resnet-tune's trainer (its defaults) vs plain torchvision loops, in the same run.

'Ours' is ``resnet_tune.fit`` on in-memory synthetic images (``data="synthetic:N"``) with default
settings; its images/s is the trainer's own figure for an epoch of --steps batches, the median of --repeats
epochs after a first one (warm-up, compile). The baselines time windows of the same --steps steps (median of
--repeats after one warm-up window): the loop a user would write (torchvision model, SGD, fp32 NCHW), the best
torchvision settings (bf16 autocast + channels_last, optionally + torch.compile) and timm where installed.
A training step counts as 3x the forward FLOPs.

    python benchmarks/train_step.py --model resnet50 --size 224 --batch 32 --steps 5 --compile
    python benchmarks/train_step.py --model resnet20 --size 32 --batch 128 --steps 20

``--ours-only`` prints only fit()'s img/s (no peaks, no baselines): for interleaved before/after series of two
commits, e.g. ``PYTHONPATH=<old checkout>/src python benchmarks/train_step.py --ours-only ...`` alternated with the
current tree (commits before the one-engine redesign are reached through their ``engine.trainer.fit``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import header, measured_peaks, peaks_line, timed  # noqa: E402

import resnet_tune as rt  # noqa: E402
try:
    from resnet_tune import fit  # noqa: E402
except ImportError:  # a commit before the one-engine redesign (for before/after series)
    from resnet_tune.engine.trainer import fit  # noqa: E402


def plain_loop(model_name: str, size: int, batch: int, repeats: int, steps: int, amp: bool, channels_last: bool,
               compile_: bool, timm: bool = False, model_kwargs: dict | None = None) -> float:
    import torchvision

    torch.manual_seed(0)
    if timm:
        import timm as timm_lib

        model = timm_lib.create_model(model_name, num_classes=10)
    elif hasattr(torchvision.models, model_name) and not model_kwargs:
        model = getattr(torchvision.models, model_name)(num_classes=10)
    else:  # CIFAR presets (and architecture options) have no torchvision twin: the same module, the plain loop
        model = rt.create_model(model_name, num_classes=10, **(model_kwargs or {}))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile_ else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def window() -> None:
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(step_model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return batch * steps / timed(window, repeats=repeats, warmup=1)


def ours(model_name: str, size: int, batch: int, repeats: int, steps: int, compile_: bool = False,
         model_kwargs: list[str] | None = None) -> float:
    """The trainer's own training img/s: epochs of ``steps`` batches, the median over ``repeats`` epochs after
    a first (warm-up, compile) one: the same windows as the plain loops."""
    work = Path(tempfile.mkdtemp())
    try:
        res = fit(data=f"synthetic:{batch * steps}", model=model_name, img_size=size, batch_size=batch,
                  epochs=repeats + 1, output=str(work / "run"), progress=False, quiet=True, compile=compile_,
                  **({"model_kwargs": model_kwargs} if model_kwargs else {}))
        return statistics.median(r["images_per_s"] for r in res.history[1:])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed windows (epochs, for ours)")
    ap.add_argument("--steps", type=int, default=5, help="training steps a window")
    ap.add_argument("--compile", action="store_true",
                    help="also time torchvision + bf16 + channels_last + compile, and fit(compile=True)")
    ap.add_argument("--ours-only", action="store_true", help="print only fit()'s img/s (before/after series)")
    ap.add_argument("--model-kwargs", nargs="+", default=[],
                    help="architecture options as KEY=VALUE (resnet-tune's --model-kwargs), for every loop")
    args = ap.parse_args()
    kwargs = None
    if args.model_kwargs:
        from resnet_tune.models import model_kwargs  # (not in commits before --model-kwargs: before/after series)

        kwargs = model_kwargs(args.model_kwargs, args.model)
    if args.ours_only:
        print(f"{ours(args.model, args.size, args.batch, args.repeats, args.steps, False, args.model_kwargs):.2f}")
        return 0

    gflop = 3 * rt.model_info(args.model, (3, args.size, args.size)).gflops  # (pooling order: the same FLOPs)
    peaks = measured_peaks()
    peak_fp32, peak_bf16 = peaks["fp32"], peaks["bf16"]
    print(header(args.repeats))
    print(f"{peaks_line(peaks)}; {args.model} {kwargs or ''} training step {gflop:.2f} GFLOP/image at {args.size}, "
          f"batch {args.batch}")
    rows = []

    def loop(amp: bool, channels_last: bool, compile_: bool = False, timm: bool = False) -> float:
        return plain_loop(args.model, args.size, args.batch, args.repeats, args.steps, amp, channels_last, compile_,
                          timm, kwargs)

    base = loop(False, False)
    rows.append(("torchvision plain loop, fp32", base, peak_fp32))
    rows.append(("torchvision fp32 + channels_last", loop(False, True), peak_fp32))
    rows.append(("torchvision bf16 autocast + channels_last", loop(True, True), peak_bf16))
    rows.append(("torchvision bf16 autocast, NCHW", loop(True, False), peak_bf16))
    try:
        import timm  # noqa: F401

        if timm.is_model(args.model) and not kwargs:
            rows.append(("timm bf16 autocast + channels_last", loop(True, True, timm=True), peak_bf16))
    except ImportError:
        pass
    if args.compile:
        rows.append(("torchvision bf16 + channels_last + compile", loop(True, True, compile_=True), peak_bf16))
    rows.append(("resnet-tune fit() defaults",
                 ours(args.model, args.size, args.batch, args.repeats, args.steps, False, args.model_kwargs), peak_bf16))
    if args.compile:
        rows.append(("resnet-tune fit(compile=True)",
                     ours(args.model, args.size, args.batch, args.repeats, args.steps, True, args.model_kwargs),
                     peak_bf16))
    print("\n| loop | img/s | GFLOP/s | of matmul peak | of conv peak | vs plain fp32 |\n|---|---|---|---|---|---|")
    for name, v, peak in rows:
        print(f"| {name} | {v:.1f} | {v * gflop:.0f} | {100 * v * gflop / peak[0]:.0f}% | "
              f"{100 * v * gflop / peak[1]:.0f}% | {v / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
