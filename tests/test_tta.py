"""Flip test-time augmentation in predict and evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resnet_tune.cli import main
from resnet_tune.errors import ConfigError
from resnet_tune.tasks.classification import ClassificationPredictor, evaluate

from conftest import random_checkpoint


def test_flip_tta_averages_the_image_and_its_mirror(tmp_path: Path, image_folder: Path) -> None:
    ck = random_checkpoint(tmp_path, "resnet20", 16, ["blue", "green", "red"])
    plain = ClassificationPredictor(ck, device="cpu", precision="fp32")
    tta = ClassificationPredictor(ck, device="cpu", precision="fp32", tta=True)
    x = torch.randn(3, 3, 16, 16)
    want = (plain.logits(x) + plain.logits(x.flip(-1))) / 2
    torch.testing.assert_close(tta.logits(x), want)
    assert not torch.allclose(plain.logits(x), want, atol=1e-4)  # the mirror images really differ
    # mirror-symmetric images: the same outputs either way
    sym = torch.cat([x[..., :8], x[..., :8].flip(-1)], -1)
    torch.testing.assert_close(tta.logits(sym), plain.logits(sym), rtol=1e-4, atol=1e-5)

    report = evaluate(ck, image_folder, device="cpu", precision="fp32", tta=True, progress=False)
    assert report["tta"] == "flip" and report["num_samples"] == 30
    assert evaluate(ck, image_folder, device="cpu", progress=False)["tta"] is None


def test_cli_predict_and_evaluate_take_tta(tmp_path: Path, image_folder: Path) -> None:
    ck = random_checkpoint(tmp_path, "resnet20", 16, ["blue", "green", "red"])
    out = tmp_path / "p.json"
    assert main(["predict", str(ck), str(image_folder / "red"), "--tta", "--output", str(out)]) == 0
    assert len(json.loads(out.read_text())) == 10
    assert main(["evaluate", str(ck), "--data", str(image_folder), "--tta", "--output", str(tmp_path / "e")]) == 0
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["tta"] == "flip"


def test_segmentation_refuses_tta(tmp_path: Path) -> None:
    from resnet_tune.engine import checkpoint as ckpt
    from resnet_tune.models.segmentation import create_segmenter
    from resnet_tune.tasks.segmentation import SegmentationPredictor

    model = create_segmenter("resnet18", 3, head="fcn")
    rec = ckpt.model_record(model, classes=["a", "b", "c"], task="segmentation", preprocessing={})
    path = ckpt.save_checkpoint(tmp_path / "seg.safetensors", model, rec)
    with pytest.raises(ConfigError, match="flip test-time augmentation"):
        SegmentationPredictor(path, device="cpu", tta=True)
