"""``--budget``: the trainer plans the run that fits the time the user has (issue 17). The clock is injected: every
optimiser step, validation and save advances it by a cost the test sets, so the plans are exact and no test
depends on this machine's speed."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from resnet_tune import fit
from resnet_tune.cli import main
from resnet_tune.engine.budget import Candidate, Clock, choose_candidate, format_duration, minimum_budget
from resnet_tune.engine.budget import model_gflops, parse_duration, plan_epochs, plan_steps
from resnet_tune.tasks.classification.config import ClassificationConfig
from resnet_tune.tasks.classification.data import STEP_UP_EPOCHS, budget_candidates
from resnet_tune.errors import ConfigError

from conftest import make_folder


class FakeClock(Clock):
    """Time that passes only when the trainer works: ``costs`` seconds per event; ``slow_after`` steps later every
    step costs ``slow_step`` (a machine that got busy)."""

    def __init__(self, step: float = 1.0, eval_: float = 2.0, save: float = 0.5, start: float = 0.0,
                 slow_after: int | None = None, slow_step: float | None = None, probe: float = 0.0) -> None:
        self.t = start
        self.costs = {"step": step, "eval": eval_, "save": save, "probe": probe}
        self.steps = 0
        self.counts: dict[str, int] = {}
        self.slow_after, self.slow_step = slow_after, slow_step

    def now(self) -> float:
        return self.t

    def event(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
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
    # 12 steps (12 s) and a validation and save (2.5 s) an epoch; 120 s - 10 s set-up - reserve (5 + 2.4 s; no
    # final evaluation: the best epoch's own validation is the report's): seven whole epochs (101.5 s of the
    # 102.6 s); the run fills its budget (within 10%) without passing it
    expected = plan_steps(120, 10, 0, 12, 1.0, 2.5, 5 + 0.02 * 120)
    assert expected == 7 * 12 and clock.steps == expected
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


# ---- --model auto: the network and input size chosen from the data and the budget


def test_choose_candidate_takes_the_costliest_that_gets_the_epochs_it_needs():
    cands = [Candidate("resnet20", 32), Candidate("resnet32", 32, 40), Candidate("resnet56", 32, 40)]
    # 1,000 training and 300 validation images (an epoch costs 1,100 image-steps); 1 ms an image for the first
    costs = [1e-3, 1.6e-3, 3e-3]
    reserve = 5 + 0.02 * 3600
    k, epochs = choose_candidate(cands, costs, 1000, 300, 1, left=3600, budget=3600)
    assert epochs == pytest.approx([(3600 - reserve) / (c * 1100) for c in costs])
    assert k == 2  # resnet56 affords about 1,070 epochs >= 40
    k, epochs = choose_candidate(cands, costs, 1000, 300, 1, left=100, budget=3600)
    assert k == 0 and epochs[0] < 40  # not enough time for anything deeper: the cheapest
    k, _ = choose_candidate(cands, costs, 1000, 300, 1, left=75, budget=3600)
    assert k == 0  # nothing fits after the reserve: still the cheapest (the plan then says how much it needs)
    # 40,000 images: resnet32 gets 55 epochs, resnet56 29 (< 40); 100,000: resnet32 22 only, unless four
    # processes share each epoch (a quarter of the time each)
    assert choose_candidate(cands, costs, 40_000, 0, 1, left=3600, budget=3600)[0] == 1
    assert choose_candidate(cands, costs, 100_000, 0, 1, left=3600, budget=3600)[0] == 0
    assert choose_candidate(cands, costs, 100_000, 0, 4, left=3600, budget=3600)[0] == 2
    assert model_gflops("resnet18", 224) == pytest.approx(3.63, abs=0.01)
    assert model_gflops("resnet18", 112) == pytest.approx(model_gflops("resnet18", 224) / 4, rel=0.1)  # ~ pixels


def test_budget_candidates_keep_what_the_user_set():
    cfg = ClassificationConfig(data="x")
    photos = budget_candidates(cfg, "resnet18", 224, small=False, finetune=False)
    need = STEP_UP_EPOCHS["scratch_photos"]
    assert photos == [Candidate("resnet18", 128), Candidate("resnet18", 160, need), Candidate("resnet18", 224, need),
                      Candidate("resnet34", 224, need)]
    tuned = budget_candidates(cfg, "resnet18", 224, small=False, finetune=True)
    assert [(c.model, c.size) for c in tuned] == [("resnet18", 224), ("resnet34", 224), ("resnet50", 224)]
    small = budget_candidates(cfg, "resnet9_narrow", 32, small=True, finetune=False)
    assert small == [Candidate("resnet20", 32), Candidate("resnet9_narrow", 32, STEP_UP_EPOCHS["scratch_small"])]
    chosen_small = budget_candidates(cfg.replace(model="resnet56"), "resnet56", 32, small=True, finetune=False)
    assert chosen_small == [Candidate("resnet56", 32)]
    fixed_model = budget_candidates(cfg.replace(model="resnet50"), "resnet50", 224, small=False, finetune=False)
    assert [(c.model, c.size) for c in fixed_model] == [("resnet50", 128), ("resnet50", 160), ("resnet50", 224)]
    fixed_size = budget_candidates(cfg.replace(img_size=96), "resnet18", 96, small=False, finetune=False)
    assert [(c.model, c.size) for c in fixed_size] == [("resnet18", 96), ("resnet34", 96)]
    assert ClassificationConfig(model="auto").model is None  # --model auto is the default


def _chosen(run: Path) -> tuple[str, int]:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    return cfg["model"], cfg["img_size"]


def test_model_auto_follows_the_budget_and_says_why(folder, tmp_path):
    # 24 px images: the small-image networks; a candidate's timed step costs `probe` seconds on the injected clock
    fast = FakeClock(step=5.0, probe=1e-4)  # 8 images in 0.1 ms: resnet9_narrow affords thousands of epochs
    res = fit(data=str(folder), budget="2m", output=str(tmp_path / "deep"), clock=fast, started=0.0, **FAST)
    assert _chosen(res.run_dir) == ("resnet9_narrow", 32)
    note = next(n for n in res.notes if n.startswith("--model auto chose"))
    assert "resnet9_narrow at 32 px" in note and "affords about" in note and "(its step timed here" in note
    assert yaml.safe_load((res.run_dir / "config.yaml").read_text())["whiten"] is True  # and its recipe
    assert fast.counts["probe"] == 6  # both networks' steps were timed (3 each): their FLOPs mislead
    slow = FakeClock(step=5.0, probe=1.0)  # 8 images in a second: a 2-minute budget affords resnet20 only
    res = fit(data=str(folder), budget="2m", output=str(tmp_path / "shallow"), clock=slow, started=0.0, **FAST)
    assert _chosen(res.run_dir) == ("resnet20", 32)
    assert yaml.safe_load((res.run_dir / "config.yaml").read_text())["whiten"] is False
    assert "trained from scratch (resnet20 has no published weights)" in res.notes  # the network it trained
    note = next(n for n in res.notes if n.startswith("--model auto chose"))
    assert ("resnet9_narrow at 32 px would get about" in note and "(its step estimated from its FLOPs)" in note
            and f"fewer than the {STEP_UP_EPOCHS['scratch_small']}" in note)
    # the three timed steps (one warm-up) are part of the budget; resnet9_narrow's 3 steps would have cost more than
    # 1% of it by its FLOPs, so its cost is estimated instead of timed
    assert slow.costs["probe"] * 3 <= slow.t <= 120 and slow.counts["probe"] == 3
    # what the user set is kept
    res = fit(data=str(folder), budget="2m", model="resnet32", output=str(tmp_path / "set"),
              clock=FakeClock(step=5.0, probe=1e-4), started=0.0, **FAST)
    assert _chosen(res.run_dir) == ("resnet32", 32) and not any("--model auto" in n for n in res.notes)


def test_model_auto_times_each_candidate_with_the_architecture_options_it_will_train_with(folder, tmp_path,
                                                                                          monkeypatch):
    from resnet_tune.engine import budget

    timed: list[tuple[str, dict]] = []
    real = budget.image_seconds

    def spy(model, size, batch, view, num_classes, model_kwargs=None):
        timed.append((model, dict(model_kwargs or {})))
        return real(model, size, batch, view, num_classes, model_kwargs=model_kwargs)

    monkeypatch.setattr(budget, "image_seconds", spy)
    res = fit(data=str(folder), budget="2m", output=str(tmp_path / "r"), model_kwargs=["act_layer=silu"],
              drop_path_rate=0.05, clock=FakeClock(step=5.0, probe=1e-4), started=0.0, **FAST)
    assert [m for m, _ in timed] == ["resnet20", "resnet9_narrow"]
    assert all(kw == {"act_layer": "silu", "drop_path_rate": 0.05} for _, kw in timed)
    cfg = yaml.safe_load((res.run_dir / "config.yaml").read_text())  # and trains with them
    assert _chosen(res.run_dir) == ("resnet9_narrow", 32)
    assert cfg["model_kwargs"] == {"act_layer": "silu"} and cfg["drop_path_rate"] == 0.05


def test_a_fine_tune_on_a_budget_keeps_the_stem_and_first_stage_frozen_and_says_why(folder, tmp_path):
    from conftest import random_checkpoint

    ck = random_checkpoint(tmp_path, "resnet20", 24, ["a", "b", "c"])
    opts = dict(data=str(folder), model="resnet20", pretrained=str(ck), budget="2m", started=0.0, **FAST)
    res = fit(output=str(tmp_path / "b"), clock=FakeClock(), **opts)
    assert yaml.safe_load((res.run_dir / "config.yaml").read_text())["freeze_at"] == 2
    assert any("with --budget the stem and first stage stay frozen (--freeze-at 2)" in n for n in res.notes)
    # what the user sets wins, and another strategy than the chosen one is left unfrozen
    for i, (extra, want) in enumerate((({"freeze_at": 0}, 0), ({"strategy": "freeze_unfreeze"}, 0),
                                        ({"freeze_at": 1}, 1))):
        res = fit(output=str(tmp_path / f"o{i}"), clock=FakeClock(), **opts, **extra)
        assert yaml.safe_load((res.run_dir / "config.yaml").read_text())["freeze_at"] == want


def test_a_fine_tune_of_small_images_on_a_budget_trains_between_their_size_and_the_weights(folder, tmp_path):
    from conftest import random_checkpoint

    ck = random_checkpoint(tmp_path, "resnet20", 96, ["a", "b", "c"])  # weights trained at 96 px; images: 24 px
    clock = dict(step=4.0)  # a minute an epoch: two epochs a run (the choices do not depend on how many)
    res = fit(data=str(folder), model="resnet20", pretrained=str(ck), budget="2m", output=str(tmp_path / "b"),
              clock=FakeClock(**clock), started=0.0, **FAST)
    saved = yaml.safe_load((res.run_dir / "config.yaml").read_text())
    assert (saved["img_size"], saved["freeze_at"], saved["strategy"]) == (64, 0, "full")
    assert any("with --budget below the weights' size nothing is frozen" in n for n in res.notes)
    assert ("fine-tunes at 64 px, between the images' 24 px and the 96 px the weights were trained at (their "
            "geometric mean): with --budget a smaller input buys more epochs; --img-size overrides") in res.notes
    # --img-size decides the branch: at the weights' size the stem and first stage stay frozen, below it not
    for size, frozen in ((96, 2), (32, 0)):
        res = fit(data=str(folder), model="resnet20", pretrained=str(ck), budget="2m", img_size=size,
                  output=str(tmp_path / f"s{size}"), clock=FakeClock(**clock), started=0.0, **FAST)
        saved = yaml.safe_load((res.run_dir / "config.yaml").read_text())
        assert (saved["img_size"], saved["freeze_at"]) == (size, frozen)
        assert not any(n.startswith("fine-tunes at") for n in res.notes)
    # without a budget: the weights' size
    res = fit(data=str(folder), model="resnet20", pretrained=str(ck), epochs=1, output=str(tmp_path / "e"),
              **FAST)
    assert yaml.safe_load((res.run_dir / "config.yaml").read_text())["img_size"] == 96


def test_a_linear_probe_on_a_budget_never_unfreezes_the_body_however_many_epochs_the_plan_gives(folder, tmp_path):
    from safetensors.torch import load_file

    from conftest import random_checkpoint

    ck = random_checkpoint(tmp_path, "resnet20", 24, ["a", "b", "c"])
    res = fit(data=str(folder), model="resnet20", pretrained=str(ck), strategy="linear_probe", budget="1m",
              output=str(tmp_path / "p"), clock=FakeClock(step=0.1, eval_=0.1, save=0.1), started=0.0, **FAST)
    assert len(res.history) > 15  # more epochs than the run started with (the default, before its first plan)
    start, end = load_file(str(ck)), load_file(str(res.run_dir / "last.safetensors"))
    body = [k for k in end if not k.startswith("fc.")]
    assert body and all(torch.equal(end[k], start[k]) for k in body)  # weights and BN statistics untouched
    assert any(not torch.equal(end[k], start[k]) for k in end if k.startswith("fc."))


def test_a_budgeted_linear_probe_keeps_time_for_its_final_pass_through_the_whole_network(tmp_path):
    """Its validations run the head on cached features (nearly free), its final evaluation of the test split runs
    the whole network: the plan keeps the time that costs, measured on the cache's validation pass (it once used
    the cached validation's time and ran 16 s past a 3-minute budget)."""
    from conftest import random_checkpoint

    for split, n in (("train", 30), ("val", 10), ("test", 10)):
        make_folder(tmp_path / "d" / split, per_class=n)
    ck = random_checkpoint(tmp_path, "resnet20", 24, ["blue", "green", "red"])
    clock = FakeClock(step=0.1, eval_=5.0, save=0.1)  # a whole-network validation: 5 s (none runs here)
    clock.costs.update(eval_features=0.05, features=10.0, features_val=20.0, final_eval=20.0)
    res = fit(data=str(tmp_path / "d"), model="resnet20", pretrained=str(ck), strategy="linear_probe", budget="2m",
              output=str(tmp_path / "p"), clock=clock, started=0.0, **FAST)
    assert len(res.history) > 15 and (res.run_dir / "eval.json").exists()
    assert 0.9 * 120 < clock.t <= 120 - 5  # filled, with the 5 s for the report left


