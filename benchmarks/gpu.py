"""ResNet-50 on a GPU: resnet-tune's trainer and Predictor against torchvision, in one run, on synthetic data.

Written for a lent H100/H200 (its own Python 3.12, torch 2.11, torchvision 0.26, no internet): run it from the
repository root as ``PYTHONPATH=src python benchmarks/gpu.py`` (nothing is installed, so torch stays as it is; the
project's other run-time packages -- safetensors, PyYAML, tqdm, Pillow, numpy, matplotlib -- must be importable
there, or carried in a folder of wheels and installed with ``pip install --no-index --find-links``). Planned to
finish in under 8 minutes there. It also runs a few steps on a CPU
(``--device cpu --size 32 --batch 2 --steps 1 --no-compile``), which is how the test suite checks it.

Training (img/s, one step = 3x the forward FLOPs):
- torchvision plain loop: fp32, NCHW, SGD;
- torchvision best: AMP (bf16 where supported) + channels_last + torch.compile;
- resnet-tune ``fit`` defaults (AMP + channels_last chosen by the hardware) and ``fit(compile=True)``, both on
  ``synthetic:N`` data held on the device, their own images/s of the last epoch.
Inference (batch --batch, img/s): torchvision eager fp32 vs the ``Predictor`` (folded BatchNorm, fp16 on
GPUs) with and without compile. Plus the measured matmul peak and the fraction of it each reaches.

    PYTHONPATH=src python benchmarks/gpu.py       # on the GPU machine
    python benchmarks/gpu.py --device cpu --size 32 --batch 2 --steps 1 --no-compile
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, matmul_peak, timed  # noqa: E402

import resnet_tune as rt  # noqa: E402
from resnet_tune import fit  # noqa: E402


def amp_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def torchvision_train(device: torch.device, size: int, batch: int, steps: int, best: bool, compile_: bool) -> float:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=1000).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    if best:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fwd = torch.compile(model) if compile_ else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dtype = amp_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=best and dtype == torch.float16)

    def run() -> None:
        for _ in range(steps):
            with torch.autocast(device.type, dtype=dtype, enabled=best):
                loss = F.cross_entropy(fwd(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    return batch * steps / timed(run, repeats=3, warmup=1)


def ours_train(device: torch.device, size: int, batch: int, steps: int, compile_: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        res = fit(data=f"synthetic:{batch * steps}", model="resnet50", img_size=size, batch_size=batch, epochs=3,
                  device=str(device), compile=compile_, output=f"{tmp}/run", progress=False, quiet=True)
    return res.history[-1]["images_per_s"]


def inference(device: torch.device, size: int, batch: int, compile_: bool) -> list[tuple[str, float, bool]]:
    import torchvision

    from resnet_tune.data.transforms import Preprocessing
    from resnet_tune.engine.checkpoint import model_record, save_checkpoint
    from resnet_tune import Predictor

    torch.manual_seed(0)
    model = rt.create_model("resnet50").eval()
    tv = torchvision.models.resnet50().eval()
    tv.load_state_dict(model.state_dict())
    tv = tv.to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pp = Preprocessing.for_size(size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        ck = save_checkpoint(Path(tmp) / "m.safetensors", model,
                             model_record(model, classes=[str(i) for i in range(1000)], preprocessing=pp.to_dict()))
        with torch.inference_mode():
            rows.append(("torchvision eager fp32", batch / timed(lambda: tv(x), repeats=5, warmup=2), False))
            for comp in ([False, True] if compile_ else [False]):
                pred = Predictor(ck, device=str(device), compile=comp)
                name = f"resnet-tune Predictor ({pred.precision.name}, folded BN{', compiled' if comp else ''})"
                rows.append((name, batch / timed(lambda: pred.logits(x), repeats=5, warmup=3), True))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20, help="training steps a timed window (and an epoch of ours)")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    device = torch.device(args.device)
    t_start = time.perf_counter()
    print(header(3), flush=True)
    gflop = rt.model_info("resnet50", (3, args.size, args.size)).gflops
    dtype = amp_dtype(device)
    peak = matmul_peak(dtype, n=8192 if device.type == "cuda" else 1024, device=args.device)
    print(f"measured matmul peak ({str(dtype).replace('torch.', '')}): {peak:.0f} GFLOP/s; ResNet-50 forward "
          f"{gflop:.2f} GFLOP/image at {args.size}", flush=True)

    train = [("torchvision plain loop, fp32", torchvision_train(device, args.size, args.batch, args.steps, False,
                                                                False))]
    if args.compile:
        train.append(("torchvision AMP + channels_last + compile",
                      torchvision_train(device, args.size, args.batch, args.steps, True, True)))
    else:
        train.append(("torchvision AMP + channels_last",
                      torchvision_train(device, args.size, args.batch, args.steps, True, False)))
    train.append(("resnet-tune fit() defaults", ours_train(device, args.size, args.batch, args.steps, False)))
    if args.compile:
        train.append(("resnet-tune fit(compile=True)", ours_train(device, args.size, args.batch, args.steps, True)))
    base = train[0][1]
    print(f"\nTraining, ResNet-50 at {args.size}, batch {args.batch}\n\n| loop | img/s | of peak | vs plain |\n"
          "|---|---|---|---|")
    for name, ips in train:
        print(f"| {name} | {ips:.1f} | {100 * ips * 3 * gflop / peak:.0f}% | {ips / base:.2f}x |")
    infer = inference(device, args.size, args.batch, args.compile)
    print(f"\nInference, batch {args.batch}\n\n| engine | img/s | of peak | vs eager fp32 |\n|---|---|---|---|")
    for name, ips, _ in infer:
        print(f"| {name} | {ips:.1f} | {100 * ips * gflop / peak:.0f}% | {ips / infer[0][1]:.2f}x |")
    print(f"\n(total {time.perf_counter() - t_start:.0f} s; command: {' '.join(sys.argv)})")
    if args.json:
        args.json.write_text(json.dumps({"peak_gflops": peak, "train": train, "inference": infer}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
