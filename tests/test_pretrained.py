"""Pretrained weights: downloads (against a loopback server laid out like the real hosts),
caches, checksums, offline use, safe loading, and loading into models."""

from __future__ import annotations

import collections
import hashlib
import http.server
import io
import json
import multiprocessing
import os
import socket
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from resnet_tune.models import create_model
from resnet_tune.models import hub
from resnet_tune.models import pretrained as loading
from resnet_tune.models import sources as pt
from resnet_tune.models.hub import ChecksumError, DownloadError
from resnet_tune.models.pretrained import load_pretrained, load_weights, resolve_source

TV_RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


# --- a loopback server laid out like download.pytorch.org / huggingface.co ----------------------

class _Routes:
    def __init__(self) -> None:
        self.routes: dict[str, tuple] = {}
        self.gets: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def file(self, path: str, data: bytes, *, delay: float = 0.0) -> None:
        """Serve ``data``; ``delay`` spreads the body over that many seconds."""
        self.routes[path] = ("file", data, delay)

    def redirect(self, path: str, location: str) -> None:
        self.routes[path] = ("redirect", location)

    def truncated(self, path: str, data: bytes, claimed: int) -> None:
        """Announce ``claimed`` bytes, send ``data`` (fewer) and close the connection."""
        self.routes[path] = ("truncated", data, claimed)


def _handler(routes: _Routes) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            with routes.lock:
                routes.gets[path] += 1
            route = routes.routes.get(path)
            if route is None:
                self.send_error(404)
                return
            kind = route[0]
            if kind == "redirect":
                self.send_response(302)
                self.send_header("Location", route[1])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = route[1]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(route[2] if kind == "truncated" else len(data)))
            self.end_headers()
            if kind == "file" and route[2]:
                n = 8
                step = -(-len(data) // n)
                for i in range(n):
                    self.wfile.write(data[i * step:(i + 1) * step])
                    self.wfile.flush()
                    time.sleep(route[2] / n)
            else:
                self.wfile.write(data)
            if kind == "truncated":
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

    return Handler


@pytest.fixture(scope="module")
def server():
    routes = _Routes()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(routes))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    routes.base = f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    yield routes
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(autouse=True)
def caches(tmp_path, monkeypatch, server):
    """Every test gets empty torch / Hugging Face caches and the loopback server as HF endpoint."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN", "RESNET_TUNE_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path


def _torch_ckpt_dir() -> Path:
    return Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"


def _leftovers(folder: Path) -> list[str]:
    """Files in a cache folder other than the lock folder."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and ".locks" not in p.parts)


# --- reference weights ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def r18():
    """A randomly initialised resnet18 (with non-trivial BN statistics) and its serialisations."""
    torch.manual_seed(0)
    model = create_model("resnet18").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    pth = buf.getvalue()
    from safetensors.torch import save

    st = save({k: v.contiguous() for k, v in state.items()})
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x)
    return {"model": model, "state": state, "pth": pth, "sha": hashlib.sha256(pth).hexdigest(),
            "safetensors": st, "x": x, "y": y}


