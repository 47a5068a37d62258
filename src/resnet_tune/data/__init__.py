"""Data discovery (folder, split-folder and CSV layouts), image loading and the pre-training data scan."""

from .datasets import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    BadImageError,
    DataSplits,
    DecodeInfo,
    decode_image,
    discover,
    discover_eval,
    is_image_file,
    list_images,
    load_image,
)
from .scan import ScanReport, default_cache_dir, scan

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "BadImageError",
    "DataSplits",
    "DecodeInfo",
    "ScanReport",
    "decode_image",
    "default_cache_dir",
    "discover",
    "discover_eval",
    "is_image_file",
    "list_images",
    "load_image",
    "scan",
]
