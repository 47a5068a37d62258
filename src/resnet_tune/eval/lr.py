"""The learning rate suggested by a range test (fastai's steepest-descent and valley rules)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["suggest_lr"]


def suggest_lr(lrs: Sequence[float], losses: Sequence[float], *, beta: float = 0.98,
               min_points: int = 5, method: str = "steep") -> float | None:
    """fastai-style learning-rate suggestion from an lr range test.

    ``losses`` are the **raw** per-step losses (in the order the lrs were tried, lr
    increasing). They are smoothed here by an exponential moving average with bias
    correction (``beta=0.98``, as fastai); pass ``beta=0`` if the losses are already
    smoothed. The curve is cut at the first non-finite loss or the first point where the
    smoothed loss exceeds 4x its minimum so far; the suggestion is the lr at the steepest
    negative gradient of smoothed loss against log(lr). Fallback when the loss never
    falls: the lr of the minimum loss / 10. Returns None for fewer than ``min_points``
    usable points.

    ``method="valley"`` (fastai's default since 2.4): the lr halfway down the longest run of
    falling smoothed losses (the longest decreasing subsequence), which a few noisy points
    cannot move, unlike the steepest point: on short, noisy curves (60 steps of batch 32)
    the steepest "descent" can be the smoothing's first wobble at the smallest lr.

    Note: the moving average lags the raw curve, so with ~100 steps the suggestion sits
    somewhat above the raw steepest point (fastai behaves the same way).
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1); got {beta}.")
    x = np.asarray(list(lrs), dtype=np.float64).ravel()
    y = np.asarray(list(losses), dtype=np.float64).ravel()
    n = min(x.size, y.size)
    x, y = x[:n], y[:n]
    bad = ~np.isfinite(y)
    if bad.any():  # the run diverged: keep what came before
        n = int(np.argmax(bad))
        x, y = x[:n], y[:n]
    keep = np.isfinite(x) & (x > 0)
    x, y = x[keep], y[keep]
    if x.size < max(2, min_points):
        return None

    if beta > 0:
        s = np.empty_like(y)
        avg = 0.0
        for i, v in enumerate(y):  # a few hundred points at most; a loop is clearest
            avg = beta * avg + (1.0 - beta) * v
            s[i] = avg / (1.0 - beta ** (i + 1))
    else:
        s = y.copy()

    run_min = np.minimum.accumulate(s)
    over = (run_min > 0) & (s > 4.0 * run_min)
    if over.any():
        cut = int(np.argmax(over))
        x, s = x[:cut], s[:cut]
    if x.size < 2:
        return None
    if method == "valley":
        return _valley(x, s)
    if method != "steep":
        raise ValueError(f"method must be 'steep' or 'valley', got {method!r}.")
    if x.size >= 3:
        grad = np.gradient(s, np.log10(x))
        grad = np.where(np.isfinite(grad), grad, np.inf)
        i = int(np.argmin(grad))
        if grad[i] < 0:
            return float(x[i])
    return float(x[int(np.argmin(s))] / 10.0)


def _valley(x: np.ndarray, s: np.ndarray) -> float:
    """fastai's ``valley``: the longest decreasing subsequence of ``s``, and the lr at about half its length."""
    n = s.size
    run = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if s[i] < s[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[end]:
            end, start = i, i - run[i]
    third = (end - start) / 3
    return float(x[min(start + int(third) + int(third / 2), n - 1)])
