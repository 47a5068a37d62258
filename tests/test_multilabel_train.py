"""The multi-label task on the one engine: training from a CSV, thresholds in the checkpoint record, the report,
exact resume, the feature cache and positive weighting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import resnet_tune as rt
from resnet_tune.engine import checkpoint as ckpt

FAST = dict(epochs=2, batch_size=8, img_size=16, progress=False, precision="fp32", model="resnet20")
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def make_multilabel_data(root: Path, n: int = 48, seed: int = 0) -> Path:
    """Images with a coloured square for each of their labels (quadrants), and a path,labels CSV."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    names = list(COLOURS)
    for i in range(n):
        labels = [c for c in names if rng.random() < 0.45]
        a = np.full((24, 24, 3), 128, np.uint8) + rng.integers(0, 20, (24, 24, 3), dtype=np.uint8)
        for k, c in enumerate(labels):
            y, x = divmod(names.index(c), 2)
            a[y * 12:(y + 1) * 12, x * 12:(x + 1) * 12] = COLOURS[c]
        Image.fromarray(a).save(root / f"img{i}.png")
        rows.append(f"img{i}.png,{';'.join(labels)}")
    csv = root / "labels.csv"
    csv.write_text("path,labels\n" + "\n".join(rows) + "\n")
    return csv


@pytest.fixture(scope="module")
def ml_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_multilabel_data(tmp_path_factory.mktemp("ml"))


def test_fit_multilabel_writes_thresholds_report_and_figures(ml_csv: Path, tmp_path: Path) -> None:
    res = rt.fit(task="multilabel", data=str(ml_csv), output=str(tmp_path / "run"), quiet=True, **FAST)
    run = res.run_dir
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["epoch", "train_loss", "val_loss", "val_map", "val_micro_map", "val_micro_f1"]
    rec = ckpt.read_record(run / "best.safetensors")
    assert rec["task"] == "multilabel" and rec["classes"] == ["blue", "green", "red"]
    th = rec["thresholds"]
    assert set(th["per_label"]) == {"blue", "green", "red"} and th["rule"] == "f1"
    assert all(0.0 <= v <= 1.0 for v in th["per_label"].values())
    ev = json.loads((run / "eval.json").read_text())
    assert ev["split"] == "validation" and 0.0 <= ev["macro_map"] <= 1.0
    assert [r["threshold"] for r in ev["per_label"]] == pytest.approx([th["per_label"][k] for k in ev["labels"]])
    assert res.best_metric == pytest.approx(max(r["val_map"] for r in res.history))
    report = (run / "report.md").read_text()
    assert "## Multi-label evaluation" in report and "| label | AP |" in report
    for png in ("curves.png", "label_ap.png", "error_cooccurrence.png"):
        assert (run / png).stat().st_size > 1000
    assert "label frequencies" in (run / "labels.txt").read_text()
    assert (run / "val_labels.csv").read_text().startswith("path,labels")


