"""Moved: the predictor lives in :mod:`resnet_tune.inference` (``resnet_tune.Predictor``)."""

from ..inference.predictor import Predictor  # noqa: F401
from ..models import fold_batchnorm  # noqa: F401