def _out(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


# --- downloads ------------------------------------------------------------------------------------

def test_torchvision_style_url_downloads_into_torch_home_and_loads(server, r18):
    name = f"resnet18-{r18['sha'][:8]}.pth"
    path = f"/download.pytorch.org/models/{name}"
    server.file(path, r18["pth"])
    url = server.base + path

    model = create_model("resnet18", pretrained=url)
    assert torch.equal(_out(model, r18["x"]), r18["y"])
    cached = _torch_ckpt_dir() / name  # torch.hub's own location and name
    assert cached.is_file() and hashlib.sha256(cached.read_bytes()).hexdigest() == r18["sha"]
    assert _leftovers(_torch_ckpt_dir()) == [name]
    assert model.pretrained_meta["url"] == url and model.pretrained_meta["num_classes"] == 1000

    create_model("resnet18", pretrained=url)  # second use: from the cache
    assert server.gets[path] == 1


def test_url_without_hash_gets_its_own_cache_folder(server, r18):
    for repo in ("a", "b"):
        server.file(f"/{repo}/resolve/main/model.safetensors", r18["safetensors"])
    paths = [resolve_source(f"{server.base}/{repo}/resolve/main/model.safetensors", cfg=None,
                            model_name="resnet18")[1]["path"] for repo in ("a", "b")]
    assert paths[0] != paths[1]  # two URLs named model.safetensors do not share a cache file
    assert all(Path(p).name == "model.safetensors" for p in paths)


def test_redirect_is_followed(server):
    data = os.urandom(50_000)
    server.file("/cdn-lfs/blob-1234", data)
    server.redirect("/org/repo/resolve/main/weights.bin", "/cdn-lfs/blob-1234")
    out = hub.download(server.base + "/org/repo/resolve/main/weights.bin", _torch_ckpt_dir(), progress=False)
    assert out.name == "weights.bin" and out.read_bytes() == data


@pytest.mark.parametrize("how", ["download", "create_model"])
def test_interrupted_download_leaves_nothing(server, r18, how):
    path = f"/download.pytorch.org/models/cut-{how}-{r18['sha'][:8]}.pth"
    server.truncated(path, r18["pth"][:100_000], claimed=len(r18["pth"]))
    with pytest.raises(DownloadError) as exc:
        if how == "download":
            hub.download(server.base + path, _torch_ckpt_dir(), progress=False)
        else:
            create_model("resnet18", pretrained=server.base + path)
    msg = str(exc.value)
    assert server.base + path in msg and "100000 of" in msg and "pretrained='/path/to/file'" in msg
    assert _leftovers(_torch_ckpt_dir()) == []  # neither the file nor a .partial temp file


def test_checksum_mismatch_removes_file(server, r18):
    path = "/download.pytorch.org/models/resnet18-deadbeef.pth"
    server.file(path, r18["pth"])
    with pytest.raises(ChecksumError) as exc:
        create_model("resnet18", pretrained=server.base + path)
    msg = str(exc.value)
    assert "deadbeef" in msg and r18["sha"] in msg and "deleted" in msg
    assert _leftovers(_torch_ckpt_dir()) == []

    # An explicit sha256 is checked as well.
    server.file("/files/blob.bin", b"abc")
    with pytest.raises(ChecksumError, match="but 0{64} was expected"):
        hub.download(server.base + "/files/blob.bin", _torch_ckpt_dir(), sha256="0" * 64, progress=False)
    assert _leftovers(_torch_ckpt_dir()) == []
    good = hub.download(server.base + "/files/blob.bin", _torch_ckpt_dir(), progress=False,
                        sha256=hashlib.sha256(b"abc").hexdigest())
    assert good.read_bytes() == b"abc"


def test_concurrent_threads_download_once(server):
    data = os.urandom(400_000)
    path = "/download.pytorch.org/models/shared-threads.bin"
    server.file(path, data, delay=0.6)
    barrier = threading.Barrier(4)
    results: list[object] = [None] * 4

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = hub.download(server.base + path, _torch_ckpt_dir(), progress=False)
        except Exception as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(isinstance(r, Path) for r in results), results
    assert len(set(results)) == 1 and results[0].read_bytes() == data
    assert server.gets[path] == 1
    assert _leftovers(_torch_ckpt_dir()) == ["shared-threads.bin"]


def _process_worker(url: str, dest: str, barrier, queue) -> None:
    from resnet_tune.models import hub as hub_

    barrier.wait()
    try:
        queue.put(str(hub_.download(url, dest, progress=False)))
    except Exception as e:  # noqa: BLE001
        queue.put(f"error: {e!r}")


def test_concurrent_processes_download_once(server):
    data = os.urandom(400_000)
    path = "/download.pytorch.org/models/shared-procs.bin"
    server.file(path, data, delay=0.8)
    # Separate processes, as two training jobs would be (fork where available: spawn would spend
    # seconds importing torch in each child; the file lock works the same either way).
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(server.base + path, str(_torch_ckpt_dir()), barrier, queue))
             for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python >= 3.12: fork with threads running
        for p in procs:
            p.start()
    out = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert out[0] == out[1] and not out[0].startswith("error"), out
    assert Path(out[0]).read_bytes() == data
    assert server.gets[path] == 1
    assert _leftovers(_torch_ckpt_dir()) == ["shared-procs.bin"]


