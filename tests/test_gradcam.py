"""Grad-CAM means something: on images whose class is decided by a small coloured patch, the heat-map peaks there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnet_tune as rt
from resnet_tune.cli import main
from resnet_tune.data.transforms import Preprocessing
from resnet_tune.engine import checkpoint as ckpt
from resnet_tune.inference.gradcam import grad_cam, overlay, target_layer

SIZE, PATCH = 32, 8
PATCH_COLOURS = {"red": (230, 30, 30), "blue": (30, 60, 230)}
CLASSES = sorted(PATCH_COLOURS)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def patch_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Grey noise with one PATCH x PATCH square of the class colour at a random position (uint8 NHWC)."""
    rng = np.random.default_rng(seed)
    imgs = rng.normal(128, 30, (n, SIZE, SIZE, 3))
    labels = rng.integers(0, len(CLASSES), n)
    boxes = []
    for i in range(n):
        r, c = (int(v) for v in rng.integers(0, SIZE - PATCH + 1, 2))
        imgs[i, r:r + PATCH, c:c + PATCH] = np.array(PATCH_COLOURS[CLASSES[labels[i]]]) + rng.normal(0, 10, (PATCH,
                                                                                                           PATCH, 3))
        boxes.append((r, c))
    return np.clip(imgs, 0, 255).astype(np.uint8), labels, boxes


def to_tensor(imgs: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def peak_hits(model: torch.nn.Module, x: torch.Tensor, boxes: list[tuple[int, int]]) -> int:
    hits = 0
    for i, (br, bc) in enumerate(boxes):
        h = grad_cam(model, x[i])
        assert h.shape == (SIZE, SIZE) and float(h.min()) >= 0.0 and float(h.max()) <= 1.0
        r, c = divmod(int(h.argmax()), SIZE)
        hits += br <= r < br + PATCH and bc <= c < bc + PATCH
    return hits


@pytest.fixture(scope="module")
def patch_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """resnet20 at 32 px trained (fp32, a few epochs) to tell a red patch from a blue one."""
    torch.manual_seed(0)
    imgs, labels, _ = patch_images(256, seed=0)
    x, y = to_tensor(imgs), torch.from_numpy(labels)
    model = rt.create_model("resnet20", num_classes=len(CLASSES))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(4):
        perm = torch.randperm(len(x))
        model.train()
        for i in range(0, len(x), 32):
            idx = perm[i:i + 32]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    pp = Preprocessing(SIZE, MEAN, STD, SIZE).to_dict()
    rec = ckpt.model_record(model, classes=CLASSES, preprocessing=pp)
    path = ckpt.save_checkpoint(tmp_path_factory.mktemp("patch") / "best.safetensors", model, rec)
    return model, path


def test_heatmap_peak_falls_inside_the_deciding_patch(patch_model: tuple[torch.nn.Module, Path]) -> None:
    model, _ = patch_model
    imgs, labels, boxes = patch_images(10, seed=99)
    x = to_tensor(imgs)
    with torch.no_grad():
        acc = float((model(x).argmax(1) == torch.from_numpy(labels)).float().mean())
    assert acc >= 0.9, f"the patch classifier did not learn (accuracy {acc})"
    trained = peak_hits(model, x, boxes)
    assert trained >= 8, f"the heat-map peak fell inside the patch for only {trained} of 10 images"
    torch.manual_seed(1)
    untrained = peak_hits(rt.create_model("resnet20", num_classes=2).eval(), x, boxes)
    assert untrained < trained, "an untrained model should not find the patch as often"


def test_grad_cam_api_shapes_targets_and_layers(patch_model: tuple[torch.nn.Module, Path]) -> None:
    model, _ = patch_model
    imgs, labels, boxes = patch_images(3, seed=5)
    x = to_tensor(imgs)
    batch = grad_cam(model, x)
    assert batch.shape == (3, SIZE, SIZE)
    torch.testing.assert_close(batch[0], grad_cam(model, x[:1]), rtol=1e-4, atol=1e-5)
    assert target_layer(model) is model.layer3  # resnet20's last stage
    resnet18 = rt.create_model("resnet18", num_classes=4).eval()
    assert target_layer(resnet18) is resnet18.layer4
    assert grad_cam(resnet18, torch.randn(3, 64, 64), target=2, layer="layer3").shape == (64, 64)
    # the other class's evidence is somewhere else than the predicted class's
    other = grad_cam(model, x[0], target=1 - int(labels[0]))
    assert other.shape == (SIZE, SIZE) and not torch.equal(other, batch[0])
    with pytest.raises(ValueError, match="out of range"):
        grad_cam(model, x[0], target=7)
    assert not any(p.grad is not None for p in model.parameters()), "no gradients are left on the weights"
    assert not model.training


def test_overlay_and_explain_cli(patch_model: tuple[torch.nn.Module, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    _, ckpt_path = patch_model
    img = Image.new("RGB", (50, 30), (128, 128, 128))
    heat = torch.zeros(4, 4)
    heat[0, 0] = 1.0
    out = overlay(img, heat)
    assert out.size == (50, 30) and out.mode == "RGB"
    assert out.getpixel((0, 0))[0] > out.getpixel((49, 29))[0], "hot is red, cold is blue"

    imgs, labels, _ = patch_images(1, seed=11)
    src = tmp_path / "patch.png"
    Image.fromarray(imgs[0]).save(src)
    png = tmp_path / "out" / "cam.png"
    assert main(["explain", str(ckpt_path), str(src), "--output", str(png)]) == 0
    said = capsys.readouterr().out
    assert png.is_file() and f"class {CLASSES[labels[0]]}" in said
    assert Image.open(png).size == (256, 256)  # small inputs are shown enlarged
    picture, info = rt.Predictor(ckpt_path, device="cpu", precision="fp32").explain(Image.open(src), "blue")
    assert info["class"] == "blue" and picture.size == (256, 256)
    assert main(["explain", str(ckpt_path), str(src), "--class", "green"]) == 2
    assert "not one of the model's classes" in capsys.readouterr().err
