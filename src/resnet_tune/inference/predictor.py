"""Checkpoint -> preprocessing -> outputs: the one inference path for predict, embed, evaluate, export checks and
the web service, for every task.

:class:`Predictor` loads a checkpoint once and keeps two copies of the model: ``eager`` as trained (for Grad-CAM)
and ``model`` prepared for speed: batch-norm folded into the convolutions (same maths, fewer kernels), weights
stored in the compute dtype (bf16 autocast where the CPU has native bf16, fp16/bf16 on GPUs), channels-last
where it pays, and CPU batches run in cache-sized chunks. ``Predictor(checkpoint)`` returns the predictor of the
checkpoint's task (each task registers its subclass); every predictor answers :meth:`predict_images`,
:meth:`predict_files` and :meth:`explain` with the same JSON shapes as the CLI and the web service.

The seam for other inference engines (ONNX Runtime, OpenVINO) is :meth:`Predictor.forward`: a batch of
normalised images in, float outputs out; everything task-specific is built on it.
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Sequence

import torch
from PIL import Image

from ..engine import checkpoint as ckpt
from ..engine.hardware import Precision, default_channels_last, forward_chunked, resolve_device, resolve_precision
from ..errors import CheckpointError, DataError
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
            task = ckpt.read_record(checkpoint).get("task", "classification")  # type: ignore[arg-type]
            sub = Predictor._by_task.get(task)
            if sub is None:
                raise CheckpointError(f"{checkpoint} is a {task} checkpoint, and no predictor for that task is "
                                      "loaded; use resnet_tune.Predictor, which knows every task.")
            return super().__new__(sub)
        return super().__new__(cls)

    def __init__(self, checkpoint: str | os.PathLike[str], *, device: str = "auto", precision: str = "auto",
                 batch_size: int = 32, fold_bn: bool = True, compile: bool = False) -> None:
        self.device = resolve_device(device)
        self.precision: Precision = resolve_precision(precision, self.device)
        if self.device.type == "cuda" and precision == "auto":
            self.precision = Precision(torch.float16, False)  # inference: fp16 everywhere on GPUs
        model, self.record = ckpt.load_checkpoint(checkpoint, self.device)
        if self.task and self.record.get("task", "classification") != self.task:
            raise CheckpointError(f"{checkpoint} is a {self.record.get('task', 'classification')} checkpoint, not a "
                                  f"{self.task} one; load it with resnet_tune.Predictor.")
        self.checkpoint = str(checkpoint)
        self.eager = model
        if fold_bn:
            model = fold_batchnorm(copy.deepcopy(model))
        self.channels_last = default_channels_last(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if fold_bn and self.precision.amp_dtype is not None:
            # weights stored in the compute dtype: autocast would otherwise cast every weight on every call
            # (benchmarks/RESULTS.md, "Measurements the code cites": weights in the compute dtype)
            model = model.to(self.precision.amp_dtype)
        self.model = torch.compile(model) if compile else model
        self.classes: list[str] = list(self.record["classes"])
        self.batch_size = batch_size

    # ---- the engine seam

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float outputs of the prepared model for a batch of normalised images (cache-sized chunks on a CPU)."""
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.precision.autocast(self.device):
            return forward_chunked(self.model, x).float()

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
        """What the service tells about the model besides the record."""
        return {"device": str(self.device),
                "precision": str(self.precision.amp_dtype or "float32").replace("torch.", "")}

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
