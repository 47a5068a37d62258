"""Image classification: one class an image (``resnet-tune train``, ``evaluate``, ``predict``, ``embed``)."""

from .config import ClassificationConfig, TrainConfig
from .evaluate import evaluate
from .predictor import ClassificationPredictor
from .task import ClassificationTask

__all__ = ["ClassificationConfig", "ClassificationPredictor", "ClassificationTask", "TrainConfig", "evaluate"]
