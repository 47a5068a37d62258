"""What a run shows on the terminal: log lines and progress bars (tqdm, only where someone watches)."""

from __future__ import annotations

import sys
from typing import Any, Iterable

__all__ = ["log", "progress"]


def log(msg: str) -> None:
    """One line on standard output, flushed at once (logs of long runs are read while they grow)."""
    print(msg, flush=True)


def progress(iterable: Iterable, total: int | None, desc: str, enabled: bool = True, unit: str = "batch") -> Any:
    """``iterable`` with a tqdm bar when ``enabled`` and standard error is a terminal; else ``iterable`` itself."""
    if not enabled or not sys.stderr.isatty():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
