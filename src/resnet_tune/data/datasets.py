"""Finding the images of a dataset: class folders, split folders or a CSV (reading them: :mod:`.images`).

Three layouts are understood by :func:`discover`:

``folder``
    ``DIR/<class>/*.jpg`` (subfolders of a class folder are searched too); a validation split is drawn
    per class with a fixed seed.
``split-folders``
    ``DIR/train/<class>`` and ``DIR/val/<class>`` (``valid`` and ``validation`` work too), with an optional
    ``DIR/test/<class>``; without a val folder the validation split is drawn from train.
``csv``
    a CSV file of ``path,label`` rows (header optional; relative paths are resolved against the CSV's
    folder), with an optional ``split`` column holding ``train``/``val``/``test``.

Class names are sorted, so a class's index is its position in the sorted list (as in torchvision's
``ImageFolder``).  Files whose extension is not an image extension are kept in the sample lists so that the
scan (:mod:`resnet_tune.data.scan`) reports them instead of dropping them silently; hidden files and
operating-system junk (``Thumbs.db``, ``.DS_Store``, ...) are ignored.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import ConfigError, DataError
from . import tables as T
from .files import FolderWalker, is_junk, real_path

__all__ = [
    "IMAGE_EXTENSIONS",
    "VAL_SPLIT_FILE",
    "DataSplits",
    "discover",
    "discover_eval",
    "is_image_file",
    "list_images",
    "write_split",
]

Sample = tuple[str, int]

#: File extensions read as images (compared lower-case, with the dot).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)

# --------------------------------------------------------------------------------------------- splits
@dataclass
class DataSplits:
    """The samples of a dataset: ``(path, class index)`` pairs per split and the sorted class names."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] | None
    layout: str  # 'folder', 'split-folders' or 'csv'
    #: Files found where no class can be given to them (loose files next to the class folders); not used.
    ignored: list[str] = field(default_factory=list)
    #: Sentences about what discovery left out on purpose (links not followed, files listed twice).
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def all_samples(self) -> list[Sample]:
        """Train, val and test samples together (for a scan of the whole dataset)."""
        return [*self.train, *self.val, *(self.test or [])]

    def describe(self) -> str:
        """One line: layout, sample count per split and the classes."""
        names = ", ".join(self.classes[:8]) + (f", ... ({len(self.classes) - 8} more)" if len(self.classes) > 8 else "")
        parts = [f"train {len(self.train)}", f"val {len(self.val)}"]
        if self.test is not None:
            parts.append(f"test {len(self.test)}")
        extra = f"; {len(self.ignored)} loose file(s) outside class folders ignored" if self.ignored else ""
        return f"{self.layout} layout: {', '.join(parts)} files; {len(self.classes)} classes ({names}){extra}"


