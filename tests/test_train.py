"""Fine-tuning end to end on tiny images: CLI and API, resume, strategies and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import resnet_tune as rt
from resnet_tune import fit
from resnet_tune.cli import main
from resnet_tune.engine import checkpoint as ckpt
from resnet_tune.errors import CheckpointError, ConfigError, DataError, TrainingError
from resnet_tune.tasks.classification import TrainConfig

from conftest import make_folder, make_image

FAST = dict(epochs=2, batch_size=8, img_size=16, progress=False, precision="fp32")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_cli_train_evaluate_predict_embed(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data", str(image_folder), "--epochs", "2", "--batch-size", "8", "--img-size", "16",
                 "--output", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "training from scratch" in out and f"report {run / 'report.md'}" in out
    for name in ["config.yaml", "metrics.csv", "curves.png", "confusion.png", "report.md", "best.safetensors",
                 "last.safetensors", "last.state.pt", "bad_files.txt", "data_scan.json", "eval.json"]:
        assert (run / name).is_file(), name
    with (run / "metrics.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0][:8] == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
                           "images_per_s"]
    assert len(rows) == 3 and all(0.0 <= float(r[4]) <= 1.0 for r in rows[1:])

    rec = ckpt.read_record(run)
    assert rec["classes"] == ["blue", "green", "red"]
    assert rec["format_version"] == ckpt.FORMAT_VERSION
    assert rec["preprocessing"]["input_size"] == 16
    assert set(rec["versions"]) >= {"torch", "torchvision", "resnet_tune"}

    assert main(["evaluate", str(run), "--data", str(image_folder), "--output", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["num_samples"] == 30 and "per_class" in report and "worst" in report
    assert "accuracy" in capsys.readouterr().out

    pj = tmp_path / "pred.json"
    assert main(["predict", str(run), str(image_folder / "red"), "--top-k", "2", "--output", str(pj)]) == 0
    preds = json.loads(pj.read_text())
    assert len(preds) == 10
    assert set(preds[0]) == {"file", "top"} and len(preds[0]["top"]) == 2
    assert set(preds[0]["top"][0]) == {"class", "prob"}
    assert preds[0]["top"][0]["prob"] >= preds[0]["top"][1]["prob"]
    pc = tmp_path / "pred.csv"
    assert main(["predict", str(run / "best.safetensors"), str(image_folder / "red" / "red_000.png"), "--output",
                 str(pc)]) == 0
    assert pc.read_text().splitlines()[0].startswith("file,class_1,prob_1")

    emb = tmp_path / "emb.npy"
    assert main(["embed", str(run), str(image_folder / "blue"), "--output", str(emb)]) == 0
    feats = np.load(emb)
    assert feats.shape == (10, 256)  # resnet9_narrow's features (the default for these 16 px images)
    assert len((tmp_path / "emb.files.txt").read_text().splitlines()) == 10


def test_training_learns_colours(image_folder: Path, tmp_path: Path) -> None:
    from resnet_tune import Predictor

    res = fit(data=str(image_folder), output=str(tmp_path / "r"), **{**FAST, "epochs": 6}, quiet=True)
    assert res.best_metric == 1.0

    pred = Predictor(res.run_dir)
    out = pred.predict_files([str(image_folder / "green" / "green_001.png")])
    assert out[0]["top"][0]["class"] == "green"


def test_folded_predictor_matches_eager(image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from resnet_tune.engine import hardware
    from resnet_tune import Predictor

    # resnet20: every BatchNorm follows its convolution (resnet9_narrow's stage entries pool between the two)
    res = fit(data=str(image_folder), output=str(tmp_path / "r"), model="resnet20", **FAST, quiet=True)
    pred = Predictor(res.run_dir, precision="fp32")
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(pred.logits(x), pred.eager(x), rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in pred.model.modules())
    # on a CPU a large batch goes through in cache-sized chunks (3 images of 16x16 here): the same logits
    assert hardware.inference_chunk(pred.device, 16, 16) == round(4 * 224 * 224 / 256)
    monkeypatch.setattr(hardware, "CPU_CHUNK_PIXELS", 3 * 16 * 16)
    assert hardware.inference_chunk(pred.device, 16, 16) == 3
    xb = torch.randn(10, 3, 16, 16)
    folded, calls = pred.model, []
    pred.engine_batch.model = lambda c: (calls.append(len(c)), folded(c))[1]  # the torch engine's model
    torch.testing.assert_close(pred.logits(xb), pred.eager(xb), rtol=1e-4, atol=1e-4)
    assert calls == [3, 3, 3, 1]
    # the default precision (bf16 weights and autocast on CPUs with native bf16) stays close to eager fp32
    fast = Predictor(res.run_dir)
    if fast.precision.amp_dtype is not None:
        assert next(fast.model.parameters()).dtype == fast.precision.amp_dtype
    ref = pred.eager(xb)
    got = fast.logits(xb)
    assert got.dtype == torch.float32
    assert (got - ref).abs().max() <= 0.02 * ref.abs().max() + 0.02


@pytest.mark.parametrize("loader", ["memory", "workers"])
def test_resume_after_interruption_is_bit_exact(image_folder: Path, tmp_path: Path, loader: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # with EMA, Lookahead in mid-cycle at the interruption (3 steps an epoch, k=2; airbench's schedule, weights and
    # BatchNorm statistics, in one of the two) and progressive resizing
    opts = dict(FAST, epochs=3, deterministic=True, loader=loader, workers=0, ema=True, lookahead=2,
                lookahead_schedule="airbench" if loader == "workers" else "constant", progressive_resize=0.5)
    full = fit(data=str(image_folder), output=str(tmp_path / "full"), quiet=True, **opts)

    monkeypatch.setenv("RESNET_TUNE_DEBUG_INTERRUPT_AT", "3")  # Ctrl-C at the start of that epoch
    with pytest.raises(KeyboardInterrupt):
        fit(data=str(image_folder), output=str(tmp_path / "part"), quiet=True, **opts)
    assert ckpt.load_state(tmp_path / "part" / ckpt.STATE)["epoch"] == 2
    monkeypatch.delenv("RESNET_TUNE_DEBUG_INTERRUPT_AT")
    resumed = fit(resume=tmp_path / "part", quiet=True)
    assert len(resumed.history) == 3
    a, b = _weights(full.run_dir / "last.safetensors"), _weights(tmp_path / "part" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full_state = ckpt.load_state(full.run_dir / ckpt.STATE)
    sa, sb = full_state["model"], ckpt.load_state(tmp_path / "part" / ckpt.STATE)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    if opts["lookahead_schedule"] == "airbench":  # the run ended on the slow copy, BatchNorm statistics included
        slow = full_state["lookahead"]["slow"]
        assert any(k.endswith("running_mean") for k in slow) and all(torch.equal(sa[k], v) for k, v in slow.items())


def test_val_every_validates_every_nth_and_the_last_epoch_and_trains_the_same(
        image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """``--val-every 2`` over 5 epochs: one validation pass after epochs 2, 4 and 5 each and none more (the last
    one's predictions are the report's); the other epochs keep their training metrics, leave the validation cells
    of metrics.csv empty and still save the last checkpoint, so a run stopped after one of them resumes exactly; the
    best checkpoint is a validated epoch's; the weights are those of a run validated every epoch. A budget refuses
    it in one sentence."""
    from resnet_tune.engine.trainer import Trainer

    calls: list[int] = []
    real = Trainer.evaluate

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", counted)
    opts = dict(FAST, epochs=5, deterministic=True)
    every = fit(data=str(image_folder), output=str(tmp_path / "every"), quiet=True, **opts)
    assert len(calls) == 5
    calls.clear()
    sparse = fit(data=str(image_folder), output=str(tmp_path / "sparse"), val_every=2, **opts)
    assert len(calls) == 3
    out = capsys.readouterr().out
    assert "epoch 1/5  train loss" in out and "(validated every 2 epochs)" in out
    assert [("val_acc" in r) for r in sparse.history] == [False, True, False, True, True]
    assert sparse.best_epoch in (2, 4, 5) and all("train_acc" in r for r in sparse.history)
    with (sparse.run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["val_acc"] != "" for r in rows] == [False, True, False, True, True]
    assert [float(r["val_acc"]) for r in rows if r["val_acc"]] == pytest.approx(
        [every.history[i]["val_acc"] for i in (1, 3, 4)])
    assert "val_every: 2" in (sparse.run_dir / "config.yaml").read_text()
    a, b = _weights(every.run_dir / "last.safetensors"), _weights(sparse.run_dir / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # stopped after epoch 3 (not validated): resumes to the same weights
    monkeypatch.setenv("RESNET_TUNE_DEBUG_INTERRUPT_AT", "4")
    with pytest.raises(KeyboardInterrupt):
        fit(data=str(image_folder), output=str(tmp_path / "part"), quiet=True, val_every=2, **opts)
    monkeypatch.delenv("RESNET_TUNE_DEBUG_INTERRUPT_AT")
    resumed = fit(resume=tmp_path / "part", quiet=True)
    assert [("val_acc" in r) for r in resumed.history] == [False, True, False, True, True]
    c = _weights(tmp_path / "part" / "last.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ConfigError, match="--val-every with --budget is not supported yet"):
        TrainConfig(data="d", budget="2m", val_every=2)


def test_resume_keeps_schedule(image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = fit(data=str(image_folder), output=str(tmp_path / "full"), quiet=True, **dict(FAST, epochs=3))
    monkeypatch.setenv("RESNET_TUNE_DEBUG_INTERRUPT_AT", "2")  # Ctrl-C at the start of that epoch
    with pytest.raises(KeyboardInterrupt):
        fit(data=str(image_folder), output=str(tmp_path / "part"), quiet=True, **dict(FAST, epochs=3))
    monkeypatch.delenv("RESNET_TUNE_DEBUG_INTERRUPT_AT")
    resumed = fit(resume=tmp_path / "part", quiet=True)
    assert [r["lr"] for r in resumed.history] == pytest.approx([r["lr"] for r in full.history])


def test_flat_cos_schedule_holds_the_peak_then_anneals() -> None:
    from resnet_tune.engine.optim import lr_at

    mults = [lr_at(t, 100, "flat_cos", warmup_steps=5) for t in range(101)]
    assert mults[0] == pytest.approx(1 / 6) and mults[4] == pytest.approx(5 / 6)  # linear warm-up
    assert mults[5:75] == [1.0] * 70  # flat at the peak until 75% of the steps
    assert all(a > b for a, b in zip(mults[75:], mults[76:]))  # then strictly down
    assert mults[100] == pytest.approx(1e-3)  # to the cosine's floor
    assert lr_at(50, 100, "flat_cos", flat_frac=0.5) == 1.0 and lr_at(75, 100, "flat_cos", flat_frac=0.5) == \
        pytest.approx(1e-3 + (1 - 1e-3) * 0.5)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(0, 10, "flat-cos")


def test_triangle_schedule_is_airbench94s() -> None:
    from resnet_tune.engine.optim import lr_at

    def get_lr(step: int, total: int) -> float:  # legacy/airbench94.py, verbatim but for the argument
        warmup_steps = int(total * 0.23)
        warmdown_steps = total - warmup_steps
        if step < warmup_steps:
            frac = step / warmup_steps
            return 0.2 * (1 - frac) + 1.0 * frac
        frac = (step - warmup_steps) / warmdown_steps
        return 1.0 * (1 - frac) + 0.07 * frac

    for total in (426, 97, 10):
        for t in range(total + 1):
            assert lr_at(t, total, "triangle") == pytest.approx(get_lr(t, total), abs=1e-12), (total, t)


def test_progressive_resizing_trains_small_first_and_full_at_the_end(image_folder: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    from resnet_tune.engine.optim import scale_at, scaled_size
    from resnet_tune.tasks.classification.task import ClassificationTask

    assert [scale_at(e, 5, 0.5) for e in range(5)] == [0.5, 0.625, 0.75, 0.875, 1.0]  # full size from 75% on
    assert [scaled_size(128, scale_at(e, 5, 0.5)) for e in range(5)] == [64, 80, 96, 112, 128]
    assert scale_at(0, 1, 0.5) == 0.5 and scale_at(3, 4, 1.0) == 1.0 and scaled_size(20, 0.1) == 8
    seen: list[tuple[int, ...]] = []
    original = ClassificationTask.train_loss

    def spy(self, fwd, x, y, criterion, generator):  # type: ignore[no-untyped-def]
        seen.append(tuple(x.shape[-2:]))
        return original(self, fwd, x, y, criterion, generator)

    monkeypatch.setattr(ClassificationTask, "train_loss", spy)
    res = fit(data=str(image_folder), output=str(tmp_path / "run"), **dict(FAST, epochs=4, img_size=32,
                                                                         progressive_resize=0.5))
    assert "progressive resizing: the epochs train at 16, 24, 24, 32 px" in capsys.readouterr().out
    per_epoch = len(seen) // 4
    assert {seen[0], seen[per_epoch], seen[-1]} == {(16, 16), (24, 24), (32, 32)}
    assert res.history[-1]["val_acc"] >= 0  # validation ran at the full size (the model saw no other)
    with pytest.raises(ConfigError, match="--progressive-resize with --budget"):
        TrainConfig(budget="5m", progressive_resize=0.5)


def test_segmentation_resizes_masks_by_nearest_neighbour() -> None:
    from resnet_tune.tasks.segmentation.task import SegmentationTask
    from resnet_tune.tasks.segmentation.config import SegmentationConfig

    task = SegmentationTask(SegmentationConfig())
    x = torch.rand(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    y = torch.zeros(2, 8, 8, dtype=torch.long)
    y[:, 4:] = 3
    y[:, :, :2] = 255  # the ignore index stays itself
    sx, sy = task.resize_batch(x, y, (4, 4))
    assert sx.shape == (2, 3, 4, 4) and sx.is_contiguous(memory_format=torch.channels_last)
    assert sy.dtype == torch.long and set(sy.unique().tolist()) == {0, 3, 255}
    assert (sy[:, 2:, 1:] == 3).all() and (sy[:, :, 0] == 255).all()


def test_lookahead_pulls_back_to_the_slow_weights_every_k_steps() -> None:
    from resnet_tune.engine.optim import Lookahead

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    la = Lookahead(model, k=3, alpha=0.5)
    x = torch.randn(8, 3)
    for step in range(3):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
        fast = {n: p.detach().clone() for n, p in model.named_parameters()}
        la.update(model)
        if step < 2:  # between syncs the fast weights run free
            assert all(torch.equal(p, fast[n]) for n, p in model.named_parameters())
    for n, p in model.named_parameters():  # after k steps: halfway between where they started and where they ran
        torch.testing.assert_close(p.detach(), start[n] + 0.5 * (fast[n] - start[n]))
        torch.testing.assert_close(la.slow[n], p.detach())
    copy = Lookahead(model, k=3)
    copy.load_state_dict(la.state_dict())
    assert copy.steps == 3 and all(torch.equal(copy.slow[n], la.slow[n]) for n in la.slow)


def test_lookahead_airbench_schedule_is_airbenchs_lookahead_ema() -> None:
    """Against airbench94's own ``LookaheadState`` (legacy/airbench94.py): every 5 steps the weights and BatchNorm
    statistics move to an average with decay 0.95^5 (t/T)^3, and after the last step the model is that average."""
    from resnet_tune.engine.optim import Lookahead

    def net() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))

    ours, ref = net(), net()
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.85, nesterov=True) for m in (ours, ref)]
    total, k = 12, 5
    la = Lookahead(ours, k=k, schedule="airbench")
    ema = {n: v.clone() for n, v in ref.state_dict().items()}  # airbench's LookaheadState
    alpha = 0.95 ** 5 * (torch.arange(total + 1) / total) ** 3
    torch.manual_seed(1)
    batches = [torch.randn(6, 3, 8, 8) for _ in range(total)]
    for step, x in enumerate(batches):
        for model, opt in zip((ours, ref), opts):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        la.update(ours, progress=(step + 1) / total)
        with torch.no_grad():
            if (step + 1) % k == 0:
                for e, p in zip(ema.values(), ref.state_dict().values()):
                    if p.dtype.is_floating_point:
                        e.lerp_(p, 1 - alpha[step + 1].item())
                        p.copy_(e)
            if step + 1 == total:
                la.finish(ours)
                for e, p in zip(ema.values(), ref.state_dict().values()):
                    if p.dtype.is_floating_point:
                        p.copy_(e)  # airbench's last update, decay 1.0
    a, b = ours.state_dict(), ref.state_dict()
    assert not torch.equal(a["1.running_mean"], torch.zeros(4))  # the statistics moved, and were averaged
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-6, atol=1e-7, msg=n)
    assert la.alpha_at(0.0) == 1.0 and la.alpha_at(1.0) == pytest.approx(1 - 0.95 ** 5)
    with pytest.raises(ValueError, match="cannot resume"):
        Lookahead(ours, k=k).load_state_dict(la.state_dict())


def test_lookahead_schedule_needs_lookahead(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--lookahead-schedule airbench needs --lookahead N"):
        fit(data=str(image_folder), output=str(tmp_path / "r"), quiet=True, lookahead_schedule="airbench",
            **dict(FAST, epochs=1))


def _same_steps(*pairs: tuple[torch.nn.Module, torch.optim.Optimizer], steps: int = 4) -> None:
    """``steps`` optimiser steps of each (model, optimizer) pair on the same small batch."""
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    for _ in range(steps):
        for model, opt in pairs:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()


def test_lamb_matches_timm_and_resumes_exactly(image_folder: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    timm_optim = pytest.importorskip("timm.optim")
    from resnet_tune.engine.optim import make_optimizer, param_groups
    from resnet_tune.tasks.classification.task import ClassificationTask

    torch.manual_seed(0)
    ours_model = rt.create_model("resnet20", num_classes=3)
    ref_model = rt.create_model("resnet20", num_classes=3)
    ref_model.load_state_dict(ours_model.state_dict())
    # our parameter groups (no decay on BN and biases, discriminative lr) in both; timm without its own clipping
    ours = make_optimizer("lamb", param_groups(ours_model, 5e-3, 0.02, lr_decay=0.5), 5e-3, weight_decay=0.02)
    ref = timm_optim.Lamb(param_groups(ref_model, 5e-3, 0.02, lr_decay=0.5), lr=5e-3, weight_decay=0.02,
                          max_grad_norm=None, foreach=False)
    _same_steps((ours_model, ours), (ref_model, ref))
    for (name, a), b in zip(ours_model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    moved = [g for g in ours.param_groups if g["weight_decay"]]
    assert moved and all(ours.state[p]["step"] == 4 for g in moved for p in g["params"])
    # through the trainer: an interrupted LAMB run resumes bit-exactly (its moments and step counts are saved)
    opts = dict(FAST, epochs=3, deterministic=True, loader="memory", optimizer="lamb", weight_decay=0.02)
    full = fit(data=str(image_folder), output=str(tmp_path / "full"), quiet=True, **opts)
    monkeypatch.setenv("RESNET_TUNE_DEBUG_INTERRUPT_AT", "2")
    with pytest.raises(KeyboardInterrupt):
        fit(data=str(image_folder), output=str(tmp_path / "part"), quiet=True, **opts)
    monkeypatch.delenv("RESNET_TUNE_DEBUG_INTERRUPT_AT")
    fit(resume=tmp_path / "part", quiet=True)
    a, b = _weights(full.run_dir / "last.safetensors"), _weights(tmp_path / "part" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # LAMB's own default peak rate from scratch (not SGD's batch-scaled one), the head at the full rate
    groups = ckpt.load_state(full.run_dir / ckpt.STATE)["optimizer"]["param_groups"]
    assert max(g["base_lr"] for g in groups) == pytest.approx(ClassificationTask.lamb_lr[0])


def test_whiten_sets_the_first_conv_from_training_patches_once(image_folder: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import resnet_tune.models as models

    calls: list[tuple[int, ...]] = []
    real = models.whiten_first_conv

    def spy(model, images, **kw):  # type: ignore[no-untyped-def]
        calls.append(tuple(images.shape))
        got = real(model, images, **kw)
        first = models.first_conv(model).weight
        torch.testing.assert_close(first[8:16], -first[:8])  # resnet20's 16 filters: 8 whitening pairs
        return got

    monkeypatch.setattr(models, "whiten_first_conv", spy)
    opts = dict(FAST, epochs=3, loader="memory", whiten=True, model="resnet20")
    monkeypatch.setenv("RESNET_TUNE_DEBUG_INTERRUPT_AT", "2")
    with pytest.raises(KeyboardInterrupt):
        fit(data=str(image_folder), output=str(tmp_path / "run"), quiet=True, **opts)
    monkeypatch.delenv("RESNET_TUNE_DEBUG_INTERRUPT_AT")
    assert len(calls) == 1 and calls[0][1:] == (3, 16, 16) and calls[0][0] >= 8  # training images, as the model sees
    resumed = fit(resume=tmp_path / "run", quiet=True)  # the resumed run loads its weights: no second whitening
    assert len(calls) == 1 and len(resumed.history) == 3
    assert not any(n.startswith("whitened first convolution") for n in resumed.notes)
    first = fit(data=str(image_folder), output=str(tmp_path / "once"), quiet=True, **dict(opts, epochs=1))
    assert any(n.startswith("whitened first convolution: 8 patch directions from") for n in first.notes)
    assert len(calls) == 2


def test_small_image_recipe_fills_only_what_the_user_left_unset(image_folder: Path, tmp_path: Path) -> None:
    """The 32 px ResNet-9s from scratch at up to 64 px take their measured recipe (whitening, weight decay 1e-3,
    translate 2) for the options left unset, say so once and record it; set options and other networks keep theirs."""
    from types import SimpleNamespace

    from resnet_tune.tasks.classification.data import OTHER_DEFAULTS, SMALL_RECIPE, apply_recipe

    def chosen(cfg: TrainConfig, name: str, size: int, pretrained: object = None, resuming: bool = False
               ) -> tuple[TrainConfig, list[str]]:
        task = SimpleNamespace(cfg=cfg, pretrained=pretrained, plan_notes=[], resuming=resuming)
        apply_recipe(task, name, size)
        return task.cfg, task.plan_notes

    cfg, notes = chosen(TrainConfig(data="d"), "resnet9_narrow", 32)
    assert (cfg.whiten, cfg.weight_decay, cfg.translate) == (True, 1e-3, 2) == tuple(SMALL_RECIPE.values())
    assert len(notes) == 1 and "--no-whiten" in notes[0] and "weight decay 0.001" in notes[0]
    cfg, notes = chosen(TrainConfig(data="d", whiten=False, translate=4), "resnet9", 64)
    assert (cfg.whiten, cfg.weight_decay, cfg.translate) == (False, 1e-3, 4)
    assert "--no-whiten" not in notes[0] and "--translate" not in notes[0] and "--weight-decay" in notes[0]
    for name, size, weights in (("resnet20", 32, None), ("resnet9_narrow", 96, None), ("resnet9", 32, ({}, {}))):
        cfg, notes = chosen(TrainConfig(data="d"), name, size, weights)
        assert ({k: getattr(cfg, k) for k in OTHER_DEFAULTS}, cfg.translate, cfg.lr, notes) == (OTHER_DEFAULTS, None,
                                                                                               None, [])
    cfg, _ = chosen(TrainConfig(data="d", weight_decay=0.0, whiten=True), "resnet18", 224)
    assert (cfg.whiten, cfg.weight_decay) == (True, 0.0)
    # a run recorded before the recipe existed resumes with what its None meant then (translate: an eighth)
    cfg, notes = chosen(TrainConfig(data="d", whiten=False, weight_decay=5e-4), "resnet9_narrow", 32, resuming=True)
    assert (cfg.whiten, cfg.weight_decay, cfg.translate, notes) == (False, 5e-4, None, [])

    # end to end: the default network for small images, its recipe in config.yaml and in the optimiser
    res = fit(data=str(image_folder), output=str(tmp_path / "run"), quiet=True, **dict(FAST, epochs=1))
    saved = yaml.safe_load((res.run_dir / "config.yaml").read_text())
    assert (saved["model"], saved["whiten"], saved["weight_decay"], saved["translate"]) == ("resnet9_narrow", True,
                                                                                           1e-3, 2)
    assert any("trains with its measured recipe" in n for n in res.notes)
    assert any(n.startswith("whitened first convolution") for n in res.notes)
    groups = ckpt.load_state(res.run_dir / ckpt.STATE)["optimizer"]["param_groups"]
    assert {g["weight_decay"] for g in groups} == {0.0, 1e-3}


def test_photos_from_scratch_train_the_mini_net_with_its_recipe_unless_told(tmp_path: Path) -> None:
    """Photos trained from scratch with no network named get seresnext12d_64x4d at 128 px and its measured recipe
    (AdamW at 0.01, weight decay 1e-4, Lookahead 6, flat-then-cosine, crops moved by up to 8 px; the mini net
    seresnext10d_64x4d, named, gets the same without the crop setting): said, recorded in config.yaml and in the
    optimiser. Options the user set stay; another optimiser keeps its own learning rate and weight decay; a named
    network, pretrained weights and small images keep the other defaults."""
    from types import SimpleNamespace

    from resnet_tune.tasks.classification.data import (MINI_RECIPE, OTHER_DEFAULTS, PHOTO_MODEL, PHOTO_RECIPE,
                                                        apply_recipe)

    def chosen(cfg: TrainConfig, name: str = PHOTO_MODEL, pretrained: object = None) -> tuple[TrainConfig, list[str]]:
        task = SimpleNamespace(cfg=cfg, pretrained=pretrained, plan_notes=[], resuming=False)
        apply_recipe(task, name, 128)
        return task.cfg, task.plan_notes

    assert PHOTO_MODEL == "seresnext12d_64x4d"
    mini = {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4, "lookahead": 6, "schedule": "flat_cos"}
    for name, recipe in ((PHOTO_MODEL, {**mini, "translate": 8}), ("seresnext10d_64x4d", mini)):
        cfg, notes = chosen(TrainConfig(data="d"), name)
        assert {k: getattr(cfg, k) for k in recipe} == recipe and cfg.translate == recipe.get("translate")
        assert len(notes) == 1 and "AdamW (--optimizer), a peak learning rate of 0.01 (--lr)" in notes[0]
        assert notes[0].startswith(f"{name} from scratch at 128 px trains with its measured recipe")
        assert ("crops moved up to 8 px (--translate)" in notes[0]) == ("translate" in recipe)
    assert PHOTO_RECIPE == {**MINI_RECIPE, "translate": 8} and MINI_RECIPE == mini
    cfg, notes = chosen(TrainConfig(data="d", lr=3e-3, schedule="cosine"))
    assert (cfg.optimizer, cfg.lr, cfg.schedule, cfg.lookahead) == ("adamw", 3e-3, "cosine", 6)
    assert "--lr" not in notes[0] and "--schedule" not in notes[0]
    cfg, notes = chosen(TrainConfig(data="d", optimizer="sgd"))  # SGD's own lr rule and weight decay
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.lookahead, cfg.schedule) == ("sgd", None, 5e-4, 6,
                                                                                        "flat_cos")
    for name, weights in (("resnet18", None), (PHOTO_MODEL, ({}, {}))):
        cfg, notes = chosen(TrainConfig(data="d"), name, weights)
        assert ({k: getattr(cfg, k) for k in OTHER_DEFAULTS}, cfg.lr, notes) == (OTHER_DEFAULTS, None, [])

    # end to end: photos (over 64 px) with --pretrained none and no --model
    photos = make_folder(tmp_path / "photos", per_class=6, size=80)
    res = fit(data=str(photos), pretrained="none", output=str(tmp_path / "run"), quiet=True,
              **dict(FAST, epochs=1, img_size=None))
    saved = yaml.safe_load((res.run_dir / "config.yaml").read_text())
    assert (saved["model"], saved["img_size"], saved["optimizer"], saved["lr"], saved["weight_decay"],
            saved["lookahead"], saved["schedule"], saved["translate"], saved["model_kwargs"]) == (
        PHOTO_MODEL, 128, "adamw", 1e-2, 1e-4, 6, "flat_cos", 8, {"act_layer": "mish"})
    assert any(n.startswith(f"photos from scratch (--pretrained none) train {PHOTO_MODEL} at 128 px")
               for n in res.notes)
    state = ckpt.load_state(res.run_dir / ckpt.STATE)
    assert {g["weight_decay"] for g in state["optimizer"]["param_groups"]} == {0.0, 1e-4}
    assert state["lookahead"] is not None
    assert not any("random resized crops" in n for n in res.notes)  # in memory: the crops move by 8 px
    # DataLoader workers take random resized crops instead of moving a crop: said, not silently dropped
    res = fit(data=str(photos), pretrained="none", output=str(tmp_path / "workers"), quiet=True, loader="workers",
              workers=0, **dict(FAST, epochs=1, img_size=None))
    assert ("the photos are read by DataLoader workers, which train on random resized crops of at least 25% of the "
            "image's area (--min-scale), not on a crop moved by up to 8 px (--translate") in " ".join(res.notes)
    from resnet_tune.tasks.classification.data import worker_crop_note

    assert worker_crop_note(TrainConfig(translate=0), 128) is None
    assert worker_crop_note(TrainConfig(translate=2), 32) is None
    # a network named, or a size given, is kept
    res = fit(data=str(photos), pretrained="none", model="resnet20", output=str(tmp_path / "r20"), quiet=True,
              **dict(FAST, epochs=1, img_size=40))
    saved = yaml.safe_load((res.run_dir / "config.yaml").read_text())
    assert (saved["model"], saved["img_size"], saved["optimizer"], saved["lookahead"]) == ("resnet20", 40, "sgd", 0)


def test_runs_from_scratch_train_with_silu_unless_told(image_folder: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """From scratch, a network whose --model-kwargs name no activation trains with SiLU (the measured default), or
    with its preset's own where that is not ReLU (the photo default's Mish): said once, recorded in config.yaml and
    the checkpoint, kept on resume; pretrained weights, a resumed run and a chosen activation are left alone."""
    from types import SimpleNamespace

    from resnet_tune.tasks.classification.data import PHOTO_MODEL, SCRATCH_ACT_LAYER, scratch_activation

    def chosen(cfg: TrainConfig, pretrained: object = None, resuming: bool = False, name: str = "resnet20"
               ) -> tuple[TrainConfig, list[str]]:
        task = SimpleNamespace(cfg=cfg, pretrained=pretrained, plan_notes=[], resuming=resuming)
        scratch_activation(task, name)
        return task.cfg, task.plan_notes

    cfg, notes = chosen(TrainConfig(data="d", model_kwargs=["zero_init_residual=true"]))
    assert SCRATCH_ACT_LAYER == "silu"
    assert cfg.model_kwargs == {"zero_init_residual": True, "act_layer": "silu"}
    assert len(notes) == 1 and "--model-kwargs act_layer=relu overrides" in notes[0]
    assert notes[0].startswith("from scratch with SILU activations")
    for name, act in (("resnet18", "silu"), ("resnet9_narrow", "silu"), (PHOTO_MODEL, "mish")):
        cfg, notes = chosen(TrainConfig(data="d"), name=name)
        assert cfg.model_kwargs == {"act_layer": act}
    assert notes[0].startswith("from scratch with Mish activations")
    cfg, notes = chosen(TrainConfig(data="d", model_kwargs=["act_layer=silu"]), name=PHOTO_MODEL)
    assert (cfg.model_kwargs, notes) == ({"act_layer": "silu"}, [])
    for cfg_in, weights, resuming in ((TrainConfig(data="d"), ({}, {}), False), (TrainConfig(data="d"), None, True),
                                      (TrainConfig(data="d", model_kwargs=["act_layer=relu"]), None, False)):
        cfg, notes = chosen(cfg_in, weights, resuming)
        assert (cfg.model_kwargs, notes) == (cfg_in.model_kwargs, [])

    monkeypatch.setenv("RESNET_TUNE_DEBUG_INTERRUPT_AT", "2")  # Ctrl-C at the start of the second epoch
    with pytest.raises(KeyboardInterrupt):
        fit(data=str(image_folder), output=str(tmp_path / "run"), model="resnet20", quiet=True, **FAST)
    monkeypatch.delenv("RESNET_TUNE_DEBUG_INTERRUPT_AT")
    res = fit(resume=tmp_path / "run", quiet=True)
    assert len(res.history) == 2 and not any(n.startswith("from scratch with SILU") for n in res.notes)
    assert yaml.safe_load((res.run_dir / "config.yaml").read_text())["model_kwargs"] == {"act_layer": "silu"}
    assert ckpt.read_record(res.run_dir)["model_config"]["act_layer"] == "silu"
    model = rt.Predictor(res.run_dir, device="cpu").eager
    acts = {type(m) for m in model.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.SiLU))}
    assert acts == {torch.nn.SiLU}
    fresh = fit(data=str(image_folder), output=str(tmp_path / "fresh"), model="resnet20", quiet=True,
                **dict(FAST, epochs=1))
    assert any(n.startswith("from scratch with SILU activations") for n in fresh.notes)
    pre = _pretrained_file(tmp_path)
    tuned = fit(data=str(image_folder), output=str(tmp_path / "ft"), model="resnet20", pretrained=str(pre),
                quiet=True, **dict(FAST, epochs=1))
    assert yaml.safe_load((tuned.run_dir / "config.yaml").read_text())["model_kwargs"] is None
    assert ckpt.read_record(tuned.run_dir)["model_config"]["act_layer"] == "relu"


def _pretrained_file(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    model = rt.create_model("resnet20")
    path = tmp_path / "pre.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_resume_of_a_fine_tune_needs_no_pretrained_file(image_folder: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # the weights a run started from may be gone (a temporary file, a cleared download cache, offline): the resumed
    # run takes its weights and normalisation from its own state and ends bit-identical to an uninterrupted one
    from resnet_tune.data.transforms import Preprocessing

    torch.manual_seed(1)
    model = rt.create_model("resnet20", num_classes=5)
    own = Preprocessing.for_size(16, (0.3, 0.4, 0.5), (0.2, 0.25, 0.3))  # a normalisation only the weights know
    pre = ckpt.save_checkpoint(tmp_path / "pre.safetensors", model,
                               ckpt.model_record(model, classes=list("abcde"), preprocessing=own.to_dict()))
    opts = dict(FAST, epochs=3, deterministic=True, loader="memory", model="resnet20", pretrained=str(pre))
    full = fit(data=str(image_folder), output=str(tmp_path / "full"), quiet=True, **opts)
    monkeypatch.setenv("RESNET_TUNE_DEBUG_INTERRUPT_AT", "2")
    with pytest.raises(KeyboardInterrupt):
        fit(data=str(image_folder), output=str(tmp_path / "part"), quiet=True, **opts)
    monkeypatch.delenv("RESNET_TUNE_DEBUG_INTERRUPT_AT")
    pre.unlink()
    resumed = fit(resume=tmp_path / "part", quiet=True)
    assert len(resumed.history) == 3
    a, b = _weights(full.run_dir / "last.safetensors"), _weights(tmp_path / "part" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    record = ckpt.read_record(tmp_path / "part" / "last.safetensors")
    assert record["pretrained"] == str(pre) and record["strategy"] == "full"
    assert record["preprocessing"]["mean"] == [0.3, 0.4, 0.5] and record["preprocessing"]["std"] == [0.2, 0.25, 0.3]


def test_linear_probe_keeps_body_and_bn_statistics(image_folder: Path, tmp_path: Path) -> None:
    pre = _pretrained_file(tmp_path)
    res = fit(data=str(image_folder), output=str(tmp_path / "lp"), model="resnet20", pretrained=str(pre),
              strategy="linear_probe", quiet=True, **FAST)
    before, after = load_file(str(pre)), _weights(res.run_dir / "last.safetensors")
    for k in before:
        if not k.startswith("fc."):
            assert torch.equal(before[k], after[k]), f"{k} changed in a linear probe"
    assert after["fc.weight"].shape == (3, 64)


def test_freeze_then_unfreeze_trains_body_after_frozen_epochs(image_folder: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    pre = _pretrained_file(tmp_path)
    res = fit(data=str(image_folder), output=str(tmp_path / "fu"), model="resnet20", pretrained=str(pre),
              quiet=False, strategy="freeze_unfreeze", **dict(FAST, epochs=3))
    epochs = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert ["(frozen body)" in line for line in epochs] == [True, False, False]
    state = ckpt.load_state(res.run_dir / ckpt.STATE)
    lrs = sorted({g["base_lr"] for g in state["optimizer"]["param_groups"]})
    assert len(lrs) >= 4 and lrs[0] < lrs[-1]  # discriminative learning rates
    after = _weights(res.run_dir / "last.safetensors")
    assert not torch.equal(load_file(str(pre))["conv1.weight"], after["conv1.weight"])


def test_options_run_mixup_cutmix_ema_balance_accum(image_folder: Path, tmp_path: Path) -> None:
    res = fit(data=str(image_folder), output=str(tmp_path / "o"), quiet=True, mixup=0.2, cutmix=1.0, ema=True,
              balance="weighted_loss", accum_steps=2, grad_clip=1.0, optimizer="adamw", schedule="cosine",
              loader="workers", workers=0, augment="trivialaugment", **FAST)
    assert ckpt.read_record(res.run_dir)["weights"] == "ema"
    assert all(np.isfinite(r["train_loss"]) for r in res.history)
    res2 = fit(data=str(image_folder), output=str(tmp_path / "s"), quiet=True, balance="sampler", early_stop=1,
               **dict(FAST, epochs=4))
    assert len(res2.history) <= 4


def test_cutout_erases_one_square_an_image_and_redraws_the_same_from_the_same_seed(image_folder: Path,
                                                                                   tmp_path: Path) -> None:
    from resnet_tune.tasks.classification.task import cutout_batch

    x = torch.randn(64, 3, 32, 32) + 10.0  # no value is zero before
    out = cutout_batch(x, 0.25, torch.Generator().manual_seed(3))
    erased = (out == 0).all(1)  # the same pixels in every channel
    assert torch.equal((out == 0).any(1), erased)
    assert torch.equal(out[~erased[:, None].expand_as(out)], x[~erased[:, None].expand_as(x)])  # the rest unchanged
    counts = erased.flatten(1).sum(1)
    assert counts.max() == 64 and counts.min() >= 16  # an 8x8 square, cut by the border at most to a quarter
    for img in erased[counts == 64]:  # a whole square: 8 consecutive rows and columns
        rows, cols = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
        assert len(rows) == len(cols) == 8 and rows[-1] - rows[0] == 7 and cols[-1] - cols[0] == 7
    assert torch.equal(out, cutout_batch(x, 0.25, torch.Generator().manual_seed(3)))
    assert not torch.equal(out, cutout_batch(x, 0.25, torch.Generator().manual_seed(4)))
    assert torch.equal(cutout_batch(x.to(memory_format=torch.channels_last), 0.25, torch.Generator().manual_seed(3)),
                       out)
    res = fit(data=str(image_folder), output=str(tmp_path / "c"), quiet=True, cutout=0.25, **FAST)
    assert yaml.safe_load((res.run_dir / "config.yaml").read_text())["cutout"] == 0.25
    assert all(np.isfinite(r["train_loss"]) for r in res.history)
    with pytest.raises(ConfigError, match="cutout must be in"):
        TrainConfig(cutout=1.5)
    from resnet_tune.tasks.classification.task import ClassificationTask

    assert "cutout erases part of each image" in ClassificationTask(TrainConfig(cutout=0.25)).feature_cache_refusal()


def test_model_kwargs_from_the_command_line_reach_the_model_the_checkpoint_and_the_predictor(
        image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "k"
    main(["train", "--data", str(image_folder), "--model", "resnet9", "--img-size", "16", "--epochs", "1",
          "--batch-size", "8", "--pretrained", "none", "--no-progress", "--output", str(out),
          "--model-kwargs", "global_pool=max", "logit_scale=0.125", "--translate", "2"])
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model_kwargs"] == {"global_pool": "max", "logit_scale": 0.125, "act_layer": "silu"}
    assert saved["translate"] == 2
    rec = ckpt.read_record(out)
    assert rec["model_config"]["global_pool"] == "max" and rec["model_config"]["logit_scale"] == 0.125
    model = rt.Predictor(out, device="cpu").eager  # rebuilt from the checkpoint's record
    assert isinstance(model.avgpool, torch.nn.AdaptiveMaxPool2d) and model.fc.scale == 0.125
    capsys.readouterr()
    assert main(["train", "--data", str(image_folder), "--model", "resnet9_narrow", "--no-progress", "--output",
                 str(tmp_path / "bad"), "--model-kwargs", "global_pol=max"]) == 2
    assert "'global_pol' is not an architecture option (did you mean 'global_pool'?)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="do not fit resnet20: stage_entry='conv_pool' takes basic blocks"):
        TrainConfig(model="resnet20", model_kwargs=["stage_entry=conv_pool", "block=bottleneck"])


def test_batchnorm_shifts_learn_faster_with_fixed_scales_as_airbench(image_folder: Path, tmp_path: Path) -> None:
    """--bn-bias-lr-scale 64: each block's BatchNorm shifts get a group of their own at 64 times that block's rate
    (airbench's bias_scaler), without decay; every parameter is in exactly one group, and 1 keeps the usual
    groups. Through the CLI with fixed BatchNorm scales and identity-initialised convolutions (--model-kwargs
    bn_scale=false dirac_init=true): the optimiser has the groups, the scales stay 1, and the checkpoint rebuilds
    the same network for prediction."""
    from torch import nn

    from resnet_tune.engine.optim import param_groups

    model = rt.create_model("resnet9_narrow", num_classes=3, bn_scale=False)
    shifts = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    plain = param_groups(model, 0.1, 5e-4, lr_decay=0.5)
    scaled = param_groups(model, 0.1, 5e-4, lr_decay=0.5, bn_bias_lr_scale=64)
    for groups in (plain, scaled):
        assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in model.parameters())
    own = [g for g in scaled if any(id(p) in shifts for p in g["params"])]
    assert not any(id(p) in shifts for g in plain for p in g["params"] if g["weight_decay"])
    assert own and all(id(p) in shifts for g in own for p in g["params"])
    rates = {g["stage"]: g["lr"] for g in scaled if g["weight_decay"]}
    assert len(set(rates.values())) > 1  # discriminative rates: the multiple is per block
    assert all(g["weight_decay"] == 0 and g["lr"] == pytest.approx(64 * rates[g["stage"]]) for g in own)
    assert scaled[-1]["lr"] == plain[-1]["lr"] == 0.1  # the last group is the head's rate (lr_find reads it)

    out = tmp_path / "air"
    assert main(["train", "--data", str(image_folder), "--model", "resnet9_narrow", "--img-size", "16", "--epochs", "1",
                 "--batch-size", "8", "--pretrained", "none", "--no-progress", "--output", str(out), "--lr-decay",
                 "1", "--model-kwargs", "bn_scale=false", "dirac_init=true", "--bn-bias-lr-scale", "64"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["bn_bias_lr_scale"] == 64 and saved["model_kwargs"]["bn_scale"] is False
    groups = ckpt.load_state(out / ckpt.STATE)["optimizer"]["param_groups"]
    assert sorted({g["base_lr"] / min(x["base_lr"] for x in groups) for g in groups}) == [1.0, 64.0]
    predictor = rt.Predictor(out, device="cpu").eager
    assert predictor.cfg.bn_scale is False and predictor.cfg.dirac_init is True
    bns = [m for m in predictor.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)
    assert not any(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bns)


def test_default_job_is_embedded_digits(tmp_path: Path) -> None:
    res = fit(output=str(tmp_path / "d"), epochs=1, quiet=True, progress=False)
    rec = ckpt.read_record(res.run_dir)
    assert rec["classes"] == [str(i) for i in range(10)] and rec["model"] == "resnet9_narrow"
    assert res.history[0]["val_acc"] > 0.2  # one epoch already learns something


def test_small_images_from_scratch_train_longer_by_default(image_folder: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    from resnet_tune.engine import defaults

    # the rule: enough epochs to see MIN_SCRATCH_IMAGES images, at most 4x the usual; large sets keep the usual
    assert defaults.scratch_epochs(15, 1000)[0] == 60  # 128 epochs would be needed: capped
    assert defaults.scratch_epochs(15, 5760)[0] == 23 and defaults.scratch_epochs(15, 45000) == (15, None)
    assert "5,760 training images from scratch" in defaults.scratch_epochs(15, 5760)[1]
    # end to end on a tiny folder (24 training images, 16 px), with the threshold scaled down so that it runs fast
    monkeypatch.setattr(defaults, "MIN_SCRATCH_IMAGES", 24 * 20)
    opts = {k: v for k, v in FAST.items() if k != "epochs"}
    res = fit(data=str(image_folder), output=str(tmp_path / "s"), quiet=False, **opts)
    assert len(res.history) == 20 and "note: 20 epochs, not the usual 15" in capsys.readouterr().out
    assert any(n.startswith("20 epochs, not the usual 15") for n in res.notes)
    assert "epochs: 20" in (res.run_dir / "config.yaml").read_text()  # recorded: a resume keeps it
    # the user's --epochs, a budget, fine-tuning and larger images keep what they say / the usual epochs
    assert len(fit(data=str(image_folder), output=str(tmp_path / "e"), quiet=True, **FAST).history) == 2
    tuned = fit(data=str(image_folder), output=str(tmp_path / "f"), quiet=True, pretrained=str(_pretrained_file(
        tmp_path)), model="resnet20", **dict(opts, img_size=8))
    assert len(tuned.history) == 15 and "epochs: 15" in (tuned.run_dir / "config.yaml").read_text()
    from resnet_tune.engine.task import TaskData
    from resnet_tune.tasks.classification.task import ClassificationTask

    task = ClassificationTask(TrainConfig(data=str(image_folder)))
    photos = TaskData([], None, None, None, 24, "", "resnet18", {}, extra={"input_size": 128})
    assert task.choose_epochs(photos) == (15, None)
    # the embedded digits: the demo's own count (under two minutes on the slowest CPU measured), whatever the size
    from resnet_tune.data.default import DEMO_EPOCHS

    digits = TaskData([], None, None, None, 1437, "", "resnet9_narrow", {}, extra={"input_size": 32})
    assert ClassificationTask(TrainConfig()).choose_epochs(digits) == (DEMO_EPOCHS, None) and DEMO_EPOCHS < 15


def test_yaml_config_and_flags_win(image_folder: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {image_folder}\nepochs: 5\nbatch-size: 8\nimg_size: 16\nprecision: fp32\n")
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--epochs", "1", "--output", str(run), "--no-progress"]) == 0
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["batch_size"] == 8


def test_bad_config_keys_and_values(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epocs: 3\n")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'epocs'" in err and "did you mean 'epochs'" in err
    with pytest.raises(ConfigError, match="batch_size=1"):
        TrainConfig(batch_size=1)
    with pytest.raises(ConfigError, match="strategy"):
        TrainConfig(strategy="linear_probe", pretrained="none")
    # pretrained=auto (the default) is decided once the model is known: a model without published weights
    with pytest.raises(ConfigError, match=r"freezes a pretrained backbone, but the run has no pretrained weights "
                                          r"\(resnet9_narrow has no published weights\)"):
        fit(data=str(make_folder(tmp_path / "few", per_class=3)), strategy="linear_probe", epochs=1, quiet=True,
            output=str(tmp_path / "lp"))


def test_missing_empty_and_single_class_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and "Traceback" not in err
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    with pytest.raises(DataError):
        fit(data=str(tmp_path / "empty"), output=str(tmp_path / "r2"), quiet=True, **FAST)
    make_folder(tmp_path / "one", classes={"red": (200, 0, 0)})
    with pytest.raises(DataError, match="two classes"):
        fit(data=str(tmp_path / "one"), output=str(tmp_path / "r3"), quiet=True, **FAST)


def test_bad_files_are_reported_and_skipped(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "red" / "broken.jpg").write_bytes(b"not an image at all")
    (image_folder / "red" / "empty.png").write_bytes(b"")
    make_image(image_folder / "blue" / "cut.jpg", (40, 50, 220), size=64, fmt="JPEG")
    data = (image_folder / "blue" / "cut.jpg").read_bytes()
    (image_folder / "blue" / "cut.jpg").write_bytes(data[: len(data) // 2])
    res = fit(data=str(image_folder), output=str(tmp_path / "r"), quiet=True, **FAST)
    bad = (res.run_dir / "bad_files.txt").read_text()
    for name in ("broken.jpg", "empty.png", "cut.jpg"):
        assert name in bad


def test_non_finite_loss_stops_and_keeps_good_checkpoint(image_folder: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "r"
    fit(data=str(image_folder), output=str(run), quiet=True, **dict(FAST, epochs=1))
    good = (run / "best.safetensors").read_bytes()
    calls = {"n": 0}
    original = torch.nn.CrossEntropyLoss.forward

    def poisoned(self, input, target):
        calls["n"] += 1
        loss = original(self, input, target)
        return loss * float("nan") if calls["n"] > 1 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", poisoned)
    # resuming the finished 1-epoch run with more epochs is not allowed; start a new run in the same folder
    with pytest.raises(ConfigError, match="--resume"):
        fit(data=str(image_folder), output=str(run), quiet=True, **FAST)
    run2 = tmp_path / "r2"
    with pytest.raises(TrainingError, match="loss became nan"):
        fit(data=str(image_folder), output=str(run2), quiet=True, **FAST)
    assert not (run2 / "best.safetensors").exists()
    assert (run / "best.safetensors").read_bytes() == good


def test_checkpoint_errors(image_folder: Path, tmp_path: Path) -> None:
    res = fit(data=str(image_folder), output=str(tmp_path / "r"), quiet=True, **dict(FAST, epochs=1))
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.resolve_checkpoint(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        ckpt.read_record(bad)
    # a newer format version is refused with a sentence naming both versions
    model, rec = ckpt.load_checkpoint(res.run_dir)
    rec["format_version"] = 99
    newer = ckpt.save_checkpoint(tmp_path / "newer.safetensors", model, rec)
    with pytest.raises(CheckpointError, match="version 99, newer"):
        ckpt.load_checkpoint(newer)
    # weights that do not fit the recorded architecture
    rec["format_version"] = 1
    rec["model_config"]["widths"] = [32, 64, 128]
    wrong = ckpt.save_checkpoint(tmp_path / "wrong.safetensors", model, rec)
    with pytest.raises(CheckpointError, match="do not fit"):
        ckpt.load_checkpoint(wrong)
    # evaluating on data with a class the checkpoint does not know
    other = make_folder(tmp_path / "other", classes={"red": (220, 30, 30), "purple": (150, 0, 150)}, per_class=2)
    with pytest.raises(DataError, match="purple"):
        from resnet_tune.tasks.classification import evaluate

        evaluate(res.run_dir, other, progress=False)


def test_pickle_in_state_file_is_never_executed(tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / ckpt.STATE).write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        ckpt.load_state(tmp_path / ckpt.STATE)
    assert not marker.exists()


def test_lr_find_suggests_a_rate(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "lrf"
    assert main(["lr-find", "--data", str(image_folder), "--img-size", "16", "--batch-size", "8", "--steps", "30",
                 "--output-dir", str(out), "--no-progress"]) == 0
    res = json.loads((out / "lr_find.json").read_text())
    assert (out / "lr_find.png").is_file() and len(res["lrs"]) >= 5


def test_every_command_has_help(capsys: pytest.CaptureFixture) -> None:
    for cmd in ["train", "evaluate", "predict", "embed", "lr-find", "models"]:
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage: resnet-tune" in capsys.readouterr().out


def test_models_command_lists_presets(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "resnet5*"]) == 0
    out = capsys.readouterr().out
    assert "resnet50 " in out and "25.56M" in out and "8.18" in out


def test_resolved_config_and_synthetic_data(tmp_path: Path) -> None:
    import yaml

    res = fit(data="synthetic:32", output=str(tmp_path / "s"), quiet=True, **{**FAST, "img_size": 16})
    saved = yaml.safe_load((res.run_dir / "config.yaml").read_text())
    assert saved["model"] == "resnet18" and saved["img_size"] == 16  # what "auto" chose is written down
    assert res.history[-1]["images_per_s"] > 0
    with pytest.raises(ConfigError, match="synthetic:N"):
        fit(data="synthetic:lots", output=str(tmp_path / "x"), quiet=True, **FAST)


def test_tensorboard_logging(image_folder: Path, tmp_path: Path) -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"resnet-tune\[tensorboard\]"):
            fit(data=str(image_folder), output=str(tmp_path / "t"), tensorboard=True, quiet=True, **FAST)
        return
    res = fit(data=str(image_folder), output=str(tmp_path / "t"), tensorboard=True, quiet=True, **FAST)
    assert list((res.run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_every_task_gets_a_gradient_scaler_enabled_for_fp16_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    """The scaler is always there (enabled only for fp16, as nanoGPT's GradScaler(enabled=...)), so no task can
    forget it; CPUs still refuse fp16 training."""
    from resnet_tune.engine import trainer as T
    from resnet_tune.engine.hardware import Precision, resolve_precision
    from resnet_tune.tasks import ClassificationTask, SegmentationTask

    from test_segment import make_seg_data

    with pytest.raises(ConfigError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))
    fp16 = Precision(torch.float16, True)
    assert T.gradient_scaler(fp16, torch.device("cpu")).is_enabled()
    assert not T.gradient_scaler(Precision(torch.bfloat16, False), torch.device("cpu")).is_enabled()
    assert not T.gradient_scaler(Precision(None, False), torch.device("cpu")).is_enabled()
    seg = make_seg_data(tmp_path / "seg", counts=(4, 2, 0))
    tasks = [(ClassificationTask, TrainConfig(epochs=1, progress=False)),
             (SegmentationTask, SegmentationTask.config_class(data=str(seg), epochs=1, batch_size=2, progress=False))]
    for task, cfg in tasks:
        assert not T.Trainer(task, cfg, quiet=True).prepare().scaler.is_enabled()  # bf16 or fp32 here
        monkeypatch.setattr(T, "resolve_precision", lambda name, device: fp16)
        assert T.Trainer(task, cfg, quiet=True).prepare().scaler.is_enabled()
        monkeypatch.undo()


def test_deprecated_import_paths_still_work_with_a_warning(tmp_path: Path) -> None:
    import importlib

    import resnet_tune.serve.predictor as old_predictor
    from resnet_tune.tasks import ClassificationPredictor

    with pytest.warns(DeprecationWarning, match="resnet_tune.fit"):
        result = importlib.import_module("resnet_tune.engine.trainer").fit(epochs=1, quiet=True, progress=False,
                                                                          output=str(tmp_path / "r"))
    assert result.history and (tmp_path / "r" / "best.safetensors").is_file()
    with pytest.warns(DeprecationWarning, match="resnet_tune.Predictor"):
        assert old_predictor.Predictor is ClassificationPredictor
    with pytest.warns(DeprecationWarning, match="task='segmentation'"):
        from resnet_tune.segment.train import fit_segmentation

        with pytest.raises(DataError):  # it reaches the segmentation engine
            fit_segmentation(data=str(tmp_path / "missing"), quiet=True)


@pytest.mark.parametrize("loader", ["memory", "workers"])
def test_min_scale_trains_on_random_resized_crops_with_either_loader(tmp_path: Path, loader: str) -> None:
    """``min_scale`` (images larger than 64 px): DataLoader workers take RandomResizedCrop(scale=(min_scale, 1));
    the in-memory loader keeps the training images as the evaluation resize's whole square and crops them in
    batches, while evaluation images stay the centre crop; both yield batches at the input size."""
    from torchvision.transforms import v2

    from resnet_tune.data.transforms import Preprocessing
    from resnet_tune.tasks.classification.config import ClassificationConfig
    from resnet_tune.tasks.classification.data import image_loaders

    folder = make_folder(tmp_path / "data", per_class=4, size=90)
    samples = [(str(f), i) for i, c in enumerate(sorted(p.name for p in folder.iterdir()))
               for f in sorted((folder / c).iterdir())]
    parts = {"train": samples, "val": samples[:4]}
    targets = {k: torch.tensor([y for _, y in v]) for k, v in parts.items()}
    pp = Preprocessing.for_size(72, (0.5,) * 3, (0.25,) * 3)
    cfg = ClassificationConfig(loader=loader, min_scale=0.5, batch_size=4, workers=0)
    loaders, in_memory, _ = image_loaders(cfg, parts, targets, pp, torch.device("cpu"), False, 0, 1)
    assert in_memory == (loader == "memory")
    for split in ("train", "val"):
        x, _ = next(iter(loaders[split]))
        assert x.shape[1:] == (3, 72, 72)
    if in_memory:
        train, val = loaders["train"], loaders["val"]
        assert train.images.shape[-1] == pp.resize == 82 and train.scale == (0.5, 1.0)
        assert val.images.shape[-1] == 72 and val.scale is None
    else:
        crops = [t for t in loaders["train"].dataset.transform.transforms if isinstance(t, v2.RandomResizedCrop)]
        assert len(crops) == 1 and crops[0].scale == (0.5, 1.0)


def test_alternating_flips_need_the_in_memory_loader(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--flip alternate needs the in-memory loader"):
        fit(data=str(image_folder), output=str(tmp_path / "o"), quiet=True, loader="workers", workers=0,
            flip="alternate", **FAST)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.safetensors"))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizers_take_the_fused_kernels_and_make_the_same_steps_as_torchs_loop(name: str) -> None:
    """SGD and AdamW run torch's fused kernels on a CPU (torch's default there is a Python loop over the tensors):
    the same parameters as that loop after a few steps, in our groups (no decay on BN and biases, discriminative
    rates); parameters without fused kernels (here on the meta device) take the foreach path."""
    from resnet_tune.engine.optim import make_optimizer, param_groups

    torch.manual_seed(0)
    ours_model = rt.create_model("resnet20", num_classes=3)
    ref_model = rt.create_model("resnet20", num_classes=3)
    ref_model.load_state_dict(ours_model.state_dict())
    ours = make_optimizer(name, param_groups(ours_model, 0.05, 5e-4, lr_decay=0.5), 0.05, weight_decay=5e-4)
    assert all(g["fused"] for g in ours.param_groups)
    cls = torch.optim.SGD if name == "sgd" else torch.optim.AdamW
    extra = {"momentum": 0.9, "nesterov": True} if name == "sgd" else {}
    ref = cls(param_groups(ref_model, 0.05, 5e-4, lr_decay=0.5), lr=0.05, weight_decay=5e-4, foreach=False, **extra)
    _same_steps((ours_model, ours), (ref_model, ref))
    torch.manual_seed(0)
    start = rt.create_model("resnet20", num_classes=3)  # the same draw as both models' start
    assert not torch.equal(ours_model.fc.weight, start.fc.weight)  # the steps moved the weights
    tol = {"rtol": 1e-5, "atol": 1e-6} if name == "sgd" else {"rtol": 1e-4, "atol": 1e-5}  # (Adam divides by sqrt(v))
    for a, b in zip(ours_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, **tol)
    meta = torch.nn.Linear(2, 2, device="meta")
    assert all(g["foreach"] and not g["fused"] for g in make_optimizer(name, [{"params": list(meta.parameters())}],
                                                                      0.1).param_groups)


def test_adam_family_takes_momentum_beta2_and_eps_and_radam_decays_like_adamw(image_folder: Path,
                                                                              tmp_path: Path) -> None:
    """--momentum is the Adam family's beta1, --beta2 and --opt-eps reach AdamW, RAdam and LAMB (fastai's ranger
    is RAdam with beta2 0.99, eps 1e-6 and Lookahead); RAdam's weight decay is AdamW's decoupled one: with zero
    gradients the weights only shrink by (1 - lr * wd) a step, also once its rectified (adaptive) steps start
    (an L2 penalty would be rescaled by the adaptive step there)."""
    from resnet_tune.engine.optim import make_optimizer

    for name in ("adamw", "radam", "lamb"):
        p = torch.nn.Parameter(torch.ones(3, 2))
        opt = make_optimizer(name, [{"params": [p]}], 0.01, momentum=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1)
        assert opt.param_groups[0]["betas"] == (0.8, 0.99) and opt.param_groups[0]["eps"] == 1e-6, name
    assert make_optimizer("adamw", [{"params": [p]}], 0.01).param_groups[0]["eps"] == 1e-8  # torch's default
    p = torch.nn.Parameter(torch.ones(4))
    opt = make_optimizer("radam", [{"params": [p]}], 0.01, beta2=0.99, weight_decay=0.1)
    for _ in range(12):  # with beta2 0.99 the rectified steps start at step 6
        p.grad = torch.zeros_like(p)
        opt.step()
    torch.testing.assert_close(p.detach(), torch.full((4,), (1 - 0.01 * 0.1) ** 12))
    # through the trainer and the CLI's names: recorded in config.yaml, in the optimiser's saved state
    run = fit(data=str(image_folder), output=str(tmp_path / "r"), quiet=True,
              **dict(FAST, epochs=1, optimizer="radam", beta2=0.99, opt_eps=1e-6, lookahead=6))
    saved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert (saved["optimizer"], saved["beta2"], saved["opt_eps"]) == ("radam", 0.99, 1e-6)
    groups = ckpt.load_state(run.run_dir / ckpt.STATE)["optimizer"]["param_groups"]
    assert all(tuple(g["betas"]) == (0.9, 0.99) and g["eps"] == 1e-6 and g["decoupled_weight_decay"] for g in groups)
    with pytest.raises(ConfigError, match="beta2 must be at least 0 and below 1"):
        TrainConfig(data="x", beta2=1.0)
    with pytest.raises(ConfigError, match="momentum is adamw's beta1 and must be below 1, got 1.0"):
        TrainConfig(data="x", optimizer="adamw", momentum=1.0)
