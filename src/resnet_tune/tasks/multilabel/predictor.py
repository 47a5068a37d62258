"""The multi-label predictor: every label over its threshold (tuned on validation, stored in the checkpoint), with
its probability, and the top-k scores, for images and files."""

from __future__ import annotations

from typing import Any

import torch

from ..classification.predictor import ClassificationPredictor

__all__ = ["MultiLabelPredictor"]


class MultiLabelPredictor(ClassificationPredictor):
    """``MultiLabelPredictor("runs/x").predict_files(["a.jpg"])`` returns
    ``[{"file": ..., "labels": [{"label": name, "prob": p, "threshold": t}, ...], "top": [{"class", "prob"}, ...]}]``:
    ``labels`` are those at or over their threshold, most likely first."""

    task = "multilabel"
    service_description = "Find every label an image has, and explain each with Grad-CAM."
    error_fields = {"labels": [], "top": []}
    noun, nouns = "label", "labels"

    def __init__(self, checkpoint: Any, **options: Any) -> None:
        super().__init__(checkpoint, **options)
        per_label = (self.record.get("thresholds") or {}).get("per_label") or {}
        #: each label's decision threshold (0.5 where the checkpoint has none)
        self.thresholds = torch.tensor([float(per_label.get(c, 0.5)) for c in self.classes])

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid probabilities (CPU), one column a label."""
        return self.forward(x).sigmoid().cpu()

    def describe(self, output: torch.Tensor, *, top_k: int = 5, **_: Any) -> dict[str, Any]:
        over = (output >= self.thresholds).nonzero().flatten().tolist()
        over.sort(key=lambda j: -float(output[j]))
        return {"labels": [{"label": self.classes[j], "prob": round(float(output[j]), 6),
                            "threshold": round(float(self.thresholds[j]), 6)} for j in over],
                "top": self.top(output, top_k)}