# ------------------------------------------------------------------------------------------ file tests
def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has an image extension (case-insensitive)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def _subdirs(folder: str) -> list[str]:
    """Names of the non-hidden, non-junk subfolders of ``folder``, sorted."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if not is_junk(e.name) and e.is_dir())


def _loose_files(folder: str) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(T.abs_path(e.path) for e in it if not is_junk(e.name) and e.is_file())


# -------------------------------------------------------------------------------------------- layouts
def _split_folders(root: str) -> dict[str, str]:
    """Map 'train'/'val'/'test' to the subfolder of ``root`` holding that split (those that hold folders)."""
    found: dict[str, str] = {}
    for name in _subdirs(root):
        split = T.SPLIT_NAMES.get(name.lower())
        if split is None:
            continue
        path = os.path.join(root, name)
        if not _subdirs(path):
            continue
        if split in found:
            raise DataError(
                f"Data folder {root} has two {split} folders ({os.path.basename(found[split])!r} and {name!r}); "
                "keep only one of them."
            )
        found[split] = path
    return found


def _read_class_folders(folder: str, walker: FolderWalker) -> tuple[dict[str, list[str]], list[str]]:
    """``{class name: sorted absolute file paths}`` for the class folders of ``folder``, and loose files."""
    classes = {name: walker.files(os.path.join(folder, name)) for name in _subdirs(folder)}
    return classes, _loose_files(folder)


def _walker(*parents: str) -> FolderWalker:
    """A walker for a dataset whose class folders are the subfolders of ``parents``."""
    return FolderWalker(os.path.join(parent, name) for parent in parents for name in _subdirs(parent))


def _deduplicate(by_split: dict[str, dict[str, list[str]]], where: str) -> list[str]:
    """Keep each file (by its real path) once per dataset; returns sentences saying what was dropped.

    ``by_split`` maps split -> class -> paths and is changed in place. A file listed twice under one class, or
    under one class in two splits (it would be trained on and evaluated on), keeps its first place in the order
    train, val, test; a file under two different classes raises :class:`DataError`, since either label may be
    wrong.
    """
    first: dict[str, tuple[str, str, str]] = {}  # real path -> (split, class, path)
    repeats: list[tuple[str, str]] = []  # (path dropped, the place kept)
    leaks: list[tuple[str, str, str]] = []  # (path, kept split, dropped split)
    conflicts: list[tuple[str, str, str, str]] = []  # (path, class, path kept, its class)
    for split in ("train", "val", "test"):
        for label in sorted(by_split.get(split, {})):
            kept = []
            for path in by_split[split][label]:
                real = real_path(path)
                seen = first.get(real)
                if seen is None:
                    first[real] = (split, label, path)
                    kept.append(path)
                elif seen[1] != label:
                    conflicts.append((path, label, seen[2], seen[1]))
                elif seen[0] != split:
                    leaks.append((path, seen[0], split))
                else:
                    repeats.append((path, seen[2]))
            by_split[split][label] = kept
    if conflicts:
        path, label, other_path, other = conflicts[0]
        raise DataError(
            f"{len(conflicts)} file(s) in {where} appear under two classes (first: {other_path} under {other!r} and "
            f"{path} under {label!r} are the same file); a file can have only one class, so remove the duplicate "
            "file or link."
        )
    notes = []
    if repeats:
        path, kept_path = repeats[0]
        notes.append(f"{len(repeats)} file(s) appear twice under the same class (first: {path} is {kept_path}); "
                     "each is used once")
    if leaks:
        path, kept_split, split = leaks[0]
        notes.append(f"{len(leaks)} file(s) of the {split} split are also in the {kept_split} split (first: "
                     f"{path}); they were left out of {split} so that no image is evaluated on after training on it")
    return notes


def _labelled(files: dict[str, list[str]], index: dict[str, int]) -> list[Sample]:
    return [(p, index[c]) for c in sorted(files) for p in files[c]]


def _stratified_split(
    files: dict[str, list[str]], index: dict[str, int], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split each class's images into train and val.

    Per class, the sorted image paths are shuffled with a generator seeded by ``(seed, class name)`` (so a
    class's split does not depend on the other classes or on listing order), and ``round(n * val_fraction)``
    images go to val, at least one when the class has two or more images and never all of them.  Files with
    a non-image extension stay in train (the scan reports them; they must not take a val place).
    """
    train: list[Sample] = []
    val: list[Sample] = []
    for name in sorted(files):
        label = index[name]
        paths = sorted(files[name])
        images = [p for p in paths if is_image_file(p)]
        others = [p for p in paths if not is_image_file(p)]
        random.Random(f"{seed}/{name}").shuffle(images)
        n = len(images)
        n_val = 0
        if val_fraction > 0 and n >= 2:
            n_val = min(max(1, round(n * val_fraction)), n - 1)
        val.extend((p, label) for p in sorted(images[:n_val]))
        train.extend((p, label) for p in sorted(images[n_val:] + others))
    return train, val


def _check_val_fraction(val_fraction: float) -> None:
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction must be at least 0 and below 1, got {val_fraction}; use e.g. 0.2.")


def _check_classes(files: dict[str, list[str]], where: str, csv: bool = False) -> None:
    """Every class must have images: an empty class folder is a class the model could never learn."""
    counts = {c: sum(is_image_file(p) for p in paths) for c, paths in files.items()}
    if sum(counts.values()) == 0:
        raise DataError(
            f"No images were found in the class folders of {where}; put the images in {where}/<class>/."
        )
    empty = sorted(c for c, n in counts.items() if n == 0)
    if empty and csv:
        raise DataError(
            f"Class(es) {T.quote_list(empty)} in {where} have no image files among their training rows; add "
            "images for them or remove their rows."
        )
    if empty:
        raise DataError(
            f"Class folder(s) {T.quote_list(empty)} in {where} hold no images; add images to them or delete the "
            "empty folder(s), since every class folder is a class the model must learn."
        )
    if len(counts) < 2:
        raise DataError(
            f"The dataset in {where} has only one class ({next(iter(counts))!r}); you need at least two classes, "
            "so add a folder of images for each other class."
        )


