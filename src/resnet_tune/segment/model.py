"""Moved to :mod:`resnet_tune.models.segmentation` (the model library holds every architecture)."""

from ..models.segmentation import *  # noqa: F401,F403
from ..models.segmentation import __all__  # noqa: F401
