"""Finding the images and label sets of a multi-label dataset: a CSV in one of three forms.

``labels`` form
    a path column and a labels column holding every label of the image in one field: ``img.jpg,cat;dog``. The
    separator is ``;``, ``|`` or ``,`` (a quoted field) when any field holds one, else whitespace when the column's
    name says it holds several (``labels``, ``tags``, ``classes``: fastai's and Kaggle's form, ``cat dog``); with a
    singular name (``label``) a space stays part of the name (``golden retriever``). ``label_sep`` overrides.
``indicators`` form
    a path column and one 0/1 column per label (a header names the labels).
``rows`` form
    one label a row, the same path on several rows (merged).

An image may have no label (an empty field, or all zeros): it is a negative for every label. An optional ``split``
column (train/val/test) fixes the splits; without one, the validation split is drawn from the training rows by
iterative stratification (Sechidis et al., 2011), which keeps every label in both splits where it has enough
images, and the split says which labels could not be. The label vocabulary is the training split's.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ...data import tables as T
from ...errors import ConfigError, DataError

__all__ = ["MIN_TRAIN_POSITIVES", "MultiLabelSplits", "detect_csv_task", "discover_eval_labels", "discover_multilabel",
           "iterative_split", "read_label_csv", "targets_of"]

#: A label with fewer training images than this is reported as too few to learn (a sigmoid head sees a handful of
#: positives among hundreds of negatives and its validation AP is a few steps of noise).
MIN_TRAIN_POSITIVES = 5
_SEPARATORS = (";", "|", ",")
_PLURAL_COLUMNS = ("labels", "tags", "classes")
_SEP_NAMES = {"space": " ", "whitespace": " ", "semicolon": ";", "comma": ",", "pipe": "|", "tab": "\t"}

Sample = tuple[str, tuple[int, ...]]  # (path, label indices)


@dataclass
class _Row:
    path: str
    labels: tuple[str, ...]
    split: str | None
    line: int


@dataclass
class LabelTable:
    """What a label CSV holds: its rows (paths not yet resolved), the form and the label separator."""

    rows: list[_Row]
    form: str  # "labels", "indicators" or "rows"
    separator: str | None
    has_split: bool
    several_in_a_field: bool
    repeated_paths: bool
    columns: list[str] = field(default_factory=list)  # the label columns of the indicators form


@dataclass
class MultiLabelSplits:
    """Train/val/test lists of (path, label indices) and the label vocabulary (sorted, from the training split)."""

    labels: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] | None
    form: str
    separator: str | None
    notes: list[str] = field(default_factory=list)

    def targets(self, split: str) -> np.ndarray:
        """The split's 0/1 targets, (images, labels)."""
        return targets_of(getattr(self, split) or [], len(self.labels))

    def describe(self) -> str:
        n_test = f", test {len(self.test)}" if self.test else ""
        sep = "" if self.form != "labels" else f", separator {self.separator!r}" if self.separator else \
            ", one label a field"
        return (f"multi-label CSV ({self.form} form{sep}): train {len(self.train)}, val {len(self.val)}{n_test} "
                f"images; {len(self.labels)} labels")

    def label_summary(self, frequencies: bool = True) -> str:
        """Label frequencies per split (``frequencies``), labels seen in one split only, labels too rare to learn,
        unlabelled images."""
        tr, va = self.targets("train").sum(0), self.targets("val").sum(0)
        width = max(len(x) for x in self.labels)
        lines = [f"  {lab:<{width}}  train {int(a):>6}  val {int(b):>6}" for lab, a, b in zip(self.labels, tr, va)]
        out = ["label frequencies (images with the label):", *lines] if frequencies else [
            f"{len(self.labels)} labels; images a label in training: {int(tr.min())} to {int(tr.max())} (median "
            f"{int(np.median(tr))}); {float(self.targets('train').sum(1).mean()):.2f} labels an image"]
        only_train = [lab for lab, b in zip(self.labels, va) if b == 0]
        if only_train:
            out.append(f"labels with no validation image (left out of macro figures): {T.quote_list(only_train)}")
        rare = [lab for lab, a in zip(self.labels, tr) if a < MIN_TRAIN_POSITIVES]
        if rare:
            out.append(f"labels with fewer than {MIN_TRAIN_POSITIVES} training images, too few to learn: "
                       f"{T.quote_list(rare)}")
        empty = sum(1 for _, labs in self.train + self.val if not labs)
        if empty:
            out.append(f"{empty} image(s) have no label (negatives for every label)")
        return "\n".join(out)


