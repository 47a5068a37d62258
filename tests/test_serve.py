"""The web service, run as a real server process on loopback: predictions, hostile input, auth, the page."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from PIL import Image

import resnet_tune as rt
from resnet_tune.cli import main
from resnet_tune.data.transforms import Preprocessing, eval_transform
from resnet_tune.engine import checkpoint as ckpt

from conftest import make_image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
# six colours, so that the page's top-5 list is full
COLOURS6 = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 50, 220), "yellow": (230, 210, 40),
            "magenta": (200, 40, 200), "cyan": (40, 200, 210)}
CLASSES = sorted(COLOURS6)
TOKEN = "s3cret-token"
LIMITS = {"max_upload_bytes": 256 * 1024, "max_files": 3, "max_pixels": 250_000}


# --- a tiny colour classifier, trained in a few seconds ---------------------------------------------------

def train_colour_checkpoint(root: Path, size: int = 16, steps: int = 60) -> Path:
    """resnet20 trained on noisy single-colour images (the classes of COLOURS6), saved as a run folder."""
    torch.manual_seed(0)
    pp = Preprocessing.for_size(size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    tf = eval_transform(pp)
    xs, ys = [], []
    for label, name in enumerate(CLASSES):
        for j in range(9):  # several sizes: downscaling smooths the noise, and the model should not care
            path = make_image(root / "train" / name / f"{j}.png", COLOURS6[name], (24, 64, 200)[j % 3],
                              seed=label * 100 + j)
            xs.append(tf(Image.open(path).convert("RGB")))
            ys.append(label)
    x, y = torch.stack(xs), torch.tensor(ys)
    model = rt.create_model("resnet20", num_classes=len(CLASSES))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    rec = ckpt.model_record(model, classes=CLASSES, preprocessing=pp.to_dict(), metrics={"val_acc": acc})
    run = root / "run"
    ckpt.save_checkpoint(run / ckpt.BEST, model, rec)
    return run


def image_bytes(colour: str, seed: int, size: int = 24, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(COLOURS6[colour])[None, None] + rng.normal(0, 25, (size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (a decompression bomb, as far as the header goes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    idat = zlib.compress(b"\x00" * (width * 3 + 1) * 4)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


# --- real server processes ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, run: Path, log: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        env.pop("RESNET_TUNE_TOKEN", None)
        self._logf = open(log, "wb")
        if "--backend" not in extra:  # these tests are about HTTP: skip auto's engine timing at start-up
            extra = (*extra, "--backend", "torch")
        self.proc = subprocess.Popen([sys.executable, "-m", "resnet_tune", "serve", str(run), "--port", str(self.port),
                                      *extra], stdout=self._logf, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def wait(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not come up in {timeout}s:\n{self.log.read_text()}")

    def alive(self) -> bool:
        return self.proc.poll() is None and httpx.get(self.url + "/health", timeout=5).json()["status"] == "ok"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._logf.close()


@pytest.fixture(scope="module")
def run_dir(colour_run: Path) -> Path:
    return colour_run  # trained once a session (conftest.py), shared with test_serve_abuse.py


@pytest.fixture(scope="module")
def servers(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    logs = tmp_path_factory.mktemp("logs")
    # "open": batching, small limits for the hostile-input tests; "locked": a token, no batching
    started = {
        "open": Server(run_dir, logs / "open.log", "--max-upload-mb", str(LIMITS["max_upload_bytes"] / 2**20),
                       "--max-files", str(LIMITS["max_files"]), "--max-pixels", str(LIMITS["max_pixels"]),
                       "--max-wait-ms", "20"),
        "locked": Server(run_dir, logs / "locked.log", "--token", TOKEN, "--no-batch"),
    }
    try:
        for s in started.values():
            s.wait()
        yield started
    finally:
        for s in started.values():
            s.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with httpx.Client(timeout=60) as c:
        yield c


def _files(*pairs: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (name, data, "image/png")) for name, data in pairs]


# --- predictions ------------------------------------------------------------------------------------

def test_predict_multipart_single_and_several(servers: dict[str, Server], client: Any) -> None:
    url = servers["open"].url
    r = client.post(url + "/predict", files=_files(("a_red.png", image_bytes("red", 1))))
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out) == 1 and out[0]["file"] == "a_red.png" and out[0]["top"][0]["class"] == "red"
    assert len(out[0]["top"]) == 5 and set(out[0]["top"][0]) == {"class", "prob"}
    probs = [t["prob"] for t in out[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0.5 < probs[0] <= 1.0

    names = ["green", "blue", "magenta"]
    r = client.post(url + "/predict?top_k=2", files=_files(*[(f"{n}.png", image_bytes(n, 7)) for n in names]))
    assert r.status_code == 200, r.text
    out = r.json()
    assert [o["file"] for o in out] == [f"{n}.png" for n in names]
    assert [o["top"][0]["class"] for o in out] == names and all(len(o["top"]) == 2 for o in out)


def test_predict_raw_body_and_same_json_as_cli(servers: dict[str, Server], client: Any, run_dir: Path,
                                               tmp_path: Path) -> None:
    data = image_bytes("yellow", 3, fmt="JPEG")
    r = client.post(servers["locked"].url + "/predict", content=data,
                    headers={"Content-Type": "image/jpeg", "Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    (served,) = r.json()
    assert served["file"] == "body" and served["top"][0]["class"] == "yellow"

    img = tmp_path / "y.jpg"
    img.write_bytes(data)
    assert main(["predict", str(run_dir), str(img), "--output", str(tmp_path / "p.json")]) == 0
    (cli,) = json.loads((tmp_path / "p.json").read_text())
    assert [t["class"] for t in cli["top"]] == [t["class"] for t in served["top"]]
    np.testing.assert_allclose([t["prob"] for t in cli["top"]], [t["prob"] for t in served["top"]], atol=2e-3)


def test_concurrent_requests_are_batched(servers: dict[str, Server], client: Any) -> None:
    url = servers["open"].url
    before = client.get(url + "/model").json()["server"]["forward_passes"]
    jobs = [CLASSES[i % len(CLASSES)] for i in range(24)]

    def one(i_colour: tuple[int, str]) -> tuple[str, int, str]:
        i, colour = i_colour
        with httpx.Client(timeout=60) as c:
            r = c.post(url + "/predict", files=_files((f"{i}.png", image_bytes(colour, 100 + i))))
        return colour, r.status_code, r.json()[0]["top"][0]["class"] if r.status_code == 200 else r.text

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, enumerate(jobs)))
    assert all(code == 200 for _, code, _ in results), results
    assert sum(c == got for c, _, got in results) >= 22, results
    after = client.get(url + "/model").json()["server"]["forward_passes"]
    assert after - before < len(jobs), "concurrent requests shared forward passes"


# --- hostile input ------------------------------------------------------------------------------------

def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _content_length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def _content_length(data: bytes) -> int:
    m = re.search(rb"content-length: *(\d+)", data, re.I)
    return int(m.group(1)) if m else 0


HOSTILE: dict[str, tuple[dict[str, Any], int, str]] = {
    "not an image": (dict(files=_files(("notes.png", b"hello, I am text, not pixels" * 10))), 400, "not an image"),
    "truncated png": (dict(files=_files(("cut.png", image_bytes("red", 1, size=64)[:300]))), 400, "truncated"),
    "truncated jpeg": (dict(files=_files(("cut.jpg", image_bytes("red", 1, size=64, fmt="JPEG")[:400]))), 400,
                       "truncated"),
    "over the pixel limit": (dict(files=_files(("big.png", png_header_only(1000, 1000)))), 413, "1,000,000 pixels"),
    "decompression bomb": (dict(files=_files(("bomb.png", png_header_only(100_000, 100_000)))), 413, "pixels"),
    "oversize upload": (dict(content=b"\x89PNG" + b"\0" * 300_000, headers={"Content-Type": "image/png"}), 413,
                        "over this server's limit"),
    "empty body": (dict(content=b"", headers={"Content-Type": "image/png"}), 400, "empty"),
    "empty file": (dict(files=_files(("nothing.png", b""))), 400, "empty"),
    "text/plain": (dict(content=b"hello", headers={"Content-Type": "text/plain"}), 415, "content type"),
    "json": (dict(json={"image": "x"}), 415, "content type"),
    "octet-stream": (dict(content=image_bytes("red", 1), headers={"Content-Type": "application/octet-stream"}), 415,
                     "content type"),
    "no content type": (dict(content=image_bytes("red", 1), headers={"Content-Type": ""}), 415, "content type"),
    "too many files": (dict(files=_files(*[(f"{i}.png", image_bytes("red", i)) for i in range(4)])), 413,
                       "too many files"),
    "text field": (dict(data={"file": "not a file"}, files=[("other", ("x.png", b"x", "image/png"))]), 400,
                   "not a file upload"),
    "no file field": (dict(files=[("image", ("x.png", image_bytes("red", 1), "image/png"))]), 400,
                      "field named 'file'"),
    "malformed multipart": (dict(content=b"--nope\r\ngarbage", headers={
        "Content-Type": "multipart/form-data; boundary=xyz"}), 400, "multipart"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_input_gets_a_clear_4xx(servers: dict[str, Server], client: Any, case: str) -> None:
    kwargs, status, words = HOSTILE[case]
    r = client.post(servers["open"].url + "/predict", **kwargs)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words in detail, detail


def test_hostile_input_more(servers: dict[str, Server], client: Any) -> None:
    srv = servers["open"]
    # oversize rejected from Content-Length alone, before the body is sent
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {10 ** 10}\r\n\r\n").encode()
    resp = _raw(srv.port, head + b"\x89PNG")
    assert resp.startswith(b"HTTP/1.1 413") and b"10,000,000,000 bytes" in resp

    # oversize with no Content-Length (chunked): rejected while reading
    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b"\0" * 64 * 1024

    r = client.post(srv.url + "/predict", content=chunks(), headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and "over this server's limit" in r.json()["detail"]

    r = client.post(srv.url + "/predict?top_k=0", files=_files(("r.png", image_bytes("red", 1))))
    assert r.status_code == 422 and "top_k" in r.json()["detail"]
    r = client.post(srv.url + "/explain", files=_files(("r.png", image_bytes("red", 1)), ("g.png", image_bytes(
        "green", 1))))
    assert r.status_code == 400 and "one image" in r.json()["detail"]
    r = client.post(srv.url + "/explain?class=zebra", files=_files(("r.png", image_bytes("red", 1))))
    assert r.status_code == 400 and "zebra" in r.json()["detail"]
    assert client.get(srv.url + "/nowhere").json() == {"detail": "Not Found"}
    assert client.get(srv.url + "/predict").status_code == 405
    assert client.get(srv.url + "/static/..%2f..%2fhttp.py").status_code == 404

    # and the server is still healthy and still right
    assert srv.alive()
    r = client.post(srv.url + "/predict", files=_files(("c.png", image_bytes("cyan", 5))))
    assert r.status_code == 200 and r.json()[0]["top"][0]["class"] == "cyan"


# --- auth, model, explain, schema, page ------------------------------------------------------------------

def test_token_is_required_on_post_endpoints(servers: dict[str, Server], client: Any) -> None:
    url = servers["locked"].url
    files = _files(("b.png", image_bytes("blue", 2)))
    r = client.post(url + "/predict", files=files)
    assert r.status_code == 401 and "Bearer" in r.json()["detail"] and r.headers["www-authenticate"].startswith(
        "Bearer")
    r = client.post(url + "/explain", files=files, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "wrong token" in r.json()["detail"]
    r = client.post(url + "/predict", files=files, headers={"Authorization": f"Basic {TOKEN}"})
    assert r.status_code == 401
    r = client.post(url + "/predict", files=files, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()[0]["top"][0]["class"] == "blue"
    health = client.get(url + "/health").json()
    assert health["auth"] is True and health["batching"] is False
    assert client.get(url + "/model").status_code == 200 and client.get(url + "/").status_code == 200


def test_model_endpoint(servers: dict[str, Server], client: Any) -> None:
    info = client.get(servers["open"].url + "/model").json()
    assert info["classes"] == CLASSES and info["task"] == "classification" and info["model"] == "resnet20"
    assert info["preprocessing"]["input_size"] == 16 and info["metrics"]["val_acc"] == 1.0
    assert info["server"]["max_files"] == 3 and info["server"]["max_pixels"] == 250_000
    assert info["server"]["batching"] is True


def test_explain_returns_a_png_overlay(servers: dict[str, Server], client: Any) -> None:
    r = client.post(servers["open"].url + "/explain", files=_files(("m.png", image_bytes("magenta", 4, size=40))))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "PNG" and img.mode == "RGB" and min(img.size) >= 256
    assert r.headers["x-class"] == "magenta" and 0 < float(r.headers["x-prob"]) <= 1
    r = client.post(servers["open"].url + "/explain?class=green", content=image_bytes("magenta", 4),
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.headers["x-class"] == "green"


def test_openapi_documents_the_endpoints(servers: dict[str, Server], client: Any) -> None:
    spec = client.get(servers["open"].url + "/openapi.json").json()
    assert {"/predict", "/explain", "/health", "/model"} <= set(spec["paths"])
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "image/*" in body
    params = {p["name"] for p in spec["paths"]["/predict"]["post"]["parameters"]}
    assert "top_k" in params and "class" in {p["name"] for p in spec["paths"]["/explain"]["post"]["parameters"]}
    assert {"400", "413", "415"} <= set(spec["paths"]["/predict"]["post"]["responses"])


def test_page_is_self_contained(servers: dict[str, Server], client: Any) -> None:
    url = servers["open"].url
    r = client.get(url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    static = Path(rt.__file__).parent / "serve" / "static"
    texts = [r.text] + [client.get(url + f"/static/{p.name}").text for p in sorted(static.iterdir())]
    assert len(texts) >= 4
    for text in texts:
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), "no external resource"


def test_serve_warns_on_public_host_without_token(monkeypatch: pytest.MonkeyPatch, run_dir: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.delenv("RESNET_TUNE_TOKEN", raising=False)
    assert main(["serve", str(run_dir), "--host", "0.0.0.0", "--port", "9"]) == 0
    assert "without a token" in capsys.readouterr().err and calls[-1]["host"] == "0.0.0.0"
    monkeypatch.setenv("RESNET_TUNE_TOKEN", "abc")
    assert main(["serve", str(run_dir), "--host", "0.0.0.0"]) == 0
    assert "without a token" not in capsys.readouterr().err
    monkeypatch.delenv("RESNET_TUNE_TOKEN")
    assert main(["serve", str(run_dir)]) == 0
    assert "without a token" not in capsys.readouterr().err and calls[-1]["host"] == "127.0.0.1"
    assert main(["serve", str(run_dir), "--max-files", "0"]) == 2


# --- the page in a real browser ------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _page_image(path: Path) -> Path:
    """A 200x200 magenta-ish photo-like image (texture and a gradient), for the page and its screenshot."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:200, 0:200] / 200.0
    base = np.array(COLOURS6["magenta"], dtype=np.float64)
    arr = base[None, None] * (0.95 + 0.08 * np.sin(5 * xx + 3 * yy)[..., None]) + rng.normal(0, 20, (200, 200, 3))
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)
    return path


