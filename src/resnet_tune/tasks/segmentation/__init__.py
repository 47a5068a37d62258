"""Semantic segmentation with a ResNet backbone: FCN, DeepLabV3 and U-Net heads (``resnet-tune segment ...``)."""

from .config import SegConfig, SegmentationConfig
from .predictor import SegPredictor, SegmentationPredictor
from .task import SegmentationTask

__all__ = ["SegConfig", "SegPredictor", "SegmentationConfig", "SegmentationPredictor", "SegmentationTask"]
