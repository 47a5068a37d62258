"""Data discovery, image loading and the pre-training scan: every defect is found, reported and filtered."""

from __future__ import annotations

import importlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from resnet_tune.data import (
    BadImageError,
    DataSplits,
    ScanReport,
    discover,
    discover_eval,
    list_images,
    load_image,
    scan,
)
from resnet_tune.errors import DataError

scan_module = importlib.import_module("resnet_tune.data.scan")  # the package re-exports the function `scan`


# ------------------------------------------------------------------------------------------- helpers
def _rgb(path: Path, size: tuple[int, int] = (40, 40), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _noise_jpeg(path: Path, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=95)
    return path


def _make_classes(root: Path, counts: dict[str, int], size: tuple[int, int] = (36, 36)) -> None:
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _rgb(root / name / f"img_{i:03d}.png", size, (10 * i % 255, 100, 50))


def _rel(samples: list[tuple[str, int]], root: Path) -> list[tuple[str, int]]:
    return [(Path(p).relative_to(root).as_posix(), label) for p, label in samples]


# ------------------------------------------------------------------------- one fixture per defect
@pytest.fixture
def random_bytes_jpg(tmp_path: Path) -> Path:
    p = tmp_path / "bad" / "random.jpg"
    p.parent.mkdir(parents=True)
    p.write_bytes(random.Random(0).randbytes(500))
    return p


@pytest.fixture
def truncated_jpg(tmp_path: Path) -> Path:
    p = _noise_jpeg(tmp_path / "bad" / "truncated.jpg")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


@pytest.fixture
def zero_byte(tmp_path: Path) -> Path:
    p = tmp_path / "bad" / "empty.png"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")
    return p


@pytest.fixture
def gray_png(tmp_path: Path) -> Path:
    p = tmp_path / "conv" / "gray.png"
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (40, 40), 77).save(p)
    return p


@pytest.fixture
def cmyk_jpg(tmp_path: Path) -> Path:
    p = tmp_path / "conv" / "cmyk.jpg"
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(p, quality=100)  # pure red
    return p


@pytest.fixture
def rgba_png(tmp_path: Path) -> Path:
    p = tmp_path / "conv" / "rgba.png"
    p.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGBA", (40, 40), (0, 0, 255, 255))
    img.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    img.putpixel((1, 0), (0, 0, 0, 128))  # half transparent black
    img.save(p)
    return p


@pytest.fixture
def palette_png(tmp_path: Path) -> Path:
    p = tmp_path / "conv" / "palette.png"
    p.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 128, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 1)
    img.save(p, transparency=1)  # index 1 (red) is transparent
    return p


@pytest.fixture
def gray16_png(tmp_path: Path) -> Path:
    p = tmp_path / "conv" / "gray16.png"
    p.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((40, 40), 1000, dtype=np.uint16)
    arr[0, :3] = [65535, 32768, 0]
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")
    return p


@pytest.fixture
def exif6_png(tmp_path: Path) -> Path:
    """A 40x20 image stored landscape with EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    p = tmp_path / "conv" / "exif6.png"
    p.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0))  # stored top-left is red
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(p, exif=exif)
    return p


@pytest.fixture
def defect_dataset(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A class-folder dataset holding every defect, an empty class, a single-image class and imbalance."""
    root = tmp_path / "ds"
    _make_classes(root, {"big": 30, "small": 4, "single": 1})
    files: dict[str, Path] = {}
    files["broken"] = root / "emptyclass" / "broken.jpg"  # a class whose only image is unreadable
    files["broken"].parent.mkdir()
    files["broken"].write_bytes(random.Random(2).randbytes(200))
    files["random"] = root / "big" / "random.jpg"
    files["random"].write_bytes(random.Random(1).randbytes(300))
    files["truncated"] = _noise_jpeg(root / "big" / "truncated.jpg")
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:1500])
    files["zero"] = root / "small" / "zero.jpg"
    files["zero"].write_bytes(b"")
    files["text"] = root / "small" / "notes.txt"
    files["text"].write_text("not an image\n")
    files["gray"] = root / "big" / "gray.png"
    Image.new("L", (40, 40), 77).save(files["gray"])
    files["cmyk"] = root / "big" / "cmyk.jpg"
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(files["cmyk"])
    files["rgba"] = root / "big" / "rgba.png"
    Image.new("RGBA", (40, 40), (0, 0, 255, 0)).save(files["rgba"])
    files["palette"] = root / "big" / "palette.png"
    Image.new("P", (40, 40), 0).save(files["palette"])
    files["gray16"] = root / "big" / "gray16.png"
    Image.fromarray(np.full((40, 40), 65535, dtype=np.uint16)).save(files["gray16"])
    files["exif"] = root / "big" / "exif.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 36)).save(files["exif"], exif=exif)
    files["tiny"] = _rgb(root / "small" / "tiny.png", (8, 8))
    (root / ".DS_Store").write_bytes(b"junk")
    (root / "big" / "Thumbs.db").write_bytes(b"junk")
    (root / "big" / ".hidden.jpg").write_bytes(b"junk")
    return root, files


