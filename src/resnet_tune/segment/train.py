"""Deprecated: segmentation trains on the one engine; use ``resnet_tune.fit(task="segmentation", ...)``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..engine.trainer import RunResult
from ..tasks import fit
from ..tasks.segmentation import SegmentationConfig

__all__ = ["fit_segmentation"]


def fit_segmentation(cfg: SegmentationConfig | None = None, *, resume: str | Path | None = None, quiet: bool = False,
                     **options: Any) -> RunResult:
    """Deprecated: ``resnet_tune.fit(cfg, task="segmentation", ...)`` does the same."""
    warnings.warn("resnet_tune.segment.train.fit_segmentation is deprecated and will be removed; use "
                  "resnet_tune.fit(task='segmentation', ...)", DeprecationWarning, stacklevel=2)
    return fit(cfg, task="segmentation", resume=resume, quiet=quiet, **options)
