"""Segmentation data: image/mask pairs, class tables, mask decoding, the scan and the datasets.

Layouts understood by :func:`discover_pairs`:

``split folders``
    ``DIR/train/images/x.jpg`` with ``DIR/train/masks/x.png`` (and ``val``/``valid``/``validation``,
    ``test``); without a val split, a seeded share of train is held out.
``one folder``
    ``DIR/images`` + ``DIR/masks``: split into train/val with a fixed seed.

Images and masks are paired by their path inside ``images/`` and ``masks/`` without the extension
(``masks/x_mask.png``, ``x_L.png``, ``x_label.png`` ... are accepted for ``images/x.jpg`` too).
Masks are class-index PNGs (8- or 16-bit grayscale, or palette PNGs whose indices are the classes),
or colour images decoded with a class table giving each class's colour.

Class table (``--classes FILE``, else ``classes.txt``, ``classes.csv``, ``class_dict.csv`` or
``labels.txt`` in ``DIR``): one class per line, as ``name``, ``id name``, ``name r g b``,
``id name r g b`` (tab, comma or space separated), or a CSV with a header naming ``name`` (or
``class``), ``r``, ``g``, ``b`` and optionally ``id``. Without an id the line number is the id.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile

from ...data.datasets import is_image_file
from ...data.files import FolderWalker, real_path
from ...data.images import BadImageError, decode_image, pillow_reason, size_problem
from ...data.scan import ScanReport
from ...errors import DataError

__all__ = ["ClassTable", "Pair", "SegData", "SegDataset", "SegSplits", "decode_mask", "default_palette",
           "discover_pairs", "discover_eval_pairs", "read_class_table", "scan_pairs"]

IMAGE_DIRS = ("images", "image", "imgs", "img")
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "gt", "groundtruth")
MASK_SUFFIXES = ("", "_mask", "_masks", "_L", "_label", "_labels", "_gt", "_seg", "_segmentation")
CLASS_FILES = ("classes.txt", "classes.csv", "class_dict.csv", "labels.txt")
_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
#: Colour of ignored pixels in colour-coded masks (PASCAL VOC's border colour).
IGNORE_COLOUR = (224, 224, 192)


@dataclass
class Pair:
    """An image and its mask (``mask`` None when none was found)."""

    image: str
    mask: str | None

    @property
    def name(self) -> str:
        return Path(self.image).stem


# ------------------------------------------------------------------------------------ class tables
@dataclass
class ClassTable:
    """Class names by id and, when the table gives them, colours by id."""

    names: dict[int, str]
    colours: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    path: str = ""

    def colour_lut(self) -> dict[int, int] | None:
        """Packed colour (r << 16 | g << 8 | b) -> class id, for colour masks; None without colours."""
        if not self.colours:
            return None
        return {(r << 16) | (g << 8) | b: i for i, (r, g, b) in self.colours.items()}


def _int(s: str) -> int | None:
    try:
        return int(s.strip())
    except ValueError:
        return None


def _split_line(line: str) -> list[str]:
    for sep in ("\t", ",", ";"):
        if sep in line:
            return [t.strip() for t in line.split(sep) if t.strip()]
    return line.split()


def read_class_table(path: str | os.PathLike[str]) -> ClassTable:
    """Read a class table (see the module docstring); raises :class:`DataError` on a malformed one."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"class table {p} does not exist; check the --classes path.")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the class table {p} ({e}); it must be a UTF-8 text file.") from None
    rows = [_split_line(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise DataError(f"class table {p} is empty; list one class per line.")
    header = [c.lower() for c in rows[0]]
    names: dict[int, str] = {}
    colours: dict[int, tuple[int, int, int]] = {}
    if any(h in ("name", "class", "class_name", "label") for h in header) and len(rows[0]) > 1 or header == ["name"]:
        col = {h: i for i, h in enumerate(header)}
        ni = next(col[h] for h in ("name", "class", "class_name", "label") if h in col)
        ii = next((col[h] for h in ("id", "index", "idx", "value") if h in col), None)
        rgb = [next((col[h] for h in keys if h in col), None) for keys in (("r", "red"), ("g", "green"), ("b", "blue"))]
        for line, row in enumerate(rows[1:], start=2):
            try:
                cid = int(row[ii]) if ii is not None else line - 2
                names[cid] = row[ni]
                if all(c is not None for c in rgb):
                    colours[cid] = tuple(int(row[c]) for c in rgb)  # type: ignore[index, assignment]
            except (IndexError, ValueError):
                raise DataError(f"line {line} of the class table {p} is malformed ({', '.join(row)}); give "
                                f"{', '.join(rows[0])} on every line.") from None
    else:
        for line, row in enumerate(rows, start=1):
            cid = line - 1
            tokens = list(row)
            if len(tokens) >= 2 and _int(tokens[0]) is not None:
                cid = int(tokens.pop(0))
            if len(tokens) >= 4 and all(_int(t) is not None for t in tokens[-3:]):
                colours[cid] = tuple(int(t) for t in tokens[-3:])  # type: ignore[assignment]
                tokens = tokens[:-3]
            if not tokens:
                raise DataError(f"line {line} of the class table {p} has no class name; write `name` or `id name` "
                                "(optionally followed by r g b).")
            names[cid] = " ".join(tokens)
    if any(i < 0 for i in names):
        raise DataError(f"class table {p} has a negative class id; ids start at 0.")
    bad = [i for i, c in colours.items() if not all(0 <= v <= 255 for v in c)]
    if bad:
        raise DataError(f"class table {p} gives class {bad[0]} a colour outside 0-255.")
    if colours and len(colours) != len(names):
        raise DataError(f"class table {p} gives colours for {len(colours)} of its {len(names)} classes; give every "
                        "class a colour or none.")
    if len(set(colours.values())) != len(colours):
        raise DataError(f"class table {p} gives two classes the same colour; colours must be distinct.")
    return ClassTable(names, colours, str(p))


def find_class_table(root: str | os.PathLike[str]) -> Path | None:
    root = Path(root)
    if root.is_file():
        return None
    for name in CLASS_FILES:
        if (root / name).is_file():
            return root / name
    return None


def default_palette(n: int = 256) -> np.ndarray:
    """PASCAL VOC's colour map: (n, 3) uint8, class 0 black, then distinct colours by bit interleaving."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


# --------------------------------------------------------------------------------------- discovery
@dataclass
class SegSplits:
    train: list[Pair]
    val: list[Pair]
    test: list[Pair] | None
    root: str
    layout: str
    orphan_masks: list[str] = field(default_factory=list)  # masks without an image
    notes: list[str] = field(default_factory=list)

    def all_pairs(self) -> list[Pair]:
        return [*self.train, *self.val, *(self.test or [])]

    def describe(self) -> str:
        parts = [f"train {len(self.train)}", f"val {len(self.val)}"]
        if self.test is not None:
            parts.append(f"test {len(self.test)}")
        return f"{self.layout}: {', '.join(parts)} images"


def _child(folder: Path, names: Sequence[str]) -> Path | None:
    if not folder.is_dir():
        return None
    by_lower = {e.name.lower(): e for e in folder.iterdir() if e.is_dir()}
    for n in names:
        if n in by_lower:
            return Path(by_lower[n])
    return None


def _pair_folder(images: Path, masks: Path | None, walker: FolderWalker) -> tuple[list[Pair], list[str]]:
    """Pair each image under ``images`` with the mask of the same relative stem under ``masks``."""
    # os.path.abspath, not Path.absolute: it also folds "..", as the walker does, so relative_to matches
    images = Path(os.path.abspath(images))
    masks = Path(os.path.abspath(masks)) if masks is not None else None
    mask_files = [Path(m) for m in walker.files(masks) if is_image_file(m)] if masks is not None else []
    by_key = {str(m.relative_to(masks).with_suffix("")): m for m in mask_files} if masks is not None else {}
    used: set[str] = set()
    pairs = []
    for img in map(Path, walker.files(images)):
        key = str(img.relative_to(images).with_suffix(""))
        mask = None
        for suffix in MASK_SUFFIXES:
            if key + suffix in by_key:
                mask = by_key[key + suffix]
                used.add(key + suffix)
                break
        pairs.append(Pair(str(img.resolve()), str(mask.resolve()) if mask else None))
    orphans = [str(m) for k, m in by_key.items() if k not in used]
    return pairs, orphans


def _pair_walker(*folders: Path) -> FolderWalker:
    """A walker that keeps the images and masks folders of ``folders`` (split folders or the root) apart."""
    owned = [sub for f in folders for sub in (_child(f, IMAGE_DIRS), _child(f, MASK_DIRS)) if sub is not None]
    return FolderWalker(owned)


def _unique_pairs(splits: dict[str, list[Pair]]) -> list[str]:
    """Keep each image once, in its first split in the order train, val, test; returns what was dropped."""
    seen: set[str] = set()
    dropped: dict[str, int] = {}
    for name in ("train", "val", "test"):
        kept = []
        for pair in splits.get(name) or []:
            key = real_path(pair.image)
            if key in seen:
                dropped[name] = dropped.get(name, 0) + 1
                continue
            seen.add(key)
            kept.append(pair)
        if name in splits and splits[name] is not None:
            splits[name] = kept
    return [f"{n} image(s) of the {name} split are listed twice or also in an earlier split; each is used once, "
            "in the first split it appears in" for name, n in dropped.items()]


def _seeded_split(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    order = sorted(pairs, key=lambda p: p.image)
    random.Random(f"{seed}/segment").shuffle(order)
    n_val = min(max(1, round(len(order) * val_fraction)), len(order) - 1) if len(order) >= 2 else 0
    val, train = order[:n_val], order[n_val:]
    return sorted(train, key=lambda p: p.image), sorted(val, key=lambda p: p.image)


def _layout_error(root: Path) -> DataError:
    return DataError(f"data folder {root} has neither images/ and masks/ folders nor train/images and train/masks; "
                     "put the images in DIR/train/images and their masks (same file names, .png) in "
                     "DIR/train/masks.")


def discover_pairs(data: str | os.PathLike[str], *, val_fraction: float = 0.2, seed: int = 0) -> SegSplits:
    """Find the image/mask pairs of each split (see the module docstring)."""
    root = Path(data).expanduser()
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; check the --data path.")
    if not root.is_dir():
        raise DataError(f"--data {root} is not a folder; pass a folder with images/ and masks/ (or train/images and "
                        "train/masks).")
    splits: dict[str, Path] = {}
    for e in sorted(root.iterdir()):
        s = _SPLITS.get(e.name.lower())
        if e.is_dir() and s is not None and _child(e, IMAGE_DIRS) is not None:
            if s in splits:
                raise DataError(f"data folder {root} has two {s} folders ({splits[s].name!r} and {e.name!r}); keep "
                                "only one of them.")
            splits[s] = e
    orphans: list[str] = []
    notes: list[str] = []
    walker = _pair_walker(*(list(splits.values()) or [root]))

    def pairs_of(folder: Path) -> list[Pair]:
        images = _child(folder, IMAGE_DIRS)
        assert images is not None
        masks = _child(folder, MASK_DIRS)
        if masks is None:
            raise DataError(f"{folder} has an images folder but no masks folder; put each image's mask (same file "
                            f"name, .png) in {folder / 'masks'}.")
        found, orphan = _pair_folder(images, masks, walker)
        orphans.extend(orphan)
        return found

    if splits:
        if "train" not in splits:
            raise DataError(f"data folder {root} has {' and '.join(sorted(splits))} folder(s) but no train folder; "
                            f"add {root}/train/images and {root}/train/masks.")
        train = pairs_of(splits["train"])
        val = pairs_of(splits["val"]) if "val" in splits else None
        test = None
        if "test" in splits and _child(splits["test"], MASK_DIRS) is None:
            notes.append(f"the test folder {splits['test']} has no masks folder, so it is not used")
        elif "test" in splits:
            test = pairs_of(splits["test"])
        found = {"train": train, "val": val, "test": test}
        notes += _unique_pairs(found)
        train, val, test = found["train"], found["val"], found["test"]
        if val is not None:
            layout = "split folders"
        else:
            train, val = _seeded_split(train, val_fraction, seed)
            layout = f"split folders, {val_fraction:.0%} of train held out for validation (seed {seed})"
    elif _child(root, IMAGE_DIRS) is not None:
        found = {"train": pairs_of(root)}
        notes += _unique_pairs(found)
        train, val = _seeded_split(found["train"], val_fraction, seed)
        test = None
        layout = f"images/ + masks/, {val_fraction:.0%} held out for validation (seed {seed})"
    else:
        raise _layout_error(root)
    if not train:
        raise DataError(f"no training images were found in {root}; put them in {root}/train/images.")
    return SegSplits(train, val, test, str(root), layout, orphans, walker.notes + notes)


def discover_eval_pairs(data: str | os.PathLike[str]) -> tuple[list[Pair], str]:
    """The pairs to evaluate on: the test split, else val, else ``DIR/images`` + ``DIR/masks``."""
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder; pass a folder with images/ and "
                        "masks/ or a split layout.")
    for names, label in ((("test",), "test"), (("val", "valid", "validation"), "val")):
        folder = _child(root, names)
        if folder is not None and _child(folder, IMAGE_DIRS) is not None:
            masks = _child(folder, MASK_DIRS)
            if masks is None:
                raise DataError(f"{folder} has no masks folder; evaluation needs ground-truth masks.")
            pairs = _pair_folder(_child(folder, IMAGE_DIRS), masks, _pair_walker(folder))[0]  # type: ignore[arg-type]
            return _unique(pairs), label
    images = _child(root, IMAGE_DIRS)
    if images is None:
        raise _layout_error(root)
    masks = _child(root, MASK_DIRS)
    if masks is None:
        raise DataError(f"{root} has no masks folder; evaluation needs ground-truth masks in {root / 'masks'}.")
    return _unique(_pair_folder(images, masks, _pair_walker(root))[0]), "all"


def _unique(pairs: list[Pair]) -> list[Pair]:
    found = {"test": pairs}
    _unique_pairs(found)
    return found["test"]


# ----------------------------------------------------------------------------------------- masks
class BadMaskError(DataError):
    """A file that cannot be used as a mask; ``reason`` is a short phrase such as ``'truncated file'``."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"cannot use mask {path}: {reason}.")


def _fmt_values(values: Sequence[int], limit: int = 6) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def decode_mask(path: str, colour_lut: dict[int, int] | None = None) -> np.ndarray:
    """A mask file as a (H, W) integer array of class ids (uint8 when they fit, else int32).

    Grayscale (8/16-bit) and palette PNGs hold the ids themselves; colour (RGB) masks are mapped
    through ``colour_lut`` (packed colour -> id), and a grayscale image stored as RGB (R = G = B)
    is read as ids. Raises :class:`BadMaskError` with a short reason.
    """
    try:
        with Image.open(path) as img:
            problem = size_problem(img)  # decompression bombs and empty images, from the header
            if problem:
                raise BadMaskError(path, problem)
            img.load()
            mode = img.mode
            if mode in ("P", "L", "1"):
                arr = np.asarray(img).astype(np.uint8)
            elif mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img).astype(np.int64)
                if arr.min() < 0:
                    raise BadMaskError(path, "it has negative values")
                arr = arr.astype(np.uint8) if arr.max() < 256 else arr.astype(np.int32)
            elif mode in ("LA", "PA"):
                arr = np.asarray(img)[..., 0].astype(np.uint8)
            elif mode in ("RGB", "RGBA", "RGBX"):
                rgb = np.asarray(img.convert("RGB")).astype(np.int32)
                if colour_lut is not None:
                    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
                    keys = np.array(sorted(colour_lut), dtype=np.int64)
                    ids = np.array([colour_lut[k] for k in keys], dtype=np.int32)
                    pos = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
                    known = keys[pos] == packed
                    if not known.all():
                        unknown = np.unique(packed[~known])
                        cols = [f"({v >> 16},{(v >> 8) & 255},{v & 255})" for v in unknown.tolist()]
                        raise BadMaskError(path, f"colour(s) {_fmt_values(cols, 4)} are not in the class table")
                    arr = ids[pos]
                    arr = arr.astype(np.uint8) if arr.max(initial=0) < 256 else arr
                elif (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                    arr = rgb[..., 0].astype(np.uint8)
                else:
                    raise BadMaskError(path, "it is a colour image and no class table with colours was given "
                                             "(add classes.csv with name,r,g,b)")
            else:
                raise BadMaskError(path, f"its image mode {mode} is not a class-index or colour mask")
    except BadMaskError:
        raise
    except FileNotFoundError:
        raise BadMaskError(path, "file not found") from None
    except Exception as e:  # untrusted bytes: Pillow raises more than OSError (a TypeError on a malformed tile
        # offset was found by the slow fuzz profile), as load_image handles them; see pillow_reason
        reason = pillow_reason(e)
        raise BadMaskError(path, "truncated file" if reason == "truncated image" else reason) from None
    return np.ascontiguousarray(arr)


# ------------------------------------------------------------------------------------------ scan
@dataclass
class SegData:
    """The result of :func:`scan_pairs`: what is usable, and (in memory mode) the decoded arrays."""

    report: ScanReport
    good: list[Pair]
    num_classes: int
    class_names: list[str]
    colours: list[tuple[int, int, int]]
    pixel_counts: dict[str, np.ndarray]  # per image path: pixels per class id (length num_classes)
    images: dict[str, np.ndarray] = field(default_factory=dict)  # path -> (H, W, 3) uint8, in memory mode
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # path -> (H, W) class ids
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (H, W)

    def split(self, pairs: Sequence[Pair] | None) -> list[Pair]:
        if not pairs:
            return []
        ok = {p.image for p in self.good}
        return [p for p in pairs if p.image in ok]

    def counts(self, pairs: Sequence[Pair]) -> np.ndarray:
        total = np.zeros(self.num_classes, dtype=np.int64)
        for p in pairs:
            total += self.pixel_counts[p.image]
        return total


def _decode_pair(pair: Pair, lut: dict[int, int] | None, keep: bool) -> dict[str, Any]:
    """Decode one pair; a dict with either ``reason`` or the sizes, label histogram and arrays."""
    try:
        img, info = decode_image(pair.image)
    except BadImageError as e:
        return {"reason": f"image: {e.reason}"}
    if pair.mask is None:
        return {"reason": "no mask (expected one with the same name in the masks folder)"}
    try:
        mask = decode_mask(pair.mask, lut)
    except BadMaskError as e:
        return {"reason": f"mask: {e.reason}"}
    w, h = info.size
    if mask.shape != (h, w):
        return {"reason": f"size mismatch: the image is {w}x{h} but the mask is {mask.shape[1]}x{mask.shape[0]}"}
    values, counts = np.unique(mask, return_counts=True)
    out: dict[str, Any] = {"size": (h, w), "values": values.astype(np.int64), "counts": counts.astype(np.int64),
                           "conversion": info.conversion, "rotated": info.rotated}
    if keep:
        out["image"] = np.array(img, dtype=np.uint8)
        out["mask"] = mask
    return out


def estimate_bytes(pairs: Sequence[Pair]) -> int:
    """Bytes the decoded images and masks would take (from the image headers, nothing decoded)."""
    total = 0
    for p in pairs:
        try:
            with Image.open(p.image) as im:
                w, h = im.size
        except Exception:
            continue
        total += w * h * 4
    return total


def scan_pairs(pairs: Sequence[Pair], *, class_table: ClassTable | None = None, num_classes: int | None = None,
               ignore_index: int = 255, keep: bool = False, workers: int | None = None,
               progress: bool = False, for_training: bool = True) -> SegData:
    """Decode every image and mask once; report and drop bad pairs; settle the classes.

    Bad pairs (reported, one sentence each, and skipped): unreadable images or masks, missing masks,
    masks whose size differs from the image's, colours missing from the class table, and label
    values that are neither a class nor ``ignore_index``.

    The number of classes is ``num_classes`` when given, else the class table's largest id + 1
    (the ignore index excluded), else the largest label in the masks + 1.
    """
    start = time.perf_counter()
    lut = class_table.colour_lut() if class_table else None
    report = ScanReport()
    paths = [p.image for p in pairs]
    try:
        report.root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0]) if paths else ""
    except ValueError:
        report.root = ""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with ThreadPoolExecutor(max(1, min(workers or os.cpu_count() or 1, 8))) as pool:
            it = pool.map(lambda p: _decode_pair(p, lut, keep), pairs)
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(it, total=len(pairs), desc="scan", unit="pair", leave=False)
            results = list(it)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    report.decoded = len(pairs)

    if num_classes is None and class_table is not None:
        ids = [i for i in class_table.names if i != ignore_index]
        num_classes = max(ids) + 1 if ids else None
    if num_classes is None:
        seen = [int(v) for r in results if "values" in r for v in r["values"].tolist() if v != ignore_index]
        if not seen:
            raise DataError("no usable mask has a labelled pixel (every pixel is the ignore index or every pair is "
                            "bad); check the masks and --ignore-index.")
        num_classes = max(seen) + 1
    if num_classes > 256:
        raise DataError(f"there are {num_classes} class ids (up to {num_classes - 1}); at most 256 classes are "
                        "supported (is --ignore-index right?).")

    data = SegData(report, [], num_classes, [], [], {})
    for pair, r in zip(pairs, results):
        if "reason" not in r:
            vals = r["values"]
            unknown = [int(v) for v in vals.tolist() if v != ignore_index and not 0 <= v < num_classes]
            if unknown:
                r = {"reason": f"mask has label value(s) {_fmt_values(unknown)} that are not classes (classes are "
                               f"0-{num_classes - 1}, ignore index {ignore_index})"}
        if "reason" in r:
            report.bad[pair.image] = r["reason"]
            continue
        data.good.append(pair)
        h, w = r["size"]
        report.sizes[pair.image] = (w, h)
        data.sizes[pair.image] = (h, w)
        if r["conversion"]:
            report.converted[pair.image] = r["conversion"]
        if r["rotated"]:
            report.rotated.append(pair.image)
        hist = np.zeros(num_classes, dtype=np.int64)
        keep_v = (r["values"] >= 0) & (r["values"] < num_classes) & (r["values"] != ignore_index)
        hist[r["values"][keep_v]] = r["counts"][keep_v]
        data.pixel_counts[pair.image] = hist
        if keep:
            data.images[pair.image] = r["image"]
            data.masks[pair.image] = r["mask"]

    names = dict(class_table.names) if class_table else {}
    data.class_names = [names.get(i, f"class_{i}") for i in range(num_classes)]
    palette = default_palette(max(num_classes, 256))
    colours = dict(class_table.colours) if class_table else {}
    data.colours = [colours.get(i, (int(palette[i][0]), int(palette[i][1]), int(palette[i][2])))
                    for i in range(num_classes)]
    counts = data.counts(data.good)
    report.class_counts = {n: int(c) for n, c in zip(data.class_names, counts)}
    report.warnings = _warnings(data, counts, ignore_index, for_training)
    report.seconds = time.perf_counter() - start
    return data


