"""Data: finding the images of a dataset (folder, split-folder and CSV layouts; links followed safely), reading
them as 8-bit RGB, the pre-training scan, transforms and loaders."""

from .datasets import IMAGE_EXTENSIONS, DataSplits, discover, discover_eval, is_image_file, list_images
from .images import MAX_IMAGE_PIXELS, BadImageError, DecodeInfo, decode_image, load_image
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