def test_after_unfreezing_the_budget_times_whole_network_validations_again(folder, tmp_path):
    """Freeze-then-unfreeze validates on cached features first: those cheap validations must not plan the
    whole-network epochs that follow."""
    from conftest import random_checkpoint

    ck = random_checkpoint(tmp_path, "resnet20", 24, ["blue", "green", "red"])
    clock = FakeClock(step=0.5, eval_=6.0, save=0.5)
    clock.costs.update(eval_features=0.05)
    res = fit(data=str(folder), model="resnet20", pretrained=str(ck), strategy="freeze_unfreeze", freeze_epochs=2,
              budget="3m", output=str(tmp_path / "f"), clock=clock, started=0.0, **FAST)
    assert len(res.history) > 3 and clock.t <= 180 - 5
    # plans made after a whole-network validation (6 s + a 0.5 s save) count its time, not the cached ones' mean
    later = [p for p in _plans(res.run_dir) if int(p.split("at epoch ")[1].split()[0]) >= 3]
    assert later and all("6.5 s a validation and save" in p for p in later)
    assert "fine-tunes at 24 px, the size the weights were trained at; --img-size overrides" in res.notes


def test_model_auto_trains_photos_from_scratch_at_a_smaller_size_on_a_short_budget(tmp_path):
    photos = make_folder(tmp_path / "photos", per_class=12, size=150)
    res = fit(data=str(photos), model="resnet18", budget="1m", pretrained="none", output=str(tmp_path / "r"),
              clock=FakeClock(step=5.0, probe=1.0), started=0.0, **FAST)
    assert _chosen(res.run_dir) == ("resnet18", 128)
    assert any(n.startswith("--model auto chose resnet18 at 128 px") for n in res.notes)
    # with no network named, photos from scratch train the photo default at its 128 px (no smaller size to step
    # down to)
    res = fit(data=str(photos), budget="1m", pretrained="none", output=str(tmp_path / "mini"),
              clock=FakeClock(step=5.0, probe=1.0), started=0.0, **FAST)
    assert _chosen(res.run_dir) == ("seresnext12d_64x4d", 128)
