"""The classification predictor: top-k classes, pooled features and Grad-CAM for images and files."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ...data.transforms import Preprocessing, eval_transform
from ...engine.features import pooled_features
from ...errors import ConfigError
from ...inference.predictor import Predictor

__all__ = ["ClassificationPredictor"]


class ClassificationPredictor(Predictor):
    """``ClassificationPredictor("runs/x").predict_files(["a.jpg"], top_k=5)`` returns the JSON shape shared by
    the CLI and the web service: ``[{"file": ..., "top": [{"class": name, "prob": p}, ...]}]``."""

    task = "classification"
    service_description = "Classify images and explain the predictions with Grad-CAM."
    error_fields = {"top": []}
    #: what the model's outputs are called in messages
    noun, nouns = "class", "classes"

    def __init__(self, checkpoint: str | os.PathLike[str], **options: Any) -> None:
        super().__init__(checkpoint, **options)
        self.preprocessing = Preprocessing.from_dict(self.record["preprocessing"])
        self.transform = eval_transform(self.preprocessing)

    # ---- tensors

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (CPU) of a batch of normalised images."""
        return self.forward(x).softmax(1).cpu()

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (the classifier's input) of a batch of normalised images, on the batch engine's
        backend."""
        engine = self.feature_engine()
        if engine is not None:
            return engine(x)
        x = x.to(self.device)
        with self.precision.autocast(self.device):
            return pooled_features(self.model, x).float()

    # ---- images

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(im.convert("RGB")) for im in images])

    def scaled_pixels(self, size: tuple[int, int]) -> int:
        """The shorter side is resized to ``preprocessing.resize`` (before the centre crop)."""
        w, h = size
        side = self.preprocessing.resize
        return side * max(1, round(max(w, h) * side / max(1, min(w, h))))

    def batch_outputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.probs(x)

    def top(self, p: torch.Tensor, top_k: int = 5) -> list[dict[str, Any]]:
        """The ``top_k`` classes of one row of probabilities, most likely first."""
        k = min(top_k, len(self.classes))
        vals, idx = p.topk(k)
        return [{"class": self.classes[i], "prob": round(float(v), 6)} for v, i in zip(vals.tolist(), idx.tolist())]

    def describe(self, output: torch.Tensor, *, top_k: int = 5, **_: Any) -> dict[str, Any]:
        return {"top": self.top(output, top_k)}

    def explain(self, image: Image.Image, target: str | None = None) -> tuple[Image.Image, dict[str, Any]]:
        """The Grad-CAM overlay of the region the model sees, for ``target`` (default: the most likely class)."""
        from ...inference.gradcam import explain_image

        if self.eager is None:
            raise ConfigError(f"{self.checkpoint} is an exported model; Grad-CAM needs gradients, so it explains "
                              "with the run folder or its checkpoint.")

        if target is not None and target not in self.classes:
            raise ConfigError(f"{self.noun} {target!r} is not one of the model's {self.nouns} "
                              f"({', '.join(self.classes)}).")
        return explain_image(self, image, target)

    # ---- files

    def embed_files(self, paths: Sequence[str | os.PathLike[str]]) -> tuple[np.ndarray, list[str], list[str]]:
        """Pooled features of each readable file; returns (features, files kept, files skipped)."""
        feats, errors = self.run_files(paths, lambda x: self.features(x).cpu())
        kept = [str(p) for p, e in zip(paths, errors) if e is None]
        skipped = [str(p) for p, e in zip(paths, errors) if e is not None]
        arr = torch.stack([f for f in feats if f is not None]).numpy() if kept else np.zeros((0, 0), np.float32)
        return arr, kept, skipped