def _no_class_folders(root: str) -> DataError:
    loose = _loose_files(root)
    images = [p for p in loose if is_image_file(p)]
    if images:
        return DataError(
            f"Data folder {root} holds {len(images)} images but no class subfolders; "
            f"move each class's images into its own subfolder, {root}/<class>/."
        )
    return DataError(
        f"Data folder {root} has no class subfolders and no images; expected {root}/<class>/*.jpg, "
        f"{root}/train/<class>/ and {root}/val/<class>/, or a CSV file of path,label rows."
    )


def _discover_folder(root: str, val_fraction: float, seed: int) -> DataSplits:
    walker = _walker(root)
    files, loose = _read_class_folders(root, walker)
    if not files:
        raise _no_class_folders(root)
    notes = walker.notes + _deduplicate({"train": files}, root)
    _check_classes(files, root)
    classes = sorted(files)
    index = {c: i for i, c in enumerate(classes)}
    train, val = _stratified_split(files, index, val_fraction, seed)
    return DataSplits(classes, train, val, None, "folder", ignored=loose, notes=notes)


def _discover_split_folders(root: str, found: dict[str, str], val_fraction: float, seed: int) -> DataSplits:
    walker = _walker(*found.values())
    by_split: dict[str, dict[str, list[str]]] = {}
    ignored: list[str] = []
    for split in ("train", "val", "test"):
        if split in found:
            by_split[split], loose = _read_class_folders(found[split], walker)
            ignored.extend(loose)
    train_files = by_split["train"]
    classes = sorted(train_files)
    for split in ("val", "test"):
        unknown = [c for c in sorted(by_split.get(split, {})) if c not in train_files]
        if unknown:
            raise DataError(
                f"The {split} folder {found[split]} has class folder(s) {T.quote_list(unknown)} that are not in "
                f"the train folder (train classes: {T.quote_list(classes)}); rename them to train classes or "
                "add training images for them."
            )
    notes = walker.notes + _deduplicate(by_split, root)
    _check_classes(train_files, found["train"])
    index = {c: i for i, c in enumerate(classes)}
    test = _labelled(by_split["test"], index) if "test" in by_split else None
    if "val" in by_split:
        train, val = _labelled(train_files, index), _labelled(by_split["val"], index)
    else:
        train, val = _stratified_split(train_files, index, val_fraction, seed)
    return DataSplits(classes, train, val, test, "split-folders", ignored=ignored, notes=notes)


def _discover_dir(root: str, val_fraction: float, seed: int) -> DataSplits:
    found = _split_folders(root)
    if "train" in found:
        return _discover_split_folders(root, found, val_fraction, seed)
    if found:
        names = " and ".join(sorted(found))
        raise DataError(
            f"Data folder {root} has {names} folder(s) but no train folder; add {root}/train/<class>/ "
            "with the training images."
        )
    return _discover_folder(root, val_fraction, seed)


# ------------------------------------------------------------------------------------------------ CSV
@dataclass
class _CsvRow:
    path: str
    label: str
    split: str | None
    line: int


