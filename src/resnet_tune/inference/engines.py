"""Inference engines behind :class:`~resnet_tune.inference.predictor.Predictor`: PyTorch (the prepared model),
ONNX Runtime and OpenVINO, and ``auto``, which measures the installed ones on the checkpoint and picks the
fastest for single images and for batches.

Every engine is a callable from a batch of normalised images (N, C, H, W, float) to float outputs, so everything
task-specific (softmax, top-k, thresholds) stays in the predictors. ONNX Runtime and OpenVINO run an ONNX file:
the float model of a checkpoint is exported once (batch-norm folded, checked against the eager model) into a
cache folder, or the engine runs a file made by ``resnet-tune export`` (int8 included; OpenVINO also reads its
own ``.xml`` format).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..engine.hardware import forward_chunked
from ..errors import CheckpointError, ConfigError, MissingExtraError

__all__ = ["BACKENDS", "INSTALL", "Engine", "OnnxRuntimeEngine", "OpenVinoEngine", "TorchEngine", "cache_dir",
           "choose_fastest", "engine_versions", "file_digest", "installed", "is_exported_model",
           "read_model_record", "require", "time_engine"]

#: the backends a predictor can run on (``auto`` chooses among the installed ones)
BACKENDS = ("torch", "onnxruntime", "openvino")
#: how to install each optional backend
INSTALL = {"onnxruntime": "pip install 'resnet-tune[onnx]'", "openvino": "pip install 'resnet-tune[openvino]'"}
_MODULE = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}
#: file suffixes of exported models the engines run directly
EXPORTED_SUFFIXES = (".onnx", ".xml")


def installed(name: str) -> bool:
    """Whether backend ``name`` can be imported."""
    import importlib.util

    return importlib.util.find_spec(_MODULE[name]) is not None


def require(name: str) -> None:
    """Raise :class:`MissingExtraError` naming the install command when backend ``name`` is not installed."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose auto, {', '.join(BACKENDS)}.")
    if not installed(name):
        raise MissingExtraError(f"the {name} backend is not installed; install it with {INSTALL[name]}.")


def engine_versions() -> dict[str, str]:
    """The version of each installed backend (part of the key of a cached ``auto`` choice)."""
    import importlib.metadata as md

    out = {}
    for name, dist in (("torch", "torch"), ("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        try:
            out[name] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/resnet-tune`` (``~/.cache/resnet-tune``): exported float models and ``auto``'s timings."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "resnet-tune"


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file (the key of everything cached for a checkpoint)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_exported_model(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an exported model file (ONNX, or OpenVINO's ``.xml``) rather than a checkpoint."""
    return Path(path).suffix.lower() in EXPORTED_SUFFIXES and Path(path).is_file()


def read_model_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The resnet-tune record (classes, preprocessing, task, ...) embedded in an exported ``.onnx`` or ``.xml``."""
    from .onnx import RECORD_KEY

    p = Path(path)
    if p.suffix.lower() == ".xml":
        require("openvino")
        import openvino as ov

        model = ov.Core().read_model(str(p))
        if not model.has_rt_info([RECORD_KEY]):
            raise CheckpointError(f"{p} holds no resnet-tune record; it was not exported by resnet-tune.")
        return json.loads(model.get_rt_info([RECORD_KEY]).astype(str))
    require("onnxruntime")
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for unreadable files
        raise CheckpointError(f"{p} is not a readable ONNX model ({type(err).__name__}).") from None
    meta = sess.get_modelmeta().custom_metadata_map
    if RECORD_KEY not in meta:
        raise CheckpointError(f"{p} holds no resnet-tune record; it was not exported by resnet-tune.")
    return json.loads(meta[RECORD_KEY])


class Engine:
    """A batch of normalised images in, float outputs out (on the CPU unless the engine is torch on a GPU)."""

    #: the backend's name, and how it is set up (for logs and ``GET /model``)
    name: str = ""
    settings: str = ""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} ({self.settings})" if self.settings else self.name


class TorchEngine(Engine):
    """The prepared PyTorch model (batch-norm folded, weights in the compute dtype, channels-last where it pays),
    run under autocast in cache-sized chunks on a CPU."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: Any, channels_last: bool) -> None:
        self.model, self.device, self.precision, self.channels_last = model, device, precision, channels_last
        self.settings = f"{precision.name}{', channels_last' if channels_last else ''}"

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.precision.autocast(self.device):
            return forward_chunked(self.model, x).float()


class OnnxRuntimeEngine(Engine):
    """An ONNX file on ONNX Runtime's CPU provider (all graph optimisations, one intra-op thread per core that
    PyTorch uses)."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        require("onnxruntime")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.settings = f"{opts.intra_op_num_threads} thread(s), {Path(path).name}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(np.asarray(self.session.run(None, {self.input: arr})[0])).float()


class OpenVinoEngine(Engine):
    """An ONNX or OpenVINO ``.xml`` file compiled for OpenVINO's CPU plugin.

    ``hint``: ``LATENCY`` (one stream using every core: single images) or ``THROUGHPUT`` (several streams; a
    batch is split across them and run at once). ``precision``: ``bf16`` lets the plugin compute in bf16 on CPUs
    that have it (its own default there), ``fp32`` keeps float32 (exact parity)."""

    name = "openvino"

    def __init__(self, path: str | os.PathLike[str], hint: str = "LATENCY", precision: str = "fp32",
                 threads: int | None = None) -> None:
        require("openvino")
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint,
                                  "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                                  "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
        model = core.read_model(str(path))
        self.compiled = core.compile_model(model, "CPU", config)
        self.hint = hint
        self.streams = int(self.compiled.get_property("NUM_STREAMS")) if hint == "THROUGHPUT" else 1
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()  # one infer request (and queue): the web service may call from several threads
        self.queue: Any = None
        if self.streams > 1:
            self.queue = ov.AsyncInferQueue(self.compiled, self.streams)
        self.settings = f"{hint.lower()} hint, {self.streams} stream(s), {precision}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().float().numpy())
        with self.lock:
            return self._run(arr)

    def _run(self, arr: np.ndarray) -> torch.Tensor:
        if self.queue is None or arr.shape[0] < 2 * self.streams:
            return torch.from_numpy(np.array(self.request.infer({0: arr})[0])).float()
        chunks = np.array_split(arr, self.streams)
        outs: list[Any] = [None] * len(chunks)

        def done(request: Any, i: int) -> None:
            outs[i] = np.array(request.get_output_tensor(0).data)

        self.queue.set_callback(done)
        for i, c in enumerate(chunks):
            self.queue.start_async({0: np.ascontiguousarray(c)}, i)
        self.queue.wait_all()
        return torch.from_numpy(np.concatenate(outs)).float()


def time_engine(engine: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, warm: int = 2, reps: int = 5
                ) -> float:
    """Median seconds of ``engine(x)`` over ``reps`` calls after ``warm`` warm-up calls."""
    for _ in range(warm):
        engine(x)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        engine(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def choose_fastest(timings: dict[str, dict[int, float]]) -> dict[int, str]:
    """For each batch size measured, the engine with the least seconds per call (``timings[engine][batch]``);
    ties keep the order given (torch first)."""
    batches = sorted({b for t in timings.values() for b in t})
    return {b: min((name for name in timings if b in timings[name]), key=lambda n: timings[n][b]) for b in batches}
