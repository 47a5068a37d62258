"""The web service: a FastAPI app over any task's :class:`~resnet_tune.inference.Predictor`.

Endpoints (``/openapi.json`` documents them):

- ``POST /predict``: images as multipart fields named ``file`` (repeatable) or one image as the raw body with an
  ``image/*`` content type; answers the predictor's JSON for each image, as ``resnet-tune predict`` does:
  ``[{"file", "top": [{"class", "prob"}]}]`` for a classifier, ``[{"file", "classes": [{"class", "fraction"}],
  "width", "height"}]`` (each class's share of the pixels, largest first) for a segmentation model.
- ``POST /explain``: one image the same way; answers the predictor's picture as ``image/png`` (the Grad-CAM
  overlay of a classifier, the colour-coded mask over the image of a segmentation model).
- ``GET /health``, ``GET /model`` (the checkpoint's record and metrics), ``GET /`` (a page to try the model).

The routes call the predictor's own ``predict_images`` / ``describe`` / ``explain``: nothing here depends on the
task except the response schema shown in the OpenAPI document.

Untrusted input is answered with a 4xx and ``{"detail": "<one sentence>"}``; bodies are bounded by
``Content-Length`` before reading and by counting while reading; images are bounded by their pixel count read
from the header before decoding, and by the pixel count they would have once scaled for the model. With a
token, POST endpoints need ``Authorization: Bearer <token>``.

Abuse and overload (``request_timeout``, ``max_queue``; ``--request-timeout``, ``--max-queue`` on the command
line): a client has ``request_timeout`` seconds to send its whole body, or gets 408 and the connection closes,
so a client that trickles its upload or stalls after the headers holds its connection and one place in the queue
for that long and stalls nobody else (the event loop serves other requests meanwhile). At most ``max_queue`` POST
requests are in progress at once (receiving, decoding, waiting for or in the model, batched or not, ``/predict``
and ``/explain`` alike); one more gets 429 at once. A request that waits ``request_timeout``
seconds for the model, or arrives while the server shuts down, gets 503. 429 and 503 carry ``Retry-After``;
every one of them is ``{"detail": "<one sentence>"}``, never a 500 or a hang.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import io
import logging
import os
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import torch
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..inference.predictor import Predictor
from .batching import ShuttingDown
from .images import UploadError, decode_upload

__all__ = ["DEFAULT_MAX_FILES", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_QUEUE", "DEFAULT_MAX_UPLOAD_BYTES",
           "DEFAULT_REQUEST_TIMEOUT", "create_app"]

T = TypeVar("T")

log = logging.getLogger("resnet_tune.serve")

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_FILES = 16
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_QUEUE = 64  # POST requests in progress at once
DEFAULT_REQUEST_TIMEOUT = 30.0  # seconds to send a body, and to wait for the model
RETRY_AFTER_QUEUE_FULL = 1  # seconds, the Retry-After of a 429
RETRY_AFTER_BUSY = 5  # seconds, the Retry-After of a 503
STATIC = Path(__file__).resolve().parent / "static"
_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
# The page loads nothing from elsewhere; the policy makes sure of it.
CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


# --- response models (for the OpenAPI schema) ---------------------------------------------------------

class ClassProb(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class", description="class name")
    prob: float = Field(description="softmax probability")


class Prediction(BaseModel):
    file: str = Field(description="the upload's file name (multipart) or 'body' (raw body)")
    top: list[ClassProb]


class ClassShare(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class", description="class name")
    fraction: float = Field(description="share of the image's pixels predicted as this class")


class SegPrediction(BaseModel):
    file: str = Field(description="the upload's file name (multipart) or 'body' (raw body)")
    classes: list[ClassShare] = Field(description="classes present in the mask, largest share first")
    width: int
    height: int


#: The response schema of /predict per task (for the OpenAPI document) and its summary.
_RESPONSES: dict[str, tuple[Any, str]] = {
    "classification": (list[Prediction], "top-k classes of one or several images"),
    "segmentation": (list[SegPrediction], "pixel share of each class in one or several images"),
}
_EXPLAIN_SUMMARY = {"classification": "Grad-CAM overlay of one image (PNG)",
                    "segmentation": "segmentation mask over one image (PNG)"}


class Health(BaseModel):
    status: str
    model: str
    task: str
    classes: int
    auth: bool
    batching: bool


class ErrorDetail(BaseModel):
    detail: str


_IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                     "description": "one or more images (repeat the field)"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}, "description": "one image as the raw body"},
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorDetail, "description": "not an image, truncated, empty, or a malformed request"},
    401: {"model": ErrorDetail, "description": "missing or wrong bearer token (when the server has one)"},
    408: {"model": ErrorDetail, "description": "the body did not arrive within the server's request timeout"},
    413: {"model": ErrorDetail, "description": "upload over the byte limit, too many files, or an image over the "
                                              "pixel limit"},
    415: {"model": ErrorDetail, "description": "content type is neither multipart/form-data nor image/*"},
    429: {"model": ErrorDetail, "description": "the server has as many requests in progress as it admits",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}},
    503: {"model": ErrorDetail, "description": "the model stayed busy past the request timeout, or the server is "
                                              "shutting down",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}},
}


class _SecurityHeaders:
    """Pure ASGI middleware adding the security headers to every response (no CDN, no sniffing, no framing)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                from starlette.datastructures import MutableHeaders

                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Content-Security-Policy", CSP)
                headers.setdefault("Referrer-Policy", "no-referrer")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _HTTPError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


