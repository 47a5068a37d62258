"""``resnet-tune serve`` (the web service) and ``resnet-tune explain`` (a Grad-CAM overlay PNG)."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import sys
from typing import Any, Callable

TOKEN_ENV = "RESNET_TUNE_TOKEN"


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..serve.server import require_serving_extra, run_server

    require_serving_extra()
    from ..serve.http import create_app

    for name in ("max_upload_mb", "max_files", "max_pixels", "max_queue", "request_timeout"):
        value = getattr(args, name)
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}.")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}.")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and token is None:
        print(f"warning: serving on {args.host} without a token: anyone who can reach this address can use the "
              f"model. Pass --token TOKEN (or set {TOKEN_ENV}) to require 'Authorization: Bearer TOKEN'.",
              file=sys.stderr)
    app = create_app(args.checkpoint, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                     max_files=args.max_files, max_pixels=args.max_pixels, token=token, batching=args.batch,
                     max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, device=args.device, backend=args.backend,
                     max_queue=args.max_queue, request_timeout=args.request_timeout)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {args.checkpoint} on http://{host}:{args.port}/ (batching {'on' if args.batch else 'off'}"
          f"{', token required' if token else ''}); Ctrl-C stops", flush=True)
    run_server(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data.images import load_image
    from ..tasks import Predictor

    pred = Predictor(args.checkpoint, device="cpu", precision="fp32")
    image, info = pred.explain(load_image(args.image), args.class_name)
    out = Path(args.output) if args.output else Path(args.image).with_suffix(".gradcam.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    if "class" in info:
        print(f"Grad-CAM for class {info['class']} (probability {info['prob']:.3f}) written to {out}")
    else:
        print(f"mask overlay written to {out}")
    return 0


def register(add: Callable[..., Any]) -> None:
    p = add("serve", cmd_serve, "serve a model over HTTP with a web page (predict, Grad-CAM or masks)",
            "Serve a checkpoint: POST /predict (multipart 'file' fields or a raw image body), POST /explain "
            "(Grad-CAM PNG), GET /health, GET /model, a web page at /, the schema at /openapi.json. A segmentation "
            "checkpoint answers /predict with each class's share of the pixels and /explain with the mask over "
            "the image. Needs pip install 'resnet-tune[serve]'.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a run folder (its best checkpoint) or a .safetensors "
                                                            "checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (anything but loopback should use --token)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body in MiB")
    p.add_argument("--max-files", type=int, default=16, help="most images in one request")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image (width x height), checked "
                                                                       "from the header before decoding")
    p.add_argument("--token", help=f"require 'Authorization: Bearer TOKEN' on POST endpoints; when not given, "
                                   f"${TOKEN_ENV} is used if set")
    p.add_argument("--batch", action=argparse.BooleanOptionalAction, default=True,
                   help="micro-batch concurrent requests into shared forward passes")
    p.add_argument("--max-batch", type=int, default=32, help="most images in one batched forward pass")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a batch waits for more requests")
    p.add_argument("--max-queue", type=int, default=64,
                   help="most POST requests in progress at once (receiving, decoding, waiting for or in the model); "
                        "one more gets 429 with Retry-After")
    p.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds a client has to send its request body (else 408), and the longest a request waits "
                        "for the model (else 503 with Retry-After)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps, or auto (the best available)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "openvino"],
                   help="inference engine; auto times the installed ones on this checkpoint at batch 1 and at "
                        "--max-batch and answers with the fastest for each (cached; shown at GET /model); "
                        "Grad-CAM (/explain) always runs on torch. An exported .onnx/.xml file (an int8 model, say) "
                        "runs on onnxruntime or openvino")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=False,
                   help="log every request")

    p = add("explain", cmd_explain, "Grad-CAM heat-map of an image as an overlay PNG",
            "Where in IMAGE the evidence for a class lies (Grad-CAM on the last stage), blended over the part of "
            "the image the model sees.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a run folder or a .safetensors checkpoint")
    p.add_argument("image", metavar="IMAGE", help="the image to explain")
    p.add_argument("--output", "-o", help="the PNG to write (default: IMAGE.gradcam.png beside the image)")
    p.add_argument("--class", dest="class_name", metavar="NAME", help="class to explain (default: the predicted "
                                                                      "one)")
