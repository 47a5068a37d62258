"""The run folder: where it is, what names it, and the files every task's run writes the same way
(``config.yaml``, ``metrics.csv``, TensorBoard events)."""

from __future__ import annotations

import csv
import datetime as _dt
import io
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fileio import write_text_atomic

__all__ = ["create_run_dir", "tensorboard_writer", "write_metrics"]


def create_run_dir(output: str | None, stem: str) -> Path:
    """``output`` itself, or ``runs/<stem>-<date>-<time>``; created here (with a sentence when it cannot be)."""
    out = Path(output) if output else Path("runs") / f"{stem}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the run folder {out} ({err.strerror or err}); choose another "
                          "--output.") from None
    return out


def write_metrics(path: Path, history: list[dict[str, float]], columns: list[str]) -> None:
    """metrics.csv, written atomically: ``columns`` first, then any other keys of the rows (sorted)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns + sorted(set().union(*history) - set(columns)))
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text_atomic(path, buf.getvalue())


def tensorboard_writer(run_dir: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` logging into ``run_dir/tensorboard`` (needs the tensorboard extra)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'resnet-tune[tensorboard]'.") \
            from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
