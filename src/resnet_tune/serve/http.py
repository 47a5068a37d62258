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

import contextlib
import hmac
import io
import logging
import os
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..inference.predictor import Predictor
from .schemas import ERRORS, EXPLAIN_SUMMARY, IMAGE_BODY, PREDICT_RESPONSES, Health
from .state import HTTPError, SecurityHeaders, ServerState
from .uploads import check_upload_headers, decode, read_uploads

__all__ = ["DEFAULT_MAX_FILES", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_QUEUE", "DEFAULT_MAX_UPLOAD_BYTES",
           "DEFAULT_REQUEST_TIMEOUT", "create_app"]

log = logging.getLogger("resnet_tune.serve")

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_FILES = 16
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_QUEUE = 64  # POST requests in progress at once
DEFAULT_REQUEST_TIMEOUT = 30.0  # seconds to send a body, and to wait for the model
STATIC = Path(__file__).resolve().parent / "static"
_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}


def _load_predictor(checkpoint: str | os.PathLike[str], device: str, backend: str, max_batch: int) -> Predictor:
    """The predictor of the checkpoint's task; ``backend`` auto times the engines at batch 1 and ``max_batch``."""
    from ..tasks import Predictor as TaskPredictor  # every task's predictor registered

    return TaskPredictor(checkpoint, device=device, backend=backend, auto_batch=max_batch,
                         say=lambda msg: print(msg, flush=True))


def create_app(checkpoint_or_predictor: Any, *,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_files: int = DEFAULT_MAX_FILES,
               max_pixels: int = DEFAULT_MAX_PIXELS, token: str | None = None, batching: bool = True,
               max_batch: int = 32, max_wait_ms: float = 2.0, device: str = "auto", backend: str = "torch",
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
        _load_predictor(checkpoint_or_predictor, device, backend, max_batch if batching else 1)
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

    @app.exception_handler(HTTPError)
    async def _http_error(_req: Request, err: HTTPError) -> JSONResponse:
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

    app.add_middleware(SecurityHeaders)

    # --- auth and body reading -----------------------------------------------------------------------

    def require_token(request: Request) -> None:
        if state.token is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise HTTPError(401, "this server needs a token: send the header 'Authorization: Bearer <token>'.",
                             {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), state.token.encode()):
            raise HTTPError(401, "wrong token in the Authorization header.",
                             {"WWW-Authenticate": 'Bearer error="invalid_token"'})

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

    schema = PREDICT_RESPONSES.get(task, (list[dict[str, Any]], "predictions for one or several images"))

    @app.post("/predict", response_model=schema[0], response_model_by_alias=True, summary=schema[1],
              openapi_extra={"requestBody": IMAGE_BODY}, responses=ERRORS, dependencies=[Depends(require_token)])
    async def predict(request: Request, top_k: int = Query(5, ge=1, le=1000, description="classes per image "
                                                                                         "(classification)")
                      ) -> JSONResponse:
        media = check_upload_headers(request, state)
        async with state.admitted():
            uploads = await read_uploads(request, media, state)
            x, images = await decode(uploads, state, batch=state.batcher is not None)
            if state.batcher is not None:
                rows = await state.wait_for_model(state.batcher.submit(x))
                results = [predictor.describe(r, top_k=top_k) for r in rows]
            else:
                results = await state.wait_for_model(
                    state.run_in(state.model_pool, lambda: predictor.predict_images(images, top_k=top_k)))
        return JSONResponse([{"file": up.name, **r} for up, r in zip(uploads, results)])

    @app.post("/explain", response_class=Response, summary=EXPLAIN_SUMMARY.get(task, "an explanation (PNG)"),
              openapi_extra={"requestBody": IMAGE_BODY},
              responses={**ERRORS, 200: {"content": {"image/png": {}}, "description": "the picture; for a "
                                          "classifier, headers X-Class and X-Prob name the explained class and "
                                          "its probability"}},
              dependencies=[Depends(require_token)])
    async def explain(request: Request, class_name: str | None = Query(
            None, alias="class", description="class to explain (default: the predicted one)")) -> Response:
        if class_name is not None and class_name not in predictor.classes:
            raise HTTPError(400, f"class {class_name!r} is not one of the model's classes.")
        media = check_upload_headers(request, state)
        async with state.admitted():
            uploads = await read_uploads(request, media, state)
            if len(uploads) != 1:
                raise HTTPError(400, f"/explain takes one image, got {len(uploads)}.")
            _, images = await decode(uploads, state)
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
            raise HTTPError(404, f"no static file {name!r}.")
        return FileResponse(path, media_type=_STATIC_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})

    return app


def _header_safe(text: str) -> str:
    """HTTP header values are latin-1: percent-encode anything else (the page decodes it)."""
    from urllib.parse import quote

    return quote(text, safe=" !#$&'()*+,-./:;<=>?@[]^_`{|}~")
