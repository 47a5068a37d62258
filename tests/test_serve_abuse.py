"""The service under abuse (issue 16): slow clients get 408 without stalling anyone else, load over the admission
bound gets 429 or 503 with Retry-After, never a 500 or a hang. Real server processes on 127.0.0.1 as in
test_serve.py, plus the app in process where a test needs the model held up exactly (no sleeps, no timing)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import select
import socket
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest

from resnet_tune.cli import main

from test_serve import CLASSES, Server, _files, image_bytes

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

SLOW_TIMEOUT = 2.0  # the server's --request-timeout, seconds
MAX_QUEUE = 3  # the server's --max-queue
FULL_BATCH = 4  # the server's --max-batch: a request of this many images runs at once, smaller ones wait a second
LOAD_REQUESTS = 40


@pytest.fixture(scope="module")
def run_dir(colour_run: Path) -> Path:
    return colour_run


@pytest.fixture(scope="module")
def server(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # One server for both tests (each start costs seconds): a short body-read timeout, few requests in progress,
    # and batches that wait a second for company unless full, so that admitted requests hold their places while
    # the rest of a burst arrives. Requests of FULL_BATCH images skip the wait.
    srv = Server(run_dir, tmp_path_factory.mktemp("logs") / "server.log", "--request-timeout", str(SLOW_TIMEOUT),
                 "--max-queue", str(MAX_QUEUE), "--max-batch", str(FULL_BATCH), "--max-wait-ms", "1000")
    try:
        srv.wait()
        yield srv
    finally:
        srv.stop()


def in_flight(url: str) -> int:
    return int(httpx.get(url + "/model", timeout=10).json()["server"]["in_flight"])


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout}s waiting for {what}")
        time.sleep(0.05)


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout bounds each read)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def assert_json_refusal(status: int, headers: Any, body: bytes, retry_after: bool) -> str:
    assert headers["content-type"].startswith("application/json"), (status, headers)
    detail = json.loads(body)["detail"]
    assert isinstance(detail, str) and detail.endswith("."), detail
    if retry_after:
        assert int(headers["retry-after"]) >= 1, headers
    return detail


# --- slow clients --------------------------------------------------------------------------------------

def full_batch(colour: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    """FULL_BATCH images of one colour as multipart fields (a request that does not wait for company)."""
    return _files(*[(f"{colour}{i}.png", image_bytes(colour, 10 + i)) for i in range(FULL_BATCH)])


def test_slow_clients_get_408_and_do_not_stall_others(server: Server) -> None:
    srv = server
    with httpx.Client(timeout=30) as c:  # warm up: the first forward pass is slower
        assert c.post(srv.url + "/predict", files=full_batch("red")).status_code == 200
    assert in_flight(srv.url) == 0
    body = image_bytes("blue", 1)
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as trickler, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=20) as staller:
        trickler.sendall(head + body[:1])  # then a byte at a time, below
        staller.sendall(head)  # the headers, then nothing
        wait_until(lambda: in_flight(srv.url) == 2, "both slow requests to be in progress")

        # a normal request meanwhile is answered while both slow ones are still open
        with httpx.Client(timeout=30) as c:
            r = c.post(srv.url + "/predict", files=full_batch("green"))
        assert r.status_code == 200 and [o["top"][0]["class"] for o in r.json()] == ["green"] * FULL_BATCH
        assert in_flight(srv.url) == 2, "the slow requests were still being read"

        # trickle the rest a few bytes a second until the server answers; bounded by the body's length and time
        deadline = time.monotonic() + 10 * SLOW_TIMEOUT
        for i in range(1, len(body)):
            if select.select([trickler], [], [], 0.25)[0] or time.monotonic() > deadline:
                break
            try:
                trickler.sendall(body[i:i + 1])
            except OSError:  # the server closed after answering
                break
        else:
            pytest.fail("the server read the whole trickled body instead of timing out")
        assert select.select([trickler], [], [], 10 * SLOW_TIMEOUT)[0], "the server answered the trickler"
        for sock in (trickler, staller):
            status, headers, payload = parse_response(read_response(sock))
            assert status == 408, (status, payload)
            detail = assert_json_refusal(status, headers, payload, retry_after=False)
            assert f"{SLOW_TIMEOUT:g} seconds" in detail and headers.get("connection") == "close"

    # a client that gives up halfway through its body
    with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as quitter:
        quitter.sendall(head + body[:len(body) // 2])
        wait_until(lambda: in_flight(srv.url) == 1, "the quitter to be in progress")
    assert srv.alive()
    wait_until(lambda: in_flight(srv.url) == 0, "the slow requests to be released")
    log = srv.log.read_text()
    assert "Traceback" not in log and "unexpected error" not in log, log
    r = httpx.post(srv.url + "/predict", files=_files(("y.png", image_bytes("yellow", 3))), timeout=30)
    assert r.status_code == 200 and r.json()[0]["top"][0]["class"] == "yellow"  # after the batch's wait


# --- bounded load ---------------------------------------------------------------------------------------

def test_load_over_the_queue_gets_429_never_500(server: Server) -> None:
    srv = server
    start = threading.Barrier(LOAD_REQUESTS)

    def one(i: int) -> tuple[str, int, Any, bytes]:
        colour = CLASSES[i % len(CLASSES)]
        route = "/explain" if i % 4 == 3 else "/predict"
        with httpx.Client(timeout=30) as c:
            start.wait(30)
            r = c.post(srv.url + route, files=_files((f"{i}.png", image_bytes(colour, 200 + i))))
        return colour if route == "/predict" else "explain", r.status_code, r.headers, r.content

    with concurrent.futures.ThreadPoolExecutor(LOAD_REQUESTS) as pool:
        results = list(pool.map(one, range(LOAD_REQUESTS), timeout=120))

    statuses = [status for _, status, _, _ in results]
    assert set(statuses) <= {200, 429, 503}, statuses
    assert 200 in statuses and 429 in statuses, statuses
    for what, status, headers, content in results:
        if status != 200:
            detail = assert_json_refusal(status, headers, content, retry_after=True)
            assert "retry" in detail.lower()
        elif what == "explain":
            assert headers["content-type"] == "image/png"
        else:
            assert json.loads(content)[0]["top"][0]["class"] == what
    # and the server is healthy afterwards, with nothing left in progress
    assert srv.alive()
    assert in_flight(srv.url) == 0
    log = srv.log.read_text()
    assert "Traceback" not in log and "unexpected error" not in log, log
    r = httpx.post(srv.url + "/predict", files=_files(("c.png", image_bytes("cyan", 5))), timeout=30)
    assert r.status_code == 200 and r.json()[0]["top"][0]["class"] == "cyan"


# --- the app in process, the model held up by a gate ------------------------------------------------------

@pytest.fixture(scope="module")
def predictor(run_dir: Path) -> Any:
    from resnet_tune import Predictor

    return Predictor(run_dir, device="cpu")


def run_app(app: Any, scenario: Callable[[Any, Any, threading.Event], Awaitable[None]]) -> None:
    """Run ``scenario(client, state, gate)`` against ``app`` (its lifespan included). ``gate`` holds the model
    thread (every forward pass, batched or not, and Grad-CAM) until it is set, at most 30 s."""
    async def main_() -> None:
        gate = threading.Event()
        state = app.state.resnet_tune
        transport = httpx.ASGITransport(app=app)
        try:
            async with app.router.lifespan_context(app):
                state.model_pool.submit(gate.wait, 30)
                async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
                    await scenario(client, state, gate)
        finally:
            gate.set()

    asyncio.run(asyncio.wait_for(main_(), 60))


async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def upload(colour: str, seed: int) -> dict[str, Any]:
    return {"files": _files((f"{colour}.png", image_bytes(colour, seed)))}


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "not-batched"])
def test_admission_bounds_predict_and_explain(predictor: Any, batching: bool) -> None:
    from resnet_tune.serve.http import create_app

    app = create_app(predictor, batching=batching, max_queue=2)

    async def scenario(client: Any, state: Any, gate: threading.Event) -> None:
        held = [asyncio.create_task(client.post("/predict", **upload("red", 1))),
                asyncio.create_task(client.post("/explain", **upload("blue", 2)))]
        await until(lambda: state.in_flight == 2, "two requests to be admitted")
        for route in ("/predict", "/explain", "/predict"):
            r = await client.post(route, **upload("green", 3))
            assert r.status_code == 429, r.text
            assert "2 at once" in assert_json_refusal(429, r.headers, r.content, retry_after=True)
        assert (await client.get("/health")).status_code == 200  # GETs are not queued
        gate.set()
        predicted, explained = await asyncio.gather(*held)
        assert predicted.status_code == 200 and predicted.json()[0]["top"][0]["class"] == "red"
        assert explained.status_code == 200 and explained.headers["x-class"] == "blue"
        assert state.in_flight == 0
        r = await client.post("/predict", **upload("green", 3))
        assert r.status_code == 200 and r.json()[0]["top"][0]["class"] == "green"

    run_app(app, scenario)


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "not-batched"])
def test_model_busy_past_the_timeout_is_503(predictor: Any, batching: bool) -> None:
    from resnet_tune.serve.http import create_app

    app = create_app(predictor, batching=batching, request_timeout=0.3)

    async def scenario(client: Any, state: Any, gate: threading.Event) -> None:
        for route in ("/predict", "/explain"):
            r = await client.post(route, **upload("red", 1))
            assert r.status_code == 503, r.text
            assert "busy" in assert_json_refusal(503, r.headers, r.content, retry_after=True)
        assert state.in_flight == 0
        gate.set()
        r = await client.post("/predict", **upload("yellow", 4))
        assert r.status_code == 200 and r.json()[0]["top"][0]["class"] == "yellow"

    run_app(app, scenario)


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "not-batched"])
def test_shutdown_answers_503(predictor: Any, batching: bool) -> None:
    from resnet_tune.serve.http import create_app

    app = create_app(predictor, batching=batching)

    async def main_() -> None:
        gate = threading.Event()
        state = app.state.resnet_tune
        lifespan = app.router.lifespan_context(app)
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
                await lifespan.__aenter__()
                state.model_pool.submit(gate.wait, 30)
                waiting = asyncio.create_task(c.post("/predict", **upload("red", 1)))
                await until(lambda: state.in_flight == 1, "the request to be admitted")
                await lifespan.__aexit__(None, None, None)  # the server shuts down under the waiting request
                for r in (await waiting, await c.post("/predict", **upload("red", 1))):
                    assert r.status_code == 503, r.text
                    assert "shutting down" in assert_json_refusal(503, r.headers, r.content, retry_after=True)
        finally:
            gate.set()

    asyncio.run(asyncio.wait_for(main_(), 60))


# --- the command line ------------------------------------------------------------------------------------

def test_serve_options_reach_the_app_and_uvicorn(monkeypatch: pytest.MonkeyPatch, run_dir: Path) -> None:
    import uvicorn

    from resnet_tune.serve import http

    calls: list[dict[str, Any]] = []
    apps: list[dict[str, Any]] = []
    real_create_app = http.create_app
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.setattr(http, "create_app", lambda *a, **kw: apps.append(kw) or real_create_app(*a, **kw))
    assert main(["serve", str(run_dir), "--max-queue", "7", "--request-timeout", "4.5"]) == 0
    assert apps[-1]["max_queue"] == 7 and apps[-1]["request_timeout"] == 4.5
    assert calls[-1]["timeout_keep_alive"] == 5 and calls[-1]["h11_max_incomplete_event_size"] == 16 * 1024
    assert "limit_concurrency" not in calls[-1]  # its 503 would be plain text, without Retry-After
    for bad in (["--max-queue", "0"], ["--request-timeout", "0"], ["--request-timeout", "inf"]):
        assert main(["serve", str(run_dir), *bad]) == 2, bad
