"""Checkpoint -> preprocessing -> probabilities: the one inference path for predict, embed,
evaluate and the web service.

The model runs in eval mode with batch-norm folded into the preceding convolutions (fewer
kernels, identical maths), bf16 autocast where the CPU has native bf16, fp16/bf16 on GPUs.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..data.transforms import Preprocessing, eval_transform
from ..engine import checkpoint as ckpt
from ..engine.features import pooled_features
from ..engine.hardware import Precision, default_channels_last, forward_chunked, resolve_device, resolve_precision
from ..errors import DataError
from ..models import fold_batchnorm


class Predictor:
    """Load a checkpoint once, then classify images, files or tensors.

    ``Predictor("runs/x").predict_files(["a.jpg"], top_k=5)`` returns the JSON shape shared by the
    CLI and the web service: ``[{"file": ..., "top": [{"class": name, "prob": p}, ...]}]``.
    """

    def __init__(self, checkpoint: str | Path, *, device: str = "auto", precision: str = "auto",
                 batch_size: int = 32, fold_bn: bool = True, compile: bool = False) -> None:
        self.device = resolve_device(device)
        self.precision: Precision = resolve_precision(precision, self.device)
        if self.device.type == "cuda" and precision == "auto":
            self.precision = Precision(torch.float16, False)  # inference: fp16 everywhere on GPUs
        model, self.record = ckpt.load_checkpoint(checkpoint, self.device)
        self.eager = model
        if fold_bn:
            import copy

            model = fold_batchnorm(copy.deepcopy(model))
        self.channels_last = default_channels_last(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if fold_bn and self.precision.amp_dtype is not None:
            # weights stored in the compute dtype: autocast would otherwise cast every weight on every call,
            # which made batch-1 ResNet-50 at 224 px 15% slower on the 2-core CPU (20.5 vs 17.8 ms)
            model = model.to(self.precision.amp_dtype)
        self.model = torch.compile(model) if compile else model
        self.classes: list[str] = list(self.record["classes"])
        self.preprocessing = Preprocessing.from_dict(self.record["preprocessing"])
        self.transform = eval_transform(self.preprocessing)
        self.batch_size = batch_size

    # ---- tensors

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.precision.autocast(self.device):
            return forward_chunked(self.model, x).float()

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = x.to(self.device)
        with self.precision.autocast(self.device):
            return pooled_features(m, x).float()

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).softmax(1).cpu()

    # ---- images

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(im.convert("RGB")) for im in images])

    def predict_images(self, images: Sequence[Image.Image], top_k: int = 5) -> list[list[dict[str, Any]]]:
        probs = torch.cat([self.probs(self.preprocess(images[i:i + self.batch_size]))
                           for i in range(0, len(images), self.batch_size)]) if images else torch.empty(0, 0)
        return [self.top(p, top_k) for p in probs]

    def top(self, p: torch.Tensor, top_k: int) -> list[dict[str, Any]]:
        k = min(top_k, len(self.classes))
        vals, idx = p.topk(k)
        return [{"class": self.classes[i], "prob": round(float(v), 6)} for v, i in zip(vals.tolist(), idx.tolist())]

    def _load_many(self, paths: Sequence[str]) -> list[tuple[torch.Tensor | None, str | None]]:
        from ..data.datasets import load_image

        def one(p: str) -> tuple[torch.Tensor | None, str | None]:
            try:
                return self.transform(load_image(p)), None
            except DataError as err:
                return None, str(err)

        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            return list(pool.map(one, paths))

    def _run_files(self, paths: Sequence[str], fn: Any) -> tuple[list[Any], list[str | None]]:
        outputs: list[Any] = [None] * len(paths)
        errors: list[str | None] = [None] * len(paths)
        for start in range(0, len(paths), self.batch_size):
            chunk = list(paths[start:start + self.batch_size])
            loaded = self._load_many(chunk)
            ok = [i for i, (t, _) in enumerate(loaded) if t is not None]
            for i, (_, err) in enumerate(loaded):
                errors[start + i] = err
            if ok:
                res = fn(torch.stack([loaded[i][0] for i in ok]))  # type: ignore[misc]
                for j, i in enumerate(ok):
                    outputs[start + i] = res[j]
        return outputs, errors

    def predict_files(self, paths: Sequence[str], top_k: int = 5) -> list[dict[str, Any]]:
        probs, errors = self._run_files(paths, self.probs)
        out = []
        for path, p, err in zip(paths, probs, errors):
            out.append({"file": str(path), "error": err, "top": []} if err else
                       {"file": str(path), "top": self.top(p, top_k)})
        return out

    def embed_files(self, paths: Sequence[str]) -> tuple[np.ndarray, list[str], list[str]]:
        """Pooled features of each readable file; returns (features, files kept, files skipped)."""
        feats, errors = self._run_files(paths, lambda x: self.features(x).cpu())
        kept = [p for p, e in zip(paths, errors) if e is None]
        skipped = [p for p, e in zip(paths, errors) if e is not None]
        arr = torch.stack([f for f in feats if f is not None]).numpy() if kept else np.zeros((0, 0), np.float32)
        return arr, kept, skipped