def _warnings(data: SegData, counts: np.ndarray, ignore_index: int, for_training: bool = True) -> list[str]:
    out: list[str] = []
    sizes = list(data.sizes.values())
    if not for_training:
        return out
    absent = [data.class_names[i] for i in range(data.num_classes) if counts[i] == 0 and i != ignore_index]
    if absent:
        out.append(f"{len(absent)} class(es) have no labelled pixels ({', '.join(repr(a) for a in absent[:8])}"
                   f"{', ...' if len(absent) > 8 else ''}); the model cannot learn them.")
    total = counts.sum()
    if total:
        rare = [data.class_names[i] for i in range(data.num_classes) if 0 < counts[i] < 0.01 * total]
        if rare:
            out.append(f"{len(rare)} class(es) cover under 1% of the labelled pixels ({', '.join(rare[:8])}"
                       f"{', ...' if len(rare) > 8 else ''}); consider --class-weights median.")
    if sizes and len(set(sizes)) > 1:
        out.append(f"image sizes vary ({len(set(sizes))} different sizes); validation runs one image at a time.")
    return out


def median_size(data: SegData) -> tuple[int, int]:
    sizes = list(data.sizes.values())
    if not sizes:
        return (0, 0)
    return int(statistics.median_low(h for h, _ in sizes)), int(statistics.median_low(w for _, w in sizes))