# ------------------------------------------------------------------------------------- load_image
def test_load_image_bad_files(random_bytes_jpg: Path, truncated_jpg: Path, zero_byte: Path) -> None:
    cases = {random_bytes_jpg: "not an image", truncated_jpg: "truncated image", zero_byte: "zero-byte file"}
    for path, reason in cases.items():
        with pytest.raises(DataError) as info:
            load_image(path)
        assert isinstance(info.value, BadImageError)
        assert reason in info.value.reason
        assert path.name in str(info.value) and reason in str(info.value)
    with pytest.raises(DataError, match="file not found"):
        load_image(zero_byte.parent / "missing.jpg")


def test_grayscale_cmyk_and_palette_become_rgb(gray_png: Path, cmyk_jpg: Path, palette_png: Path) -> None:
    gray = load_image(gray_png)
    assert gray.mode == "RGB" and gray.getpixel((5, 5)) == (77, 77, 77)
    red = load_image(cmyk_jpg)
    assert red.mode == "RGB"
    r, g, b = red.getpixel((5, 5))
    assert r > 240 and g < 15 and b < 15
    pal = load_image(palette_png)
    assert pal.mode == "RGB"
    assert pal.getpixel((5, 5)) == (0, 128, 0)
    assert pal.getpixel((0, 0)) == (255, 255, 255)  # the transparent index is composited on white


def test_rgba_is_composited_on_white(rgba_png: Path) -> None:
    img = load_image(rgba_png)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)  # fully transparent -> white, not black
    assert all(abs(v - 127) <= 1 for v in img.getpixel((1, 0)))  # half black over white -> mid grey
    assert img.getpixel((5, 5)) == (0, 0, 255)


def test_16_bit_is_scaled_not_clipped(gray16_png: Path) -> None:
    img = load_image(gray16_png)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)  # 65535
    assert img.getpixel((1, 0)) == (128, 128, 128)  # 32768
    assert img.getpixel((2, 0)) == (0, 0, 0)
    assert img.getpixel((5, 5)) == (4, 4, 4)  # 1000 * 255 / 65535 = 3.9, a clip would give 255


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [("I", 65535, 255), ("I", 257 * 10, 10), ("F", 0.5, 128), ("F", 1.0, 255), ("1", 1, 255), ("LA", (50, 255), 50)],
)
def test_other_modes_become_8_bit_rgb(tmp_path: Path, mode: str, value, expected: int) -> None:
    if mode == "I":
        img = Image.fromarray(np.full((4, 4), value, dtype=np.int32))
        path = tmp_path / "img.tif"
    elif mode == "F":
        img = Image.fromarray(np.full((4, 4), value, dtype=np.float32))
        path = tmp_path / "img.tif"
    else:
        img = Image.new(mode, (4, 4), value)
        path = tmp_path / "img.png"
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (expected,) * 3


def test_exif_orientation_is_applied(exif6_png: Path) -> None:
    img = load_image(exif6_png)
    assert img.size == (20, 40)  # width and height swapped
    # orientation 6: the stored image is displayed rotated 90 degrees clockwise, so its top-left pixel
    # ends up at the top-right
    assert img.getpixel((19, 0)) == (255, 0, 0)
    assert img.getpixel((0, 0)) == (0, 0, 0)
    reference = ImageOps.exif_transpose(Image.open(exif6_png)).convert("RGB")
    assert np.array_equal(np.asarray(img), np.asarray(reference))


