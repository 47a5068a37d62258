"""CPU inference, every engine in one process (issue 14): torchvision eager fp32, resnet-tune's torch path, ONNX
Runtime fp32 and int8, OpenVINO fp32/bf16 (latency and throughput hints) and int8, and what ``--backend auto``
picks, on ResNet-18 and ResNet-50 at 224 px with random weights.

For each engine: batch-1 latency (median and p99 of ``--calls`` single calls) and batch-``--batch`` throughput
(median of ``--repeats`` windows, with the slowest and fastest window as the spread). The int8 models are
calibrated on random images here (speed only; the accuracy cost of int8 is measured on a real validation set by
``--accuracy-run``). ``auto`` is timed as it answers (its chosen engines), and its ratio to the fastest engine of
the same run is printed for both regimes. ``--serve`` also loads the web service on loopback with ``--backend
auto`` and with torch (``benchmarks/serve_load.py``), and ``--accuracy-run RUN --calibration DIR`` exports RUN to
int8 ONNX and OpenVINO and reports the top-1 accuracy on its validation split against float.

    python benchmarks/inference.py --models resnet18 resnet50 --serve \\
        --accuracy-run /work/bench_runs/small/pretrain_r18_64 --calibration ../shared/data/imagenette/train
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from common import header, measured_peaks, peaks_line  # noqa: E402

import resnet_tune as rt  # noqa: E402
from resnet_tune.data.transforms import Preprocessing  # noqa: E402
from resnet_tune.engine.checkpoint import model_record, save_checkpoint  # noqa: E402
from resnet_tune.export.exporter import export, quantise_file  # noqa: E402
from resnet_tune.inference import engines as E  # noqa: E402


def call_times(fn: Callable[[], Any], calls: int, warm: int) -> list[float]:
    """Seconds of each of ``calls`` calls of ``fn`` after ``warm`` untimed ones, sorted."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)


def latency(fn: Callable[[], Any], calls: int) -> tuple[float, float]:
    """Median and p99 seconds of single calls (after 3 warm-up calls)."""
    times = call_times(fn, calls, warm=3)
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]


def throughput(fn: Callable[[], Any], repeats: int) -> tuple[float, float, float]:
    """Median, slowest and fastest seconds of a batch call over ``repeats`` windows (after one warm-up)."""
    times = call_times(fn, repeats, warm=1)
    return statistics.median(times), times[-1], times[0]


Engines = dict[str, tuple[str, Callable[[torch.Tensor], Any]]]


def engines_for(name: str, size: int, tmp: Path) -> tuple[Path, Path | None, Engines, float]:
    """A random-weight checkpoint of ``name``, its int8 ONNX, and every engine on them (label -> (group, callable
    on a batch)); the groups are ``float`` and ``int8``."""
    torch.manual_seed(0)
    model = rt.create_model(name).eval()
    info = rt.model_info(name, (3, size, size))
    pp = Preprocessing.for_size(size, info.mean, info.std)
    record = model_record(model, classes=[str(i) for i in range(1000)], preprocessing=pp.to_dict())
    ck = save_checkpoint(tmp / name / "best.safetensors", model, record)
    tv = getattr(torchvision.models, name)()
    tv.load_state_dict(model.state_dict())
    tv.eval()
    out: Engines = {"torchvision eager fp32": ("float", lambda x: tv(x))}
    ours = rt.Predictor(ck, device="cpu", backend="torch")
    out[f"resnet-tune torch ({ours.precision.name}, folded BN)"] = ("float", ours.forward)
    int8 = None
    if E.installed("onnxruntime"):
        float_onnx = Path(ours.onnx_file())
        out["ONNX Runtime fp32"] = ("float", E.OnnxRuntimeEngine(float_onnx))
        calib = [np.random.default_rng(i).standard_normal((16, 3, size, size)).astype(np.float32) for i in range(4)]
        int8 = tmp / name / "model.int8.onnx"
        quantise_file("onnx", float_onnx, int8, calib, record)
        out["ONNX Runtime int8 (QDQ, per-channel)"] = ("int8", E.OnnxRuntimeEngine(int8))
        if E.installed("openvino"):
            for prec in ("fp32", "bf16"):
                out[f"OpenVINO {prec} latency hint"] = ("float", E.OpenVinoEngine(float_onnx, "LATENCY", prec))
                out[f"OpenVINO {prec} throughput hint"] = ("float", E.OpenVinoEngine(float_onnx, "THROUGHPUT", prec))
            for hint in ("LATENCY", "THROUGHPUT"):
                out[f"OpenVINO on the int8 ONNX, {hint.lower()} hint"] = (
                    "int8", E.OpenVinoEngine(int8, hint, ours.precision.name))
            ov_int8 = tmp / name / "model.int8.xml"
            quantise_file("openvino", float_onnx, ov_int8, calib, record)
            out["OpenVINO int8 (NNCF IR), latency hint"] = ("int8 IR", E.OpenVinoEngine(ov_int8, "LATENCY", "fp32"))
            out["OpenVINO int8 (NNCF IR), throughput hint"] = ("int8 IR", E.OpenVinoEngine(ov_int8, "THROUGHPUT",
                                                                                              "fp32"))
    return ck, int8, out, info.gflops


