"""Load check of ``resnet-tune serve`` (not a test): throughput, latency percentiles and 5xx count.

Starts the server on loopback (a real ``python -m resnet_tune serve`` process), sends a bounded number of
``POST /predict`` requests (one small PNG each, multipart) from concurrent asyncio clients, once with
micro-batching on and once with it off, and prints a Markdown table with the hardware and versions::

    python benchmarks/serve_load.py                              # resnet20 at 32 px, 2000 requests, 16 clients
    python benchmarks/serve_load.py --checkpoint runs/x --requests 500 --concurrency 8 --output results.md

Without ``--checkpoint`` it serves a freshly initialised resnet20 (CIFAR size, 10 classes): the weights do not
matter for speed. Every 5xx is counted and reported; there must be none.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_checkpoint(folder: Path, model: str, size: int) -> Path:
    import resnet_tune as rt
    from resnet_tune.data.transforms import Preprocessing
    from resnet_tune.engine import checkpoint as ckpt

    net = rt.create_model(model, num_classes=10).eval()
    pp = Preprocessing.for_size(size, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    rec = ckpt.model_record(net, classes=[f"class{i}" for i in range(10)], preprocessing=pp.to_dict())
    return ckpt.save_checkpoint(folder / "best.safetensors", net, rec).parent


def image_payloads(n: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def _load(url: str, payloads: list[bytes], requests: int, concurrency: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    codes: dict[int, int] = {}
    errors = 0
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def worker() -> None:
            nonlocal errors
            for i in counter:
                data = payloads[i % len(payloads)]
                t0 = time.perf_counter()
                try:
                    r = await client.post(url + "/predict?top_k=1", files={"file": (f"{i}.png", data, "image/png")})
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"latencies": latencies, "codes": codes, "errors": errors, "wall": wall}


def run_mode(checkpoint: Path, batching: bool, args: argparse.Namespace, payloads: list[bytes]) -> dict[str, Any]:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.server_threads))
    cmd = [sys.executable, "-m", "resnet_tune", "serve", str(checkpoint), "--port", str(port), "--log-level",
           "warning", "--device", "cpu", "--batch" if batching else "--no-batch",
           "--backend", getattr(args, "backend", "torch")]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise SystemExit(f"server exited:\n{log.read().decode(errors='replace')}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not start")
            time.sleep(0.2)
        asyncio.run(_load(url, payloads, args.warmup, min(args.concurrency, args.warmup)))  # warm-up
        before = httpx.get(url + "/model").json()["server"]
        res = asyncio.run(_load(url, payloads, args.requests, args.concurrency))
        after = httpx.get(url + "/model").json()["server"]
        healthy = httpx.get(url + "/health").status_code == 200 and proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    lat = [x * 1000 for x in res["latencies"]]
    ok = res["codes"].get(200, 0)
    passes = (after["forward_passes"] - before["forward_passes"]) if batching else None
    return {
        "mode": "on" if batching else "off",
        "backend": after.get("backend", {}).get("batch" if batching else "single", getattr(args, "backend", "torch")),
        "requests": args.requests,
        "ok": ok,
        "5xx": sum(v for k, v in res["codes"].items() if k >= 500),
        "4xx": sum(v for k, v in res["codes"].items() if 400 <= k < 500),
        "errors": res["errors"],
        "wall_s": res["wall"],
        "rps": ok / res["wall"],
        "p50": percentile(lat, 50), "p90": percentile(lat, 90), "p99": percentile(lat, 99),
        "mean": statistics.fmean(lat) if lat else float("nan"),
        "mean_batch": (args.requests / passes) if passes else None,
        "healthy_after": healthy,
    }


def hardware() -> dict[str, str]:
    import fastapi
    import torch
    import uvicorn

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(), "torch": torch.__version__,
            "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__, "os": platform.platform()}


def markdown(rows: list[dict[str, Any]], hw: dict[str, str], args: argparse.Namespace, model: str) -> str:
    lines = [
        f"## `resnet-tune serve` load check ({model})",
        "",
        f"{args.requests} `POST /predict` requests (one {args.image_size}x{args.image_size} PNG each, multipart, "
        f"top_k=1) from {args.concurrency} concurrent asyncio clients (httpx) on loopback, after "
        f"{args.warmup} warm-up requests; server `OMP_NUM_THREADS={args.server_threads}`, device cpu, "
        "client and server on the same machine. Produced by `python benchmarks/serve_load.py`.",
        "",
        "| batching | requests | 200 OK | 5xx | 4xx | transport errors | throughput (req/s) | p50 (ms) | p90 (ms) | "
        "p99 (ms) | images per forward pass |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mb = f"{r['mean_batch']:.1f}" if r["mean_batch"] else "1 (off)"
        lines.append(f"| {r['mode']} | {r['requests']} | {r['ok']} | {r['5xx']} | {r['4xx']} | {r['errors']} | "
                     f"{r['rps']:.1f} | {r['p50']:.1f} | {r['p90']:.1f} | {r['p99']:.1f} | {mb} |")
    lines += ["", "Hardware and versions: " + ", ".join(f"{k} {v}" for k, v in hw.items()) + ".", ""]
    healthy = all(r["healthy_after"] for r in rows)
    lines.append(f"Server healthy after each run: {'yes' if healthy else 'NO'}; 5xx responses in total: "
                 f"{sum(r['5xx'] for r in rows)}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="run folder or .safetensors to serve (default: a fresh resnet20 at 32 px)")
    p.add_argument("--model", default="resnet20", help="preset for the default checkpoint")
    p.add_argument("--size", type=int, default=32, help="input size of the default checkpoint")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--image-size", type=int, default=32, help="side of the PNGs sent")
    p.add_argument("--server-threads", type=int, default=1, help="OMP_NUM_THREADS of the server")
    p.add_argument("--modes", default="on,off", help="batching modes to run: on, off or on,off")
    p.add_argument("--backend", default="torch", help="the server's --backend (auto, torch, onnxruntime, openvino)")
    p.add_argument("--output", help="also write the Markdown to this file")
    p.add_argument("--json", help="also write the raw numbers as JSON")
    args = p.parse_args(argv)
    if args.requests < 1 or args.requests > 100_000 or args.concurrency < 1:
        p.error("--requests must be 1..100000 and --concurrency positive")

    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            checkpoint = Path(args.checkpoint)
            from resnet_tune.engine.checkpoint import read_record

            model = read_record(checkpoint).get("model", "model")
        else:
            checkpoint = make_checkpoint(Path(tmp), args.model, args.size)
            model = f"{args.model}, {args.size}x{args.size} input, fresh weights"
        payloads = image_payloads(16, args.image_size)
        rows = []
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            print(f"batching {mode}: {args.requests} requests from {args.concurrency} clients ...", file=sys.stderr,
                  flush=True)
            rows.append(run_mode(checkpoint, mode == "on", args, payloads))
    text = markdown(rows, hardware(), args, model)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 1 if any(r["5xx"] or r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