def _read_csv(csv_path: str) -> tuple[list[_CsvRow], bool]:
    """Rows of a path,label[,split] CSV and whether it had a split column."""
    rows = T.read_rows(csv_path)
    header = [c.strip().lower() for c in rows[0]]
    known = set(T.PATH_COLUMNS) | set(T.LABEL_COLUMNS) | {"split"}
    if T.has_header(rows, csv_path, known):
        path_col = next((header.index(c) for c in T.PATH_COLUMNS if c in header), None)
        label_col = next((header.index(c) for c in T.LABEL_COLUMNS if c in header), None)
        split_col = header.index("split") if "split" in header else None
        missing = [name for name, col in (("path", path_col), ("label", label_col)) if col is None]
        if missing:
            raise DataError(
                f"The CSV file {csv_path} has no {' or '.join(repr(m) for m in missing)} column "
                f"(its columns are {T.quote_list(rows[0])}); name the columns path,label (and optionally split)."
            )
        body = list(enumerate(rows[1:], start=2))
    else:
        if len(rows[0]) < 2:
            raise DataError(
                f"The CSV file {csv_path} has only one column; give each row a path and a label (path,label)."
            )
        path_col, label_col = 0, 1
        split_col = 2 if len(rows[0]) >= 3 else None
        body = list(enumerate(rows, start=1))

    assert path_col is not None and label_col is not None
    out: list[_CsvRow] = []
    short: list[int] = []
    for line, r in body:
        need = max(path_col, label_col)
        if len(r) <= need or not r[path_col].strip() or not r[label_col].strip():
            short.append(line)
            continue
        split = r[split_col].strip() if split_col is not None and split_col < len(r) else ""
        out.append(_CsvRow(r[path_col].strip(), r[label_col].strip(), split or None, line))
    if short:
        raise DataError(
            f"The CSV file {csv_path} has {len(short)} row(s) without a path or label (line(s) "
            f"{', '.join(map(str, short[:5]))}{', ...' if len(short) > 5 else ''}); fill them in or delete them."
        )
    if not out:
        raise DataError(f"The CSV file {csv_path} has a header but no rows; add one path,label row per image.")
    return out, split_col is not None


def _resolve_csv_rows(csv_path: str, rows: list[_CsvRow]) -> list[str]:
    return T.resolve_paths(csv_path, [r.path for r in rows])


def _split_of(row: _CsvRow, csv_path: str) -> str:
    return T.split_name(row.split, row.line, csv_path)


def _discover_csv(csv_path: str, val_fraction: float, seed: int) -> DataSplits:
    rows, has_split = _read_csv(csv_path)
    paths = _resolve_csv_rows(csv_path, rows)
    by_split: dict[str, dict[str, list[str]]] = {"train": {}, "val": {}, "test": {}}
    for row, path in zip(rows, paths):
        split = _split_of(row, csv_path) if has_split else "train"
        by_split[split].setdefault(row.label, []).append(path)

    classes = sorted(by_split["train"])
    if not classes:
        raise DataError(
            f"The CSV file {csv_path} has no rows with split 'train'; mark the training images with split train."
        )
    notes = _deduplicate(by_split, csv_path)
    _check_classes(by_split["train"], csv_path, csv=True)
    index = {c: i for i, c in enumerate(classes)}
    for split in ("val", "test"):
        unknown = sorted(c for c in by_split[split] if c not in index)
        if unknown:
            raise DataError(
                f"The {split} rows of {csv_path} have label(s) {T.quote_list(unknown)} that no train row has "
                f"(train classes: {T.quote_list(classes)}); fix the labels or add training rows for them."
            )
    if by_split["val"]:
        train = _labelled({c: sorted(v) for c, v in by_split["train"].items()}, index)
        val = _labelled({c: sorted(v) for c, v in by_split["val"].items()}, index)
    else:
        train, val = _stratified_split(by_split["train"], index, val_fraction, seed)
    test = _labelled({c: sorted(v) for c, v in by_split["test"].items()}, index) if by_split["test"] else None
    return DataSplits(classes, train, val, test, "csv", notes=notes)


# ------------------------------------------------------------------------------------------ discovery
def _existing(data: str | os.PathLike[str]) -> str:
    path = T.abs_path(data)
    if not os.path.exists(path):
        raise DataError(f"Data folder {os.fspath(data)} does not exist; check the --data path.")
    return path


