"""Inference backends (issue 14): ONNX Runtime and OpenVINO against the eager model, ``auto``'s choice and its
cache, int8 export with calibration and its accuracy check, the web service on another engine, and the clear
refusals (segmentation, exported files without gradients, a backend that is not installed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_tune import fit
from resnet_tune.cli import main
from resnet_tune.engine import checkpoint as ckpt
from resnet_tune.errors import ConfigError, MissingExtraError
from resnet_tune.export import ExportError, export
from resnet_tune.inference import engines as E
from resnet_tune.tasks import Predictor
from resnet_tune.tasks.classification import ClassificationPredictor

from conftest import make_folder, random_checkpoint

CLASSES = ["cat", "dog", "emu"]
OTHERS = ["onnxruntime", "openvino"]


def need(name: str) -> None:
    if not E.installed(name):
        pytest.skip(f"the {name} backend is not installed ({E.INSTALL[name]})")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backends")
    return {"resnet18": random_checkpoint(root, "resnet18", 64, CLASSES),
            "resnet20": random_checkpoint(root, "resnet20", 32, CLASSES)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A ResNet-20 trained to high accuracy on three colours (so its predictions vary), and its images."""
    root = tmp_path_factory.mktemp("trained")
    data = make_folder(root / "data", per_class=24, size=32)
    res = fit(data=str(data), model="resnet20", epochs=4, batch_size=16, pretrained="none", progress=False,
              quiet=True, precision="fp32", output=str(root / "run"))
    assert res.best_metric >= 0.9
    return res.run_dir, data


@pytest.mark.parametrize("backend", OTHERS)
@pytest.mark.parametrize("preset", ["resnet18", "resnet20"])
def test_each_backend_matches_the_eager_model(checkpoints: dict[str, Path], preset: str, backend: str) -> None:
    need(backend)
    ck = checkpoints[preset]
    eager, record = ckpt.load_checkpoint(ck)
    size = record["preprocessing"]["input_size"]
    pred = Predictor(ck.parent, backend=backend, precision="fp32", device="cpu")
    assert pred.engine_single.name == pred.engine_batch.name == backend
    gen = torch.Generator().manual_seed(3)
    for n in (1, 5, 9):
        x = torch.randn(n, 3, size, size, generator=gen)
        with torch.no_grad():
            ref = eager(x)
        got = pred.forward(x)
        assert got.shape == ref.shape and got.dtype == torch.float32
        assert torch.allclose(got, ref, rtol=1e-3, atol=1e-4), float((got - ref).abs().max())
    # pooled features (embed) run on the same backend, from an export of the features
    x = torch.randn(4, 3, size, size, generator=gen)
    torch_pred = ClassificationPredictor(ck.parent, backend="torch", precision="fp32", device="cpu")
    assert pred.feature_engine() is not None and torch_pred.feature_engine() is None
    assert torch.allclose(pred.features(x), torch_pred.features(x), rtol=1e-3, atol=1e-4)
    assert backend in pred.info()["backend"]["single"]


def test_choose_fastest_is_per_batch_size() -> None:
    timings = {"torch": {1: 0.010, 64: 0.30}, "onnxruntime": {1: 0.008, 64: 0.35}, "openvino": {1: 0.009, 64: 0.25}}
    assert E.choose_fastest(timings) == {1: "onnxruntime", 64: "openvino"}
    assert E.choose_fastest({"torch": {1: 1.0}, "onnxruntime": {1: 1.0}}) == {1: "torch"}  # a tie keeps torch


