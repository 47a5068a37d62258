"""Walking data folders safely: symbolic links are followed, but no folder is read twice and no loop is entered.

Datasets are often assembled from symbolic links (``photos/cat -> /mnt/big/cats``), so links are followed. A link
can also point back up the tree (``ln -s .. photos/cat/loop``) or into another class's folder; followed blindly,
that puts every image of every class under one class, in both splits. :class:`FolderWalker` walks the folders of
one dataset and

* never enters a folder that is an ancestor of the one it is in (a loop),
* never enters a folder that is, or holds, or lies inside another *owned* folder (another class's folder, or a
  split folder): its files belong to that folder's label,
* enters each real folder once per dataset (a second link to a folder already read is not read again),

and records one sentence per link it did not follow in :attr:`FolderWalker.notes`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["JUNK_NAMES", "FolderWalker", "is_junk", "real_path"]

#: Names (lower-case) that operating systems and tools leave in folders; never treated as data.
JUNK_NAMES: frozenset[str] = frozenset(
    {"thumbs.db", "ehthumbs.db", "desktop.ini", ".ds_store", "__macosx", "@eadir", ".ipynb_checkpoints"}
)


def is_junk(name: str) -> bool:
    """Hidden files, editor back-ups and operating-system junk (``Thumbs.db``, ``__MACOSX``, ...)."""
    return name.startswith(".") or name.lower() in JUNK_NAMES or name.endswith("~")


def real_path(path: str | os.PathLike[str]) -> str:
    """The absolute path with every symbolic link resolved (what identifies a file or folder on disk)."""
    return os.path.realpath(os.fspath(path))


def _inside(path: str, folder: str) -> bool:
    """Whether real path ``path`` is ``folder`` or lies below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class FolderWalker:
    """Lists the files of a dataset's folders, following links without loops or double counting.

    ``owned`` are the folders that each carry a label of their own (class folders, split folders, image and mask
    folders); a link from one of them into another is not followed. Create one walker per dataset and call
    :meth:`files` for each owned folder.
    """

    def __init__(self, owned: Iterable[str | os.PathLike[str]] = ()) -> None:
        self.owned = {real_path(p) for p in owned}
        self.entered: set[str] = set()
        self.notes: list[str] = []

    def _skip_reason(self, link: str, target: str, here: str, start: str) -> str | None:
        if _inside(here, target):
            return (f"the link {link} points back to {target}, a folder above it (a loop); it was not followed, "
                    "so no image is counted twice")
        for other in self.owned:
            if other != start and (_inside(target, other) or _inside(other, target)):
                return (f"the link {link} points to {target}, which belongs to another folder of the dataset "
                        f"({other}); it was not followed, so no image gets that folder's label as well")
        if target in self.entered:
            return f"the link {link} points to {target}, a folder already read; it was not read twice"
        return None

    def files(self, folder: str | os.PathLike[str]) -> list[str]:
        """Every non-hidden, non-junk file under ``folder`` (recursively), as absolute paths, sorted.

        Paths keep the names they were found under (links unresolved), so messages show the user's own paths.
        """
        start = real_path(folder)
        top = os.path.abspath(os.fspath(folder))
        if start in self.entered:
            self.notes.append(f"{top} is a second link to {start}, a folder already read; it was not read twice")
            return []
        self.entered.add(start)
        out: list[str] = []
        for root, dirs, names in os.walk(top, followlinks=True):
            here = real_path(root)
            keep = []
            for d in sorted(d for d in dirs if not is_junk(d)):
                path = os.path.join(root, d)
                target = real_path(path)
                reason = self._skip_reason(path, target, here, start)
                if reason is not None:
                    self.notes.append(reason)
                    continue
                self.entered.add(target)
                keep.append(d)
            dirs[:] = keep
            out.extend(os.path.join(root, f) for f in names if not is_junk(f))
        return sorted(out)
