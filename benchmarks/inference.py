"""Inference speed: resnet-tune's Predictor (its defaults) vs torchvision eager fp32 and ONNX Runtime, same run.

Batch-1 latency and batch-64 throughput of ResNet-50 (or --model) at 224x224 on random weights. 'Ours' goes
through the public ``Predictor`` with its default settings (BN folded, bf16 autocast and channels-last where the
CPU has native bf16, CPU batches in cache-sized chunks). Prints img/s, GFLOP/s, the fraction of the measured peaks
(4096 matmul and 3x3 convolution) and the ratio to the baseline.

    python benchmarks/inference.py --model resnet50 --repeats 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from common import header, measured_peaks, peaks_line, timed  # noqa: E402

import resnet_tune as rt  # noqa: E402
from resnet_tune.data.transforms import Preprocessing  # noqa: E402
from resnet_tune.engine.checkpoint import model_record, save_checkpoint  # noqa: E402
from resnet_tune import Predictor  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also measure Predictor(compile=True)")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = rt.create_model(args.model).eval()
    info = rt.model_info(args.model, (3, args.size, args.size))
    gflop_per_img = info.gflops
    tmp = Path(tempfile.mkdtemp())
    pp = Preprocessing.for_size(args.size, info.mean, info.std)
    ck = save_checkpoint(tmp / "m.safetensors", model,
                         model_record(model, classes=[str(i) for i in range(1000)], preprocessing=pp.to_dict()))
    peaks = measured_peaks()
    peak_fp32, peak_bf16 = peaks["fp32"], peaks["bf16"]
    print(header(args.repeats))
    print(f"{peaks_line(peaks)}; {args.model} forward {gflop_per_img:.2f} GFLOP/image at {args.size}")

    tv = getattr(torchvision.models, args.model)() if hasattr(torchvision.models, args.model) else model
    tv.load_state_dict(model.state_dict())
    tv.eval()
    xb = torch.randn(args.batch, 3, args.size, args.size)
    x1 = xb[:1]

    rows = []

    def record(name: str, fn, batch: int, peak: tuple[float, float]) -> float:
        with torch.inference_mode():
            sec = timed(fn, repeats=args.repeats)
        ips = batch / sec
        rows.append((name, batch, sec * 1000, ips, ips * gflop_per_img, ips * gflop_per_img / peak[0],
                     ips * gflop_per_img / peak[1]))
        return ips

    base64 = record("torchvision eager fp32", lambda: tv(xb), args.batch, peak_fp32)
    base1 = record("torchvision eager fp32", lambda: tv(x1), 1, peak_fp32)
    pred = Predictor(ck, device="cpu")
    peak = peak_bf16 if pred.precision.amp_dtype is not None else peak_fp32
    ours64 = record(f"resnet-tune Predictor ({pred.precision.name}, folded BN)", lambda: pred.logits(xb), args.batch,
                    peak)
    ours1 = record(f"resnet-tune Predictor ({pred.precision.name}, folded BN)", lambda: pred.logits(x1), 1, peak)
    if args.compile:
        predc = Predictor(ck, device="cpu", compile=True)
        record("resnet-tune Predictor + compile", lambda: predc.logits(xb), args.batch, peak)
    # the agreement this speed is bought with
    with torch.inference_mode():
        diff = (pred.logits(xb[:8]) - tv(xb[:8])).abs().max().item()
    try:
        import onnxruntime as ort

        onnx_path = tmp / "m.onnx"
        torch.onnx.export(tv, (x1,), str(onnx_path), dynamo=True, dynamic_shapes={"x": {0: "batch"}})
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()  # the same cores as the others
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        xn, x1n = xb.numpy(), x1.numpy()
        record("ONNX Runtime fp32", lambda: sess.run(None, {name: xn}), args.batch, peak_fp32)
        record("ONNX Runtime fp32", lambda: sess.run(None, {name: x1n}), 1, peak_fp32)
    except Exception as err:  # optional baseline
        print(f"(ONNX Runtime not measured: {type(err).__name__}: {str(err)[:100]})")

    print("\n| engine | batch | ms/batch | img/s | GFLOP/s | of matmul peak | of conv peak |\n"
          "|---|---|---|---|---|---|---|")
    for name, b, ms, ips, gf, frac, cfrac in rows:
        print(f"| {name} | {b} | {ms:.1f} | {ips:.1f} | {gf:.0f} | {100 * frac:.0f}% | {100 * cfrac:.0f}% |")
    print(f"\nratio ours / torchvision fp32: batch {args.batch} {ours64 / base64:.2f}x, batch 1 {ours1 / base1:.2f}x; "
          f"max |logit difference| vs eager fp32 on 8 images: {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