def test_offline_gives_one_clear_sentence(monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}/download.pytorch.org/models/resnet18-f37072fd.pth"
    with pytest.raises(DownloadError) as exc:
        create_model("resnet18", pretrained=url)
    msg = str(exc.value)
    assert msg.startswith(f"Could not download {url} (") and msg.endswith(".")
    assert "\n" not in msg and msg.count(". ") == 0
    assert "pretrained='/path/to/file'" in msg and "refused" in msg.lower()
    assert exc.value.__cause__ is None and exc.value.__suppress_context__
    assert _leftovers(_torch_ckpt_dir()) == []

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(DownloadError, match=r"pretrained='/path/to/file'"):
        create_model("resnet18", pretrained="timm:resnet18.a1_in1k")


def test_http_errors_are_download_errors(server):
    with pytest.raises(hub.RemoteFileNotFoundError, match="404"):
        hub.download(server.base + "/nothing/here.pth", _torch_ckpt_dir(), progress=False)
    with pytest.raises(hub.RemoteFileNotFoundError, match="timm:resnet50.a1_in1k"):
        create_model("resnet18", pretrained="timm:resnet18")


# --- Hugging Face (timm / transformers) -----------------------------------------------------------

def _serve_timm(server, name: str, r18, *, config: bool = True) -> str:
    blob = f"/cdn-lfs/{name}/{hashlib.sha1(name.encode()).hexdigest()}"
    server.file(blob, r18["safetensors"])
    server.redirect(f"/timm/{name}/resolve/main/model.safetensors", blob)  # resolve -> CDN, as the hub does
    if config:
        cfg = {"architecture": "resnet18", "num_classes": 1000, "num_features": 512,
               "pretrained_cfg": {"input_size": [3, 224, 224], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                                  "crop_pct": 0.95, "num_classes": 1000, "interpolation": "bicubic"}}
        server.file(f"/timm/{name}/resolve/main/config.json", json.dumps(cfg).encode())
    return f"/timm/{name}/resolve/main/model.safetensors"


def test_timm_source_via_hf_endpoint(server, r18, caches):
    path = _serve_timm(server, "resnet18.test_in1k", r18)
    model = create_model("resnet18", pretrained="timm:resnet18.test_in1k")
    assert torch.equal(_out(model, r18["x"]), r18["y"])
    meta = model.pretrained_meta
    assert meta["format"] == "timm" and meta["mean"] == (0.5, 0.5, 0.5) and meta["std"] == (0.25, 0.25, 0.25)
    assert meta["input_size"] == (3, 224, 224) and meta["num_classes"] == 1000
    assert server.gets[path] == 1
    cached = caches / "hf" / "hub" / "models--timm--resnet18.test_in1k" / "snapshots" / "main" / "model.safetensors"
    assert cached.read_bytes() == r18["safetensors"]
    # hf:timm/<name> is the same repository.
    model2 = create_model("resnet18", pretrained="hf:timm/resnet18.test_in1k")
    assert torch.equal(_out(model2, r18["x"]), r18["y"]) and server.gets[path] == 1


