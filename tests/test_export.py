"""Export to ONNX, TorchScript and torch.export: parity with the eager model, metadata, dynamic batch, failures."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resnet_tune as rt
from resnet_tune.cli import main
from resnet_tune.engine import checkpoint as ckpt
from resnet_tune.export import ExportError, MissingExtraError, export, export_model, read_export_record
from resnet_tune.export import exporter

from conftest import random_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

FORMATS = ["onnx", "torchscript", "exported-program"]
CLASSES = ["cat", "dog", "emu"]


def _checkpoint(root: Path, name: str, size: int, seed: int = 0) -> Path:
    return random_checkpoint(root, name, size, CLASSES, seed)


def _run(path: Path, fmt: str, x: torch.Tensor) -> torch.Tensor:
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    if fmt == "torchscript":
        return torch.jit.load(str(path))(x)
    return torch.export.load(str(path)).module()(x)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    # a basic-block ImageNet preset, a bottleneck one with deep stem + average-pool shortcut, a CIFAR one with
    # parameter-free (option A) shortcuts
    # parameter-free (option A) shortcuts; blur-pool downsampling (reflect padding, depthwise filter); Page's
    # conv-pool stage entries
    return {"resnet18": _checkpoint(root, "resnet18", 64), "resnet50d": _checkpoint(root, "resnet50d", 64),
            "resnet20": _checkpoint(root, "resnet20", 32), "resnetblur18": _checkpoint(root, "resnetblur18", 64),
            "resnet9": _checkpoint(root, "resnet9", 32)}


@pytest.mark.parametrize("preset", ["resnet18", "resnet50d", "resnet20", "resnetblur18", "resnet9"])
def test_round_trip_parity_metadata_and_dynamic_batch(checkpoints: dict[str, Path], preset: str) -> None:
    ck = checkpoints[preset]
    eager, record = ckpt.load_checkpoint(ck)
    size = record["preprocessing"]["input_size"]
    gen = torch.Generator().manual_seed(7)
    for fmt in FORMATS:
        report = export(ck.parent, fmt)
        path = report.path
        assert path == ck.parent / ("model" + exporter.FORMATS[fmt]) and path.is_file()
        assert report.batches == (1, 3) and report.max_abs_diff < 1e-3
        # the file runs in its own runtime at batch sizes it was not traced with and matches the eager model
        for n in (1, 5):
            x = torch.randn(n, 3, size, size, generator=gen)
            with torch.no_grad():
                got, ref = _run(path, fmt, x), eager(x)
            assert got.shape == (n, len(CLASSES))
            torch.testing.assert_close(got, ref, rtol=exporter.RTOL, atol=exporter.ATOL)
        meta = read_export_record(path)
        assert meta["classes"] == CLASSES and meta["task"] == "classification"
        assert meta["preprocessing"] == record["preprocessing"] and meta["model"] == preset
        assert meta["export"]["format"] == fmt and meta["export"]["batchnorm_folded"] is True
    assert not list(ck.parent.glob(".*.tmp")), "temporary folders are cleaned up"


def test_metadata_is_where_each_runtime_looks(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    import onnx

    ck = checkpoints["resnet20"]
    onnx_path = export_model(ck, "onnx", tmp_path / "m.onnx")
    model = onnx.load(str(onnx_path))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["resnet_tune"])["classes"] == CLASSES
    assert json.loads(props["classes"]) == CLASSES and props["task"] == "classification"
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value, "the batch dimension is symbolic"
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node), "batch-norm is folded"

    ts = export_model(ck, "torchscript", tmp_path / "m.pt")
    files = {"resnet_tune.json": ""}
    torch.jit.load(str(ts), _extra_files=files)
    assert json.loads(files["resnet_tune.json"])["classes"] == CLASSES

    pt2 = export_model(ck, "exported-program", tmp_path / "m.pt2")
    files = {"resnet_tune.json": ""}
    ep = torch.export.load(str(pt2), extra_files=files)
    assert json.loads(files["resnet_tune.json"])["preprocessing"]["input_size"] == 32
    assert not any("batch_norm" in str(n.target) for n in ep.graph.nodes), "batch-norm is folded"
    with zipfile.ZipFile(pt2) as z:
        assert any(n.endswith("extra/resnet_tune.json") for n in z.namelist())


def test_cli_export_default_output_and_summary(checkpoints: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    ck = checkpoints["resnet20"]
    out = tmp_path / "cli" / "net.pt"
    assert main(["export", str(ck), "--format", "torchscript", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "verified" in text and "max abs diff" in text and str(out) in text
    with pytest.raises(SystemExit):
        main(["export", str(ck), "--format", "nonsense"])
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", FORMATS)
def test_failed_verification_deletes_the_file_and_names_the_difference(checkpoints: dict[str, Path], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       fmt: str) -> None:
    ck = checkpoints["resnet20"]
    dest = tmp_path / f"bad{exporter.FORMATS[fmt]}"
    real_fold = exporter.fold_batchnorm

    def corrupted_fold(model: nn.Module) -> nn.Module:  # the exported weights differ from the checkpoint's
        model = real_fold(model)
        with torch.no_grad():
            model.fc.bias.add_(0.5)
        return model

    monkeypatch.setattr(exporter, "fold_batchnorm", corrupted_fold)
    with pytest.raises(ExportError, match=r"max abs diff 0\.5"):
        export_model(ck, fmt, dest)
    assert not dest.exists() and list(tmp_path.iterdir()) == [], "nothing is left behind"

    # an existing good file at the destination is not replaced by a bad export
    monkeypatch.setattr(exporter, "fold_batchnorm", real_fold)
    export_model(ck, fmt, dest)
    before = dest.read_bytes()
    monkeypatch.setattr(exporter, "_reference", lambda m, x: m(x) + 1e-2)  # or the eager side disagrees
    with pytest.raises(ExportError, match="max abs diff") as err:
        export_model(ck, fmt, dest)
    assert "batch size 1" in str(err.value) and "not written" in str(err.value)
    assert dest.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [dest.name]


def test_cli_reports_failed_verification(checkpoints: dict[str, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(exporter, "_reference", lambda m, x: m(x) * 2 + 1)
    dest = tmp_path / "x.pt"
    assert main(["export", str(checkpoints["resnet20"]), "--format", "torchscript", "-o", str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the exported torchscript model does not reproduce") and "max abs diff" in err
    assert len(err.strip().splitlines()) == 1 and not dest.exists()


def test_missing_onnx_extra_says_how_to_install(checkpoints: dict[str, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'resnet-tune\[onnx\]'"):
        export_model(checkpoints["resnet20"], "onnx", tmp_path / "m.onnx")
    assert main(["export", str(checkpoints["resnet20"]), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'resnet-tune[onnx]'" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
    # the other formats do not need the extra
    assert export_model(checkpoints["resnet20"], "torchscript", tmp_path / "m.pt").is_file()


class _TinySegmenter(nn.Module):
    """A dense-output model (N, K, H, W) built on a ResNet body, standing in for the segmentation models."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = rt.create_model("resnet20", num_classes=0)
        self.head = nn.Sequential(nn.Conv2d(64, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.head(self.backbone.forward_features(x)), size=x.shape[-2:], mode="bilinear",
                             align_corners=False)


def test_any_single_tensor_model_exports(checkpoints: dict[str, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    seg = _TinySegmenter().eval()
    record = dict(ckpt.read_record(checkpoints["resnet20"]), task="segmentation",
                  classes=["bg", "a", "b", "c"], model="tiny_segmenter", model_config=None)
    monkeypatch.setattr(ckpt, "load_checkpoint", lambda path, device="cpu": (seg, record))
    x = torch.randn(2, 3, 32, 32)
    for fmt in FORMATS:
        path = export_model(checkpoints["resnet20"], fmt, tmp_path / f"seg{exporter.FORMATS[fmt]}")
        got = _run(path, fmt, x)
        assert got.shape == (2, 4, 32, 32)
        with torch.no_grad():
            np.testing.assert_allclose(got.numpy(), seg(x).numpy(), rtol=1e-3, atol=1e-4)
        assert read_export_record(path)["task"] == "segmentation"


@pytest.mark.parametrize("kwargs", [{"act_layer": "mish"}, {"act_layer": "silu"},
                                    {"groups": 4, "base_width": 32, "se_ratio": 0.125}], ids=["mish", "silu", "grouped"])
def test_other_activations_and_blocks_export(checkpoints: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, kwargs: dict) -> None:
    """A ResNet with ``act_layer`` Mish or SiLU, or grouped basic blocks, exports to every format with the eager
    outputs."""
    torch.manual_seed(0)
    act = "_".join(map(str, kwargs.values()))
    model = rt.create_model("resnet20", num_classes=10, **kwargs).eval()
    record = dict(ckpt.read_record(checkpoints["resnet20"]))
    monkeypatch.setattr(ckpt, "load_checkpoint", lambda path, device="cpu": (model, record))
    x = torch.randn(2, 3, 32, 32)
    for fmt in FORMATS:
        path = export_model(checkpoints["resnet20"], fmt, tmp_path / f"{act}{exporter.FORMATS[fmt]}")
        with torch.no_grad():
            np.testing.assert_allclose(_run(path, fmt, x).numpy(), model(x).numpy(), rtol=1e-3, atol=1e-4)


def test_non_tensor_output_is_refused(checkpoints: dict[str, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"a": self.conv(x), "b": self.conv(x)}

    record = ckpt.read_record(checkpoints["resnet20"])
    monkeypatch.setattr(ckpt, "load_checkpoint", lambda path, device="cpu": (TwoHeads(), record))
    with pytest.raises(ExportError, match="not one tensor"):
        export_model(checkpoints["resnet20"], "torchscript", tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []
