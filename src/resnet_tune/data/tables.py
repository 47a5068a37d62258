"""Reading CSV files of images: the rows, the header, the paths and the split column, for every task.

A CSV names images by path (relative paths are resolved against the CSV's folder), with labels in the task's own
form (:mod:`.datasets` for one class an image, the multi-label task for label sets) and an optional ``split``
column holding ``train``/``val``/``test``. Columns are separated by commas, tabs or semicolons (judged on the first
line; a ``.tsv`` file is tab-separated), with the standard quoting.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence

from ..errors import DataError

__all__ = ["LABEL_COLUMNS", "PATH_COLUMNS", "SPLIT_NAMES", "abs_path", "has_header", "quote_list", "read_rows",
           "resolve_paths", "split_name"]

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
PATH_COLUMNS = ("path", "filepath", "file_path", "file", "filename", "file_name", "image", "image_path", "img")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "target", "category", "tags", "classes")


def abs_path(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


def quote_list(names: Sequence[str], limit: int = 10) -> str:
    """``'a', 'b', 'c' and 7 more``: names for a message."""
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_rows(csv_path: str, example: str = "path,label") -> list[list[str]]:
    """The non-empty rows of a CSV file; one sentence (a :class:`DataError`) when it cannot be read or parsed."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"Cannot read the CSV file {csv_path} ({e}); check that it is a readable UTF-8 text file.") from e
    first_line = text.split("\n", 1)[0]
    if csv_path.lower().endswith(".tsv"):
        delimiter = "\t"
    else:  # comma, else tab, else semicolon (spreadsheets in some locales), judged on the first line
        delimiter = next((d for d in (",", "\t", ";") if d in first_line), ",")
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    try:
        rows = [r for r in reader if any(c.strip() for c in r)]
    except csv.Error as e:  # e.g. a field over csv.field_size_limit(), usually from a quote that is never closed
        raise DataError(
            f"The CSV file {csv_path} cannot be parsed at line {reader.line_num} ({e}); check its quoting (a quote "
            "that is never closed swallows the rest of the file)."
        ) from None
    if not rows:
        raise DataError(f"The CSV file {csv_path} is empty; add one {example} row per image.")
    return rows


def has_header(rows: list[list[str]], csv_path: str, known: Iterable[str]) -> bool:
    """Whether the first row is a header: it names a known column, or its first cell cannot be a file path (no
    extension and no such file: paths to images nearly always have an extension)."""
    header = {c.strip().lower() for c in rows[0]}
    first = rows[0][0].strip()
    looks_like_header = not os.path.splitext(first)[1] and not os.path.isfile(
        os.path.join(os.path.dirname(abs_path(csv_path)), first))
    return bool(header & set(known)) or looks_like_header


def resolve_paths(csv_path: str, paths: Sequence[str]) -> list[str]:
    """Absolute paths of the files a CSV lists; one sentence naming the first missing ones when some do not exist."""
    base = os.path.dirname(abs_path(csv_path))
    out = [abs_path(p if os.path.isabs(p) else os.path.join(base, p)) for p in paths]
    missing = [given for given, p in zip(paths, out) if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(repr(p) for p in missing[:5])
        raise DataError(
            f"{len(missing)} file(s) listed in {csv_path} do not exist (first: {shown}); fix the paths "
            f"(relative paths are resolved against {base})."
        )
    return out


def split_name(value: str | None, line: int, csv_path: str) -> str:
    """The split a row's ``split`` cell names (empty: train)."""
    if not value:
        return "train"
    split = SPLIT_NAMES.get(value.strip().lower())
    if split is None:
        raise DataError(
            f"Line {line} of {csv_path} has split {value!r}; use train, val or test (or leave it empty for train)."
        )
    return split
