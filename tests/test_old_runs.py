"""Run folders written before the one-engine redesign resume under it (tests/fixtures/old_runs, made by
tests/fixtures/make_old_runs.py with the old code): the checkpoint format and the resume state carry over."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import resnet_tune as rt
from resnet_tune.engine import checkpoint as ckpt

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import make_old_runs  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _tiny_model() -> None:
    from resnet_tune.models import list_models

    if "tiny_resnet" not in list_models():
        make_old_runs.register_tiny()


@pytest.fixture
def old_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the fixture (its runs are resumed in place, so never the original), as the working folder."""
    root = tmp_path / "old_runs"
    shutil.copytree(FIXTURES / "old_runs", root)
    monkeypatch.chdir(root)
    return root


COMMON = dict(model="tiny_resnet", epochs=3, batch_size=4, precision="fp32", deterministic=True, progress=False,
              quiet=True, seed=5)


def _resume(root: Path, run: str) -> tuple[object, dict]:
    state = ckpt.load_state(root / run / ckpt.STATE)
    assert state["epoch"] == 2 and not state.get("scaler")  # written before every run had a gradient scaler
    assert ckpt.read_record(root / run / ckpt.LAST)["format_version"] == 1  # no new checkpoint format was needed
    before = load_file(str(root / run / ckpt.LAST))
    resumed = rt.fit(resume=root / run, quiet=True)
    assert [int(r["epoch"]) for r in resumed.history] == [1, 2, 3]
    assert ckpt.load_state(root / run / ckpt.STATE)["epoch"] == 3
    return resumed, before


def test_an_old_classification_run_resumes_where_it_stopped(old_runs: Path) -> None:
    """The old run's state carries over whole: its first two epochs' rows are kept, the schedule goes on at the
    step a run of the new engine is at, and the third epoch is a function of the old state alone (two resumed copies
    end bit-identical). The fixture was written on another machine, whose convolution kernels round differently, so
    its end is not compared with a fresh run here; tests/test_train.py compares an interrupted run of the new engine
    with an uninterrupted one on the same machine."""
    shutil.copytree(old_runs / "classify", old_runs / "classify-copy")
    with (old_runs / "classify" / "metrics.csv").open() as f:
        old_rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    resumed, before = _resume(old_runs, "classify")
    for new, old in zip(resumed.history[:2], old_rows, strict=True):
        assert new["train_loss"] == pytest.approx(old["train_loss"], abs=1e-5)  # (the CSV has 6 digits)
        assert new["lr"] == pytest.approx(old["lr"], rel=1e-5)
    fresh = rt.fit(data="photos", img_size=16, ema=True, output=str(old_runs / "classify-fresh"), **COMMON)
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in fresh.history]
    again = rt.fit(resume=old_runs / "classify-copy", quiet=True)
    a, b = load_file(str(old_runs / "classify" / ckpt.LAST)), load_file(str(again.run_dir / ckpt.LAST))
    assert again.run_dir.resolve() == (old_runs / "classify-copy").resolve()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(before[k], a[k]) for k in before)  # epoch 3 trained


def test_an_old_segmentation_run_resumes(old_runs: Path) -> None:
    """The decoder's dropout now draws per micro-batch (so that N processes train what one process with N
    accumulation steps does), so the third epoch is not bit-identical to the old engine's: it trains on from the
    old state with the same schedule and ends with a report."""
    resumed, before = _resume(old_runs, "segment")
    fresh = rt.fit(task="segmentation", data="seg", head="fcn", output=str(old_runs / "segment-fresh"), **COMMON)
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in fresh.history]
    after = load_file(str(old_runs / "segment" / ckpt.LAST))
    assert any(not torch.equal(before[k], after[k]) for k in before)  # epoch 3 trained
    assert 0.0 <= resumed.eval_report["mean_iou"] <= 1.0 and (old_runs / "segment" / "report.md").is_file()
