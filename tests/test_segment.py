"""Semantic segmentation: joint transforms, metrics, losses, torchvision parity, data checks,
train -> evaluate -> predict through the CLI, and exact resume. Data: tiny synthetic image/mask pairs
(coloured rectangles on grey whose masks are their class ids) made by the tests.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import resnet_tune as rt
from resnet_tune.cli import main
from resnet_tune.engine import checkpoint as ckpt
from resnet_tune.engine.optim import lr_at
from resnet_tune.engine.trainer import Trainer
from resnet_tune.errors import ConfigError, DataError
from resnet_tune.models.segmentation import Segmenter, create_segmenter, load_torchvision_segmentation
from resnet_tune.tasks.segmentation import SegmentationTask
from resnet_tune.tasks.segmentation import metrics as SM
from resnet_tune.tasks.segmentation.data import (ClassTable, decode_mask, discover_pairs, read_class_table,
                                                 scan_pairs)
from resnet_tune.tasks.segmentation.losses import SegLoss, class_weights, dice_loss
from resnet_tune.tasks.segmentation.transforms import joint_train_transform

METRIC_COLUMNS = SegmentationTask.metric_columns


def fit_segmentation(**options):  # type: ignore[no-untyped-def]
    return rt.fit(task="segmentation", **options)

COLOURS = [(90, 90, 90), (220, 30, 30), (30, 200, 40), (40, 50, 220)]  # background, red, green, blue
NAMES = ["background", "red", "green", "blue"]
FAST = dict(epochs=2, batch_size=4, progress=False, precision="fp32", head="unet")


def rect_mask(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    for c in (1, 2, 3):
        h, w = rng.integers(6, 14, 2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        mask[y:y + h, x:x + w] = c
    return mask


def make_pair(img_path: Path, mask_path: Path | None, seed: int, size: int = 32, colour_mask: bool = False) -> None:
    rng = np.random.default_rng(seed)
    mask = rect_mask(rng, size)
    img = np.clip(np.array(COLOURS)[mask] + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
    img_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(img_path)
    if mask_path is not None:
        mask[0, :] = 255  # an unlabelled row
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        if colour_mask:
            lut = np.array(COLOURS + [(0, 0, 0)] * 252, dtype=np.uint8)
            lut[255] = (255, 255, 255)
            Image.fromarray(lut[mask]).save(mask_path)
        else:
            Image.fromarray(mask).save(mask_path)


def make_seg_data(root: Path, counts: tuple[int, int, int] = (12, 4, 4), size: int = 32, class_file: bool = True,
                  colour_mask: bool = False) -> Path:
    for split, n in zip(("train", "val", "test"), counts):
        for i in range(n):
            make_pair(root / split / "images" / f"{split}{i}.png", root / split / "masks" / f"{split}{i}.png",
                      seed=hash((split, i)) % 10_000, size=size, colour_mask=colour_mask)
    if class_file and colour_mask:
        (root / "classes.csv").write_text("name,r,g,b\n" + "".join(f"{n},{r},{g},{b}\n" for n, (r, g, b)
                                                                      in zip(NAMES, COLOURS)))
    elif class_file:
        (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    return root


@pytest.fixture
def seg_data(tmp_path: Path) -> Path:
    return make_seg_data(tmp_path / "seg")


# --- joint transforms ---------------------------------------------------------------------------

def _encoded(seed: int, h: int = 40, w: int = 56) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose pixel values encode their class (class * 60 in every channel) and its mask."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.int64)
    for c in (1, 2, 3):  # asymmetric blocks of at least 8 px
        bh, bw = rng.integers(8, 16, 2)
        y, x = rng.integers(0, h - bh), rng.integers(0, w - bw)
        mask[y:y + bh, x:x + bw] = c
    img = torch.from_numpy((mask * 60).astype(np.uint8))[None].repeat(3, 1, 1)
    return img, torch.from_numpy(mask)


def test_joint_crop_flip_pad_keep_image_and_mask_aligned() -> None:
    flips = 0
    for seed in range(40):
        img, mask = _encoded(seed)
        g = torch.Generator().manual_seed(seed)
        out_img, out_mask = joint_train_transform(img, mask, crop=(48, 64), scale=(1.0, 1.0), hflip=True,
                                                  ignore_index=255, fill=(7, 7, 7), generator=g)
        assert out_img.shape == (3, 48, 64) and out_mask.shape == (48, 64)
        assert out_img.dtype == torch.uint8
        labelled = out_mask != 255
        assert torch.equal(out_img[0][labelled].long(), out_mask[labelled] * 60)  # exact: no resampling
        assert (out_img[:, ~labelled] == 7).all()  # padding: fill colour in the image, ignore in the mask
        assert labelled.sum() == 40 * 56  # the crop is larger than the image: all of it survives
        plain = torch.equal(out_mask[:40, :56], mask)
        flipped = torch.equal(out_mask[:40, 8:].flip(-1), mask)  # padded right, then the whole crop flipped
        assert plain != flipped
        flips += int(flipped)
    assert 0 < flips < 40


def test_joint_scale_jitter_keeps_alignment_up_to_boundaries() -> None:
    for seed in range(20):
        img, mask = _encoded(seed)
        g = torch.Generator().manual_seed(100 + seed)
        # the crop exceeds the largest scaled image (80x112), so every class boundary is inside it
        out_img, out_mask = joint_train_transform(img, mask, crop=(84, 116), scale=(0.5, 2.0), hflip=True,
                                                  ignore_index=255, fill=(0, 0, 0), generator=g)
        decoded = (out_img[0].float() / 60).round().long()
        labelled = out_mask != 255
        wrong = labelled & (decoded != out_mask)
        # Only pixels within two pixels of a class boundary may disagree (bilinear blending there).
        m = torch.nn.functional.pad(out_mask[None, None].float(), (2, 2, 2, 2), mode="replicate")
        hi = torch.nn.functional.max_pool2d(m, 5, 1)[0, 0]
        lo = -torch.nn.functional.max_pool2d(-m, 5, 1)[0, 0]
        boundary = hi != lo
        assert not (wrong & ~boundary).any(), seed
        assert wrong.sum() <= 0.1 * labelled.sum()


def test_joint_transform_is_a_function_of_the_generator() -> None:
    img, mask = _encoded(3)
    a = joint_train_transform(img, mask, crop=(24, 24), generator=torch.Generator().manual_seed(5))
    b = joint_train_transform(img, mask, crop=(24, 24), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --- metrics and losses -------------------------------------------------------------------------

def test_iou_against_a_hand_computed_example() -> None:
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 0]])
    cm = SM.confusion_matrix(pred, target, 4, ignore_index=255)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    iou = SM.iou_per_class(cm)
    # class 0: TP 1, FP 0, FN 1 -> 1/2; class 1: TP 2, FP 1, FN 0 -> 2/3; class 2: 1/1; class 3: absent
    np.testing.assert_allclose(iou[:3], [0.5, 2 / 3, 1.0])
    assert np.isnan(iou[3])
    assert SM.mean_iou(cm, 255) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert SM.pixel_accuracy(cm) == pytest.approx(4 / 5)
    rep = SM.segmentation_report(cm, ["a", "b", "c", "d"], 255)
    assert rep["per_class"][3]["iou"] is None and rep["num_pixels"] == 5
    # A class predicted but absent from the truth has IoU 0 and counts in the mean.
    cm2 = SM.confusion_matrix(torch.tensor([3, 0]), torch.tensor([0, 0]), 4)
    assert SM.mean_iou(cm2) == pytest.approx((0.5 + 0.0) / 2)


def test_ignore_index_does_not_change_loss_or_iou() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    target[:, :3] = 11  # ignored rows
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0])
    for loss_fn in (SegLoss(None, 11), SegLoss(weight, 11, dice=0.7)):
        base = loss_fn(logits, target)
        other = logits.clone()
        other[:, :, :3] = torch.randn(2, 4, 3, 8) * 10  # change the logits only where the target is ignored
        assert torch.equal(loss_fn(other, target), base)
    # the cross-entropy is the mean over labelled pixels only
    valid = target != 11
    manual = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[valid], target[valid])
    torch.testing.assert_close(SegLoss(None, 11)(logits, target), manual)
    # a batch with nothing labelled is a zero loss, not NaN
    assert SegLoss(None, 11)(logits, torch.full_like(target, 11)).item() == 0.0
    # IoU: predictions on ignored pixels do not count
    pred = logits.argmax(1)
    pred2 = pred.clone()
    pred2[:, :3] = 3 - pred2[:, :3]
    assert (SM.confusion_matrix(pred, target, 4, 11) == SM.confusion_matrix(pred2, target, 4, 11)).all()
    # when the ignore index is a class id it is left out of the mean IoU
    cm = SM.confusion_matrix(pred, torch.where(target == 11, 3, target), 4, ignore_index=3)
    assert all(r["id"] != 3 for r in SM.segmentation_report(cm, NAMES, 3)["per_class"])


def test_dice_loss_perfect_and_wrong_predictions() -> None:
    target = torch.tensor([[[0, 1], [1, 255]]])
    perfect = torch.nn.functional.one_hot(torch.tensor([[[0, 1], [1, 0]]]), 2).permute(0, 3, 1, 2).float() * 50
    assert dice_loss(perfect, target) == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(-perfect, target) > 0.6


def test_class_weights_median_and_inverse() -> None:
    counts = np.array([600, 300, 100, 0])
    image_pixels = np.array([1000, 1000, 500, 0])  # pixels of the images each class appears in
    w = class_weights(counts, image_pixels, "median").numpy()
    freq = np.array([0.6, 0.3, 0.2])
    np.testing.assert_allclose(w[:3], np.median(freq) / freq, rtol=1e-6)
    assert w[3] == 0.0
    inv = class_weights(counts, None, "inverse").numpy()
    np.testing.assert_allclose(inv[:3].mean(), 1.0, rtol=1e-6)
    assert inv[2] > inv[1] > inv[0] and inv[3] == 0.0
    assert class_weights(counts, None, "none") is None


def test_curves_draw_only_the_validated_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --val-every 2 the rows of epochs 1 and 3 have no validation metrics: the validation lines join epochs
    2 and 4 (no gaps that would leave lone markers), the training line all four."""
    from matplotlib.axes import Axes

    from resnet_tune.tasks.segmentation.evaluate import plot_seg_curves

    drawn: dict[str, list[float]] = {}
    real = Axes.plot

    def spy(self, x, y, *args, **kwargs):  # type: ignore[no-untyped-def]
        drawn[kwargs.get("label", "")] = list(x)
        return real(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", spy)
    rows = [{"epoch": e, "train_loss": 1.0 / e, "lr": 0.01,
             **({"val_loss": 0.9 / e, "val_miou": 0.1 * e, "val_pixel_acc": 0.2 * e} if e % 2 == 0 else {})}
            for e in (1, 2, 3, 4)]
    assert plot_seg_curves(rows, tmp_path / "curves.png").is_file()
    assert drawn["train"] == [1, 2, 3, 4]
    assert drawn["validation"] == drawn["validation mean IoU"] == drawn["validation pixel accuracy"] == [2, 4]


def test_poly_schedule() -> None:
    assert lr_at(0, 100, "poly") == 1.0
    assert lr_at(50, 100, "poly", power=1.0) == pytest.approx(0.5)
    assert lr_at(50, 100, "poly") == pytest.approx(0.5 ** 0.9)
    assert lr_at(100, 100, "poly") == 0.0
    assert lr_at(0, 100, "poly", warmup_steps=10) == pytest.approx(1 / 11)
    assert lr_at(10, 100, "poly", warmup_steps=10) == 1.0


# --- models -------------------------------------------------------------------------------------

def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / fan_in) ** 0.5)
            elif name.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.75)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)