class _Upload:
    __slots__ = ("name", "data")

    def __init__(self, name: str, data: bytes) -> None:
        self.name, self.data = name, data


class ServerState:
    """What the endpoints share: the predictor, the limits, the executors, the batcher and the admission count."""

    def __init__(self, predictor: Any, *, max_upload_bytes: int, max_files: int, max_pixels: int,
                 token: str | None, batching: bool, max_batch: int, max_wait_ms: float, max_queue: int,
                 request_timeout: float) -> None:
        from .batching import MicroBatcher

        self.predictor = predictor
        batching = batching and predictor.batchable  # images of their own size go one at a time
        self.max_upload_bytes, self.max_files, self.max_pixels = max_upload_bytes, max_files, max_pixels
        self.token = token or None
        self.batching = batching
        # One thread runs the model (forward passes and Grad-CAM): PyTorch parallelises inside each call, and
        # requests never compete for the cores. Decoding runs beside it in a small pool.
        self.model_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="resnet-tune-model")
        self.decode_pool = concurrent.futures.ThreadPoolExecutor(max(2, min(4, os.cpu_count() or 1)),
                                                                 thread_name_prefix="resnet-tune-decode")
        self.batcher = MicroBatcher(predictor.batch_outputs, self.model_pool, max_batch=max_batch,
                                    max_wait_ms=max_wait_ms) if batching else None
        self.started = time.time()
        self.max_queue, self.request_timeout = max_queue, request_timeout
        self.in_flight = 0  # POST requests admitted and not finished (only the event loop touches it)
        self.closing = False  # set when the app shuts down: new work gets 503

    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Count one request as in progress while the block runs: 503 while shutting down, 429 when ``max_queue``
        requests are in progress already."""
        if self.closing:
            raise _shutting_down()
        if self.in_flight >= self.max_queue:
            raise _HTTPError(429, f"too many requests in progress (this server takes {self.max_queue} at once); "
                                  "retry after the delay in the Retry-After header.",
                             {"Retry-After": str(RETRY_AFTER_QUEUE_FULL)})
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def run_in(self, pool: concurrent.futures.Executor, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in ``pool``. 503 when the server shuts down first, or while the job waits (shutting the
        pools down drops waiting jobs); if the caller stops waiting, a job that has not started never runs."""
        if self.closing:
            raise _shutting_down()
        loop = asyncio.get_running_loop()
        answer: asyncio.Future = loop.create_future()

        def settle(job: concurrent.futures.Future) -> None:  # on the event loop
            if answer.done():  # the caller stopped waiting
                return
            if job.cancelled():
                answer.set_exception(_shutting_down())
            elif (err := job.exception()) is not None:
                answer.set_exception(err)
            else:
                answer.set_result(job.result())

        def settle_soon(job: concurrent.futures.Future) -> None:  # in the pool's thread, or here if cancelled
            if not loop.is_closed():
                loop.call_soon_threadsafe(settle, job)

        job = pool.submit(fn, *args)
        job.add_done_callback(settle_soon)
        try:
            return await answer
        except asyncio.CancelledError:
            job.cancel()
            raise

    async def wait_for_model(self, work: Awaitable[T]) -> T:
        """Await model work (a batched submit or a model-thread call) for at most ``request_timeout`` seconds;
        503 past that, or when the server shuts down meanwhile. A call that has not started yet is dropped."""
        try:
            return await asyncio.wait_for(work, self.request_timeout)
        except asyncio.TimeoutError:
            raise _HTTPError(503, f"the model stayed busy for {self.request_timeout:g} seconds, this server's "
                                  "request timeout; retry after the delay in the Retry-After header.",
                             {"Retry-After": str(RETRY_AFTER_BUSY)}) from None
        except ShuttingDown:
            raise _shutting_down() from None