def targets_of(samples: Sequence[Sample], n_labels: int) -> np.ndarray:
    t = np.zeros((len(samples), n_labels), dtype=np.uint8)
    for i, (_, labs) in enumerate(samples):
        t[i, list(labs)] = 1
    return t


def _separator(label_sep: str | None) -> str | None:
    if label_sep is None:
        return None
    sep = _SEP_NAMES.get(label_sep.lower(), label_sep)
    if not sep:
        raise ConfigError("--label-sep must be a character (or space, semicolon, comma, pipe, tab).")
    return sep


def _split_field(text: str, sep: str | None) -> tuple[str, ...]:
    parts = text.split() if sep == " " else text.split(sep) if sep else [text]
    return tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))  # in order, each once


def read_label_csv(csv_path: str, label_sep: str | None = None) -> LabelTable:
    """The rows of a multi-label CSV in any of the three forms (see the module docstring)."""
    csv_path = str(csv_path)
    rows = T.read_rows(csv_path, "path,labels")
    known = set(T.PATH_COLUMNS) | set(T.LABEL_COLUMNS) | {"split"}
    sep = _separator(label_sep)
    columns: list[str] = []
    if T.has_header(rows, csv_path, known):
        header = [c.strip().lower() for c in rows[0]]
        path_col = next((header.index(c) for c in T.PATH_COLUMNS if c in header), None)
        if path_col is None:
            raise DataError(f"The CSV file {csv_path} has no path column (its columns are {T.quote_list(rows[0])}); "
                            "name the image column path.")
        label_col = next((header.index(c) for c in T.LABEL_COLUMNS if c in header), None)
        split_col = header.index("split") if "split" in header else None
        body = list(enumerate(rows[1:], start=2))
        if not body:
            raise DataError(f"The CSV file {csv_path} has a header but no rows; add one row per image.")
        others = [j for j in range(len(header)) if j not in (path_col, label_col, split_col)]
        indicators = [j for j in others if all(_cell(r, j) in ("0", "1", "") for _, r in body)
                      and any(_cell(r, j) for _, r in body)]
        if indicators and label_col is not None:
            raise DataError(
                f"The CSV file {csv_path} has both a labels column ({rows[0][label_col].strip()!r}) and 0/1 label "
                f"columns ({T.quote_list([rows[0][j].strip() for j in indicators])}); keep one of the two forms.")
        if not indicators and label_col is None:
            raise DataError(
                f"The CSV file {csv_path} has no labels column and no 0/1 label columns (its columns are "
                f"{T.quote_list(rows[0])}); name the labels column labels, or give one 0/1 column per label.")
        plural = label_col is not None and header[label_col] in _PLURAL_COLUMNS
        columns = [rows[0][j].strip() for j in indicators]
    else:
        if len(rows[0]) < 2:
            raise DataError(f"The CSV file {csv_path} has only one column; give each row a path and its labels.")
        path_col, label_col, indicators, plural = 0, 1, [], False
        split_col = 2 if len(rows[0]) >= 3 else None
        body = list(enumerate(rows, start=1))

    if label_col is not None and sep is None:
        fields = [_cell(r, label_col) for _, r in body]
        sep = next((s for s in _SEPARATORS if any(s in f for f in fields)), None)
        if sep is None and plural and any(len(f.split()) > 1 for f in fields):
            sep = " "
    out: list[_Row] = []
    missing_path = []
    for line, r in body:
        path = _cell(r, path_col)
        if not path:
            missing_path.append(line)
            continue
        split = _cell(r, split_col) if split_col is not None else ""
        if label_col is not None:
            labels = _split_field(_cell(r, label_col), sep)
        else:
            labels = tuple(columns[k] for k, j in enumerate(indicators) if _cell(r, j) == "1")
        out.append(_Row(path, labels, split or None, line))
    if missing_path:
        raise DataError(f"The CSV file {csv_path} has {len(missing_path)} row(s) without a path (line(s) "
                        f"{', '.join(map(str, missing_path[:5]))}); fill them in or delete them.")
    several = any(len(r.labels) > 1 for r in out)
    repeated = len({r.path for r in out}) < len(out)
    form = "indicators" if indicators else "labels" if several or not repeated else "rows"
    return LabelTable(out, form, sep, split_col is not None, several, repeated, columns)