def test_hf_offline_uses_cache(server, r18, caches, monkeypatch):
    path = _serve_timm(server, "resnet18.offline_in1k", r18)
    create_model("resnet18", pretrained="timm:resnet18.offline_in1k")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    model = create_model("resnet18", pretrained="timm:resnet18.offline_in1k")
    assert torch.equal(_out(model, r18["x"]), r18["y"]) and server.gets[path] == 1
    assert model.pretrained_meta["mean"] == (0.5, 0.5, 0.5)

    # A cache written by huggingface_hub (refs/main -> snapshots/<commit>) is found too.
    repo = caches / "hf" / "hub" / "models--timm--resnet18.from_hf_hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    (repo / "blobs" / "abc").write_bytes(r18["safetensors"])
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model.safetensors").symlink_to(repo / "blobs" / "abc")
    model = create_model("resnet18", pretrained="timm:resnet18.from_hf_hub")
    assert torch.equal(_out(model, r18["x"]), r18["y"])

    with pytest.raises(DownloadError, match=r"HF_HUB_OFFLINE .*not in the cache.*pretrained='/path/to/file'"):
        create_model("resnet18", pretrained="timm:resnet18.never_downloaded")


def _tiny_hf_resnet18():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                                    layer_type="basic", num_labels=5,
                                    id2label={i: f"class{i}" for i in range(5)},
                                    label2id={f"class{i}": i for i in range(5)})
    torch.manual_seed(0)
    return transformers.ResNetForImageClassification(cfg).eval()


def test_hf_transformers_repo(server, tmp_path):
    hf = _tiny_hf_resnet18()
    folder = tmp_path / "hf-export"
    hf.save_pretrained(folder, safe_serialization=True)
    for f in ("config.json", "model.safetensors"):
        server.file(f"/someorg/tiny-resnet/resolve/main/{f}", (folder / f).read_bytes())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
    for source in ("hf:someorg/tiny-resnet", str(folder), str(folder / "model.safetensors")):
        model = create_model("resnet18", pretrained=source)
        torch.testing.assert_close(_out(model, x), expected, rtol=1e-4, atol=1e-4)
        assert model.pretrained_meta["categories"] == [f"class{i}" for i in range(5)]
        assert model.pretrained_meta["num_classes"] == 5