def test_auto_measures_the_installed_engines_once_and_takes_the_fastest(checkpoints: dict[str, Path],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ck = checkpoints["resnet20"].parent
    said: list[str] = []
    pred = Predictor(ck, backend="auto", auto_batch=8, device="cpu", say=said.append)
    names = {n for n in E.BACKENDS if E.installed(n)}
    assert {k.split(":")[0] for k in pred.timings} == names and all(set(t) == {1, 8} for t in pred.timings.values())
    if "openvino" in names:  # both of OpenVINO's hints are candidates
        assert {"openvino:latency", "openvino:throughput"} <= set(pred.timings)
    best = E.choose_fastest(pred.timings)
    assert pred.engine_single.name == best[1].split(":")[0] and pred.engine_batch.name == best[8].split(":")[0]
    assert said and said[0].startswith("backend auto: ") and "measured on this machine" in said[0]
    info = pred.info()["backend"]
    assert set(info["measured_ms"]) == set(pred.timings)
    # the choice is cached per checkpoint, backend versions and CPU: a second predictor does not time again
    monkeypatch.setattr(E, "time_engine", lambda *a, **k: pytest.fail("timed again"))
    again = Predictor(ck, backend="auto", auto_batch=8, device="cpu")
    assert again.timings == pred.timings and again.engine_batch.describe() == pred.engine_batch.describe()


def test_a_backend_that_is_not_installed_names_its_install_command(checkpoints: dict[str, Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(E, "installed", lambda name: name == "torch")
    for name in OTHERS:
        extra = "onnx" if name == "onnxruntime" else name
        with pytest.raises(MissingExtraError, match=rf"the {name} backend is not installed; install it with pip "
                                                    rf"install 'resnet-tune\[{extra}\]'"):
            Predictor(checkpoints["resnet20"].parent, backend=name)
    pred = Predictor(checkpoints["resnet20"].parent, backend="auto", device="cpu")  # auto: what is installed
    assert pred.engine_single.name == "torch" and pred.timings == {"torch": pred.timings["torch"]}


def test_segmentation_checkpoints_are_refused_on_other_backends(tmp_path: Path) -> None:
    from resnet_tune.models.segmentation import create_segmenter

    need("onnxruntime")
    model = create_segmenter("resnet18", 3, head="fcn").eval()
    pp = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_size": [32, 32], "eval_mode": "full"}
    rec = ckpt.model_record(model, classes=["a", "b", "c"], preprocessing=pp, task="segmentation",
                            extra={**model.describe(), "ignore_index": 255})
    ckpt.save_checkpoint(tmp_path / "seg" / ckpt.BEST, model, rec)
    with pytest.raises(ConfigError, match="segmentation checkpoints run on the torch backend only; use --backend "
                                          "torch"):
        Predictor(tmp_path / "seg", backend="onnxruntime", device="cpu")
    assert Predictor(tmp_path / "seg", backend="auto", device="cpu").engine_single.name == "torch"


@pytest.mark.parametrize("fmt,backend", [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_int8_export_agrees_with_float_and_refuses_a_drop_over_the_limit(trained: tuple[Path, Path], fmt: str,
                                                                         backend: str, capsys) -> None:
    need(backend)
    if backend == "openvino":
        pytest.importorskip("nncf", reason="OpenVINO int8 needs NNCF (pip install 'resnet-tune[openvino]')")
    run, data = trained
    dest = run / ("model.int8" + (".onnx" if fmt == "onnx" else ".xml"))
    # refused: the allowed drop is below zero, so even a lossless model fails; nothing is written
    with pytest.raises(ExportError, match=r"the int8 model loses -?\d+\.\d\d points of top-1 accuracy on the run's "
                                          r"validation split \(\d+\.\d\d% float, \d+\.\d\d% int8; at most -1 "
                                          r"allowed by --max-drop\); nothing was written"):
        export(run, fmt, int8=True, calibration=data, max_drop=-1, calibration_images=48)
    assert not dest.exists() and not list(run.glob(".model.int8*"))
    assert main(["export", str(run), "--format", fmt, "--int8", "--calibration", str(data),
                 "--calibration-images", "48"]) == 0
    out = capsys.readouterr().out
    assert f"exported {fmt} int8 to {dest}" in out and "int8 calibrated on 48 image(s)" in out
    assert dest.is_file() and E.read_model_record(dest)["export"]["dtype"] == "int8"
    # top-1 agreement with the float model on every image of the set (most must agree)
    files = sorted(str(p) for p in data.rglob("*.png"))
    ref = Predictor(run, backend="torch", precision="fp32", device="cpu").predict_files(files, top_k=1)
    q = Predictor(dest, backend=backend, device="cpu", precision="fp32")
    assert q.engine_single.name == backend and q.eager is None
    got = q.predict_files(files, top_k=1)
    agree = np.mean([a["top"][0]["class"] == b["top"][0]["class"] for a, b in zip(ref, got)])
    assert agree >= 0.9, agree
    with pytest.raises(ConfigError, match="exported model; Grad-CAM needs gradients"):
        q.explain(Image.open(files[0]))
    with pytest.raises(ConfigError, match="pooled features need the run folder"):
        q.features(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="is an exported model, which runs on --backend onnxruntime or openvino"):
        Predictor(dest, backend="torch")


def test_int8_needs_calibration_and_a_format_that_quantises(trained: tuple[Path, Path]) -> None:
    run, data = trained
    with pytest.raises(ExportError, match="--int8 needs --calibration DIR"):
        export(run, "onnx", int8=True)
    with pytest.raises(ExportError, match="--int8 quantises ONNX and OpenVINO models"):
        export(run, "torchscript", int8=True, calibration=data)
    with pytest.raises(ExportError, match="the calibration folder .* does not exist"):
        export(run, "onnx", int8=True, calibration=data / "nope")


def test_openvino_float_export_round_trips(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    need("openvino")
    ck = checkpoints["resnet18"]
    report = export(ck.parent, "openvino", tmp_path / "m.xml")
    assert report.path.is_file() and report.path.with_suffix(".bin").is_file() and report.max_abs_diff < 1e-3
    assert E.read_model_record(report.path)["classes"] == CLASSES


def test_serve_on_onnxruntime_answers_like_torch(trained: tuple[Path, Path]) -> None:
    need("onnxruntime")
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from resnet_tune.serve.http import create_app

    run, data = trained
    image = next(data.rglob("*.png")).read_bytes()
    answers = {}
    for backend in ("torch", "onnxruntime"):
        app = create_app(run, device="cpu", backend=backend)
        with TestClient(app) as client:
            r = client.post("/predict", files=[("file", ("a.png", image, "image/png"))])
            assert r.status_code == 200, r.text
            answers[backend] = r.json()
            model = client.get("/model").json()
            assert model["server"]["backend"]["single"].startswith(backend)
    a, b = answers["torch"], answers["onnxruntime"]
    assert json.dumps(a, sort_keys=True).count('"class"') == json.dumps(b, sort_keys=True).count('"class"')
    assert [t["class"] for t in a[0]["top"]] == [t["class"] for t in b[0]["top"]]
    assert all(abs(x["prob"] - y["prob"]) < 2e-2 for x, y in zip(a[0]["top"], b[0]["top"]))


def test_cli_predict_takes_a_backend(trained: tuple[Path, Path], capsys) -> None:
    need("onnxruntime")
    run, data = trained
    image = next(data.rglob("*.png"))
    assert main(["predict", str(run), str(image), "--backend", "torch", "--top-k", "1", "--device", "cpu"]) == 0
    torch_out = capsys.readouterr().out
    assert main(["predict", str(run), str(image), "--backend", "onnxruntime", "--top-k", "1"]) == 0
    onnx_out = capsys.readouterr().out
    assert torch_out.split(":")[1].split()[0] == onnx_out.split(":")[1].split()[0]  # the same class