@pytest.mark.parametrize("arch", ["fcn", "deeplabv3"])
def test_torchvision_parity(arch: str) -> None:
    from torchvision.models import segmentation as tvseg

    ctor = {"fcn": tvseg.fcn_resnet50, "deeplabv3": tvseg.deeplabv3_resnet50}[arch]
    tv = ctor(weights=None, weights_backbone=None, aux_loss=True, num_classes=6).eval()
    _randomise(tv)
    ours = create_segmenter("resnet50", 6, head=arch, output_stride=8, aux=True).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)  # the same names, strictly
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = tv(x), ours.forward_all(x)
    assert want["out"].abs().mean() > 1e-3  # a meaningful comparison
    torch.testing.assert_close(got["out"], want["out"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["aux"], want["aux"], rtol=1e-4, atol=1e-5)
    # without an auxiliary head the torchvision weights still load (aux dropped) and agree
    plain = create_segmenter("resnet50", 6, head=arch, output_stride=8).eval()
    load_torchvision_segmentation(plain, tv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(x), want["out"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("head,os_", [("fcn", 8), ("deeplabv3", 16), ("unet", 32), ("unet", 16)])
def test_heads_and_output_strides(head: str, os_: int) -> None:
    m = create_segmenter("resnet18", 5, head=head, output_stride=os_, aux=head == "fcn").eval()
    assert m.backbone.feature_info[-1]["stride"] == os_
    with torch.no_grad():
        out = m.forward_all(torch.randn(2, 3, 40, 56))
    assert out["out"].shape == (2, 5, 40, 56)
    assert ("aux" in out) == (head == "fcn")
    assert all(k.startswith(("backbone.", "classifier.", "aux_classifier.")) for k in m.state_dict())
    assert not any(k.startswith("backbone.fc") for k in m.state_dict())


def test_cifar_backbone_is_refused() -> None:
    with pytest.raises(ConfigError, match="ImageNet-style"):
        create_segmenter("resnet20", 3)


def test_sliding_window_matches_full_image_for_a_pointwise_model() -> None:
    from resnet_tune.tasks.segmentation.predictor import sliding_window_logits

    model = torch.nn.Conv2d(3, 4, 1)
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        torch.testing.assert_close(sliding_window_logits(model, x, (32, 32), 1 / 3), model(x))
        torch.testing.assert_close(sliding_window_logits(model, x[:, :, :20, :20], (32, 32)), model(x[:, :, :20, :20]))


# --- data ---------------------------------------------------------------------------------------

def test_class_tables(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("0\tSky\n1\tBuilding\n11\tUnlabelled\n")
    t = read_class_table(tmp_path / "a.txt")
    assert t.names == {0: "Sky", 1: "Building", 11: "Unlabelled"} and not t.colours
    (tmp_path / "b.txt").write_text("road 128 64 128\nside walk 244 35 232\n")
    t = read_class_table(tmp_path / "b.txt")
    assert t.names == {0: "road", 1: "side walk"} and t.colours[1] == (244, 35, 232)
    (tmp_path / "c.csv").write_text("name,r,g,b\nSky,128,128,128\nRoad,128,64,128\n")
    t = read_class_table(tmp_path / "c.csv")
    assert t.names == {0: "Sky", 1: "Road"} and t.colour_lut() == {(128 << 16) | (128 << 8) | 128: 0,
                                                                    (128 << 16) | (64 << 8) | 128: 1}
    (tmp_path / "bad.csv").write_text("name,r,g,b\nSky,1,2\n")
    with pytest.raises(DataError, match="line 2"):
        read_class_table(tmp_path / "bad.csv")


def test_colour_masks_with_a_class_table(tmp_path: Path) -> None:
    root = make_seg_data(tmp_path / "c", counts=(3, 1, 0), colour_mask=True)
    table = read_class_table(root / "classes.csv")
    splits = discover_pairs(root)
    data = scan_pairs(splits.all_pairs(), class_table=table, ignore_index=255)
    assert data.report.bad  # white (the unlabelled row) is not in the table: reported
    assert "not in the class table" in next(iter(data.report.bad.values()))
    table.colours[255] = (255, 255, 255)
    table.names[255] = "void"
    data = scan_pairs(splits.all_pairs(), class_table=table, ignore_index=255, keep=True)
    assert not data.report.bad and data.num_classes == 4 and data.class_names == NAMES
    p = splits.train[0]
    ids = decode_mask(p.mask, table.colour_lut())
    assert set(np.unique(ids).tolist()) <= {0, 1, 2, 3, 255} and (ids[0] == 255).all()
    # a palette PNG holds the class ids as its indices, whatever its colours
    pal = Image.fromarray(ids.astype(np.uint8), "P")
    pal.putpalette([v for c in COLOURS for v in c[::-1]] * 64)
    pal.save(tmp_path / "p.png")
    assert np.array_equal(decode_mask(str(tmp_path / "p.png")), ids)


def test_num_classes_from_masks_class_table_and_ignore(tmp_path: Path) -> None:
    root = make_seg_data(tmp_path / "d", counts=(3, 1, 0), class_file=False)
    pairs = discover_pairs(root).all_pairs()
    assert scan_pairs(pairs, ignore_index=255).num_classes == 4  # from the masks, 255 excluded
    # CamVid style: the table names the ignored id, which is not a class
    table = ClassTable({0: "background", 1: "red", 2: "green", 3: "blue", 4: "Unlabelled"})
    data = scan_pairs(pairs, class_table=table, ignore_index=4)
    assert data.num_classes == 4 and data.class_names == NAMES
    assert data.report.bad  # with ignore 4 the masks' 255 row is an unknown label


def test_seeded_split_without_val_folder(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for i in range(10):
        make_pair(root / "images" / f"x{i}.jpg", root / "masks" / f"x{i}_mask.png", seed=i)
    a, b = discover_pairs(root, val_fraction=0.3, seed=1), discover_pairs(root, val_fraction=0.3, seed=1)
    assert len(a.val) == 3 and len(a.train) == 7 and a.test is None
    assert [p.image for p in a.val] == [p.image for p in b.val]
    assert all(p.mask and Path(p.mask).name == Path(p.image).stem + "_mask.png" for p in a.train)
    assert {p.image for p in a.val} != {p.image for p in discover_pairs(root, val_fraction=0.3, seed=2).val}
    # a train/ + test/ layout whose test split has no masks: test is left out, with a note
    make_pair(tmp_path / "s" / "train" / "images" / "a.png", tmp_path / "s" / "train" / "masks" / "a.png", 0)
    make_pair(tmp_path / "s" / "train" / "images" / "b.png", tmp_path / "s" / "train" / "masks" / "b.png", 1)
    make_pair(tmp_path / "s" / "test" / "images" / "c.png", None, 2)
    s = discover_pairs(tmp_path / "s")
    assert s.test is None and "no masks folder" in s.notes[0] and len(s.train) == 1 and len(s.val) == 1


def test_data_path_with_dot_dot_and_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the CI path was ../shared/data/camvid: the walker folds "..", so pairing must too
    root = make_seg_data(tmp_path / "d" / "seg", counts=(3, 1, 0))
    (tmp_path / "d" / "other").mkdir()
    expected = discover_pairs(root)
    for given in (tmp_path / "d" / "other" / ".." / "seg", Path("..") / "seg"):
        monkeypatch.chdir(tmp_path / "d" / "other")
        got = discover_pairs(given)
        assert [(p.image, p.mask) for p in got.train] == [(p.image, p.mask) for p in expected.train]
        assert all(p.mask for p in got.train + got.val)


def test_bad_pairs_are_reported_and_skipped(seg_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train = seg_data / "train"
    (train / "masks" / "train0.png").unlink()  # missing mask
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(train / "masks" / "train1.png")  # size mismatch
    m = np.array(Image.open(train / "masks" / "train2.png"))
    m[5, 5] = 7
    Image.fromarray(m).save(train / "masks" / "train2.png")  # unknown label value (classes.txt has 4)
    (train / "images" / "train3.png").write_bytes(b"not an image")
    run = tmp_path / "run"
    assert main(["segment", "train", "--data", str(seg_data), "--output", str(run), "--epochs", "1",
                 "--batch-size", "4", "--head", "unet", "--precision", "fp32", "--no-progress",
                 "--loader", "workers", "--workers", "0"]) == 0  # files decoded per batch, not in memory
    out = capsys.readouterr().out
    assert "4 bad" in out
    bad = dict(line.split("\t") for line in (run / "bad_files.txt").read_text().splitlines())
    reasons = {Path(k).name: v for k, v in bad.items()}
    assert reasons["train0.png"].startswith("no mask")
    assert reasons["train1.png"].startswith("size mismatch: the image is 32x32 but the mask is 32x30")
    assert "label value(s) 7" in reasons["train2.png"]
    assert reasons["train3.png"].startswith("image: not an image")
    for r in reasons.values():  # one sentence each
        assert "\n" not in r and r.count(". ") == 0
    assert "usable: train 8" in out


def test_unusable_data_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["segment", "train", "--data", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "x" / "train" / "images").mkdir(parents=True)
    make_pair(tmp_path / "x" / "train" / "images" / "a.png", None, 0)
    assert main(["segment", "train", "--data", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "no masks folder" in err and err.count("\n") == 1
    with pytest.raises(DataError, match="at least two"):
        root = make_seg_data(tmp_path / "few", counts=(2, 1, 0))
        for p in (root / "train" / "masks").iterdir():
            p.unlink()
        fit_segmentation(data=str(root), output=str(tmp_path / "r"), quiet=True, **FAST)


# --- end to end ---------------------------------------------------------------------------------

def test_cli_train_evaluate_predict(seg_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["segment", "train", "--data", str(seg_data), "--output", str(run), "--epochs", "2",
                 "--batch-size", "4", "--img-size", "24,28", "--head", "deeplabv3", "--aux", "--class-weights",
                 "median", "--dice", "0.5", "--precision", "fp32", "--no-progress"]) == 0
    for name in ("best.safetensors", "last.safetensors", "last.state.pt", "metrics.csv", "report.md", "curves.png",
                 "confusion.png", "worst.png", "eval.json", "config.yaml", "data_scan.json"):
        assert (run / name).is_file(), name
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:len(METRIC_COLUMNS)] == METRIC_COLUMNS and len(rows) == 2
    assert 0.0 <= float(rows[-1]["val_miou"]) <= 1.0
    report_md = (run / "report.md").read_text()
    assert "## Segmentation metrics" in report_md and "| blue |" in report_md
    model, rec = ckpt.load_checkpoint(run)
    assert isinstance(model, Segmenter) and rec["task"] == "segmentation"
    assert rec["head"] == "deeplabv3" and rec["output_stride"] == 16 and rec["aux"] is True
    assert rec["classes"] == NAMES and rec["ignore_index"] == 255 and len(rec["colours"]) == 4
    assert rec["preprocessing"]["crop_size"] == [24, 28]
    assert json.loads((run / "eval.json").read_text())["split"] == "test"

    ev = tmp_path / "ev"
    capsys.readouterr()
    assert main(["segment", "evaluate", str(run), "--data", str(seg_data), "--output", str(ev), "--precision",
                 "fp32", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "mean IoU" in out and "blue" in out
    report = json.loads((ev / "eval.json").read_text())
    assert report["num_images"] == 4 and len(report["per_class"]) == 4 and (ev / "worst.png").is_file()

    pred_dir = tmp_path / "pred"
    assert main(["segment", "predict", str(run), str(seg_data / "test" / "images"), "--output", str(pred_dir),
                 "--precision", "fp32"]) == 0
    for i in range(4):
        mask = Image.open(pred_dir / f"test{i}_mask.png")
        assert mask.mode == "L" and mask.size == (32, 32)
        assert np.array(mask).max() < 4
        assert Image.open(pred_dir / f"test{i}_color.png").mode == "RGB"
        assert Image.open(pred_dir / f"test{i}_overlay.png").size == (32, 32)

    from resnet_tune.tasks.segmentation.predictor import SegPredictor

    pred = SegPredictor(run, precision="fp32")
    img = Image.open(seg_data / "test" / "images" / "test0.png")
    mask, overlay = pred.predict_image(img)
    assert mask.dtype == np.uint8 and mask.shape == (32, 32) and overlay.size == img.size
    assert np.array_equal(mask, np.array(Image.open(pred_dir / "test0_mask.png")))
    sliding = SegPredictor(run, precision="fp32", mode="sliding", window=(16, 16)).predict_mask(img)
    assert sliding.shape == (32, 32)


def _pretrained_backbone(tmp_path: Path) -> Path:
    from resnet_tune.models import create_model

    torch.manual_seed(3)
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("resnet18", num_classes=7).state_dict().items()}, str(path))
    return path


def test_resume_after_interruption_is_bit_exact(seg_data: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # the options segmentation gained on the one engine (EMA, gradient accumulation) resume exactly too
    opts = dict(FAST, epochs=3, deterministic=True, head="deeplabv3", aux=True, img_size=24, class_weights="inverse",
                dice=0.3, pretrained=str(_pretrained_backbone(tmp_path)), strategy="freeze_unfreeze", ema=True,
                accum_steps=2)
    full = fit_segmentation(data=str(seg_data), output=str(tmp_path / "full"), quiet=True, **opts)

    monkeypatch.setenv("RESNET_TUNE_DEBUG_INTERRUPT_AT", "3")  # Ctrl-C at the start of the third epoch
    with pytest.raises(KeyboardInterrupt):
        fit_segmentation(data=str(seg_data), output=str(tmp_path / "part"), quiet=True, **opts)
    assert ckpt.load_state(tmp_path / "part" / ckpt.STATE)["epoch"] == 2
    monkeypatch.delenv("RESNET_TUNE_DEBUG_INTERRUPT_AT")
    resumed = fit_segmentation(resume=tmp_path / "part", quiet=True)
    assert len(resumed.history) == 3
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in full.history]
    a, b = load_file(str(full.run_dir / "last.safetensors")), load_file(str(tmp_path / "part" / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.eval_report["mean_iou"] == full.eval_report["mean_iou"]
    assert json.loads((tmp_path / "part" / "last.json").read_text())["weights"] == "ema"


def test_pretrained_backbone_is_loaded_and_frozen_first(seg_data: Path, tmp_path: Path) -> None:
    pre = _pretrained_backbone(tmp_path)
    res = fit_segmentation(data=str(seg_data), output=str(tmp_path / "r"), quiet=True, pretrained=str(pre),
                           **dict(FAST, epochs=1))
    weights = load_file(str(res.run_dir / "last.safetensors"))
    src = load_file(str(pre))
    # the first epoch trains the head only: backbone weights and BN statistics are the pretrained ones
    for k, v in src.items():
        if not k.startswith("fc."):
            assert torch.equal(weights["backbone." + k], v), k
    assert json.loads((res.run_dir / "best.json").read_text())["strategy"] == "freeze_unfreeze"


def test_pretrained_segmentation_checkpoint_loads_whole(seg_data: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    src = create_segmenter("resnet18", 4, head="unet")
    torch.save(src.state_dict(), tmp_path / "seg.pth")  # torchvision-style: backbone.* + classifier.*
    fit_segmentation(data=str(seg_data), output=str(tmp_path / "r"), pretrained=str(tmp_path / "seg.pth"),
                     strategy="linear_probe", **dict(FAST, epochs=1))
    assert "all weights from" in capsys.readouterr().out
    weights = load_file(str(tmp_path / "r" / "last.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in src.state_dict().items() if k.startswith("backbone."))
    # a different number of classes: only the backbone is taken
    fit_segmentation(data=str(seg_data), output=str(tmp_path / "r2"), pretrained=str(tmp_path / "seg.pth"),
                     num_classes=5, **dict(FAST, epochs=1))
    assert "backbone from" in capsys.readouterr().out


def test_yaml_config_and_flags(tmp_path: Path) -> None:
    from resnet_tune.cli import build_parser
    from resnet_tune.cli.segment import _seg_config

    (tmp_path / "c.yaml").write_text("head: fcn\nimg-size: 24,32\nepochs: 7\nignore_index: 11\n")
    args = build_parser().parse_args(["segment", "train", "--config", str(tmp_path / "c.yaml"), "--epochs", "3"])
    cfg = _seg_config(args)
    assert (cfg.head, cfg.crop, cfg.epochs, cfg.ignore_index) == ("fcn", (24, 32), 3, 11)
    (tmp_path / "bad.yaml").write_text("heads: fcn\n")
    args = build_parser().parse_args(["segment", "train", "--config", str(tmp_path / "bad.yaml")])
    with pytest.raises(ConfigError, match="did you mean 'head'"):
        _seg_config(args)


def test_resume_refuses_changed_options(seg_data: Path, tmp_path: Path) -> None:
    fit_segmentation(data=str(seg_data), output=str(tmp_path / "r"), quiet=True, **dict(FAST, epochs=1))
    with pytest.raises(ConfigError, match="cannot change on resume"):
        Trainer(SegmentationTask, resume=tmp_path / "r", overrides={"lr": 0.5})
    assert main(["segment", "train", "--resume", str(tmp_path / "r")]) == 0  # finished: only the final evaluation
    with pytest.raises(ConfigError, match="already holds a training run"):
        fit_segmentation(data=str(seg_data), output=str(tmp_path / "r"), quiet=True, **dict(FAST, epochs=1))


# --- real data (opt-in) -------------------------------------------------------------------------

CAMVID = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "camvid"


@pytest.mark.slow
@pytest.mark.skipif(not CAMVID.is_dir(), reason="../shared/data/camvid is not available")
def test_camvid_smoke(tmp_path: Path) -> None:
    res = fit_segmentation(data=str(CAMVID), output=str(tmp_path / "camvid"), quiet=True, ignore_index=11,
                           limit=8, epochs=1, batch_size=4, img_size="120,160", head="unet", progress=False)
    assert res.eval_report["num_images"] == 8 and len(res.eval_report["per_class"]) == 11
    assert [r["class"] for r in res.eval_report["per_class"]][:2] == ["Sky", "Building"]


def test_freeze_at_keeps_the_backbone_stem_and_first_stage(seg_data: Path, tmp_path: Path) -> None:
    pre = _pretrained_backbone(tmp_path)
    res = fit_segmentation(data=str(seg_data), output=str(tmp_path / "r"), quiet=True, pretrained=str(pre),
                           strategy="full", freeze_at=2, **dict(FAST, epochs=1))
    weights, src = load_file(str(res.run_dir / "last.safetensors")), load_file(str(pre))
    frozen = [k for k in src if k.startswith(("conv1.", "bn1.", "layer1."))]
    assert frozen and all(torch.equal(weights["backbone." + k], src[k]) for k in frozen)
    assert not torch.equal(weights["backbone.layer2.0.conv1.weight"], src["layer2.0.conv1.weight"])