def test_hf_config_architecture_is_checked(tmp_path):
    """A config that changes the architecture without changing shapes (stride in the 1x1) is enforced."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1],
                                    layer_type="bottleneck", downsample_in_bottleneck=True, num_labels=3)
    torch.manual_seed(0)
    hf = transformers.ResNetForImageClassification(cfg).eval()
    hf.save_pretrained(tmp_path / "v1", safe_serialization=True)
    arch = dict(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem_width=16)
    with pytest.raises(ValueError, match=r"stride_in_1x1=False vs True.*stride_in_1x1=True, pretrained="):
        create_model("resnet50", pretrained=str(tmp_path / "v1"), **arch)
    model = create_model("resnet50", pretrained=str(tmp_path / "v1"), stride_in_1x1=True, **arch)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(_out(model, x), hf(pixel_values=x).logits, rtol=1e-4, atol=1e-4)
    # options that only change how the network trains read the same weights (fixed scales keep the loaded values)
    fixed = create_model("resnet50", pretrained=str(tmp_path / "v1"), stride_in_1x1=True, bn_scale=False,
                         bn_momentum=0.4, dirac_init=True, **arch)
    assert not any(isinstance(m.weight, torch.nn.Parameter) for m in fixed.modules()
                   if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        torch.testing.assert_close(_out(fixed, x), hf(pixel_values=x).logits, rtol=1e-4, atol=1e-4)


def test_keras_files_go_to_the_keras_converter(tmp_path, monkeypatch, r18):
    from resnet_tune.models.convert import keras as keras_conv
    seen = []

    def fake(path):
        seen.append(Path(path))
        return dict(r18["state"])

    monkeypatch.setattr(keras_conv, "from_keras_h5", fake)
    for name in ("w.h5", "w.weights.h5", "m.keras"):
        (tmp_path / name).write_bytes(b"not really hdf5")
        model = create_model("resnet18", pretrained=str(tmp_path / name))
        assert torch.equal(_out(model, r18["x"]), r18["y"])
        assert model.pretrained_meta["format"] == "keras"
    assert [p.name for p in seen] == ["w.h5", "w.weights.h5", "m.keras"]


# --- torchvision weights --------------------------------------------------------------------------

def test_torchvision_weights_resolve_to_the_torch_hub_cache(r18):
    # Seed torch.hub's cache under the exact name torchvision uses: no network is needed.
    _torch_ckpt_dir().mkdir(parents=True)
    (_torch_ckpt_dir() / "resnet18-f37072fd.pth").write_bytes(r18["pth"])
    for pretrained in ("torchvision:ResNet18_Weights.IMAGENET1K_V1", True):  # True = the preset's default
        model = create_model("resnet18", pretrained=pretrained)
        assert torch.equal(_out(model, r18["x"]), r18["y"])
    meta = model.pretrained_meta
    assert resolve_source("torchvision:ResNet18_Weights.DEFAULT", cfg=None, model_name="")[1]["url"] == TV_RESNET18_URL
    assert meta["url"] == TV_RESNET18_URL and meta["format"] == "torchvision"
    assert len(meta["categories"]) == 1000 and meta["categories"][0] == "tench"
    assert meta["mean"] == (0.485, 0.456, 0.406) and meta["input_size"] == (3, 224, 224)


def test_torchvision_weights_are_hash_checked(server, r18, monkeypatch):
    """Served from the loopback host under torchvision's name, our random weights fail its hash."""
    original = pt._torchvision_weights

    def via_loopback(name):
        url, meta = original(name)
        return url.replace("https://download.pytorch.org", server.base + "/download.pytorch.org"), meta

    monkeypatch.setattr(pt, "_torchvision_weights", via_loopback)
    server.file("/download.pytorch.org/models/resnet18-f37072fd.pth", r18["pth"])
    with pytest.raises(ChecksumError, match="f37072fd"):
        create_model("resnet18", pretrained="torchvision:ResNet18_Weights.IMAGENET1K_V1")
    assert server.gets["/download.pytorch.org/models/resnet18-f37072fd.pth"] == 1
    assert _leftovers(_torch_ckpt_dir()) == []


def test_unknown_torchvision_weights():
    with pytest.raises(ValueError, match="ResNet50_Weights.IMAGENET1K_V2"):
        create_model("resnet18", pretrained="torchvision:ResNet18_Weights.NOPE")


# --- local files ------------------------------------------------------------------------------------

def test_malicious_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for i, obj in enumerate([{"state_dict": {"fc.weight": torch.zeros(1)}, "extra": Payload()}, Payload()]):
        path = tmp_path / f"evil{i}.pth"
        torch.save(obj, path)
        with pytest.raises(ValueError, match="refusing to load .*never does"):
            create_model("resnet18", pretrained=str(path))
        assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(tmp_path / "evil1.pth", weights_only=False)
    assert marker.exists()


def test_wrapped_and_prefixed_checkpoints(tmp_path, r18):
    ddp = {f"module.{k}": v for k, v in r18["state"].items()}
    for i, obj in enumerate([{"state_dict": r18["state"], "epoch": 3}, {"model": ddp, "optimizer": {}},
                             {"model": r18["state"], "resnet_tune": {"classes": ["a"] * 1000, "epoch": 7}}]):
        torch.save(obj, tmp_path / f"c{i}.pt")
        model = create_model("resnet18", pretrained=str(tmp_path / f"c{i}.pt"))
        assert torch.equal(_out(model, r18["x"]), r18["y"])
    assert model.pretrained_meta["epoch"] == 7 and len(model.pretrained_meta["categories"]) == 1000