def test_multilabel_resume_is_bit_exact(ml_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opts = dict(FAST, epochs=3, deterministic=True, workers=0, mixup=0.2)
    full = rt.fit(task="multilabel", data=str(ml_csv), output=str(tmp_path / "full"), quiet=True, **opts)
    monkeypatch.setenv("RESNET_TUNE_DEBUG_INTERRUPT_AT", "3")
    with pytest.raises(KeyboardInterrupt):
        rt.fit(task="multilabel", data=str(ml_csv), output=str(tmp_path / "part"), quiet=True, **opts)
    monkeypatch.delenv("RESNET_TUNE_DEBUG_INTERRUPT_AT")
    resumed = rt.fit(resume=tmp_path / "part", quiet=True)
    assert len(resumed.history) == 3
    a, b = load_file(str(full.run_dir / "last.safetensors")), load_file(str(tmp_path / "part" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ckpt.read_record(full.run_dir / "last.safetensors")["thresholds"] == \
        ckpt.read_record(tmp_path / "part" / "last.safetensors")["thresholds"]


def test_cached_features_and_positive_weights(ml_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A linear probe trains the head on cached features of 0/1 label rows, with per-label positive weights."""
    torch.manual_seed(1)
    pre = tmp_path / "pre.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in rt.create_model("resnet20").state_dict().items()}, str(pre))
    res = rt.fit(task="multilabel", data=str(ml_csv), output=str(tmp_path / "lp"), pretrained=str(pre),
                 strategy="linear_probe", balance="pos_weight", **FAST)
    out = capsys.readouterr().out
    assert "cached the frozen backbone's features" in out
    assert "3 labels; images a label in training:" in out and "labels.txt in the run folder" in out
    before, after = load_file(str(pre)), load_file(str(res.run_dir / "last.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("fc."))
    assert len(res.history) == 2 and np.isfinite([r["val_map"] for r in res.history]).all()
    from resnet_tune.tasks.multilabel.task import pos_weights

    t = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.float32)
    assert pos_weights(t).tolist() == pytest.approx([1 / 3, 3.0, 1.0])  # neg/pos; a label without positives weighs 1


def test_cli_detects_a_multilabel_csv_and_resumes_it(ml_csv: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    from resnet_tune.cli import main

    args = ["train", "--data", str(ml_csv), "--model", "resnet20", "--img-size", "16", "--epochs", "2",
            "--batch-size", "8", "--precision", "fp32", "--no-progress", "--output", str(tmp_path / "cli")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "multi-label data:" in out and "several labels separated by ';'" in out and "mAP" in out
    assert ckpt.read_record(tmp_path / "cli" / "best.safetensors")["task"] == "multilabel"
    # --resume reads the task from the run (a finished run is only reported)
    assert main(["train", "--resume", str(tmp_path / "cli")]) == 0
    capsys.readouterr()

    # predict: the labels over their thresholds, and the top-k scores; the API gives the same JSON
    images = [str(ml_csv.parent / f"img{i}.png") for i in range(4)]
    assert main(["predict", str(tmp_path / "cli"), *images, "--output", str(tmp_path / "p.json")]) == 0
    got = json.loads((tmp_path / "p.json").read_text())
    pred = rt.Predictor(tmp_path / "cli")
    assert type(pred).__name__ == "MultiLabelPredictor"
    assert got == pred.predict_files(images)
    from PIL import Image as PILImage

    from resnet_tune.errors import ConfigError

    with pytest.raises(ConfigError, match="label 'zebra' is not one of the model's labels"):
        pred.explain(PILImage.open(images[0]), "zebra")
    th = ckpt.read_record(tmp_path / "cli" / "best.safetensors")["thresholds"]["per_label"]
    for r in got:
        assert len(r["top"]) == 3 and all(t["prob"] >= th[t["label"]] for t in r["labels"])
        over = {t["class"] for t in r["top"] if t["prob"] >= th[t["class"]]}
        assert {t["label"] for t in r["labels"]} == over
    assert main(["predict", str(tmp_path / "cli"), *images, "--output", str(tmp_path / "p.csv")]) == 0
    assert (tmp_path / "p.csv").read_text().startswith("file,labels,class_1,prob_1")

    # evaluate: the run's own validation split by default, or a labelled CSV; the API gives the same figures
    from resnet_tune.tasks.multilabel.evaluation import evaluate_multilabel

    assert main(["evaluate", str(tmp_path / "cli"), "--output", str(tmp_path / "ev")]) == 0
    assert "macro mAP" in capsys.readouterr().out
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    api = evaluate_multilabel(tmp_path / "cli", progress=False)
    assert ev["macro_map"] == pytest.approx(api["macro_map"]) and ev["images"] == api["images"]
    # in fp32 (as trained here) the figures equal those training wrote for the same split; the evaluation folds
    # BatchNorm into the convolutions, so a score within rounding of its threshold (2e-7 apart was seen, on a CPU
    # without AVX-512) may land on the other side: at most one decision in a hundred changes
    exact = evaluate_multilabel(tmp_path / "cli", progress=False, precision="fp32")
    run_ev = json.loads((tmp_path / "cli" / "eval.json").read_text())
    for key in ("images", "macro_map", "micro_map"):
        assert exact[key] == pytest.approx(run_ev[key], abs=1e-6), key
    decisions = exact["images"] * len(pred.classes)
    assert abs(exact["hamming_loss"] - run_ev["hamming_loss"]) * decisions <= max(1, decisions // 100) + 1e-9
    if exact["hamming_loss"] == pytest.approx(run_ev["hamming_loss"], abs=1e-9):
        assert exact["micro_f1"] == pytest.approx(run_ev["micro_f1"], abs=1e-6)
    for png in ("label_ap.png", "error_cooccurrence.png"):
        assert (tmp_path / "ev" / png).is_file()
    assert main(["evaluate", str(tmp_path / "cli"), "--data", str(ml_csv), "--output", str(tmp_path / "ev2")]) == 0
    assert json.loads((tmp_path / "ev2" / "eval.json").read_text())["images"] == 48
    bad = ml_csv.parent / "zebra.csv"
    bad.write_text("path,labels\nimg0.png,red;zebra\n")
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "cli"), "--data", str(bad)]) != 0
    err = capsys.readouterr().err
    assert "label(s) 'zebra' that the model does not know" in err and err.count("\n") == 1

    # export keeps the thresholds in the exported model's metadata
    from resnet_tune.export.exporter import read_export_record

    assert main(["export", str(tmp_path / "cli"), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 0
    assert read_export_record(tmp_path / "m.onnx")["thresholds"]["per_label"] == th


@pytest.mark.parametrize("extra,message", [
    (["--task", "classification", "--label-sep", ";"], "--label-sep applies to multi-label runs only"),
    (["--task", "classify", "--target-precision", "0.9"], "--target-precision applies to multi-label runs only"),
    (["--task", "multilabel", "--balance", "sampler"], "balance"),
])
def test_cli_refuses_options_of_the_other_task(ml_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                               extra: list[str], message: str) -> None:
    from resnet_tune.cli import main

    code = main(["train", "--data", str(ml_csv), "--epochs", "1", "--output", str(tmp_path / "x"), *extra])
    err = capsys.readouterr().err
    assert code != 0 and message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("batching", [True, False])
def test_served_by_the_web_service(ml_csv: Path, tmp_path_factory: pytest.TempPathFactory, batching: bool) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from resnet_tune.serve.http import create_app

    run = tmp_path_factory.mktemp("mlserve") / "run"
    rt.fit(task="multilabel", data=str(ml_csv), output=str(run), quiet=True, **dict(FAST, epochs=1))
    pred = rt.Predictor(run)
    image = ml_csv.parent / "img0.png"
    with TestClient(create_app(run, device="cpu", batching=batching)) as c:
        model = c.get("/model").json()
        assert model["task"] == "multilabel" and model["thresholds"]["per_label"].keys() == {"blue", "green", "red"}
        r = c.post("/predict?top_k=2", files=[("file", ("img0.png", image.read_bytes(), "image/png"))])
        assert r.status_code == 200, r.text
        got = r.json()[0]
        assert set(got) == {"file", "labels", "top"} and len(got["top"]) == 2
        want = pred.predict_files([str(image)], top_k=2)[0]
        assert [t["label"] for t in got["labels"]] == [t["label"] for t in want["labels"]]
        assert [t["prob"] for t in got["top"]] == pytest.approx([t["prob"] for t in want["top"]], abs=1e-4)
        e = c.post("/explain", files=[("file", ("img0.png", image.read_bytes(), "image/png"))])
        assert e.status_code == 200 and e.headers["content-type"] == "image/png"
        js = c.get("/static/app.js").text
        assert 'model.task === "multilabel"' in js and "out[0].labels" in js


EUROSAT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "eurosat"


@pytest.mark.slow
@pytest.mark.skipif(not EUROSAT.is_dir(), reason="../shared/data/eurosat is not available")
def test_mosaic_benchmark_smoke(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "multilabel_mosaic.py"
    out = subprocess.run([sys.executable, str(script), "--work", str(tmp_path), "--train", "48", "--test", "16",
                          "--epochs", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| test | 16 |" in out.stdout and "macro mAP" in out.stdout
    rows = (tmp_path / "mosaics.csv").read_text().splitlines()
    assert rows[0] == "path,labels,split" and len(rows) == 65
    assert all(1 <= len(r.split(",")[1].split(";")) <= 4 for r in rows[1:])