def test_browser_page_shows_top5_and_heatmap(servers: dict[str, Server], tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("headless Chromium is not installed; enable this test with "
                    "`apt-get install -y chromium chromium-driver` and `pip install playwright`")
    sync_api = pytest.importorskip("playwright.sync_api", reason="enable with `pip install playwright`")
    url = servers["open"].url
    image = _page_image(tmp_path / "photo.png")
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 980, "height": 860})
            page.on("request", lambda req: requests.append(req.url))
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model-info').textContent.includes('resnet20')")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("body[data-state='done']", timeout=60_000)
            rows = page.locator("#top li")
            assert rows.count() == 5
            assert rows.nth(0).locator(".name").inner_text() == "magenta"
            pcts = [float(t.strip("%")) for t in page.locator("#top .pct").all_inner_texts()]
            assert pcts == sorted(pcts, reverse=True) and pcts[0] > 50
            heat = page.locator("#heatmap")
            assert heat.is_visible()
            assert page.evaluate("document.getElementById('heatmap').naturalWidth") >= 256
            assert page.evaluate("document.getElementById('preview').naturalWidth") == 200
            assert "magenta" in page.locator("#heatmap-caption").inner_text()
            page.wait_for_timeout(500)  # let the bars' transition finish before the screenshot
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert requests and all(r.startswith((url, "blob:", "data:")) for r in requests), requests