def _shutting_down() -> _HTTPError:
    """The 503 for work that arrives, or is still waiting, when the server shuts down."""
    return _HTTPError(503, "the server is shutting down; retry after the delay in the Retry-After header.",
                      {"Retry-After": str(RETRY_AFTER_BUSY)})


def _load_predictor(checkpoint: str | os.PathLike[str], device: str) -> Predictor:
    """The predictor of the checkpoint's task."""
    from ..tasks import Predictor as TaskPredictor  # every task's predictor registered

    return TaskPredictor(checkpoint, device=device)


def create_app(checkpoint_or_predictor: Any, *,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_files: int = DEFAULT_MAX_FILES,
               max_pixels: int = DEFAULT_MAX_PIXELS, token: str | None = None, batching: bool = True,
               max_batch: int = 32, max_wait_ms: float = 2.0, device: str = "auto",
               max_queue: int = DEFAULT_MAX_QUEUE, request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> FastAPI:
    """The FastAPI app serving a checkpoint (a run folder or ``.safetensors`` file) or a ready predictor of any
    task (see the module docstring).

    ``max_upload_bytes`` bounds a request body, ``max_files`` the images in one request, ``max_pixels`` each
    image's width x height, before and after it is scaled for the model (a classifier scales the shorter side to
    its preprocessing's ``resize``, which makes a very elongated image much larger). ``token``: POST endpoints need
    ``Authorization: Bearer <token>``. ``batching``:
    concurrent requests share forward passes (up to ``max_batch`` images, waiting at most ``max_wait_ms``).
    ``max_queue`` bounds the POST requests in progress at once (more get 429); ``request_timeout`` (seconds) bounds
    the time to send a body (else 408) and the time to wait for the model (else 503).
    """
    from ..errors import ConfigError

    if max_upload_bytes < 1 or max_files < 1 or max_pixels < 1 or max_queue < 1:
        raise ConfigError("max_upload_bytes, max_files, max_pixels and max_queue must all be positive.")
    if not (0 < request_timeout < float("inf")):
        raise ConfigError(f"request_timeout must be a positive number of seconds, got {request_timeout}.")
    predictor = checkpoint_or_predictor if isinstance(checkpoint_or_predictor, Predictor) else \
        _load_predictor(checkpoint_or_predictor, device)
    state = ServerState(predictor, max_upload_bytes=max_upload_bytes, max_files=max_files, max_pixels=max_pixels,
                        token=token, batching=batching, max_batch=max_batch, max_wait_ms=max_wait_ms,
                        max_queue=max_queue, request_timeout=request_timeout)
    rec = predictor.record
    task = str(rec.get("task", "classification"))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if state.batcher is not None:
            await state.batcher.start()
        try:
            yield
        finally:
            state.closing = True
            if state.batcher is not None:
                await state.batcher.stop()
            state.model_pool.shutdown(wait=False, cancel_futures=True)
            state.decode_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="resnet-tune",
        version=str(rec.get("versions", {}).get("resnet_tune", "")),
        summary=f"{rec.get('model', 'model')}: {rec.get('task', 'classification')} over "
                f"{len(predictor.classes)} classes",
        description=f"{predictor.service_description} Images go as multipart fields "
                    "named `file` (repeatable) or as the raw body with an `image/*` content type. "
                    f"Limits: {max_upload_bytes:,} bytes a request, {max_files} files a request, {max_pixels:,} "
                    f"pixels an image, {request_timeout:g} seconds to send a body (else 408) and to wait for the "
                    f"model (else 503), {max_queue} requests in progress at once (else 429)." +
                    (" POST endpoints need `Authorization: Bearer <token>`." if token else ""),
        lifespan=lifespan, docs_url=None, redoc_url=None,  # the interactive docs would load scripts from a CDN
    )
    app.state.resnet_tune = state

    # --- errors: always {"detail": "<sentence>"} -----------------------------------------------------------

    @app.exception_handler(_HTTPError)
    async def _http_error(_req: Request, err: _HTTPError) -> JSONResponse:
        return JSONResponse({"detail": err.detail}, status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, err: RequestValidationError) -> JSONResponse:
        parts = []
        for e in err.errors():
            where = " ".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body", "path"))
            parts.append(f"{e.get('loc', ('',))[0]} parameter {where}: {e.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(_req: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(err.detail)}, status_code=err.status_code,
                            headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse({"detail": f"internal error ({type(err).__name__}); the server is still running."},
                            status_code=500)

    app.add_middleware(_SecurityHeaders)

    # --- auth and body reading -----------------------------------------------------------------------

    def require_token(request: Request) -> None:
        if state.token is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise _HTTPError(401, "this server needs a token: send the header 'Authorization: Bearer <token>'.",
                             {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), state.token.encode()):
            raise _HTTPError(401, "wrong token in the Authorization header.",
                             {"WWW-Authenticate": 'Bearer error="invalid_token"'})

    def check_upload_headers(request: Request) -> str:
        """The upload's media type, after the checks that need only the headers (415, 400, 413)."""
        ctype = request.headers.get("content-type", "")
        media = ctype.split(";", 1)[0].strip().lower()
        if media != "multipart/form-data" and not media.startswith("image/"):
            shown = media or "none"
            raise _HTTPError(415, f"content type {shown!r} is not accepted; send images as multipart/form-data "
                                  "fields named 'file', or one image as the raw body with an image/* content "
                                  "type.")
        limit = state.max_upload_bytes
        length = request.headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise _HTTPError(400, f"invalid Content-Length header {length!r}.") from None
            if declared > limit:
                raise _HTTPError(413, f"the upload is {declared:,} bytes, over this server's limit of {limit:,} "
                                      "bytes; send smaller or fewer images.", {"Connection": "close"})
        return media

    async def read_body(request: Request) -> bytes:
        limit = state.max_upload_bytes
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise _HTTPError(413, f"the upload is over this server's limit of {limit:,} bytes; send smaller "
                                      "or fewer images.", {"Connection": "close"})
        return bytes(buf)

    async def read_uploads(request: Request, media: str) -> list[_Upload]:
        """The images of a request whose headers passed :func:`check_upload_headers`, read within the request
        timeout (else 408, and the connection closes: the rest of the body is not read)."""
        try:
            body = await asyncio.wait_for(read_body(request), state.request_timeout)
        except asyncio.TimeoutError:
            raise _HTTPError(408, f"the request body did not arrive within {state.request_timeout:g} seconds; send "
                                  "the whole upload without pausing.", {"Connection": "close"}) from None
        except ClientDisconnect:  # nobody reads the answer; this keeps it out of the error log
            raise _HTTPError(400, "the client closed the connection before sending the whole body.") from None
        if not body:
            raise _HTTPError(400, "the request body is empty; send an image.")
        if media.startswith("image/"):
            return [_Upload("body", body)]
        return await _parse_multipart(request, body)

    async def _parse_multipart(request: Request, body: bytes) -> list[_Upload]:
        from starlette.datastructures import UploadFile

        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        too_many = _HTTPError(413, f"too many files in one request (at most {state.max_files}); split them over "
                                   "several requests.")
        try:
            form = await Request(request.scope, replay).form(max_files=state.max_files + 1, max_fields=64)
        except StarletteHTTPException as err:
            if "too many files" in str(err.detail).lower():
                raise too_many from None
            raise _HTTPError(400, f"malformed multipart body ({err.detail}).") from None
        except Exception as err:  # python-multipart's parse errors
            raise _HTTPError(400, f"malformed multipart body ({type(err).__name__}: {str(err)[:200]}).") from None
        try:
            items = form.getlist("file")
            if not items:
                names = sorted(set(form.keys()))
                got = f" (got {', '.join(repr(n) for n in names)})" if names else ""
                raise _HTTPError(400, f"no image in the request: send each image as a multipart field named "
                                      f"'file'{got}.")
            if len(items) > state.max_files:
                raise too_many
            uploads = []
            for i, item in enumerate(items):
                if not isinstance(item, UploadFile):
                    raise _HTTPError(400, f"field 'file' number {i + 1} is text, not a file upload; send the image "
                                          "bytes as a file.")
                uploads.append(_Upload(item.filename or f"file{i + 1}", await item.read()))
            return uploads
        finally:
            await form.close()

    def decode_all(uploads: list[_Upload], batch: bool) -> tuple[torch.Tensor | None, list[Any]]:
        """The decoded images, and (for the micro-batcher) the predictor's preprocessed batch of them."""
        images = []
        for up in uploads:
            name = repr(up.name) if up.name != "body" else "the request body"
            img = decode_upload(up.data, name, state.max_pixels)
            check_scaled_size(img, name)
            images.append(img)
        return (predictor.preprocess(images) if batch and images else None), images

    def check_scaled_size(img: Any, name: str) -> None:
        """The image as the model will see it must be within the pixel limit as well: a classifier scales the
        shorter side to its ``resize``, so a very elongated image within the limit (say 1,000,000 x 1) would
        become enormous (16,000,000 x 16 at ``resize`` 16)."""
        scaled = predictor.scaled_pixels(img.size)
        if scaled > state.max_pixels:
            w, h = img.size
            raise UploadError(413, f"{name} is {w}x{h} pixels, too elongated: scaled for the model it would have "
                                   f"{scaled:,} pixels, over this server's limit of {state.max_pixels:,}; crop it "
                                   "to a less elongated image.")

    async def decode(uploads: list[_Upload], batch: bool = False) -> tuple[torch.Tensor | None, list[Any]]:
        try:
            return await state.run_in(state.decode_pool, decode_all, uploads, batch)
        except UploadError as err:
            raise _HTTPError(err.status, err.message) from None

    # --- endpoints -----------------------------------------------------------------------------------

    @app.get("/health", response_model=Health, summary="liveness and what is served")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": str(rec.get("model", "")), "task": task,
                "classes": len(predictor.classes), "auth": state.token is not None, "batching": state.batching}

    @app.get("/model", summary="the checkpoint's record: classes, preprocessing, metrics, architecture")
    async def model_info() -> dict[str, Any]:
        out = dict(rec)
        out["server"] = {"max_upload_bytes": state.max_upload_bytes, "max_files": state.max_files,
                         "max_pixels": state.max_pixels, "batching": state.batching, "auth": state.token is not None,
                         "max_queue": state.max_queue, "request_timeout": state.request_timeout,
                         "in_flight": state.in_flight, **predictor.info(),
                         "forward_passes": state.batcher.batches if state.batcher else None,
                         "batched_images": state.batcher.images if state.batcher else None}
        return out

    schema = _RESPONSES.get(task, (list[dict[str, Any]], "predictions for one or several images"))

    @app.post("/predict", response_model=schema[0], response_model_by_alias=True, summary=schema[1],
              openapi_extra={"requestBody": _IMAGE_BODY}, responses=_ERRORS, dependencies=[Depends(require_token)])
    async def predict(request: Request, top_k: int = Query(5, ge=1, le=1000, description="classes per image "
                                                                                         "(classification)")
                      ) -> JSONResponse:
        media = check_upload_headers(request)
        async with state.admitted():
            uploads = await read_uploads(request, media)
            x, images = await decode(uploads, batch=state.batcher is not None)
            if state.batcher is not None:
                rows = await state.wait_for_model(state.batcher.submit(x))
                results = [predictor.describe(r, top_k=top_k) for r in rows]
            else:
                results = await state.wait_for_model(
                    state.run_in(state.model_pool, lambda: predictor.predict_images(images, top_k=top_k)))
        return JSONResponse([{"file": up.name, **r} for up, r in zip(uploads, results)])

    @app.post("/explain", response_class=Response, summary=_EXPLAIN_SUMMARY.get(task, "an explanation (PNG)"),
              openapi_extra={"requestBody": _IMAGE_BODY},
              responses={**_ERRORS, 200: {"content": {"image/png": {}}, "description": "the picture; for a "
                                          "classifier, headers X-Class and X-Prob name the explained class and "
                                          "its probability"}},
              dependencies=[Depends(require_token)])
    async def explain(request: Request, class_name: str | None = Query(
            None, alias="class", description="class to explain (default: the predicted one)")) -> Response:
        if class_name is not None and class_name not in predictor.classes:
            raise _HTTPError(400, f"class {class_name!r} is not one of the model's classes.")
        media = check_upload_headers(request)
        async with state.admitted():
            uploads = await read_uploads(request, media)
            if len(uploads) != 1:
                raise _HTTPError(400, f"/explain takes one image, got {len(uploads)}.")
            _, images = await decode(uploads)
            return await explain_on_model(images[0], class_name)

    async def explain_on_model(image: Any, class_name: str | None) -> Response:
        """The predictor's picture of one decoded image as a PNG, computed on the model thread."""
        def run() -> tuple[bytes, dict[str, Any]]:
            img, info = predictor.explain(image, class_name)
            buf = io.BytesIO()
            img.save(buf, format="PNG", optimize=False)
            return buf.getvalue(), info

        png, info = await state.wait_for_model(state.run_in(state.model_pool, run))
        headers = {"Cache-Control": "no-store"}
        if "class" in info:
            headers.update({"X-Class": _header_safe(info["class"]), "X-Prob": f"{info['prob']:.6f}"})
        return Response(png, media_type="image/png", headers=headers)

    # --- the page ------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type=_STATIC_TYPES[".html"],
                            headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        path = STATIC / name
        if "/" in name or "\\" in name or name.startswith(".") or not path.is_file() or \
                path.suffix not in _STATIC_TYPES:
            raise _HTTPError(404, f"no static file {name!r}.")
        return FileResponse(path, media_type=_STATIC_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})

    return app


def _header_safe(text: str) -> str:
    """HTTP header values are latin-1: percent-encode anything else (the page decodes it)."""
    from urllib.parse import quote

    return quote(text, safe=" !#$&'()*+,-./:;<=>?@[]^_`{|}~")
