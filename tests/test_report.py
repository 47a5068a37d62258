"""Run report: every plot writes a readable PNG, the Markdown has its tables, the lr suggestion is sensible."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_tune.eval.metrics import classification_report
from resnet_tune.eval import (
    plot_confusion,
    plot_curves,
    plot_lr_find,
    plot_worst,
    suggest_lr,
    write_report,
)


def _rows(n: int = 8) -> list[dict]:
    rows = []
    for e in range(1, n + 1):
        rows.append({"epoch": e, "train_loss": 2.0 / e, "train_acc": 1 - 0.5 / e,
                     "val_loss": 2.2 / e + 0.02 * e, "val_acc": 0.55 + 0.04 * e - 0.003 * e * e,
                     "lr": 1e-3 * 0.5 * (1 + math.cos(math.pi * (e - 1) / n)),
                     "epoch_time": 12.5, "images_per_s": 410.0 + e})
    rows[0]["val_loss"] = float("nan")  # validation missing for one epoch
    del rows[1]["val_acc"]
    return rows


def _check_png(path: Path | None, min_size: int = 200) -> tuple[int, int]:
    assert path is not None and Path(path).is_file() and Path(path).stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        w, h = im.size
    assert w >= min_size and h >= min_size
    return w, h


def _report(n: int = 60, c: int = 5, files: list[str] | None = None, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, c, size=n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), t] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return classification_report(probs, t, [f"class_{i}" for i in range(c)], files=files)


def test_plot_curves(tmp_path: Path) -> None:
    out = plot_curves(_rows(), tmp_path / "sub" / "curves.png")
    assert out == tmp_path / "sub" / "curves.png"
    _check_png(out)
    # rows straight from csv.DictReader (strings, blanks for missing validation)
    str_rows = [{k: ("" if k.startswith("val") and i == 0 else str(v)) for k, v in r.items()}
                for i, r in enumerate(_rows(3))]
    _check_png(plot_curves(str_rows, tmp_path / "curves_str.png"))


@pytest.mark.parametrize("c", [4, 15, 100])
def test_plot_confusion(tmp_path: Path, c: int) -> None:
    rng = np.random.default_rng(c)
    cm = rng.integers(0, 20, size=(c, c)) + np.diag(rng.integers(30, 60, size=c))
    cm[-1] = 0  # a class without samples must not break normalisation
    names = [f"class number {i}" for i in range(c)]
    w, h = _check_png(plot_confusion(cm, names, tmp_path / f"cm{c}.png", normalize=c != 15))
    if c == 100:
        assert w > 1500 and h > 1500  # sized to the class count


def test_plot_worst_skips_missing_and_unreadable(tmp_path: Path) -> None:
    files = []
    for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        p = tmp_path / f"img{i}.jpg"
        Image.new("L" if i == 2 else "RGB", (320, 240), color[0] if i == 2 else color).save(p)
        files.append(str(p))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    worst = [
        {"file": files[0], "true": "cat", "pred": "dog", "prob_true": 0.01, "prob_pred": 0.97},
        {"file": str(tmp_path / "missing.jpg"), "true": "cat", "pred": "fox", "prob_true": 0.02, "prob_pred": 0.9},
        {"file": str(bad), "true": "dog", "pred": "cat", "prob_true": 0.03, "prob_pred": 0.8},
        {"file": files[1], "true": "a very long class name indeed", "pred": "another long class name",
         "prob_true": 0.04, "prob_pred": 0.7},
        {"file": files[2], "true": "fox", "pred": "cat", "prob_true": 0.05, "prob_pred": 0.6},
    ]
    _check_png(plot_worst(worst, tmp_path / "worst.png"), min_size=150)
    assert plot_worst(worst[1:3], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    assert plot_worst([], tmp_path / "none.png") is None


def _lr_curve(n: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flat until ~1e-3, falls steeply around 1e-2, flat again, explodes past 1."""
    lrs = np.logspace(-7, 1, n)
    x = np.log10(lrs)
    rng = np.random.default_rng(seed)
    loss = 2.3 - 1.5 / (1 + np.exp(-3 * (x + 2))) + np.where(x > 0, np.expm1(3 * x), 0.0)
    return lrs, loss + rng.normal(0, 0.03, n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_suggest_lr_sensible(seed: int) -> None:
    lrs, loss = _lr_curve(seed=seed)
    lr = suggest_lr(lrs, loss)
    assert lr is not None and 1e-3 <= lr <= 0.3, lr
    # already-smoothed input: no extra smoothing -> right at the steep part
    lrs2, clean = _lr_curve(n=200)
    clean = 2.3 - 1.5 / (1 + np.exp(-3 * (np.log10(lrs2) + 2)))
    lr2 = suggest_lr(lrs2, clean, beta=0)
    assert lr2 == pytest.approx(1e-2, rel=0.15)


def test_suggest_lr_edge_cases() -> None:
    assert suggest_lr([1e-5, 1e-4, 1e-3], [1.0, 0.9, 0.8]) is None  # too few points
    assert suggest_lr([], []) is None
    lrs = np.logspace(-5, 0, 30)
    rising = np.linspace(1.0, 2.0, 30)  # never falls -> min-loss lr / 10
    assert suggest_lr(lrs, rising) == pytest.approx(lrs[0] / 10)
    # divergence to inf/NaN is cut, not fatal
    lrs, loss = _lr_curve()
    loss[90:] = np.nan
    assert 1e-3 <= suggest_lr(lrs, loss) <= 0.3


def test_plot_lr_find(tmp_path: Path) -> None:
    lrs, loss = _lr_curve()
    _check_png(plot_lr_find(lrs, loss, suggest_lr(lrs, loss), tmp_path / "lr_find.png"))
    _check_png(plot_lr_find(lrs, loss, None, tmp_path / "lr_find_none.png"))


def test_write_report(tmp_path: Path) -> None:
    classes = [f"class_{i}" for i in range(5)]
    ev = _report(files=[f"/data/val/{i % 5}/img {i}.jpg" for i in range(60)])
    config = {"model": "resnet50", "pretrained": True, "strategy": "finetune", "epochs": 8, "batch_size": 64,
              "lr": 3e-4, "precision": "bf16", "data": {"root": "/data/pets", "img_size": 224},
              "optimizer": {"name": "adamw", "weight_decay": 0.05}, "extra_knob": [1, 2]}
    scan = "found 1,234 images in 5 classes\n  2 unreadable files skipped ```"
    out = write_report(tmp_path / "run", title="Pets | resnet50", config=config, rows=_rows(), eval_report=ev,
                       classes=classes, scan_summary=scan, notes=["best checkpoint: best.pt", "multi\nline"],
                       images={"Training curves": "curves.png",
                               "Confusion matrix": str(tmp_path / "run" / "figs" / "confusion matrix.png")})
    assert out == tmp_path / "run" / "report.md"
    md = out.read_text(encoding="utf-8")
    assert md.startswith("# Pets \\| resnet50\n")
    for header in ("| epoch | train loss | train acc | val loss | val acc | lr |",
                   "| class | precision | recall | F1 | support |",
                   "| setting | value |",
                   "| # | file | true | predicted | p(true) | p(pred) |"):
        assert header in md, header
    for c in classes:
        assert c.replace("_", "\\_") in md
    assert "Best validation accuracy" in md and "(epoch " in md
    assert "Total training time" in md and "1m 40s" in md  # 8 x 12.5 s
    assert "images/s" in md
    assert "![Training curves](curves.png)" in md
    assert "(figs/confusion%20matrix.png)" in md  # absolute inside run dir -> relative, space encoded
    assert "````text\nfound 1,234 images" in md  # fence longer than the backticks inside
    assert "- best checkpoint: best.pt" in md
    assert "`optimizer.weight_decay`" in md and "`model`" in md and "resnet50" in md
    assert "<details><summary>Full configuration</summary>" in md and '"extra_knob"' in md
    # every table row has as many cells as its header
    lines = md.splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("| ---") or ln.startswith("| :--") or ln.startswith("| ---:"):
            ncol = lines[i - 1].count(" | ")
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                assert lines[j].replace("\\|", "").count(" | ") == ncol, lines[j]
                j += 1


def test_write_report_minimal(tmp_path: Path) -> None:
    out = write_report(tmp_path, title="t", config={}, rows=[], eval_report=None, classes=[])
    assert out.read_text(encoding="utf-8").startswith("# t\n")


def test_suggest_lr_valley_ignores_a_noisy_start() -> None:
    # the shape of a fine-tuning range test of 60 steps at batch 32: flat and noisy until ~1e-3, a valley down to
    # its minimum near 0.1, then a rise. A dip in the first steps makes the steepest descent of the smoothed
    # curve the smallest lr (what --lr auto once picked: 1e-5, and the run did not learn)
    lrs = np.logspace(-5, 0, 60)
    rng = np.random.default_rng(0)
    t = np.log10(lrs)
    loss = 2.4 - 0.35 * np.exp(-((t + 1) / 0.7) ** 2) + rng.normal(0, 0.04, 60)
    loss[1] = 2.1
    assert suggest_lr(lrs, loss) < 1e-4  # the failure the valley rule avoids
    valley = suggest_lr(lrs, loss, method="valley")
    assert 1e-3 <= valley <= 0.1, valley
    with pytest.raises(ValueError, match="method must be"):
        suggest_lr(lrs, loss, method="fast")
