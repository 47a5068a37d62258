"""What the web service's endpoints share: the predictor, the limits, the executors, the micro-batcher and the
admission count; the errors they answer with; and the security headers every answer carries."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import time
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from .batching import ShuttingDown

__all__ = ["CSP", "HTTPError", "RETRY_AFTER_BUSY", "RETRY_AFTER_QUEUE_FULL", "SecurityHeaders", "ServerState",
           "shutting_down"]

T = TypeVar("T")

RETRY_AFTER_QUEUE_FULL = 1  # seconds, the Retry-After of a 429
RETRY_AFTER_BUSY = 5  # seconds, the Retry-After of a 503
# The page loads nothing from elsewhere; the policy makes sure of it.
CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class SecurityHeaders:
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


class HTTPError(Exception):
    """An answer of ``status`` with ``{\"detail\": detail}`` (and ``headers``)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


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
            raise shutting_down()
        if self.in_flight >= self.max_queue:
            raise HTTPError(429, f"too many requests in progress (this server takes {self.max_queue} at once); "
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
            raise shutting_down()
        loop = asyncio.get_running_loop()
        answer: asyncio.Future = loop.create_future()

        def settle(job: concurrent.futures.Future) -> None:  # on the event loop
            if answer.done():  # the caller stopped waiting
                return
            if job.cancelled():
                answer.set_exception(shutting_down())
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
            raise HTTPError(503, f"the model stayed busy for {self.request_timeout:g} seconds, this server's "
                                  "request timeout; retry after the delay in the Retry-After header.",
                             {"Retry-After": str(RETRY_AFTER_BUSY)}) from None
        except ShuttingDown:
            raise shutting_down() from None


def shutting_down() -> HTTPError:
    """The 503 for work that arrives, or is still waiting, when the server shuts down."""
    return HTTPError(503, "the server is shutting down; retry after the delay in the Retry-After header.",
                      {"Retry-After": str(RETRY_AFTER_BUSY)})
