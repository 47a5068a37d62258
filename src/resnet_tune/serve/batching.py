"""A small asyncio micro-batcher: concurrent requests share one forward pass.

Requests put their preprocessed images in a queue. A single worker task takes everything queued (up to
``max_batch`` images), waits up to ``max_wait_ms`` for more when the batch is not full, runs one forward pass in
a worker thread (the event loop keeps accepting requests meanwhile) and hands each request its rows. While a
batch runs, new requests queue up and form the next batch, so under load batches grow by themselves; an idle
server adds at most ``max_wait_ms`` of latency.

The batcher does not bound its queue: the web service admits a bounded number of requests before they get here
(see ``max_queue`` in :func:`resnet_tune.serve.http.create_app`). A caller that stops waiting (cancelled, timed
out) leaves its item behind; the worker skips it if it has not run yet. On :meth:`MicroBatcher.stop`, waiting
callers get :class:`ShuttingDown`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["MicroBatcher", "ShuttingDown"]


class ShuttingDown(RuntimeError):
    """The batcher stopped (the server is shutting down) before this request's forward pass ran."""


@dataclass
class _Item:
    x: torch.Tensor
    future: asyncio.Future
    arrived: float


class MicroBatcher:
    """``await batcher.submit(x)`` -> ``run(x)``, with ``x`` of concurrent callers concatenated along dim 0."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], executor: concurrent.futures.Executor, *,
                 max_batch: int = 32, max_wait_ms: float = 2.0) -> None:
        self.run = run
        self.executor = executor
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self._pending: list[_Item] = []
        self._queued = 0
        self._wakeup: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopped = False
        self.batches = 0  # statistics: forward passes run, images in them
        self.images = 0

    async def start(self) -> None:
        self._wakeup, self._full = asyncio.Event(), asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="resnet-tune-micro-batcher")

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(ShuttingDown("the server is shutting down"))
        self._pending.clear()
        self._queued = 0

    async def submit(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output rows for ``x``, computed in a shared forward pass; :class:`ShuttingDown` once
        :meth:`stop` ran."""
        if self._stopped:
            raise ShuttingDown("the server is shutting down")
        if self._task is None or self._wakeup is None or self._full is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._pending.append(_Item(x, fut, loop.time()))
        self._queued += x.shape[0]
        self._wakeup.set()
        if self._queued >= self.max_batch:
            self._full.set()
        return await fut

    def _take(self) -> list[_Item]:
        taken: list[_Item] = []
        n = 0
        while self._pending:
            item = self._pending[0]
            if taken and n + item.x.shape[0] > self.max_batch:
                break
            self._pending.pop(0)
            self._queued -= item.x.shape[0]
            if item.future.cancelled():  # the client went away while queued
                continue
            taken.append(item)
            n += item.x.shape[0]
        return taken

    async def _loop(self) -> None:
        assert self._wakeup is not None and self._full is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            # wait for more only as long as the oldest request has not waited max_wait yet (requests that
            # queued up during the previous forward pass go at once)
            remaining = (self._pending[0].arrived + self.max_wait - loop.time()) if self._pending else 0.0
            if self._queued < self.max_batch and remaining > 0:
                try:
                    await asyncio.wait_for(self._full.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
            items = self._take()
            if not self._pending:
                self._wakeup.clear()
            if self._queued < self.max_batch:
                self._full.clear()
            if not items:
                continue
            batch = items[0].x if len(items) == 1 else torch.cat([it.x for it in items])
            try:
                out = await loop.run_in_executor(self.executor, self.run, batch)
            except asyncio.CancelledError:
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(ShuttingDown("the server is shutting down"))
                raise
            except Exception as err:  # the model failed: every request in this batch gets the error
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(err)
                continue
            self.batches += 1
            self.images += batch.shape[0]
            start = 0
            for it in items:
                n = it.x.shape[0]
                if not it.future.done():
                    it.future.set_result(out[start:start + n])
                start += n