# ------------------------------------------------------------------------------------------- scan
def test_scan_reports_every_defect(defect_dataset: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    root, files = defect_dataset
    splits = discover(root)
    samples = splits.all_samples()
    paths = {p for p, _ in samples}
    assert str(files["text"]) in paths  # a non-image file is kept for the scan to report
    assert not any(os.path.basename(p) in {".DS_Store", "Thumbs.db", ".hidden.jpg"} for p in paths)

    report = scan(samples, splits.classes, workers=2, cache_dir=tmp_path / "cache", progress=False)
    bad = {Path(p).name: reason for p, reason in report.bad.items()}
    assert bad == {
        "random.jpg": "not an image (cannot identify)",
        "truncated.jpg": "truncated image",
        "zero.jpg": "zero-byte file",
        "notes.txt": "unsupported extension .txt",
        "broken.jpg": "not an image (cannot identify)",
    }
    good = report.good(samples)
    assert len(good) == len(samples) - 5 and not {p for p, _ in good} & set(report.bad)
    assert report.ok == len(good) and report.total == len(samples)

    converted = {Path(p).name: how for p, how in report.converted.items()}
    assert converted == {
        "gray.png": "grayscale (L) converted to RGB",
        "cmyk.jpg": "CMYK converted to RGB",
        "rgba.png": "RGBA: alpha composited on white",
        "palette.png": "palette (P) converted to RGB",
        "gray16.png": "16-bit (I;16) scaled to 8-bit",
    }
    assert [Path(p).name for p in report.rotated] == ["exif.png"]
    assert report.sizes[str(files["exif"])] == (36, 40)
    assert report.max_side() == 40 and report.median_size() == (36, 36)

    # big: 30 + 6 good conversions/rotations; small: 4 + tiny; single: 1; emptyclass: 0
    assert report.class_counts == {"big": 36, "emptyclass": 0, "single": 1, "small": 5}
    text = "\n".join(report.warnings)
    assert "'emptyclass'" in text and "no usable images" in text
    assert "'single'" in text and "single image" in text
    assert "ratio 36.0:1" in text
    assert "smaller than 32 px" in text and "8x8" in text

    summary = report.summary()
    assert "5 bad" in summary and "truncated.jpg: truncated image" in summary
    assert "CMYK converted to RGB" in summary and "EXIF orientation applied to 1" in summary


def test_scan_catches_truncation_even_if_loading_truncated_images_is_on(truncated_jpg: Path, tmp_path: Path) -> None:
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        report = scan([(str(truncated_jpg), 0)], ["a", "b"], cache_dir=tmp_path / "c", progress=False)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    assert report.bad == {str(truncated_jpg): "truncated image"}


def test_scan_cache_decodes_only_changed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ds"
    _make_classes(root, {"a": 5, "b": 5})
    (root / "a" / "zero.jpg").write_bytes(b"")
    splits = discover(root)
    samples = splits.all_samples()
    decoded: list[str] = []
    real = scan_module._decode

    def counting(path: str):
        decoded.append(path)
        return real(path)

    monkeypatch.setattr(scan_module, "_decode", counting)
    cache = tmp_path / "cache"
    first = scan(samples, splits.classes, cache_dir=cache, progress=False)
    assert len(decoded) == 11 and first.cached == 0 and first.decoded == 11
    assert len(list(cache.glob("*.json"))) == 1 and not list(cache.glob("*.tmp"))

    decoded.clear()
    second = scan(samples, splits.classes, cache_dir=cache, progress=False)
    assert decoded == [] and second.cached == 11
    assert second.bad == first.bad and second.sizes == first.sizes and second.class_counts == first.class_counts

    touched = root / "b" / "img_002.png"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    decoded.clear()
    third = scan(samples, splits.classes, cache_dir=cache, progress=False)
    assert decoded == [str(touched)] and third.cached == 10

    _rgb(touched, (50, 44))  # new content and size
    decoded.clear()
    fourth = scan(samples, splits.classes, cache_dir=cache, progress=False)
    assert decoded == [str(touched)] and fourth.sizes[str(touched)] == (50, 44)


def test_scan_write_produces_json_and_bad_list(defect_dataset: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    root, files = defect_dataset
    splits = discover(root)
    report = scan(splits.all_samples(), splits.classes, cache_dir=tmp_path / "cache", progress=False)
    run = tmp_path / "run"
    report.write(run)
    data = json.loads((run / "data_scan.json").read_text())
    assert data["bad"] == report.bad and data["class_counts"] == report.class_counts
    assert len(data["sizes"]) == report.ok and data["warnings"] == report.warnings
    lines = (run / "bad_files.txt").read_text().splitlines()
    assert sorted(lines) == sorted(f"{p}\t{r}" for p, r in report.bad.items())
    assert f"{files['zero']}\tzero-byte file" in lines

    clean = ScanReport()
    clean.write(tmp_path / "run2")
    assert (tmp_path / "run2" / "bad_files.txt").read_text() == ""


# ---------------------------------------------------------------------------------------- layouts
def test_folder_layout_stratified_deterministic_split(tmp_path: Path) -> None:
    counts = {"ant": 10, "bee": 7, "cow": 2, "dog": 1}
    a, b = tmp_path / "a", tmp_path / "b"
    _make_classes(a, counts)
    for name, n in reversed(list(counts.items())):  # same files created in another order
        (b / name).mkdir(parents=True)
        for i in reversed(range(n)):
            _rgb(b / name / f"img_{i:03d}.png", (36, 36))
    sa, sb = discover(a, val_fraction=0.3, seed=3), discover(b, val_fraction=0.3, seed=3)
    assert sa.layout == "folder" and sa.classes == ["ant", "bee", "cow", "dog"] and sa.test is None
    assert _rel(sa.train, a) == _rel(sb.train, b) and _rel(sa.val, a) == _rel(sb.val, b)
    assert _rel(discover(a, val_fraction=0.3, seed=3).val, a) == _rel(sa.val, a)

    per_val = {c: sum(1 for _, lab in sa.val if lab == i) for i, c in enumerate(sa.classes)}
    per_train = {c: sum(1 for _, lab in sa.train if lab == i) for i, c in enumerate(sa.classes)}
    assert per_val == {"ant": 3, "bee": 2, "cow": 1, "dog": 0}
    assert per_train == {"ant": 7, "bee": 5, "cow": 1, "dog": 1}
    assert not {p for p, _ in sa.train} & {p for p, _ in sa.val}
    assert all(os.path.isabs(p) for p, _ in sa.train + sa.val)
    other_seed = discover(a, val_fraction=0.3, seed=4)
    assert {p for p, _ in other_seed.val} != {p for p, _ in sa.val}

    line = sa.describe()
    assert "\n" not in line and "train 14" in line and "val 6" in line and "ant" in line


def test_split_folders(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _make_classes(root / "train", {"x": 3, "y": 3})
    _make_classes(root / "valid", {"x": 1, "y": 2})
    _make_classes(root / "test", {"y": 1})
    s = discover(root)
    assert s.layout == "split-folders" and s.classes == ["x", "y"]
    assert len(s.train) == 6 and _rel(s.val, root) == [
        ("valid/x/img_000.png", 0), ("valid/y/img_000.png", 1), ("valid/y/img_001.png", 1)]
    assert _rel(s.test or [], root) == [("test/y/img_000.png", 1)]

    _make_classes(root / "valid", {"zebra": 1})
    with pytest.raises(DataError, match="'zebra'.*not in the train folder"):
        discover(root)


def test_csv_layout(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _make_classes(root / "imgs", {"cat": 4, "dog": 4})
    rows = [f"imgs/{c}/img_{i:03d}.png,{c}" for c in ("cat", "dog") for i in range(4)]
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    s = discover(root / "labels.csv", val_fraction=0.25)
    assert s.layout == "csv" and s.classes == ["cat", "dog"] and s.test is None
    assert len(s.train) == 6 and len(s.val) == 2 and {lab for _, lab in s.val} == {0, 1}
    assert all(os.path.isabs(p) and os.path.isfile(p) for p, _ in s.train)

    (root / "nohead.csv").write_text("\n".join(rows) + "\n")  # header optional
    nohead = discover(root / "nohead.csv", val_fraction=0.25)
    assert (nohead.classes, nohead.train, nohead.val) == (s.classes, s.train, s.val)

    split_rows = ["path,label,split"] + [
        f"imgs/{c}/img_{i:03d}.png,{c},{['train', 'train', 'val', 'test'][i]}" for c in ("cat", "dog") for i in range(4)]
    (root / "split.csv").write_text("\n".join(split_rows) + "\n")
    s2 = discover(root / "split.csv")
    assert (len(s2.train), len(s2.val), len(s2.test or [])) == (4, 2, 2)
    assert _rel(s2.val, root) == [("imgs/cat/img_002.png", 0), ("imgs/dog/img_002.png", 1)]

    (root / "cols.csv").write_text("picture,y\na.png,cat\n")
    with pytest.raises(DataError, match="no 'path' or 'label' column .*'picture', 'y'"):
        discover(root / "cols.csv")
    (root / "nolabel.csv").write_text("path,kind\na.png,cat\n")
    with pytest.raises(DataError, match="no 'label' column"):
        discover(root / "nolabel.csv")
    (root / "missing.csv").write_text("path,label\nimgs/cat/nope1.png,cat\nimgs/dog/nope2.png,dog\n")
    with pytest.raises(DataError, match=r"2 file\(s\) listed .* do not exist \(first: 'imgs/cat/nope1.png', "):
        discover(root / "missing.csv")


def test_discovery_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Data folder .*nowhere does not exist"):
        discover(tmp_path / "nowhere")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no class subfolders and no images"):
        discover(tmp_path / "nothing")
    _rgb(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="no class subfolders"):
        discover(tmp_path / "flat")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(DataError, match="No images were found in the class folders"):
        discover(tmp_path / "empty")
    _make_classes(tmp_path / "one", {"only": 3})
    with pytest.raises(DataError, match="only one class \\('only'\\).*need at least two classes"):
        discover(tmp_path / "one")


def test_discover_eval(tmp_path: Path) -> None:
    known = ["ant", "bee", "cow"]
    _make_classes(tmp_path / "ev", {"bee": 2, "cow": 1})
    samples = discover_eval(tmp_path / "ev", known)
    assert [(Path(p).name, lab) for p, lab in samples] == [("img_000.png", 1), ("img_001.png", 1), ("img_000.png", 2)]

    _make_classes(tmp_path / "ev", {"yak": 1})
    with pytest.raises(DataError, match="'yak'.*checkpoint does not know.*'ant', 'bee', 'cow'"):
        discover_eval(tmp_path / "ev", known)

    _make_classes(tmp_path / "sp" / "train", {"ant": 2, "bee": 2})
    _make_classes(tmp_path / "sp" / "val", {"ant": 1})
    assert {Path(p).parent.parent.name for p, _ in discover_eval(tmp_path / "sp", known)} == {"val"}
    _make_classes(tmp_path / "sp" / "test", {"bee": 1})
    assert _rel(discover_eval(tmp_path / "sp", known), tmp_path / "sp") == [("test/bee/img_000.png", 1)]


def test_list_images(tmp_path: Path) -> None:
    _rgb(tmp_path / "p" / "b.jpg")
    _rgb(tmp_path / "p" / "sub" / "a.PNG")
    (tmp_path / "p" / "readme.txt").write_text("x")
    (tmp_path / "p" / ".hidden.png").write_bytes(b"")
    single = _rgb(tmp_path / "one.webp")
    folder = list_images(tmp_path / "p")
    assert [Path(p).relative_to(tmp_path).as_posix() for p in folder] == ["p/b.jpg", "p/sub/a.PNG"]
    assert list_images(single) == [str(single)]
    assert list_images([str(single), tmp_path / "p", single]) == [str(single), *folder]
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="No images were found"):
        list_images(tmp_path / "txt")
    with pytest.raises(DataError, match="does not exist"):
        list_images(tmp_path / "missing")


def test_data_splits_describe_mentions_test() -> None:
    s = DataSplits(["a", "b"], [("x", 0)], [("y", 1)], [("z", 0)], "split-folders")
    assert s.describe() == "split-folders layout: train 1, val 1, test 1 files; 2 classes (a, b)"


@pytest.mark.parametrize("h,w,pad", [(32, 32, 4), (9, 13, 1), (40, 24, 5), (8, 8, 0)])
def test_batched_crop_flip_equals_padding_then_cropping_each_image(h: int, w: int, pad: int) -> None:
    """The one-gather crop + flip gives exactly what reflect padding, cropping and flipping image by image give,
    and channels_last output when asked for it."""
    import torch

    from resnet_tune.data.loaders import crop_flip, draw_crop_flip
    from resnet_tune.data.transforms import normalize_batch

    x = torch.randint(0, 256, (12, 3, h, w), dtype=torch.uint8)
    dy, dx, mask = draw_crop_flip(12, pad, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x.float(), (pad,) * 4, mode="reflect").to(torch.uint8) if pad else x
    expected = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(12)])
    expected = torch.where(mask[:, None, None, None], expected.flip(3), expected)
    out = crop_flip(x, pad, dy, dx, mask)
    assert torch.equal(out, expected)
    assert bool(mask.any()) and not bool(mask.all())  # both branches taken
    # picking the batch out of a larger stored set in the same gather, from either layout, changes nothing
    store = torch.randint(0, 256, (20, 3, h, w), dtype=torch.uint8)
    pick = torch.randperm(20)[:12]
    store[pick] = x
    for layout in (torch.contiguous_format, torch.channels_last):
        assert torch.equal(crop_flip(store.contiguous(memory_format=layout), pad, dy, dx, mask, index=pick),
                           expected)
    # normalisation keeps the layout and the arithmetic of (x / 255 - mean) / std
    norm = normalize_batch(out.contiguous(memory_format=torch.channels_last), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    assert norm.is_contiguous(memory_format=torch.channels_last)
    m = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    s = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    assert torch.equal(norm, (expected.float() / 255.0 - m) / s)


@pytest.mark.parametrize("translate,reach", [(None, 4), (2, 2), (0, 0)])
def test_translate_sets_how_far_the_training_crop_moves(translate: int | None, reach: int) -> None:
    """Every training image of the in-memory loader is its stored image moved by at most ``reach`` pixels each
    way (reflect-padded), flipped or not, and the full reach is used; a reach the image cannot have is refused."""
    import torch

    from resnet_tune.data.loaders import MemoryLoader
    from resnet_tune.errors import ConfigError

    n, side = 64, 32
    x = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8)
    loader = MemoryLoader(x, torch.arange(n), n, train=True, mean=(0.0,) * 3, std=(1 / 255,) * 3,
                          translate=translate)
    batch, labels = next(iter(loader))
    big = 4  # every shift up to the default's reach is tried, so a wrong reach is found
    padded = torch.nn.functional.pad(x.float(), (big,) * 4, mode="reflect")
    shifts = []
    for img, i in zip(batch, labels):
        found = [(dy, dx) for dy in range(-big, big + 1) for dx in range(-big, big + 1)
                 for view in (img, img.flip(2))
                 if torch.allclose(view, padded[i, :, big + dy:big + dy + side, big + dx:big + dx + side],
                                   atol=1e-3)]
        assert found, "a training image is not a shifted (and maybe flipped) copy of its stored image"
        shifts.append(min(max(abs(dy), abs(dx)) for dy, dx in found))
    assert max(shifts) == reach
    # DataLoader workers translate small images by the same reach
    from torchvision.transforms import v2

    from resnet_tune.data.transforms import Preprocessing, train_transform

    crops = [t for t in train_transform(Preprocessing.for_size(side, (0.5,) * 3, (0.25,) * 3),
                                        translate=translate).transforms if isinstance(t, v2.RandomCrop)]
    assert len(crops) == 1 and list(crops[0].padding or [0] * 4) == [reach] * 4
    with pytest.raises(ConfigError, match="--translate 32 must be at least 0 and smaller than the 32 px input"):
        MemoryLoader(x, torch.arange(n), 8, train=True, mean=(0.0,) * 3, std=(1.0,) * 3, translate=32)


def test_resized_crop_takes_each_box_as_torchvision_resized_crop_does() -> None:
    """The batched random resized crop equals torchvision's ``resized_crop`` (bilinear, no antialias) image by
    image; a box on whole pixels at the stored scale is those pixels, flipped where the mask says."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    from resnet_tune.data.loaders import resized_crop

    x = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    unit = dict(mean=(0.0,) * 3, std=(1 / 255,) * 3)  # normalisation that keeps the pixel values
    # whole pixels: rows 10..29, columns 4..23 at size 20 (x0, y0, w, h in fractions of the side)
    box = torch.tensor([[4 / 40, 10 / 40, 20 / 40, 20 / 40]]).expand(4, 4)
    mask = torch.tensor([True, False, True, False])
    out = resized_crop(x, box, mask, 20, **unit)
    crop = x[:, :, 10:30, 4:24].float()
    assert torch.allclose(out, torch.where(mask[:, None, None, None], crop.flip(3), crop), atol=1e-3)
    # any box on whole pixels, resized: torchvision's bilinear resize of the crop, away from the crop's edge (there
    # torchvision clamps to the crop and grid_sample reads the neighbouring pixel of the image)
    boxes = torch.tensor([[0, 0, 1, 1], [0.1, 0.25, 0.5, 0.75], [0.5, 0.3, 0.5, 0.4], [0.2, 0.2, 0.3, 0.3]])
    out = resized_crop(x, boxes, None, 24, **unit)
    for img, (x0, y0, w, h), got in zip(x, boxes.tolist(), out):
        ref = TF.resized_crop(img.float(), round(y0 * 40), round(x0 * 40), round(h * 40), round(w * 40), [24, 24],
                              antialias=False)
        assert torch.allclose(got[:, 2:-2, 2:-2], ref[:, 2:-2, 2:-2], atol=1e-2)
    # a flipped box is the mirror image of the unflipped one
    flipped = resized_crop(x, boxes, torch.ones(4, dtype=torch.bool), 24, **unit)
    assert torch.allclose(flipped, out.flip(3), atol=1e-3)
    # the layout asked for, with the same values
    cl = resized_crop(x, boxes, None, 24, channels_last=True, **unit)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, out)


def test_random_resized_crops_in_memory_cover_the_asked_share_of_the_image() -> None:
    """``draw_resized_crop`` keeps every box inside the image with an area of at least ``min`` of it and ratios
    within 3/4..4/3, narrowed where the area would not fit; the in-memory loader with ``scale`` yields ``size`` batches whose
    flips and boxes follow the seed, and its batches without augmentation are the centre crop, as evaluation's."""
    import torch

    from resnet_tune.data.loaders import MemoryLoader, draw_resized_crop

    boxes, mask = draw_resized_crop(20_000, (0.35, 1.0), torch.Generator().manual_seed(0))
    x0, y0, w, h = boxes.unbind(1)
    assert bool((x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 1 + 1e-6).all() and (y0 + h <= 1 + 1e-6).all())
    area = w * h
    uncut = (w < 1) & (h < 1)
    assert bool(uncut.all()) and float(area.min()) >= 0.35 - 1e-5 and float(area.max()) <= 1 + 1e-6
    assert float((w / h).min()) >= 0.75 - 1e-5 and float((w / h).max()) <= 4 / 3 + 1e-5
    assert 0.45 < float(mask.float().mean()) < 0.55 and 0.5 < float(area.mean()) < 0.7
    for low in (0.8, 0.95, 1.0):  # where not every ratio fits, the ratio is narrowed, not the area
        boxes, _ = draw_resized_crop(5_000, (low, 1.0), torch.Generator().manual_seed(1))
        x0, y0, w, h = boxes.unbind(1)
        assert float((w * h).min()) >= low - 1e-5 and float((x0 + w).max()) <= 1 + 1e-6
        assert float((y0 + h).max()) <= 1 + 1e-6
    whole, _ = draw_resized_crop(10, (1.0, 1.0), torch.Generator().manual_seed(2))
    assert torch.allclose(whole, torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(10, 4), atol=1e-5)

    n, side, size = 16, 24, 20
    x = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8)
    kw = dict(train=True, mean=(0.0,) * 3, std=(1 / 255,) * 3, scale=(0.35, 1.0), size=size, seed=1)
    a, b = (next(iter(MemoryLoader(x, torch.arange(n), 8, **kw))) for _ in range(2))
    assert a[0].shape == (8, 3, size, size) and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    other = next(iter(MemoryLoader(x, torch.arange(n), 8, **{**kw, "seed": 2})))
    assert not torch.equal(other[0], a[0])
    plain, labels = next(iter(MemoryLoader(x, torch.arange(n), 8, augment=False, **kw)))
    assert torch.allclose(plain, x[labels][:, :, 2:22, 2:22].float(), atol=1e-3)
    with pytest.raises(ValueError, match="needs scale"):
        MemoryLoader(x, torch.arange(n), 8, train=True, mean=(0.0,) * 3, std=(1.0,) * 3, size=size)
    with pytest.raises(ValueError, match="0 < min <= max <= 1"):
        MemoryLoader(x, torch.arange(n), 8, **{**kw, "scale": (0.0, 1.0)})