def bench_model(name: str, args: argparse.Namespace, tmp: Path, peaks: dict[str, tuple[float, float]]
                ) -> dict[str, Any]:
    ck, int8, engines, gflop = engines_for(name, args.size, tmp)
    xb = torch.randn(args.batch, 3, args.size, args.size)
    x1 = xb[:1]
    todo: list[tuple[str, str, Callable[[torch.Tensor], Any], dict[str, Any]]] = [
        (label, group, fn, {}) for label, (group, fn) in engines.items()]
    # auto, as a user gets it: on the checkpoint (float engines) and on the int8 ONNX file
    for group, source in (("float", ck), ("int8", int8)):
        if source is not None:
            said: list[str] = []
            auto = rt.Predictor(source, device="cpu", backend="auto", auto_batch=args.batch, say=said.append)
            label = f"**auto ({group})**: {auto.engine_single.describe()} / {auto.engine_batch.describe()}"
            todo.append((label, group, auto.forward, {"auto": True, "said": said}))
    # every engine once per round, rounds interleaved: a slow spell of the machine hits all engines alike
    per: dict[str, list[tuple[float, float, float]]] = {label: [] for label, *_ in todo}
    with torch.inference_mode():
        for r in range(args.rounds):
            for label, _, fn, _ in todo:
                med1, p99 = latency(lambda: fn(x1), args.calls)
                medb, _, _ = throughput(lambda: fn(xb), args.repeats)
                per[label].append((med1, p99, medb))
                print(f"  round {r + 1} {label}: batch 1 {med1 * 1e3:.2f} ms (p99 {p99 * 1e3:.2f}), batch "
                      f"{args.batch} {args.batch / medb:.1f} img/s", flush=True)
    rows = []
    for label, group, _, extra in todo:
        runs = per[label]
        b1 = [m for m, _, _ in runs]
        bs = [args.batch / t for _, _, t in runs]
        rows.append({"engine": label, "group": group, "b1_ms": 1e3 * statistics.median(b1),
                     "b1_range": (1e3 * min(b1), 1e3 * max(b1)), "b1_p99_ms": 1e3 * max(p for _, p, _ in runs),
                     "batch_ips": statistics.median(bs), "batch_ips_range": (min(bs), max(bs)), **extra})
    plain = [r for r in rows if not r.get("auto")]
    autos = [r for r in rows if r.get("auto")]
    for a in autos:
        group = [r for r in plain if r["group"] == a["group"]]
        a["vs_best_b1"] = min(r["b1_ms"] for r in group) / a["b1_ms"]
        a["vs_best_batch"] = a["batch_ips"] / max(r["batch_ips"] for r in group)
    return {"model": name, "gflop": gflop, "rows": plain, "autos": autos, "checkpoint": str(ck), "peaks": peaks}


