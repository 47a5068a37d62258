"""The web service over a segmentation checkpoint: class shares, the mask overlay, the record, hostile input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from resnet_tune.engine import checkpoint as ckpt  # noqa: E402
from resnet_tune.models.segmentation import create_segmenter  # noqa: E402

CLASSES = ["background", "square", "disc"]


@pytest.fixture(scope="module")
def seg_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained resnet18 + FCN segmenter saved with a record like ``segment train`` writes."""
    torch.manual_seed(0)
    model = create_segmenter("resnet18", len(CLASSES), head="fcn").eval()
    pp = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_size": [32, 32],
          "eval_mode": "full", "eval_overlap": 1 / 3}
    extra = {**model.describe(), "ignore_index": 255, "colours": [[0, 0, 0], [200, 30, 30], [30, 200, 30]]}
    rec = ckpt.model_record(model, classes=CLASSES, preprocessing=pp, task="segmentation",
                            metrics={"val_miou": 0.5, "val_pixel_acc": 0.8}, extra=extra)
    run = tmp_path_factory.mktemp("segserve") / "run"
    ckpt.save_checkpoint(run / ckpt.BEST, model, rec)
    return run


@pytest.fixture(scope="module")
def client(seg_checkpoint: Path):  # type: ignore[no-untyped-def]
    from resnet_tune.serve.http import create_app

    app = create_app(seg_checkpoint, device="cpu", max_upload_bytes=256 * 1024, max_files=3, max_pixels=250_000)
    with TestClient(app) as c:
        yield c


def png(w: int = 40, h: int = 28, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_model_and_health_say_segmentation(client: TestClient) -> None:
    r = client.get("/model")
    assert r.status_code == 200 and r.json()["task"] == "segmentation" and r.json()["classes"] == CLASSES
    assert r.json()["server"]["batching"] is False
    h = client.get("/health").json()
    assert h["task"] == "segmentation" and h["classes"] == len(CLASSES)


def test_predict_answers_class_shares(client: TestClient) -> None:
    files = [("file", ("a.png", png(40, 28, 1), "image/png")), ("file", ("b.png", png(33, 21, 2), "image/png"))]
    r = client.post("/predict", files=files)
    assert r.status_code == 200, r.text
    out = r.json()
    assert [o["file"] for o in out] == ["a.png", "b.png"]
    assert (out[0]["width"], out[0]["height"]) == (40, 28) and (out[1]["width"], out[1]["height"]) == (33, 21)
    for o in out:
        fr = [c["fraction"] for c in o["classes"]]
        assert o["classes"] and all(c["class"] in CLASSES for c in o["classes"])
        assert fr == sorted(fr, reverse=True) and all(0 < f <= 1 for f in fr)
        assert sum(fr) == pytest.approx(1.0, abs=1e-4)
    raw = client.post("/predict", content=png(24, 24, 3), headers={"content-type": "image/png"})
    assert raw.status_code == 200 and raw.json()[0]["file"] == "body"


def test_explain_answers_the_overlay_at_the_image_size(client: TestClient) -> None:
    r = client.post("/explain", files={"file": ("a.png", png(40, 28, 4), "image/png")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "PNG" and img.size == (40, 28)


def test_hostile_input_is_still_a_4xx(client: TestClient) -> None:
    for route in ("/predict", "/explain"):
        r = client.post(route, files={"file": ("x.png", b"this is not an image at all", "image/png")})
        assert r.status_code == 400 and "detail" in r.json()
        r = client.post(route, content=b"hello", headers={"content-type": "text/plain"})
        assert r.status_code == 415
    big = client.post("/predict", content=png(600, 600, 5), headers={"content-type": "image/png"})
    assert big.status_code == 413
    assert client.post("/explain", files=[("file", ("a.png", png(), "image/png"))] * 2).status_code == 400


def test_the_page_branches_on_the_task(client: TestClient) -> None:
    js = client.get("/static/app.js").text
    assert 'model.task === "segmentation"' in js and "fraction" in js
    assert 'id="bars-title"' in client.get("/").text


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_segmentation_checkpoint_exports_and_verifies(seg_checkpoint: Path, tmp_path: Path, fmt: str) -> None:
    # issue 7: export handles real segmentation checkpoints (the exporter verifies against the eager model)
    from resnet_tune.export import export_model
    from resnet_tune.export.exporter import read_export_record

    out = export_model(seg_checkpoint, fmt, output=tmp_path / ("seg.onnx" if fmt == "onnx" else "seg.pt"))
    assert out.is_file()
    assert read_export_record(out)["task"] == "segmentation"


def test_both_tasks_are_served_by_the_same_route_code(seg_checkpoint: Path, colour_run: Path) -> None:
    """The routes call the predictor's own predict/describe/explain: a classifier and a segmentation model go
    through the very same endpoint functions, and each answers in its own JSON."""
    from resnet_tune.serve.http import create_app

    apps = [create_app(run, device="cpu", batching=False) for run in (colour_run, seg_checkpoint)]

    def endpoint(app, path):  # type: ignore[no-untyped-def]
        return next(r.endpoint for r in app.routes if getattr(r, "path", None) == path)

    for path in ("/predict", "/explain", "/model", "/health"):
        assert endpoint(apps[0], path).__code__ is endpoint(apps[1], path).__code__, path
    answers = []
    for app in apps:
        with TestClient(app) as c:
            r = c.post("/predict", files=[("file", ("a.png", png(), "image/png"))])
            assert r.status_code == 200, r.text
            answers.append(r.json()[0])
            e = c.post("/explain", files=[("file", ("a.png", png(), "image/png"))])
            assert e.status_code == 200 and e.headers["content-type"] == "image/png"
    assert set(answers[0]) == {"file", "top"} and set(answers[1]) == {"file", "classes", "width", "height"}
