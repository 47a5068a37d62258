"""Deprecated: the segmentation networks live in :mod:`resnet_tune.models.segmentation`."""

import warnings

from ..models.segmentation import (HEADS, Segmenter, UNetDecoder, backbone_state, build_segmenter,  # noqa: F401
                                   create_segmenter, default_output_stride, load_torchvision_segmentation)

warnings.warn("resnet_tune.segment.model is deprecated; import from resnet_tune.models.segmentation",
              DeprecationWarning, stacklevel=2)