def test_safetensors_record_gives_meta(tmp_path, r18):
    # The record engine/checkpoint.py writes into the safetensors header.
    record = {"format_version": 1, "model": "resnet18", "num_classes": 1000, "in_chans": 3,
              "classes": [f"c{i}" for i in range(1000)], "metrics": {"best_acc": 0.5},
              "preprocessing": {"input_size": 160, "mean": [0.1, 0.2, 0.3], "std": [0.3, 0.2, 0.1], "resize": 183,
                                "interpolation": "bilinear"}}
    save_file({k: v.contiguous() for k, v in r18["state"].items()}, tmp_path / "ours.safetensors",
              metadata={"resnet_tune": json.dumps(record)})
    state, meta = resolve_source(str(tmp_path / "ours.safetensors"), cfg=None, model_name="resnet18")
    assert meta["format"] == "resnet_tune" and meta["mean"] == (0.1, 0.2, 0.3) and meta["input_size"] == (3, 160, 160)
    assert meta["categories"][5] == "c5" and meta["metrics"]["best_acc"] == 0.5 and meta["resize_size"] == 183
    model = create_model("resnet18", pretrained=tmp_path / "ours.safetensors")  # a Path works too
    assert torch.equal(_out(model, r18["x"]), r18["y"])


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_model("resnet18", pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match=r"valid forms: 'torchvision:.*timm:.*hf:.*http"):
        create_model("resnet18", pretrained="s3://bucket/weights.pth")
    with pytest.raises(ValueError, match="valid forms"):
        create_model("resnet18", pretrained="imagenet")
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="could not read"):
        create_model("resnet18", pretrained=str(tmp_path / "junk.pth"))


# --- loading into models ------------------------------------------------------------------------

@pytest.mark.parametrize("in_chans", [1, 4])
def test_in_chans_adaptation(tmp_path, r18, in_chans):
    torch.save(r18["state"], tmp_path / "w.pth")
    model = create_model("resnet18", in_chans=in_chans, pretrained=str(tmp_path / "w.pth"))
    w = r18["state"]["conv1.weight"]
    expected = w.sum(1, keepdim=True) if in_chans == 1 else torch.cat([w, w[:, :1]], 1) * (3 / in_chans)
    torch.testing.assert_close(model.conv1.weight.detach(), expected)
    assert torch.equal(model.layer4[1].conv2.weight, r18["state"]["layer4.1.conv2.weight"])
    if in_chans == 1:  # a grey image gives the RGB model's answer for the same image in RGB
        grey = torch.rand(1, 1, 64, 64)
        torch.testing.assert_close(_out(model, grey), _out(r18["model"], grey.expand(1, 3, 64, 64)),
                                   rtol=1e-4, atol=1e-4)


def test_in_chans_adaptation_deep_stem(tmp_path):
    src = create_model("resnet50d", num_classes=0)
    torch.save(src.state_dict(), tmp_path / "d.pth")
    model = create_model("resnet50d", num_classes=0, in_chans=2, pretrained=str(tmp_path / "d.pth"))
    w = src.conv1[0].weight
    torch.testing.assert_close(model.conv1[0].weight.detach(), w[:, :2] * 1.5)


def test_new_num_classes_reinitialises_only_the_head(tmp_path, r18):
    torch.save(r18["state"], tmp_path / "w.pth")
    model = create_model("resnet18", num_classes=10, pretrained=str(tmp_path / "w.pth"))
    assert model.fc.weight.shape == (10, 512)
    sd = model.state_dict()
    for k, v in r18["state"].items():
        if not k.startswith("fc."):
            assert torch.equal(sd[k], v), k
    # Feature extractor: no classifier at all.
    feats = create_model("resnet18", num_classes=0, pretrained=str(tmp_path / "w.pth"))
    assert isinstance(feats.fc, torch.nn.Identity)


