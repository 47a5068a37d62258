"""``--budget``: the trainer plans the run that fits the time the user has (issue 17). The clock is injected: every
optimiser step, validation and save advances it by a cost the test sets, so the plans are exact and no test
depends on this machine's speed."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from resnet_tune import fit
from resnet_tune.cli import main
from resnet_tune.engine.budget import Clock, format_duration, minimum_budget, parse_duration, plan_epochs, plan_steps
from resnet_tune.errors import ConfigError

from conftest import make_folder


class FakeClock(Clock):
    """Time that passes only when the trainer works: ``costs`` seconds per event; ``slow_after`` steps later every
    step costs ``slow_step`` (a machine that got busy)."""

    def __init__(self, step: float = 1.0, eval_: float = 2.0, save: float = 0.5, start: float = 0.0,
                 slow_after: int | None = None, slow_step: float | None = None) -> None:
        self.t = start
        self.costs = {"step": step, "eval": eval_, "save": save}
        self.steps = 0
        self.slow_after, self.slow_step = slow_after, slow_step

    def now(self) -> float:
        return self.t

    def event(self, kind: str) -> None:
        if kind == "step":
            self.steps += 1
            if self.slow_after is not None and self.steps > self.slow_after:
                self.t += self.slow_step
                return
        self.t += self.costs.get(kind, 0.0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("budget") / "data", per_class=40)  # 96 training images


FAST = dict(batch_size=8, progress=False, quiet=True, precision="fp32")  # 12 steps an epoch


def _plans(run: Path) -> list[str]:
    return [line for line in (run / "config.yaml").read_text().splitlines() if line.startswith("# budget plan")]


def test_durations():
    assert parse_duration("10m") == 600 and parse_duration("90s") == 90 and parse_duration("1h30m") == 5400
    assert parse_duration("1.5h") == 5400 and parse_duration(" 2m 30s ") == 150 and parse_duration("45") == 45
    for bad in ("", "ten minutes", "10x", "-5m", "0s", True):
        with pytest.raises(ConfigError, match="budget must be"):
            parse_duration(bad)
    assert [format_duration(s) for s in (45, 90, 600, 3725)] == ["45s", "1m30s", "10m", "1h02m05s"]
    # 85 s left: five epochs of 15 s, then 10 s hold a validation and a 5-step last epoch
    assert plan_steps(100, 10, 0, 10, 1.0, 5.0, 5.0) == 55 and plan_epochs(100, 10, 0, 10, 1.0, 5.0, 5.0) == 6
    assert plan_steps(92, 10, 0, 10, 1.0, 5.0, 5.0) == 50  # 2 s left after five epochs: no sliver of an epoch
    assert plan_steps(100, 10, 2, 10, 1.0, 5.0, 5.0) == 75
    assert minimum_budget(30, 10, 1.0, 5.0, 5.0) == 60  # (30 + 15 + 5) / 0.98 -> 51 -> 60


def test_plan_comes_from_the_measured_speed_and_the_run_ends_inside_the_budget(folder, tmp_path):
    clock = FakeClock(step=1.0, eval_=2.0, save=0.5, start=10.0)  # 10 s of set-up before the first step
    res = fit(data=str(folder), budget="2m", output=str(tmp_path / "r"), clock=clock, started=0.0, **FAST)
    # 12 steps (12 s) and a validation and save (2.5 s) an epoch; 120 s - 10 s set-up - reserve (2.5 + 5 + 2.4 s):
    # six whole epochs and a last one of 10 steps; the run fills its budget (within 10%) without passing it
    expected = plan_steps(120, 10, 0, 12, 1.0, 2.5, 2.5 + 5 + 0.02 * 120)
    assert expected == 6 * 12 + 10 and clock.steps == expected
    assert 0.9 * 120 <= clock.t <= 120
    cfg = yaml.safe_load((res.run_dir / "config.yaml").read_text())
    assert cfg["budget"] == "2m" and cfg["epochs"] == len(res.history) == math.ceil(expected / 12)
    plans = _plans(res.run_dir)
    assert plans and "12 steps" not in plans[0] and "1 s a step" in plans[0]
    last = res.history[-1]
    assert last["lr"] < 0.01 * max(r["lr"] for r in res.history)  # the schedule ran to its end
    assert (res.run_dir / "best.safetensors").is_file() and (res.run_dir / "report.md").is_file()


def test_a_slowdown_shortens_the_plan_and_the_schedule_still_ends(folder, tmp_path):
    clock = FakeClock(step=1.0, slow_after=30, slow_step=3.0)  # from the 31st step on, three times slower
    res = fit(data=str(folder), budget="3m", output=str(tmp_path / "r"), clock=clock, started=0.0, **FAST)
    plans = _plans(res.run_dir)
    assert len(plans) >= 2 and "slower than planned" in plans[-1]
    first = int(plans[0].split(": ", 1)[1].split(" epoch")[0])
    assert len(res.history) < first and clock.t <= 180
    assert res.history[-1]["lr"] < 0.01 * max(r["lr"] for r in res.history)
    assert res.history[-1]["epoch"] == len(res.history)


def test_time_up_mid_epoch_stops_validates_and_checkpoints(folder, tmp_path):
    clock = FakeClock(step=1.0, slow_after=40, slow_step=20.0)  # the machine almost stalls in epoch 4
    res = fit(data=str(folder), budget="3m", output=str(tmp_path / "r"), clock=clock, started=0.0, **FAST)
    assert any("early to finish inside the budget" in n for n in res.notes)
    assert clock.t <= 180 + 20  # at most the one step that was already running
    assert (res.run_dir / "best.safetensors").is_file() and (res.run_dir / "eval.json").is_file()


def test_too_small_a_budget_says_what_it_needs_and_partial_trains_a_fraction(folder, tmp_path):
    clock = FakeClock(step=5.0, start=20.0)
    with pytest.raises(ConfigError, match=r"a budget of 1m cannot hold one epoch of this run: the set-up took "
                                          r"\d+s .*give at least --budget \dm\d*s?, or add --budget-partial"):
        fit(data=str(folder), budget="1m", output=str(tmp_path / "r"), clock=clock, started=0.0, **FAST)
    clock = FakeClock(step=5.0, start=20.0)
    res = fit(data=str(folder), budget="1m", budget_partial=True, output=str(tmp_path / "p"), clock=clock,
              started=0.0, **FAST)
    assert len(res.history) == 1 and (res.run_dir / "best.safetensors").is_file()
    assert clock.t <= 60 + 5


def test_budget_with_epochs_is_an_error_that_says_which_to_drop(folder, tmp_path, capsys):
    assert main(["train", "--data", str(folder), "--budget", "5m", "--epochs", "3",
                 "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--budget and --epochs both say how long to train: drop --epochs" in err
    assert main(["train", "--data", str(folder), "--budget", "soon", "--output", str(tmp_path / "r")]) == 2
    assert "budget must be a duration such as 10m" in capsys.readouterr().err


def test_resume_replans_the_remaining_budget(folder, tmp_path, monkeypatch):
    out = tmp_path / "r"
    clock = FakeClock(step=1.0)
    monkeypatch.setenv("RESNET_TUNE_DEBUG_INTERRUPT_AT", "3")
    with pytest.raises(KeyboardInterrupt):
        fit(data=str(folder), budget="3m", output=str(out), clock=clock, started=0.0, **FAST)
    spent = clock.t
    monkeypatch.delenv("RESNET_TUNE_DEBUG_INTERRUPT_AT")
    clock2 = FakeClock(step=2.0)  # resumed on a machine twice as slow
    res = fit(resume=out, clock=clock2, started=0.0, progress=False, quiet=True)
    plans = _plans(out)
    assert len(plans) >= 2 and "re-planned on resuming" in "\n".join(plans)
    assert spent + clock2.t <= 180 + 1  # both sessions together (the save in between is counted roughly)
    assert res.history[-1]["lr"] < 0.01 * max(r["lr"] for r in res.history)
