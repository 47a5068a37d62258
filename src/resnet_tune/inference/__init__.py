"""Inference: a checkpoint loaded once (batch-norm folded, weights in the compute dtype, channels-last, CPU work
in cache-sized chunks) and run on images, files or tensors."""

from .predictor import Predictor

__all__ = ["Predictor"]
