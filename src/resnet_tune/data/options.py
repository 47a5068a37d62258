"""Choices of the data options that configurations offer and loaders take, without importing torch (the command
line's ``--help`` reads them)."""

from __future__ import annotations

__all__ = ["FLIPS"]

#: how training images are mirrored: a coin each time, or each image every other epoch (airbench)
FLIPS = ("random", "alternate")
