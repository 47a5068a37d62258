"""Decoding untrusted image bytes (web uploads) safely.

The checks run in the order that keeps a hostile upload cheap: empty -> identify the format from its header
(only common raster formats; never EPS/PDF or other formats that run external programs) -> refuse an image over
the pixel limit from its header, before any pixel is decoded (decompression bombs) -> decode fully (a truncated
file fails here) -> apply the EXIF orientation and convert to RGB exactly as training and ``resnet-tune predict``
do.
"""

from __future__ import annotations

import io
import re
import warnings

from PIL import Image, ImageFile, UnidentifiedImageError

from ..data.images import normalise

__all__ = ["SAFE_FORMATS", "UploadError", "decode_upload"]

#: Formats accepted from the network: Pillow's common raster formats. Formats whose plug-ins call external
#: programs (EPS via Ghostscript) or that are rarely meant as photos are refused.
SAFE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")


class UploadError(Exception):
    """An upload that cannot be used; ``status`` is the HTTP status to answer with, ``str(err)`` the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_upload(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode ``data`` (the bytes of the upload called ``name``) into an 8-bit RGB image or raise :class:`UploadError`."""
    if not data:
        raise UploadError(400, f"{name} is empty (0 bytes); send the bytes of an image.")
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone switched Pillow to silently accept truncated files
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=SAFE_FORMATS)
            w, h = img.size
            if w * h > max_pixels:
                raise UploadError(413, f"{name} is {w}x{h} = {w * h:,} pixels, over this server's limit of "
                                       f"{max_pixels:,} pixels; send a smaller image.")
            if w <= 0 or h <= 0:
                raise UploadError(400, f"{name} has no pixels ({w}x{h}).")
            img.load()
            return normalise(img)
    except UploadError:
        raise
    except UnidentifiedImageError:
        raise UploadError(400, f"{name} is not an image this server reads (accepted formats: "
                               f"{', '.join(SAFE_FORMATS)}).") from None
    except Image.DecompressionBombError as err:  # Pillow's own limit, hit while reading the header
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)):,} pixels, " if found else ""
        raise UploadError(413, f"{name} is too large ({size}over this server's limit of {max_pixels:,} pixels); "
                               "send a smaller image.") from None
    except MemoryError:
        raise UploadError(413, f"{name} is too large to decode in memory.") from None
    except Exception as err:  # Pillow raises OSError, ValueError, SyntaxError, struct.error, ... on bad data
        msg = str(err) or type(err).__name__
        if "truncated" in msg.lower() or "broken data stream" in msg.lower():
            raise UploadError(400, f"{name} is a truncated image (its data ends early); send the complete "
                                   "file.") from None
        raise UploadError(400, f"{name} cannot be decoded as an image ({msg[:200]}).") from None