def summary_lines(data: SegData, splits: SegSplits | None = None) -> str:
    text = data.report.summary()
    text = text.replace(" files in ", " image/mask pairs in ", 1)
    if splits is not None and splits.orphan_masks:
        text += f"\nWarning: {len(splits.orphan_masks)} mask(s) have no image (e.g. {splits.orphan_masks[0]}); ignored."
    for note in splits.notes if splits is not None else []:
        text += f"\nNote: {note}."
    return text


# -------------------------------------------------------------------------------------- datasets
class SegDataset(torch.utils.data.Dataset):
    """(image uint8 (3, H, W), mask int64 (H, W)) per pair, from memory or from the files.

    With ``train=True`` each sample gets the joint augmentation (scale jitter, crop with ignore
    padding, flip) from a generator seeded with (seed, epoch, index): independent of workers, so
    an interrupted run resumes exactly.
    """

    def __init__(self, pairs: Sequence[Pair], data: SegData | None, *, lut: dict[int, int] | None = None,
                 train: bool = False, crop: tuple[int, int] | None = None, scale: tuple[float, float] = (1.0, 1.0),
                 hflip: bool = False, ignore_index: int = 255, fill: Sequence[int] = (0, 0, 0), seed: int = 0) -> None:
        self.pairs = list(pairs)
        self.data = data
        self.lut = lut
        self.train, self.crop, self.scale, self.hflip = train, crop, scale, hflip
        self.ignore_index, self.fill, self.seed = ignore_index, tuple(fill), seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.pairs[i]
        if self.data is not None and pair.image in self.data.images:
            img, mask = self.data.images[pair.image], self.data.masks[pair.image]
        else:
            img = np.array(decode_image(pair.image)[0], dtype=np.uint8)
            mask = decode_mask(pair.mask, self.lut)  # type: ignore[arg-type]
        return torch.from_numpy(img).permute(2, 0, 1), torch.from_numpy(mask.astype(np.int64, copy=False))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from .transforms import joint_train_transform

        img, mask = self.load(i)
        if not self.train:
            return img.contiguous(), mask
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
        assert self.crop is not None
        return joint_train_transform(img, mask, crop=self.crop, scale=self.scale, hflip=self.hflip,
                                     ignore_index=self.ignore_index, fill=self.fill, generator=g)