def _cell(row: list[str], j: int | None) -> str:
    return row[j].strip() if j is not None and j < len(row) else ""


def detect_csv_task(csv_path: str, label_sep: str | None = None) -> tuple[str, str]:
    """``("multilabel", why)`` when the CSV gives images several labels (several in a field, 0/1 columns or
    repeated paths), else ``("classification", why)``."""
    try:
        table = read_label_csv(csv_path, label_sep)
    except DataError:
        return "classification", "the CSV is not in a multi-label form"
    if table.form == "indicators":
        return "multilabel", f"it has one 0/1 column per label ({T.quote_list(table.columns, 5)})"
    if table.several_in_a_field:
        return "multilabel", f"its label fields hold several labels separated by {table.separator!r}"
    if table.repeated_paths:
        return "multilabel", "the same image is listed on several rows (one label a row)"
    return "classification", "every image has one label"


def _merge(table: LabelTable, csv_path: str) -> tuple[list[str], list[tuple[str, ...]], list[str]]:
    """One entry a path (labels merged over its rows): paths, label tuples and splits."""
    by_path: dict[str, tuple[list[str], str, int]] = {}
    for r in table.rows:
        split = T.split_name(r.split, r.line, csv_path) if table.has_split else "train"
        if r.path in by_path:
            labels, first_split, first_line = by_path[r.path]
            if split != first_split:
                raise DataError(f"{r.path!r} is in split {first_split} on line {first_line} of {csv_path} and in "
                                f"{split} on line {r.line}; give each image one split.")
            labels.extend(x for x in r.labels if x not in labels)
        else:
            by_path[r.path] = (list(r.labels), split, r.line)
    paths = list(by_path)
    return paths, [tuple(by_path[p][0]) for p in paths], [by_path[p][1] for p in paths]


def iterative_split(label_sets: Sequence[Sequence[int]], n_labels: int, val_fraction: float, seed: int
                    ) -> tuple[list[int], list[int]]:
    """Train and validation indices by iterative stratification (Sechidis, Tsoumakas and Vlahavas, 2011): the
    rarest label's images are placed first, each where that label is most wanted; images without labels fill what
    is left. Then a label with two or more images that ended in one split only gives one image to the other."""
    rng = random.Random(seed)
    n = len(label_sets)
    ratios = (1.0 - val_fraction, val_fraction)
    counts = Counter(lab for labs in label_sets for lab in labs)
    want = [r * n for r in ratios]
    want_label = [{lab: r * c for lab, c in counts.items()} for r in ratios]
    by_label: dict[int, list[int]] = {}
    for i, labs in enumerate(label_sets):
        for lab in labs:
            by_label.setdefault(lab, []).append(i)
    left = set(i for i, labs in enumerate(label_sets) if labs)
    where = [-1] * n

    def place(i: int, s: int) -> None:
        where[i] = s
        want[s] -= 1
        for lab in label_sets[i]:
            want_label[s][lab] -= 1

    while left:
        remaining = {lab: sum(1 for i in idx if i in left) for lab, idx in by_label.items()}
        rarest = min((c, rng.random(), lab) for lab, c in remaining.items() if c > 0)[2]
        items = [i for i in by_label[rarest] if i in left]
        rng.shuffle(items)
        for i in items:
            s = max((0, 1), key=lambda k: (want_label[k][rarest], want[k], rng.random()))
            place(i, s)
            left.discard(i)
    unlabelled = [i for i in range(n) if where[i] < 0]
    rng.shuffle(unlabelled)
    for i in unlabelled:
        place(i, max((0, 1), key=lambda k: (want[k], rng.random())))
    for lab in sorted(counts):
        if counts[lab] < 2:
            continue
        for s in (0, 1):
            if not any(where[i] == s for i in by_label[lab]):
                # all its images are in the other split (two or more): the one with the fewest labels moves (it
                # disturbs the fewest labels)
                where[min(by_label[lab], key=lambda i: (len(label_sets[i]), i))] = s
    return [i for i in range(n) if where[i] == 0], [i for i in range(n) if where[i] == 1]


