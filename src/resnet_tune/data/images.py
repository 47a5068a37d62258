"""Reading images as 8-bit RGB, exactly one way for training, evaluation, prediction and the web service.

:func:`decode_image` fully decodes a file (so a truncated one fails here, not in a worker mid-epoch), refuses
decompression bombs from the header, applies the EXIF orientation and converts every mode Pillow reads to 8-bit
RGB (:func:`to_rgb`); a file that cannot be used raises :class:`BadImageError` with a short reason.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

__all__ = ["MAX_IMAGE_PIXELS", "ORIENTATION_TRANSPOSE", "BadImageError", "DecodeInfo", "decode_image",
           "exif_orientation", "load_image", "normalise", "pillow_reason", "size_problem", "to_rgb"]

#: Largest image (in pixels) that is decoded.  This is the threshold at which Pillow itself raises
#: ``DecompressionBombError`` by default (twice ``Image.MAX_IMAGE_PIXELS``), enforced here from the
#: header even if ``Image.MAX_IMAGE_PIXELS`` was switched off elsewhere; Pillow's own global setting is
#: left as it is.  Larger files are reported as bad, not decoded.
MAX_IMAGE_PIXELS: int = 2 * 89_478_485


class BadImageError(DataError):
    """A file that cannot be used as an image; ``reason`` is a short phrase such as ``'truncated image'``."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"Cannot read image {self.path}: {reason}; replace or remove the file.")


@dataclass
class DecodeInfo:
    """What :func:`decode_image` did to a file."""

    mode: str  # the mode of the file as decoded
    conversion: str | None  # e.g. 'CMYK converted to RGB'; None for plain RGB
    rotated: bool  # an EXIF orientation other than 1 was applied
    size: tuple[int, int]  # (width, height) after rotation


# EXIF orientation -> transpose, as in ImageOps.exif_transpose
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def exif_orientation(img: Image.Image) -> int:
    """The image's EXIF orientation (1 to 8; 1, upright, when it has none or a malformed one)."""
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if value in ORIENTATION_TRANSPOSE else 1
    except Exception:  # a malformed EXIF block does not make the pixels unusable
        return 1


def _on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    gray = np.ascontiguousarray(np.clip(values, 0, 255).astype(np.uint8))
    return Image.fromarray(gray).convert("RGB")


