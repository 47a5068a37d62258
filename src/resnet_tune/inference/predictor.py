"""Checkpoint -> preprocessing -> outputs: the one inference path for predict, embed, evaluate, export checks and
the web service, for every task.

:class:`Predictor` loads a checkpoint once and keeps two copies of the model: ``eager`` as trained (for Grad-CAM)
and ``model`` prepared for speed: batch-norm folded into the convolutions (same maths, fewer kernels), weights
stored in the compute dtype (bf16 autocast where the CPU has native bf16, fp16/bf16 on GPUs), channels-last
where it pays, and CPU batches run in cache-sized chunks. ``Predictor(checkpoint)`` returns the predictor of the
checkpoint's task (each task registers its subclass); every predictor answers :meth:`predict_images`,
:meth:`predict_files` and :meth:`explain` with the same JSON shapes as the CLI and the web service.

Other inference engines plug in at :meth:`Predictor.forward`: a batch of normalised images in, float outputs
out; everything task-specific is built on it. ``backend`` chooses the engine (:mod:`.engines`): ``torch`` (the
prepared model above), ``onnxruntime``, ``openvino``, or ``auto``, which times the installed ones on this
checkpoint at batch 1 and at the batch size the caller will use and takes the fastest for each (cached per
checkpoint, backend versions and CPU). A predictor may also load an exported ``.onnx``/``.xml`` file (an int8
model from ``resnet-tune export --int8``, say); Grad-CAM and pooled features need the checkpoint's PyTorch
model.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from PIL import Image

from ..engine import checkpoint as ckpt
from ..engine.hardware import Precision, default_channels_last, resolve_device, resolve_precision
from ..errors import CheckpointError, ConfigError, DataError
from . import engines as E
from .onnx import ATOL, RTOL
from ..models import fold_batchnorm

__all__ = ["Predictor"]


class Predictor:
    """Load a checkpoint once, then predict for images, files or tensors.

    Args:
        checkpoint: a run folder (its best checkpoint) or a ``.safetensors`` checkpoint.
        device: ``auto`` (a GPU when there is one), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        precision: ``auto`` (bf16 where the CPU has it, fp16 on GPUs), ``fp32``, ``bf16`` or ``fp16``.
        batch_size: images per forward pass for files and lists of images.
        fold_bn: fold batch-norm into the convolutions (same outputs up to rounding, faster).
        compile: ``torch.compile`` the prepared model.
        backend: ``torch``, ``onnxruntime``, ``openvino`` (CPU engines on a float ONNX export of the checkpoint,
            cached, or on an exported ``.onnx``/``.xml`` file given as ``checkpoint``) or ``auto`` (the fastest
            installed engine for single images and for batches of ``auto_batch``, measured here and cached).
        auto_batch: the batch size ``auto`` times besides 1 (default ``batch_size``; the web service passes its
            largest micro-batch).
        say: a function that receives ``auto``'s one-line account of its choice and timings.
        tta: flip test-time augmentation: the outputs are the mean of the image's and its mirror image's (twice
            the cost; classification and multi-label).
    """

    #: the task of the checkpoints this predictor serves (set by each task's subclass)
    task: ClassVar[str] = ""
    #: whether images can share one forward pass (same size after preprocessing): the web service batches them
    batchable: ClassVar[bool] = True
    #: one sentence for the web service's description
    service_description: ClassVar[str] = ""
    #: the fields a file's JSON has besides ``file`` and ``error`` when it cannot be read
    error_fields: ClassVar[dict[str, Any]] = {}
    _by_task: ClassVar[dict[str, type[Predictor]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.task:
            Predictor._by_task[cls.task] = cls

    def __new__(cls, checkpoint: str | os.PathLike[str] | None = None, *args: Any, **kwargs: Any) -> Predictor:
        if cls is Predictor:  # the predictor of the checkpoint's task
            record = (E.read_model_record(checkpoint) if E.is_exported_model(checkpoint)  # type: ignore[arg-type]
                      else ckpt.read_record(checkpoint))  # type: ignore[arg-type]
            task = record.get("task", "classification")
            sub = Predictor._by_task.get(task)
            if sub is None:
                raise CheckpointError(f"{checkpoint} is a {task} checkpoint, and no predictor for that task is "
                                      "loaded; use resnet_tune.Predictor, which knows every task.")
            return super().__new__(sub)
        return super().__new__(cls)

    #: whether checkpoints of this task may run on engines other than torch (single-output, fixed-size input)
    exportable: ClassVar[bool] = True
    #: whether :meth:`forward`'s outputs may average an image's and its mirror image's (``tta``): not for dense
    #: outputs, whose mirror image would have to be flipped back
    flip_tta: ClassVar[bool] = True

    def __init__(self, checkpoint: str | os.PathLike[str], *, device: str = "auto", precision: str = "auto",
                 batch_size: int = 32, fold_bn: bool = True, compile: bool = False, backend: str = "torch",
                 auto_batch: int | None = None, say: Any = None, tta: bool = False) -> None:
        if tta and not self.flip_tta:
            raise ConfigError(f"flip test-time augmentation (tta) is for classification; {self.task} "
                              "predictions do not take it.")
        self.tta = bool(tta)
        self.device = resolve_device(device)
        self.precision: Precision = resolve_precision(precision, self.device)
        if self.device.type == "cuda" and precision == "auto":
            self.precision = Precision(torch.float16, False)  # inference: fp16 everywhere on GPUs
        self.checkpoint = str(checkpoint)
        self.batch_size = batch_size
        self.exported = E.is_exported_model(checkpoint)
        if backend != "auto":
            E.require(backend)
        if self.exported:
            if backend == "torch":
                raise ConfigError(f"{checkpoint} is an exported model, which runs on --backend onnxruntime or "
                                  "openvino; for the torch backend pass the run folder or its checkpoint.")
            if self.device.type != "cpu":
                raise ConfigError(f"{checkpoint} is an exported model, which runs on the CPU; drop --device.")
            self.record = E.read_model_record(checkpoint)
            self.eager = self.model = None
        else:
            model, self.record = ckpt.load_checkpoint(checkpoint, self.device)
        if self.task and self.record.get("task", "classification") != self.task:
            raise CheckpointError(f"{checkpoint} is a {self.record.get('task', 'classification')} checkpoint, not a "
                                  f"{self.task} one; load it with resnet_tune.Predictor.")
        self.classes: list[str] = list(self.record["classes"])
        self.channels_last = default_channels_last(self.device)
        if not self.exported:
            self.eager = model
            if fold_bn:
                model = fold_batchnorm(copy.deepcopy(model))
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            if fold_bn and self.precision.amp_dtype is not None:
                # weights stored in the compute dtype: autocast would otherwise cast every weight on every call
                # (benchmarks/RESULTS.md, "Measurements the code cites": weights in the compute dtype)
                model = model.to(self.precision.amp_dtype)
            self.model = torch.compile(model) if compile else model
        #: the engine for single images and the one for batches, and what ``auto`` measured (seconds a call)
        self.timings: dict[str, dict[int, float]] = {}
        self.engine_single, self.engine_batch = self._engines(backend, auto_batch or batch_size, say)
        self._feature_engine: E.Engine | None = None

    # ---- the engine seam

    def _engines(self, backend: str, batch: int, say: Any) -> tuple[E.Engine, E.Engine]:
        """The engines for batch 1 and for larger batches (the same one unless ``backend`` is ``auto``)."""
        if backend != "torch" and (not self.exportable or self.device.type != "cpu"):
            if backend == "auto":
                return (self.torch_engine(),) * 2  # type: ignore[return-value]
            why = (f"{self.task} checkpoints run on the torch backend only" if not self.exportable else
                   f"the {backend} backend runs on the CPU")
            raise ConfigError(f"{why}; use --backend torch (or auto).")
        if backend == "openvino":
            return self.make_engine("openvino:latency"), self.make_engine("openvino:throughput")
        if backend != "auto":
            return (self.make_engine(backend),) * 2  # type: ignore[return-value]
        return self._auto(batch, say)

    #: the engines :meth:`make_engine` builds (OpenVINO once with each performance hint); ``auto`` times them all
    ENGINE_KEYS: ClassVar[tuple[str, ...]] = ("torch", "onnxruntime", "openvino:latency", "openvino:throughput")

    def make_engine(self, key: str) -> E.Engine:
        """The engine ``key`` (one of :attr:`ENGINE_KEYS`) on this predictor's model: the prepared PyTorch model, or
        the ONNX file of :meth:`onnx_file` (OpenVINO also runs an exported ``.xml`` as given)."""
        if key == "torch":
            return self.torch_engine()
        if key == "onnxruntime":
            return E.OnnxRuntimeEngine(self.onnx_file())
        hint = key.split(":")[1]
        path = self.checkpoint if self.exported else self.onnx_file()
        return E.OpenVinoEngine(path, hint.upper(), self.precision.name)

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of the model file (the key of what is cached for it: its ONNX export, ``auto``'s timings)."""
        return E.file_digest(self.checkpoint if self.exported else ckpt.resolve_checkpoint(self.checkpoint))

    def torch_engine(self) -> E.Engine:
        if self.model is None:
            raise ConfigError(f"{self.checkpoint} is an exported model; the torch backend needs the checkpoint.")
        return E.TorchEngine(self.model, self.device, self.precision, self.channels_last)

    def onnx_file(self, features: bool = False) -> str:
        """The ONNX file the ONNX Runtime and OpenVINO engines run: an exported file as given, else the checkpoint's
        float model (or, with ``features``, its pooled features) exported once into the cache and verified against
        the eager model like ``resnet-tune export``."""
        if self.exported:
            if features:
                raise ConfigError(f"{self.checkpoint} is an exported model, which gives the classifier's outputs "
                                  "only; pooled features need the run folder or its checkpoint.")
            if Path(self.checkpoint).suffix.lower() != ".onnx":
                raise ConfigError(f"{self.checkpoint} is an OpenVINO model; run it with --backend openvino.")
            return self.checkpoint
        from .onnx import write_onnx

        path = E.cache_dir() / "onnx" / f"{self.digest[:32]}{'-features' if features else ''}.onnx"
        if path.is_file():
            return str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        eager = copy.deepcopy(self.eager).float().cpu().eval()
        folded = fold_batchnorm(copy.deepcopy(eager)).eval()
        if features:
            eager, folded = _Pooled(eager), _Pooled(folded)
        shape = self.input_shape()
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with torch.no_grad():
                try:
                    write_onnx(folded, x, tmp, dict(self.record))
                except Exception as err:  # exporter internals raise many error types
                    raise CheckpointError(f"{self.checkpoint} cannot be exported to ONNX for this backend "
                                          f"({type(err).__name__}); use --backend torch.") from err
                got, ref = E.OnnxRuntimeEngine(tmp)(x), eager(x).float()
            if not torch.allclose(got, ref, rtol=RTOL, atol=ATOL):
                raise CheckpointError(f"the ONNX model of {self.checkpoint} does not reproduce it (max abs diff "
                                      f"{float((got - ref).abs().max()):.3g}); use --backend torch.")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return str(path)

    def feature_engine(self) -> E.Engine | None:
        """The engine for pooled features when the batch engine is not torch (the same backend, on an export of the
        features), else None (the PyTorch model computes them)."""
        name = self.engine_batch.name
        if name == "torch":
            return None
        if self._feature_engine is None:
            path = self.onnx_file(features=True)
            self._feature_engine = (E.OnnxRuntimeEngine(path) if name == "onnxruntime" else
                                    E.OpenVinoEngine(path, "THROUGHPUT", self.precision.name))
        return self._feature_engine

    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one preprocessed image."""
        size = (self.record.get("preprocessing") or {}).get("input_size", 224)
        h, w = (size, size) if isinstance(size, int) else (int(size[-2]), int(size[-1]))
        return int(self.record.get("in_chans") or 3), int(h), int(w)

    def _auto(self, batch: int, say: Any) -> tuple[E.Engine, E.Engine]:
        """``auto``: every installed engine (OpenVINO with its latency and its throughput hint) timed at batch 1 and
        ``batch`` in two interleaved rounds (cached), the fastest for each."""
        from ..engine.hardware import machine_name

        names = [n for n in E.BACKENDS if E.installed(n) and (n != "torch" or self.model is not None)]
        if self.exported and Path(self.checkpoint).suffix.lower() == ".xml":
            names = [n for n in names if n == "openvino"]  # OpenVINO's own format
        key = json.dumps({"model": self.digest, "versions": E.engine_versions(), "cpu": machine_name(),
                          "batches": [1, batch], "precision": self.precision.name, "backends": names},
                         sort_keys=True)
        cache = E.cache_dir() / "auto" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
        engines: dict[str, E.Engine] = {}
        failed: list[str] = []
        for n in [k for k in self.ENGINE_KEYS if k.split(":")[0] in names]:
            try:
                engines[n] = self.make_engine(n)
            except Exception as err:  # an engine that cannot run this model is left out of the choice
                if n == "torch":
                    raise
                failed.append(f"{n} ({type(err).__name__}: {str(err).strip()[:120]})")
        if not engines:
            raise ConfigError(f"no inference engine could load {self.checkpoint}: {'; '.join(failed)}.")
        if cache.is_file():
            self.timings = {k: {int(b): t for b, t in v.items()} for k, v in json.loads(cache.read_text()).items()}
        if set(self.timings) != set(engines):
            gen = torch.Generator().manual_seed(0)
            x1 = torch.randn(1, *self.input_shape(), generator=gen)
            xb = torch.randn(batch, *self.input_shape(), generator=gen)
            self.timings = {n: {} for n in engines}
            for _ in range(2):  # two rounds over the engines, interleaved; the faster round of each counts
                for n, engine in engines.items():
                    t1 = E.time_engine(engine, x1, warm=2, reps=10)
                    self.timings[n][1] = min(t1, self.timings[n].get(1, t1))
                    if batch > 1:
                        tb = E.time_engine(engine, xb, warm=1, reps=3)
                        self.timings[n][batch] = min(tb, self.timings[n].get(batch, tb))
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(self.timings))
        best = E.choose_fastest(self.timings)
        single, batched = engines[best[1]], engines[best.get(batch, best[1])]
        if say is not None:
            times = "; ".join(f"{n} {', '.join(f'batch {b}: {t * 1e3:.3g} ms' for b, t in v.items())}"
                              for n, v in self.timings.items())
            say(f"backend auto: {single.describe()} for single images, {batched.describe()} for batches of "
                f"{batch} (measured on this machine: {times})"
                + (f"; left out: {', '.join(failed)}" if failed else ""))
        return single, batched

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float outputs for a batch of normalised images: the single-image engine for one image, else the
        batch engine (for torch: cache-sized chunks on a CPU). With ``tta``: the mean of the outputs for the
        images and for their mirror images."""
        engine = self.engine_single if x.shape[0] == 1 else self.engine_batch
        if not self.tta:
            return engine(x)
        return (engine(x).float() + engine(x.flip(-1)).float()) / 2

    # ---- what each task provides

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """A batch of normalised images, ready for :meth:`forward` (batchable tasks)."""
        raise NotImplementedError

    def batch_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """What one forward pass gives the web service's micro-batcher, one row per image (batchable tasks)."""
        raise NotImplementedError

    def describe(self, output: torch.Tensor, **options: Any) -> dict[str, Any]:
        """The JSON of one image from its row of :meth:`batch_outputs` (batchable tasks)."""
        raise NotImplementedError

    def predict_images(self, images: Sequence[Image.Image], **options: Any) -> list[dict[str, Any]]:
        """The JSON of each image (the shape ``resnet-tune predict`` and ``POST /predict`` answer with)."""
        out: list[dict[str, Any]] = []
        for i in range(0, len(images), self.batch_size):
            rows = self.batch_outputs(self.preprocess(images[i:i + self.batch_size]))
            out.extend(self.describe(r, **options) for r in rows)
        return out

    def explain(self, image: Image.Image, target: str | None = None) -> tuple[Image.Image, dict[str, Any]]:
        """A picture of where the prediction comes from, and what it shows (``{"class", "prob"}`` where a class
        is explained)."""
        raise NotImplementedError

    def scaled_pixels(self, size: tuple[int, int]) -> int:
        """How many pixels an image of ``size`` (width, height) has once preprocessed for the model."""
        return int(size[0]) * int(size[1])

    def info(self) -> dict[str, Any]:
        """What the service tells about the model besides the record: where it runs and on which engines."""
        out: dict[str, Any] = {"device": str(self.device),
                               "precision": str(self.precision.amp_dtype or "float32").replace("torch.", ""),
                               "backend": {"single": self.engine_single.describe(),
                                           "batch": self.engine_batch.describe()}}
        if self.timings:
            out["backend"]["measured_ms"] = {n: {str(b): round(t * 1e3, 3) for b, t in v.items()}
                                             for n, v in self.timings.items()}
        return out

    # ---- files

    def load_images(self, paths: Sequence[str | os.PathLike[str]]) -> list[tuple[Image.Image | None, str | None]]:
        """Each file as an RGB image, or ``(None, reason)`` when it cannot be read (decoded in threads)."""
        from ..data.images import load_image

        def one(p: str | os.PathLike[str]) -> tuple[Image.Image | None, str | None]:
            try:
                return load_image(p), None
            except DataError as err:
                return None, getattr(err, "reason", str(err))

        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            return list(pool.map(one, paths))

    def run_files(self, paths: Sequence[str | os.PathLike[str]], fn: Any) -> tuple[list[Any], list[str | None]]:
        """``fn`` (a function of a preprocessed batch, one row per image) over files in batches; returns each
        file's row (None where unreadable) and each file's error (None where it was read)."""
        outputs: list[Any] = [None] * len(paths)
        errors: list[str | None] = [None] * len(paths)
        for start in range(0, len(paths), self.batch_size):
            loaded = self.load_images(paths[start:start + self.batch_size])
            ok = [i for i, (img, _) in enumerate(loaded) if img is not None]
            for i, (_, err) in enumerate(loaded):
                errors[start + i] = err
            if ok:
                res = fn(self.preprocess([loaded[i][0] for i in ok]))  # type: ignore[misc]
                for j, i in enumerate(ok):
                    outputs[start + i] = res[j]
        return outputs, errors

    def predict_files(self, paths: Sequence[str | os.PathLike[str]], **options: Any) -> list[dict[str, Any]]:
        """:meth:`predict_images` for files: ``[{"file", ...}]``; an unreadable file gets ``"error"`` instead."""
        rows, errors = self.run_files(paths, self.batch_outputs)
        return [{"file": str(p), "error": e, **self.error_fields} if e else {"file": str(p), **self.describe(r, **options)}
                for p, r, e in zip(paths, rows, errors)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.checkpoint!r}, device={str(self.device)!r})"


class _Pooled(torch.nn.Module):
    """A classifier's pooled features as a module of its own (to export them)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..engine.features import pooled_features

        return pooled_features(self.model, x)