def discover(data: str | os.PathLike[str], *, val_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """Find the classes and the train/val(/test) samples of a dataset folder or CSV file.

    See the module docstring for the layouts.  Paths in the result are absolute; each split is sorted by
    (class, path).  Raises :class:`DataError` when the data cannot be used and :class:`ConfigError` for a
    ``val_fraction`` outside [0, 1).
    """
    _check_val_fraction(val_fraction)
    path = _existing(data)
    if os.path.isdir(path):
        return _discover_dir(path, val_fraction, seed)
    if path.lower().endswith((".csv", ".tsv")):
        return _discover_csv(path, val_fraction, seed)
    raise DataError(
        f"--data {os.fspath(data)} is a file but not a CSV file; pass a folder of class folders or a .csv file "
        "of path,label rows."
    )


def discover_eval(data: str | os.PathLike[str], classes: list[str]) -> list[Sample]:
    """The labelled samples to evaluate a model trained on ``classes`` with.

    ``data`` is a folder of class folders, a dataset with split folders (``test`` is used, else ``val``), or a
    CSV file (with a split column: its test rows, else its val rows, else all rows).  Every class in the data
    must be one of ``classes`` (the checkpoint's); labels are indices into ``classes``.
    """
    path = _existing(data)
    index = {c: i for i, c in enumerate(classes)}
    known = T.quote_list(list(classes), limit=20)

    def check(found: Iterable[str], where: str) -> None:
        unknown = sorted(c for c in found if c not in index)
        if unknown:
            raise DataError(
                f"{where} has class(es) {T.quote_list(unknown)} that the checkpoint does not know (its classes are "
                f"{known}); remove or rename them."
            )

    if os.path.isdir(path):
        found = _split_folders(path)
        folder = found.get("test") or found.get("val")
        if folder is None and found:
            raise DataError(
                f"Data folder {path} has a train folder but no test or val folder to evaluate on; add "
                f"{path}/test/<class>/ or pass a folder of class folders."
            )
        folder = folder or path
        files, _ = _read_class_folders(folder, _walker(folder))
        if not files:
            raise _no_class_folders(folder)
        check(files, f"The evaluation folder {folder}")
        _deduplicate({"test": files}, folder)
        samples = _labelled(files, index)
        if not samples:
            raise DataError(f"No files were found in the class folders of {folder}; add images to evaluate on.")
        return samples

    if not path.lower().endswith((".csv", ".tsv")):
        raise DataError(
            f"--data {os.fspath(data)} is a file but not a CSV file; pass a folder of class folders or a .csv "
            "file of path,label rows."
        )
    rows, has_split = _read_csv(path)
    if has_split:
        splits = [_split_of(r, path) for r in rows]
        for wanted in ("test", "val"):
            if wanted in splits:
                rows = [r for r, s in zip(rows, splits) if s == wanted]
                break
    check({r.label for r in rows}, f"The CSV file {path}")
    paths = _resolve_csv_rows(path, rows)
    by_class: dict[str, list[str]] = {}
    for r, p in zip(rows, paths):
        by_class.setdefault(r.label, []).append(p)
    _deduplicate({"test": by_class}, path)
    return sorted(((p, index[c]) for c, ps in by_class.items() for p in ps), key=lambda s: (s[1], s[0]))


#: The file in a run folder that lists the run's validation images (``path,label``; a CSV that --data takes).
VAL_SPLIT_FILE = "val.csv"


def write_split(path: str | os.PathLike[str], samples: Sequence[Sample], classes: Sequence[str]) -> None:
    """Write ``samples`` as a ``path,label`` CSV (absolute paths, class names): the record of a split, readable by
    :func:`discover_eval`, so that evaluating later uses exactly these files even after files were added."""
    import io

    from ..fileio import write_text_atomic

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label"])
    w.writerows((p, classes[y]) for p, y in samples)
    write_text_atomic(path, buf.getvalue())


def list_images(path_or_paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[str]:
    """Image files to predict on: a file, a folder (searched recursively, sorted) or a list of either.

    Files without an image extension are skipped; duplicates (the same file on disk, also through links) are
    dropped, the first one kept; links are followed without loops (:class:`~.files.FolderWalker`).  Raises
    :class:`DataError` when a path does not exist or no image is found.
    """
    items = [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) else list(path_or_paths)
    out: list[str] = []
    seen: set[str] = set()
    walker = FolderWalker()
    for item in items:
        p = T.abs_path(item)
        if not os.path.exists(p):
            raise DataError(f"{os.fspath(item)} does not exist; check the path of the images.")
        candidates = walker.files(p) if os.path.isdir(p) else [p]
        for c in candidates:
            real = real_path(c)
            if is_image_file(c) and real not in seen:
                seen.add(real)
                out.append(T.abs_path(c))
    if not out:
        names = ", ".join(os.fspath(i) for i in items[:3]) + (", ..." if len(items) > 3 else "")
        raise DataError(
            f"No images were found in {names or 'the given paths'}; pass image files or folders of images "
            f"({', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))})."
        )
    return out