def _scale_16(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255, rounding (65535 -> 255, 32768 -> 128)."""
    v = values.astype(np.uint32)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb(img: Image.Image) -> tuple[Image.Image, str | None]:
    """An 8-bit RGB version of any decoded image, and what was done (None for RGB): grayscale and palette
    converted, alpha composited on white, 16-bit and float images scaled, CMYK and other modes converted."""
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode in ("1", "L"):
        return img.convert("RGB"), f"grayscale ({mode}) converted to RGB"
    if mode in ("LA", "La"):
        return _on_white(img), f"grayscale with alpha ({mode}): alpha composited on white"
    if mode in ("P", "PA"):
        if mode == "PA" or "transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA"):
            return _on_white(img), f"palette ({mode}) converted to RGB, transparency composited on white"
        return img.convert("RGB"), f"palette ({mode}) converted to RGB"
    if mode in ("RGBA", "RGBa"):
        return _on_white(img), f"{mode}: alpha composited on white"
    if mode == "RGBX":
        return img.convert("RGB"), "RGBX converted to RGB"
    if mode.startswith("I;16"):
        return _gray_to_rgb(_scale_16(np.asarray(img))), f"16-bit ({mode}) scaled to 8-bit"
    if mode == "I":
        a = np.asarray(img).astype(np.int64)
        if a.size == 0 or (a.min() >= 0 and a.max() <= 65535):
            return _gray_to_rgb(_scale_16(a)), "16-bit (I) scaled to 8-bit"
        lo, hi = int(a.min()), int(a.max())
        scaled = np.round((a - lo) * (255.0 / max(hi - lo, 1)))
        return _gray_to_rgb(scaled), f"32-bit integer (I) rescaled from [{lo}, {hi}] to 8-bit"
    if mode == "F":
        a = np.asarray(img).astype(np.float64)
        finite = a[np.isfinite(a)]
        if finite.size == 0:
            raise ValueError("float image without finite values")
        lo, hi = float(finite.min()), float(finite.max())
        a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
        if lo >= 0.0 and hi <= 1.0:
            return _gray_to_rgb(np.round(a * 255.0)), "float (F) scaled from [0, 1] to 8-bit"
        scaled = np.round((a - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros_like(a)
        return _gray_to_rgb(scaled), f"float (F) rescaled from [{lo:g}, {hi:g}] to 8-bit"
    if mode == "CMYK":
        return img.convert("RGB"), "CMYK converted to RGB"
    # YCbCr, LAB, HSV and anything else Pillow can convert
    return img.convert("RGB"), f"{mode} converted to RGB"


def size_problem(img: Image.Image) -> str | None:
    """Why an opened image must not be decoded, judged from the size in its header (None when it may be)."""
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        return f"image too large ({w}x{h} = {w * h:,} pixels, over the decompression-bomb limit)"
    if w <= 0 or h <= 0:
        return f"image has no pixels ({w}x{h})"
    return None


def pillow_reason(err: Exception) -> str:
    """A short reason for an exception raised while Pillow opened or decoded a file.

    Pillow's plug-ins raise OSError, ValueError, SyntaxError, struct.error, EOFError, IndexError ... on bad data,
    so every exception type is described here; the callers catch them all while decoding untrusted bytes.
    """
    if isinstance(err, Image.DecompressionBombError):
        size = re.search(r"\((\d+) pixels\)", str(err))
        pixels = f"{int(size.group(1)):,} pixels, " if size else ""
        return f"image too large ({pixels}over the decompression-bomb limit)"
    if isinstance(err, UnidentifiedImageError):
        return "not an image (cannot identify)"
    if isinstance(err, MemoryError):
        return "out of memory while decoding"
    msg = " ".join((str(err) or type(err).__name__).split())
    if "truncated" in msg.lower():
        return "truncated image"
    return f"cannot decode ({msg[:200]})"


def decode_image(path: str | os.PathLike[str]) -> tuple[Image.Image, DecodeInfo]:
    """Fully decode ``path`` into an 8-bit RGB image, applying its EXIF orientation.

    Returns the image and a :class:`DecodeInfo`; raises :class:`BadImageError` (a :class:`DataError`) with a
    short ``reason`` for a missing, empty, unidentifiable, truncated, oversized or undecodable file.  Only the
    first frame of animated images is read.  Truncated files are detected only while
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is False (Pillow's default).
    """
    p = os.fspath(path)
    try:
        if os.path.getsize(p) == 0:
            raise BadImageError(p, "zero-byte file")
        with open(p, "rb") as f:
            img = Image.open(f)
            problem = size_problem(img)
            if problem:
                raise BadImageError(p, problem)
            img.load()
            mode = img.mode
            orientation = exif_orientation(img)
            rgb, conversion = to_rgb(img)
        if orientation != 1:
            rgb = rgb.transpose(ORIENTATION_TRANSPOSE[orientation])
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(p, "file not found") from None
    except IsADirectoryError:
        raise BadImageError(p, "is a folder, not a file") from None
    except PermissionError:
        raise BadImageError(p, "permission denied") from None
    except Exception as e:  # untrusted bytes: see pillow_reason
        raise BadImageError(p, pillow_reason(e)) from None
    return rgb, DecodeInfo(mode, conversion, orientation != 1, rgb.size)


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Read ``path`` as an 8-bit RGB image (EXIF orientation applied, other modes converted).

    Raises :class:`BadImageError` (a :class:`DataError`) naming the file and the reason when it cannot be used.
    """
    return decode_image(path)[0]


def normalise(img: Image.Image) -> Image.Image:
    """A decoded image as training sees it: EXIF orientation applied, converted to 8-bit RGB (:func:`to_rgb`)."""
    orientation = exif_orientation(img)
    rgb, _ = to_rgb(img)
    return rgb.transpose(ORIENTATION_TRANSPOSE[orientation]) if orientation != 1 else rgb