def test_load_weights_with_other_class_count_raises(tmp_path, r18):
    torch.save(r18["state"], tmp_path / "w.pth")
    model = create_model("resnet18", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as exc:
        load_weights(model, str(tmp_path / "w.pth"))
    msg = str(exc.value)
    assert "fc.weight: checkpoint (1000, 512) vs model (10, 512)" in msg
    assert "num_classes" in msg and "reset_head" in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched

    meta = load_weights(model, str(tmp_path / "w.pth"), reset_head=True)
    assert torch.equal(model.conv1.weight, r18["state"]["conv1.weight"])
    assert torch.equal(model.fc.weight, before["fc.weight"]) and "categories" not in meta


def test_wrong_architecture_names_the_keys(r18):
    model = create_model("resnet34")
    with pytest.raises(ValueError, match=r"missing in the checkpoint: layer1\.2\.conv1\.weight") as exc:
        load_pretrained(model, r18["state"], source="r18.pth")
    assert "r18.pth" in str(exc.value) and "Traceback" not in str(exc.value)


def test_adapt_input_conv_keeps_dtype():
    w = torch.randn(8, 3, 3, 3, dtype=torch.float16)
    out = loading.adapt_input_conv(5, w)
    assert out.dtype == torch.float16 and out.shape == (8, 5, 3, 3)
    with pytest.raises(ValueError, match="only 3-channel"):
        loading.adapt_input_conv(5, torch.randn(8, 2, 3, 3))


# --- `resnet-tune train` starts from the published weights (pretrained=auto, the default) --------------------------

def _photo_folder(root: Path, per_class: int = 6) -> Path:
    """Two classes of 72-pixel images: large enough that the default model is resnet18 (which has weights)."""
    from conftest import make_folder

    return make_folder(root, per_class=per_class, size=72, classes={"red": (220, 30, 30), "blue": (40, 50, 220)})


@pytest.fixture
def tv_host(server, r18, monkeypatch):
    """torchvision's weights host on the loopback server: /models/resnet18-<hash>.pth (our random weights, under a
    name that carries their own hash, so the hash check passes). Returns the URL path."""
    original = pt._torchvision_weights
    name = f"resnet18-{r18['sha'][:8]}.pth"

    def via_loopback(weights):
        url, meta = original(weights)
        return f"{server.base}/models/{name}" if url.endswith("/resnet18-f37072fd.pth") else url, meta

    monkeypatch.setattr(pt, "_torchvision_weights", via_loopback)
    server.file(f"/models/{name}", r18["pth"])
    return f"/models/{name}"


def _train(argv: list[str], capsys) -> str:
    from resnet_tune.cli import main

    assert main(["train", *argv, "--img-size", "32", "--epochs", "1", "--no-progress"]) == 0
    captured = capsys.readouterr()
    return captured.out + captured.err


def test_train_downloads_the_default_models_weights_then_uses_the_cache(tmp_path, server, r18, tv_host, capsys):
    from safetensors.torch import load_file

    data = _photo_folder(tmp_path / "photos")
    before = server.gets[tv_host]
    out = _train(["--data", str(data), "--output", str(tmp_path / "run1"), "--strategy", "freeze_unfreeze"], capsys)
    assert server.gets[tv_host] == before + 1
    assert "pretrained from torchvision:ResNet18_Weights.IMAGENET1K_V1 (resnet18's published weights" in out
    assert "warning" not in out
    assert "pretrained: torchvision:ResNet18_Weights.IMAGENET1K_V1" in (tmp_path / "run1" / "config.yaml").read_text()
    # one epoch of freeze-then-unfreeze trains the head alone: the body is the served weights, exactly
    saved = load_file(str(tmp_path / "run1" / "best.safetensors"))
    for key in ("conv1.weight", "layer4.1.conv2.weight", "layer2.0.bn1.running_var"):
        assert torch.equal(saved[key].float(), r18["state"][key].float()), key
    out = _train(["--data", str(data), "--output", str(tmp_path / "run2")], capsys)
    assert server.gets[tv_host] == before + 1  # the second run reads the cache
    assert "pretrained from torchvision:ResNet18_Weights.IMAGENET1K_V1" in out


def test_train_offline_warns_once_and_trains_from_scratch(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pt, "_torchvision_weights", lambda weights: (
        f"http://127.0.0.1:{_closed_port()}/models/resnet18-f37072fd.pth", {"format": "torchvision"}))
    data = _photo_folder(tmp_path / "photos")
    out = _train(["--data", str(data), "--output", str(tmp_path / "run")], capsys)
    warnings_ = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings_) == 1, out
    line = warnings_[0]
    assert "could not be fetched" in line and "resnet18-f37072fd.pth" in line
    assert str(_torch_ckpt_dir()) in line and "--pretrained none" in line
    assert "so the run trains from scratch" in line
    # photos from scratch with no --model named: the photo default, not resnet18 (benchmarks/RESULTS.md, issue 12)
    assert "seresnext12d_64x4d, training from scratch (resnet18's published weights could not be fetched)" in out
    assert "photos from scratch (resnet18's published weights could not be fetched) train seresnext12d_64x4d" in out
    assert "pretrained: none" in (tmp_path / "run" / "config.yaml").read_text()
    assert (tmp_path / "run" / "best.safetensors").is_file()


