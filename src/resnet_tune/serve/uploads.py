"""Reading uploads safely: the headers checked before the body (415, 400, 413), the body read within the request
timeout (408), multipart parsed with bounded files and fields, every image decoded (:mod:`.images`) and bounded
in pixels as the model would see it."""

from __future__ import annotations

import asyncio
from typing import Any

import torch
from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .images import UploadError, decode_upload
from .state import HTTPError, ServerState

__all__ = ["Upload", "check_upload_headers", "decode", "read_uploads"]


class Upload:
    """One uploaded file: its name (``"body"`` for a raw body) and bytes."""

    __slots__ = ("name", "data")

    def __init__(self, name: str, data: bytes) -> None:
        self.name, self.data = name, data


def check_upload_headers(request: Request, state: ServerState) -> str:
    """The upload's media type, after the checks that need only the headers (415, 400, 413)."""
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if media != "multipart/form-data" and not media.startswith("image/"):
        shown = media or "none"
        raise HTTPError(415, f"content type {shown!r} is not accepted; send images as multipart/form-data "
                              "fields named 'file', or one image as the raw body with an image/* content "
                              "type.")
    limit = state.max_upload_bytes
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise HTTPError(400, f"invalid Content-Length header {length!r}.") from None
        if declared > limit:
            raise HTTPError(413, f"the upload is {declared:,} bytes, over this server's limit of {limit:,} "
                                  "bytes; send smaller or fewer images.", {"Connection": "close"})
    return media


async def read_body(request: Request, state: ServerState) -> bytes:
    limit = state.max_upload_bytes
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise HTTPError(413, f"the upload is over this server's limit of {limit:,} bytes; send smaller "
                                  "or fewer images.", {"Connection": "close"})
    return bytes(buf)


async def read_uploads(request: Request, media: str, state: ServerState) -> list[Upload]:
    """The images of a request whose headers passed :func:`check_upload_headers`, read within the request
    timeout (else 408, and the connection closes: the rest of the body is not read)."""
    try:
        body = await asyncio.wait_for(read_body(request, state), state.request_timeout)
    except asyncio.TimeoutError:
        raise HTTPError(408, f"the request body did not arrive within {state.request_timeout:g} seconds; send "
                              "the whole upload without pausing.", {"Connection": "close"}) from None
    except ClientDisconnect:  # nobody reads the answer; this keeps it out of the error log
        raise HTTPError(400, "the client closed the connection before sending the whole body.") from None
    if not body:
        raise HTTPError(400, "the request body is empty; send an image.")
    if media.startswith("image/"):
        return [Upload("body", body)]
    return await _parse_multipart(request, body, state)


async def _parse_multipart(request: Request, body: bytes, state: ServerState) -> list[Upload]:
    from starlette.datastructures import UploadFile

    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    too_many = HTTPError(413, f"too many files in one request (at most {state.max_files}); split them over "
                               "several requests.")
    try:
        form = await Request(request.scope, replay).form(max_files=state.max_files + 1, max_fields=64)
    except StarletteHTTPException as err:
        if "too many files" in str(err.detail).lower():
            raise too_many from None
        raise HTTPError(400, f"malformed multipart body ({err.detail}).") from None
    except Exception as err:  # python-multipart's parse errors
        raise HTTPError(400, f"malformed multipart body ({type(err).__name__}: {str(err)[:200]}).") from None
    try:
        items = form.getlist("file")
        if not items:
            names = sorted(set(form.keys()))
            got = f" (got {', '.join(repr(n) for n in names)})" if names else ""
            raise HTTPError(400, f"no image in the request: send each image as a multipart field named "
                                  f"'file'{got}.")
        if len(items) > state.max_files:
            raise too_many
        uploads = []
        for i, item in enumerate(items):
            if not isinstance(item, UploadFile):
                raise HTTPError(400, f"field 'file' number {i + 1} is text, not a file upload; send the image "
                                      "bytes as a file.")
            uploads.append(Upload(item.filename or f"file{i + 1}", await item.read()))
        return uploads
    finally:
        await form.close()


def _decode_all(uploads: list[Upload], batch: bool, state: ServerState) -> tuple[torch.Tensor | None, list[Any]]:
    """The decoded images, and (for the micro-batcher) the predictor's preprocessed batch of them."""
    images = []
    for up in uploads:
        name = repr(up.name) if up.name != "body" else "the request body"
        img = decode_upload(up.data, name, state.max_pixels)
        _check_scaled_size(img, name, state)
        images.append(img)
    return (state.predictor.preprocess(images) if batch and images else None), images


def _check_scaled_size(img: Any, name: str, state: ServerState) -> None:
    """The image as the model will see it must be within the pixel limit as well: a classifier scales the
    shorter side to its ``resize``, so a very elongated image within the limit (say 1,000,000 x 1) would
    become enormous (16,000,000 x 16 at ``resize`` 16)."""
    scaled = state.predictor.scaled_pixels(img.size)
    if scaled > state.max_pixels:
        w, h = img.size
        raise UploadError(413, f"{name} is {w}x{h} pixels, too elongated: scaled for the model it would have "
                               f"{scaled:,} pixels, over this server's limit of {state.max_pixels:,}; crop it "
                               "to a less elongated image.")


async def decode(uploads: list[Upload], state: ServerState, batch: bool = False
                 ) -> tuple[torch.Tensor | None, list[Any]]:
    """Decode the uploads in the decoding threads (and preprocess them for the micro-batcher when ``batch``)."""
    try:
        return await state.run_in(state.decode_pool, _decode_all, uploads, batch, state)
    except UploadError as err:
        raise HTTPError(err.status, err.message) from None