def discover_multilabel(csv_path: str, *, val_fraction: float = 0.2, seed: int = 0, label_sep: str | None = None
                        ) -> MultiLabelSplits:
    """The splits and label vocabulary of a multi-label CSV (see the module docstring)."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}.")
    csv_path = str(csv_path)
    table = read_label_csv(csv_path, label_sep)
    paths, label_sets, splits = _merge(table, csv_path)
    paths = T.resolve_paths(csv_path, paths)
    train_ids = [i for i, s in enumerate(splits) if s == "train"]
    if not train_ids:
        raise DataError(f"The CSV file {csv_path} has no rows with split 'train'; mark the training images with "
                        "split train.")
    labels = sorted({lab for i in train_ids for lab in label_sets[i]})
    if not labels:
        raise DataError(f"No training image of {csv_path} has a label; a multi-label dataset needs labelled images.")
    index = {lab: j for j, lab in enumerate(labels)}
    for split in ("val", "test"):
        unknown = sorted({lab for i, s in enumerate(splits) if s == split for lab in label_sets[i]} - set(index))
        if unknown:
            raise DataError(f"The {split} rows of {csv_path} have label(s) {T.quote_list(unknown)} that no training "
                            f"image has; fix the labels or add training images with them.")
    samples = [(p, tuple(sorted(index[lab] for lab in labs))) for p, labs in zip(paths, label_sets)]
    notes: list[str] = []
    if any(s == "val" for s in splits):
        train = [samples[i] for i in train_ids]
        val = [samples[i] for i, s in enumerate(splits) if s == "val"]
    else:
        tr, va = iterative_split([samples[i][1] for i in train_ids], len(labels), val_fraction, seed)
        train, val = [samples[train_ids[i]] for i in tr], [samples[train_ids[i]] for i in va]
    test = [samples[i] for i, s in enumerate(splits) if s == "test"] or None
    in_val = targets_of(val, len(labels)).sum(0)
    alone = [lab for j, lab in enumerate(labels) if in_val[j] == 0]
    if alone:
        notes.append(f"label(s) {T.quote_list(alone)} have no validation image (too few images to put one in "
                     "each split); they are left out of macro figures.")
    return MultiLabelSplits(labels, train, val, test, table.form, table.separator, notes)


def discover_eval_labels(csv_path: str, labels: Sequence[str], label_sep: str | None = None) -> list[Sample]:
    """The images of a labelled CSV to evaluate a model with ``labels`` on: its test rows when it has a split
    column with some, else its val rows, else every row. A label the model does not know is one sentence."""
    csv_path = str(csv_path)
    table = read_label_csv(csv_path, label_sep)
    paths, label_sets, splits = _merge(table, csv_path)
    for wanted in ("test", "val"):
        if table.has_split and wanted in splits:
            keep = [i for i, s in enumerate(splits) if s == wanted]
            paths, label_sets = [paths[i] for i in keep], [label_sets[i] for i in keep]
            break
    index = {lab: j for j, lab in enumerate(labels)}
    unknown = sorted({lab for labs in label_sets for lab in labs} - set(index))
    if unknown:
        raise DataError(f"{csv_path} has label(s) {T.quote_list(unknown)} that the model does not know (its labels: "
                        f"{T.quote_list(list(labels))}); evaluate on data with the model's labels.")
    resolved = T.resolve_paths(csv_path, paths)
    return [(p, tuple(sorted(index[lab] for lab in labs))) for p, labs in zip(resolved, label_sets)]