# ------------------------------------------------------------------------- links, duplicates, empty classes
def _true_class(path: str, root: Path) -> str:
    """The class folder a file really lives in (links resolved)."""
    return Path(os.path.realpath(path)).relative_to(root.resolve()).parts[-2]


def test_symlink_loop_does_not_mislabel(tmp_path: Path) -> None:
    """`ln -s .. photos/cat/loop` used to put every image of every class under 'cat', in both splits."""
    root = tmp_path / "photos"
    _make_classes(root, {"cat": 10, "dog": 10})
    before = discover(root)
    os.symlink("..", root / "cat" / "loop")
    after = discover(root)
    assert after.train == before.train and after.val == before.val
    assert len(after.notes) == 1 and "loop" in after.notes[0] and str(root / "cat" / "loop") in after.notes[0]
    for p, label in after.train + after.val:
        assert after.classes[label] == _true_class(p, root)
    assert not {p for p, _ in after.train} & {p for p, _ in after.val}
    assert len(list_images(root)) == 20  # prediction folders too: each image once, no endless walk


def test_links_into_another_class_are_not_followed_and_files_are_counted_once(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _make_classes(root, {"cat": 4, "dog": 4})
    os.symlink(root / "dog", root / "cat" / "dogs")  # a folder link into a sibling class: not followed
    os.symlink("img_000.png", root / "cat" / "again.png")  # the same file twice in one class: once
    splits = discover(root, val_fraction=0.25)
    assert sorted(_true_class(p, root) for p, _ in splits.all_samples()) == ["cat"] * 4 + ["dog"] * 4
    text = " ".join(splits.notes)
    assert "belongs to another folder" in text and "appear twice under the same class" in text

    elsewhere = _rgb(tmp_path / "outside" / "x.png")  # links out of the dataset are followed as usual
    os.symlink(elsewhere.parent, root / "dog" / "more")
    assert len(discover(root).all_samples()) == 9


def test_one_file_under_two_classes_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _make_classes(root, {"cat": 3, "dog": 3})
    os.symlink(root / "dog" / "img_001.png", root / "cat" / "x.png")
    with pytest.raises(DataError, match=r"1 file\(s\) .* appear under two classes .*'cat'.*'dog'.* only one class"):
        discover(root)
    (root / "labels.csv").write_text("path,label\ndog/img_000.png,dog\ndog/img_000.png,cat\ncat/img_000.png,cat\n")
    with pytest.raises(DataError, match="appear under two classes"):
        discover(root / "labels.csv")


def test_a_file_in_train_and_val_is_evaluated_only_if_not_trained_on(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _make_classes(root / "train", {"a": 3, "b": 3})
    _make_classes(root / "val", {"a": 1, "b": 1})
    os.symlink(root / "train" / "a" / "img_002.png", root / "val" / "a" / "leak.png")
    splits = discover(root)
    assert len(splits.train) == 6 and len(splits.val) == 2
    assert not any(p.endswith("leak.png") for p, _ in splits.val)
    assert any("also in the train split" in n for n in splits.notes)
    os.symlink(root / "val" / "b", root / "train" / "a" / "valb")  # a link from train into val: not followed
    assert len(discover(root).train) == 6


def test_empty_class_folder_is_an_error_that_names_it(tmp_path: Path) -> None:
    """One behaviour, as torchvision's ImageFolder: an empty class folder stops discovery with its name."""
    root = tmp_path / "photos"
    _make_classes(root, {"cat": 3, "dog": 3})
    (root / "bird").mkdir()
    (root / "bird" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"Class folder\(s\) 'bird' in .* hold no images; add images to them or "
                                        r"delete the empty folder"):
        discover(root)
    _make_classes(tmp_path / "split" / "train", {"cat": 2, "dog": 2})
    (tmp_path / "split" / "train" / "fish").mkdir()
    with pytest.raises(DataError, match="'fish'"):
        discover(tmp_path / "split")


def test_segmentation_pairs_follow_links_without_loops(tmp_path: Path) -> None:
    from resnet_tune.tasks.segmentation.data import discover_pairs

    root = tmp_path / "seg"
    for i in range(4):
        _rgb(root / "images" / f"{i}.png", (16, 16))
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / f"{i}.png")
    os.symlink("..", root / "images" / "loop")
    os.symlink(root / "masks", root / "images" / "masks_link")  # images must not pick up the masks
    splits = discover_pairs(root, val_fraction=0.25)
    images = [p.image for p in splits.all_pairs()]
    assert len(images) == 4 and len(set(images)) == 4
    assert all(p.mask is not None for p in splits.all_pairs())
    assert any("loop" in n for n in splits.notes)


def test_segmentation_pairs_from_a_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from resnet_tune.tasks.segmentation.data import discover_pairs

    for i in range(3):
        _rgb(tmp_path / "seg" / "images" / f"{i}.png", (16, 16))
        (tmp_path / "seg" / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "seg" / "masks" / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    splits = discover_pairs("seg", val_fraction=0.34)
    assert len(splits.all_pairs()) == 3 and all(p.mask for p in splits.all_pairs())



def test_alternating_flips_show_each_image_both_ways_every_two_epochs() -> None:
    """``flip="alternate"`` (airbench): a coin an image drawn once from the seed, followed in even epochs and
    reversed in odd ones; random flips draw a coin every epoch. Unknown modes are refused."""
    import torch

    from resnet_tune.data.loaders import MemoryLoader

    n, side = 256, 8
    x = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8)

    def flipped(flip: str, epoch: int, seed: int = 0) -> torch.Tensor:
        loader = MemoryLoader(x, torch.arange(n), 32, train=True, mean=(0.0,) * 3, std=(1 / 255,) * 3,
                              translate=0, flip=flip, seed=seed)
        loader.set_epoch(epoch)
        out = torch.zeros(n, dtype=torch.bool)
        for batch, idx in loader:
            for img, i in zip(batch, idx):
                mirror = torch.allclose(img, x[i].flip(-1).float(), atol=1e-3)
                assert mirror or torch.allclose(img, x[i].float(), atol=1e-3)
                out[i] = mirror
        return out

    alt = [flipped("alternate", e) for e in range(3)]
    assert 0.35 < alt[0].float().mean() < 0.65
    assert torch.equal(alt[1], ~alt[0]) and torch.equal(alt[2], alt[0])
    assert not torch.equal(flipped("alternate", 0, seed=1), alt[0])  # the coins come from the seed
    rnd = [flipped("random", e) for e in range(2)]
    assert 0.35 < (rnd[0] ^ rnd[1]).float().mean() < 0.65  # a fresh coin each epoch
    with pytest.raises(ValueError, match="flip='sometimes'; choose one of random, alternate"):
        MemoryLoader(x, torch.arange(n), 32, train=True, mean=(0.0,) * 3, std=(1.0,) * 3, flip="sometimes")