def test_browser_page_marks_the_labels_over_their_thresholds(tmp_path: Path) -> None:
    """A multi-label checkpoint on the same page: the bars are the top scores, and the labels over their
    thresholds (the predictor's own answer) are marked."""
    if not Path(CHROMIUM).exists():
        pytest.skip("headless Chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api", reason="enable with `pip install playwright`")
    from test_multilabel_train import FAST, make_multilabel_data

    import resnet_tune as rt

    csv = make_multilabel_data(tmp_path / "ml", n=32)
    run = tmp_path / "run"
    rt.fit(task="multilabel", data=str(csv), output=str(run), quiet=True, **dict(FAST, epochs=1))
    image = csv.parent / "img0.png"
    server = Server(run, tmp_path / "server.log", "--no-batch")
    try:
        server.wait()
        answer = httpx.post(server.url + "/predict", files=[("file", ("img0.png", image.read_bytes(), "image/png"))],
                            timeout=60).json()[0]
        want = {t["label"] for t in answer["labels"]}
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 980, "height": 860})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(server.url + "/")
                page.wait_for_function("document.getElementById('model-info').textContent.includes('multi-label')")
                assert "Labels" in page.locator("#bars-title").inner_text()
                page.set_input_files("#file", str(image))
                page.wait_for_selector("body[data-state='done']", timeout=60_000)
                rows = page.locator("#top li")
                assert rows.count() == 3
                marked = {n.strip("✓ ").strip() for n in page.locator("#top li.over .name").all_inner_texts()}
                unmarked = {n.strip() for n in page.locator("#top li.under .name").all_inner_texts()}
                assert marked | unmarked == {"blue", "green", "red"} and not marked & unmarked
                assert marked == want  # the page marks what the server answers
                assert not errors, errors
            finally:
                browser.close()
    finally:
        server.stop()