def markdown(res: dict[str, Any], batch: int, rounds: int) -> str:
    lines = [f"**{res['model']}** at 224 px ({res['gflop']:.2f} GFLOP an image); medians over {rounds} interleaved "
             "rounds (range: the rounds' lowest-highest)", "",
             f"| engine | batch 1: median ms (range) | p99 ms (worst round) | batch {batch}: img/s (range) | GFLOP/s "
             "(% of the fp32 / bf16 matmul peak) |", "|---|---|---|---|---|"]
    fp32, bf16 = res["peaks"]["fp32"][0], res["peaks"]["bf16"][0]
    for r in [*res["rows"], *res["autos"]]:
        lo, hi = r["batch_ips_range"]
        gf = r["batch_ips"] * res["gflop"]
        lines.append(f"| {r['engine']} | {r['b1_ms']:.2f} ({r['b1_range'][0]:.2f}-{r['b1_range'][1]:.2f}) | "
                     f"{r['b1_p99_ms']:.2f} | {r['batch_ips']:.1f} ({lo:.1f}-{hi:.1f}) | {gf:.0f} "
                     f"({100 * gf / fp32:.0f}% / {100 * gf / bf16:.0f}%) |")
    lines.append("")
    for a in res["autos"]:
        lines.append(f"auto on the {a['group']} model against the fastest {a['group']} engine measured: batch 1 "
                     f"{100 * a['vs_best_b1']:.1f}%, batch {batch} {100 * a['vs_best_batch']:.1f}% of its speed")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--calls", type=int, default=30, help="single-image calls timed for the latency, each round")
    ap.add_argument("--repeats", type=int, default=3, help="batch windows timed for the throughput, each round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all engines")
    ap.add_argument("--serve", action="store_true", help="also load the web service (auto vs torch)")
    ap.add_argument("--serve-requests", type=int, default=400)
    ap.add_argument("--accuracy-run", type=Path, help="a classification run to export to int8 (accuracy drop)")
    ap.add_argument("--calibration", type=Path, help="calibration images for --accuracy-run")
    ap.add_argument("--json", type=Path, help="write the raw figures here")
    args = ap.parse_args()

    print(header(args.repeats))
    print(f"backends: {E.engine_versions()}")
    peaks = measured_peaks()
    print(peaks_line(peaks), flush=True)
    tmp = Path(tempfile.mkdtemp())
    results: dict[str, Any] = {"models": []}
    for name in args.models:
        print(f"{name}:", flush=True)
        res = bench_model(name, args, tmp, peaks)
        results["models"].append(res)
        print(markdown(res, args.batch, args.rounds), flush=True)
    if args.serve:
        import serve_load

        payload_size = 256
        payloads = serve_load.image_payloads(16, payload_size)
        ck = Path(results["models"][0]["checkpoint"])
        results["serve"] = []
        for backend in ("torch", "auto"):
            ns = argparse.Namespace(requests=args.serve_requests, concurrency=16, warmup=40,
                                    server_threads=torch.get_num_threads(), backend=backend)
            row = serve_load.run_mode(ck, True, ns, payloads)
            results["serve"].append({"backend": backend, **row})
            print(f"serve {results['models'][0]['model']} --backend {backend} ({row['backend']}): "
                  f"{row['rps']:.1f} requests/s, p50 {row['p50']:.0f} ms, p99 {row['p99']:.0f} ms, "
                  f"{row['ok']}/{row['requests']} ok", flush=True)
    if args.accuracy_run is not None:
        results["int8_accuracy"] = []
        for fmt in ("onnx", "openvino"):
            report = export(args.accuracy_run, fmt, tmp / f"acc.int8.{fmt}" if fmt == "onnx" else
                            tmp / "acc.int8.xml", int8=True, calibration=args.calibration, max_drop=100.0)
            results["int8_accuracy"].append({"format": fmt, **(report.int8 or {})})
            print(report.summary(), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