def test_pretrained_none_and_the_main_job_never_touch_the_network(tmp_path, network_attempts, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _photo_folder(tmp_path / "photos")
    out = _train(["--data", str(data), "--pretrained", "none", "--output", str(tmp_path / "run")], capsys)
    assert network_attempts == [] and "warning" not in out
    assert "training from scratch (--pretrained none)" in out
    out = _train(["--output", str(tmp_path / "main")], capsys)  # the embedded digits, resnet9_narrow
    assert network_attempts == [] and "warning" not in out
    assert "training from scratch (resnet9_narrow has no published weights)" in out
    assert "pretrained: none" in (tmp_path / "main" / "config.yaml").read_text()


def test_keras_weights_are_md5_checked_into_the_keras_cache(server, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(pt, "KERAS_WEIGHTS_URL", server.base + "/keras/")
    server.file("/keras/resnet50_weights_tf_dim_ordering_tf_kernels.h5", b"not the published file")
    with pytest.raises(ChecksumError, match="MD5 .* but 2cb95161c43110f7111970584f804107 was expected"):
        resolve_source("keras:resnet50", cfg=None, model_name="keras_resnet50")
    assert _leftovers(tmp_path / "keras") == []
    with pytest.raises(ValueError, match="unknown Keras weights 'resnet18'; valid: keras:resnet50"):
        resolve_source("keras:resnet18", cfg=None, model_name="")
    url, path = pt.weights_file("keras:resnet101v2")
    assert url.endswith("/resnet101v2_weights_tf_dim_ordering_tf_kernels.h5")
    assert path.parent == tmp_path / "keras" / "models"


def test_offline_flag_refuses_downloads_but_reads_the_cache(server, r18, monkeypatch):
    name = f"resnet18-{r18['sha'][:8]}.pth"
    server.file(f"/off/{name}", r18["pth"])
    monkeypatch.setenv("RESNET_TUNE_OFFLINE", "1")
    gets = server.gets[f"/off/{name}"]
    with pytest.raises(DownloadError, match="RESNET_TUNE_OFFLINE=1 allows no downloads"):
        resolve_source(f"{server.base}/off/{name}", cfg=None, model_name="resnet18")
    assert server.gets[f"/off/{name}"] == gets
    monkeypatch.delenv("RESNET_TUNE_OFFLINE")
    resolve_source(f"{server.base}/off/{name}", cfg=None, model_name="resnet18")
    monkeypatch.setenv("RESNET_TUNE_OFFLINE", "1")
    state, _ = resolve_source(f"{server.base}/off/{name}", cfg=None, model_name="resnet18")  # from the cache
    assert torch.equal(state["conv1.weight"], r18["state"]["conv1.weight"])
