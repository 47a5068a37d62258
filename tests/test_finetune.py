"""Fine-tuning options: blocks frozen for the whole run (--freeze-at) and --lr auto."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import resnet_tune as rt
from resnet_tune import fit
from resnet_tune.cli import main
from resnet_tune.engine import checkpoint as ckpt
from resnet_tune.engine.finetune import set_bn_stats_frozen, set_body_frozen, set_frozen_blocks, train_mode
from resnet_tune.engine.optim import param_groups
from resnet_tune.errors import ConfigError
from resnet_tune.models.segmentation import create_segmenter
from resnet_tune.tasks.classification import TrainConfig

FAST = dict(epochs=2, batch_size=8, img_size=16, progress=False, precision="fp32")


def _pretrained(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    model = rt.create_model("resnet20")
    with torch.no_grad():  # statistics unlike a fresh BatchNorm's, so that an update would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "pre.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _frozen_keys(keys: list[str]) -> list[str]:
    return [k for k in keys if k.startswith(("conv1.", "bn1.", "layer1."))]


@pytest.mark.parametrize("strategy", ["full", "freeze_unfreeze"])
def test_freeze_at_keeps_stem_and_first_stage_fixed(image_folder: Path, tmp_path: Path, strategy: str) -> None:
    pre = _pretrained(tmp_path)
    res = fit(data=str(image_folder), output=str(tmp_path / "r"), model="resnet20", pretrained=str(pre),
              strategy=strategy, freeze_at=2, quiet=True, **dict(FAST, epochs=3))
    before, after = load_file(str(pre)), load_file(str(res.run_dir / "last.safetensors"))
    frozen = _frozen_keys(list(before))
    assert any("running_mean" in k for k in frozen)
    for k in frozen:  # weights and BatchNorm statistics (the blocks stayed in eval mode)
        assert torch.equal(before[k], after[k]), f"{k} changed though frozen"
    assert not torch.equal(before["layer2.0.conv1.weight"], after["layer2.0.conv1.weight"])
    assert not torch.equal(before["layer2.0.bn1.running_mean"], after["layer2.0.bn1.running_mean"])
    # no optimiser state (nor a place in the optimiser) for the frozen parameters
    state = ckpt.load_state(res.run_dir / ckpt.STATE)
    model = rt.create_model("resnet20", num_classes=3)
    trainable = [n for n, _ in model.named_parameters() if n not in _frozen_keys([n])]
    in_optimiser = [i for g in state["optimizer"]["param_groups"] for i in g["params"]]
    assert len(in_optimiser) == len(trainable)
    assert len(state["optimizer"]["state"]) == len(trainable)
    assert yaml.safe_load((res.run_dir / "config.yaml").read_text())["freeze_at"] == 2


def test_frozen_blocks_get_no_gradient_and_stay_in_eval_mode() -> None:
    model = rt.create_model("resnet18", num_classes=4)
    set_frozen_blocks(model, 2)
    train_mode(model)
    assert not model.conv1.training and not model.bn1.training and not model.layer1.training
    assert model.layer2.training and model.fc.training
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for m in (model.conv1, model.bn1, model.layer1) for p in m.parameters())
    assert all(p.grad is not None for p in model.layer2.parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = [names[id(p)] for g in param_groups(model, 0.1, 1e-4, frozen=2) for p in g["params"]]
    assert sorted(grouped) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    set_body_frozen(model, True)  # the whole body (the head-only epochs of freeze_unfreeze), then back to 2
    assert not any(p.requires_grad for p in model.layer4.parameters())
    set_body_frozen(model, False, keep=2)
    train_mode(model)
    assert model.layer4.training and not model.layer1.training and not model.layer1[0].conv1.weight.requires_grad


def test_freeze_at_errors_and_scratch(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="freeze_at must be >= 0"):
        TrainConfig(freeze_at=-1)
    pre = _pretrained(tmp_path)
    with pytest.raises(ConfigError, match="more than the 4 blocks of this model's body"):
        fit(data=str(image_folder), model="resnet20", pretrained=str(pre), strategy="full", freeze_at=5,
            output=str(tmp_path / "x"), quiet=True, **FAST)
    res = fit(data=str(image_folder), model="resnet20", pretrained="none", freeze_at=2, output=str(tmp_path / "s"),
              quiet=True, **dict(FAST, epochs=1))
    assert any("freeze_at=2 ignored" in n for n in res.notes)


def test_freeze_bn_stats_keeps_every_running_statistic_and_trains_scale_and_shift(image_folder: Path,
                                                                                  tmp_path: Path) -> None:
    model = rt.create_model("resnet18", num_classes=4)
    set_bn_stats_frozen(model, True)
    train_mode(model)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and model.conv1.training and model.fc.training
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(m.weight.grad is not None and m.bias.grad is not None for m in bns)
    # a segmenter: the pretrained backbone's statistics stay, the new decoder's (never trained) adapt
    seg = create_segmenter("resnet18", 3, head="deeplabv3", aux=True)
    set_bn_stats_frozen(seg, True)
    train_mode(seg)
    body_bns = [m for m in seg.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    head_bns = [m for m in (*seg.classifier.modules(), *seg.aux_classifier.modules())
                if isinstance(m, torch.nn.BatchNorm2d)]
    assert body_bns and head_bns and not any(m.training for m in body_bns) and all(m.training for m in head_bns)

    pre = _pretrained(tmp_path)
    res = fit(data=str(image_folder), output=str(tmp_path / "r"), model="resnet20", pretrained=str(pre),
              strategy="full", freeze_bn_stats=True, quiet=True, **FAST)
    before, after = load_file(str(pre)), load_file(str(res.run_dir / "last.safetensors"))
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 2 * 19  # every BatchNorm of ResNet-20 (stem, 9 blocks x 2)
    for k in stats:
        assert torch.equal(before[k], after[k]), f"{k} changed though the statistics are frozen"
    assert not torch.equal(before["layer1.0.bn1.weight"], after["layer1.0.bn1.weight"])
    assert not torch.equal(before["layer1.0.conv1.weight"], after["layer1.0.conv1.weight"])
    assert yaml.safe_load((res.run_dir / "config.yaml").read_text())["freeze_bn_stats"] is True

    plain = fit(data=str(image_folder), output=str(tmp_path / "p"), model="resnet20", pretrained=str(pre),
                strategy="full", quiet=True, **FAST)  # without the option the statistics follow the target
    assert not torch.equal(before["layer1.0.bn1.running_mean"],
                           load_file(str(plain.run_dir / "last.safetensors"))["layer1.0.bn1.running_mean"])


def test_freeze_bn_stats_from_scratch_and_with_precise_bn(image_folder: Path, tmp_path: Path) -> None:
    res = fit(data=str(image_folder), model="resnet20", pretrained="none", freeze_bn_stats=True,
              output=str(tmp_path / "s"), quiet=True, **dict(FAST, epochs=1))
    assert any("freeze_bn_stats ignored" in n for n in res.notes)
    with pytest.raises(ConfigError, match="--precise-bn recomputes the BatchNorm statistics"):
        fit(data=str(image_folder), model="resnet20", pretrained=str(_pretrained(tmp_path)), strategy="full",
            freeze_bn_stats=True, precise_bn=True, output=str(tmp_path / "x"), quiet=True, **FAST)


def test_lr_auto_runs_the_range_test_and_uses_its_rate(image_folder: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    pre = _pretrained(tmp_path)
    run = tmp_path / "auto"
    assert main(["train", "--data", str(image_folder), "--model", "resnet20", "--pretrained", str(pre),
                 "--strategy", "full", "--lr", "auto", "--epochs", "2", "--batch-size", "8", "--img-size", "16",
                 "--precision", "fp32", "--output", str(run), "--no-progress"]) == 0
    assert "--lr auto: a range test of" in capsys.readouterr().out
    curve = json.loads((run / "lr_find.json").read_text())
    assert (run / "lr_find.png").is_file() and len(curve["lrs"]) >= 5
    picked = curve["suggestion"]
    assert picked is not None and curve["lrs"][0] <= picked <= curve["lrs"][-1]
    assert yaml.safe_load((run / "config.yaml").read_text())["lr"] == pytest.approx(picked)
    state = ckpt.load_state(run / ckpt.STATE)
    # the schedule's peak is the picked rate: every group of a full fine-tune starts from it
    assert [g["base_lr"] for g in state["optimizer"]["param_groups"]] == pytest.approx(
        [picked] * len(state["optimizer"]["param_groups"]))


def test_lr_option_values() -> None:
    assert TrainConfig(lr="AUTO").lr == "auto"
    assert TrainConfig(lr="1e-3").lr == pytest.approx(1e-3)
    for bad in ("fast", -1, 0, True, float("nan")):
        with pytest.raises(ConfigError, match="lr must be a positive number or auto"):
            TrainConfig(lr=bad)


def test_choose_transfer_is_a_pure_function_of_the_facts() -> None:
    from resnet_tune.engine.finetune import TransferFacts, budget_input_size, choose_transfer, weights_input_size

    small = choose_transfer(TransferFacts(n_train=1000, n_classes=10, image_side=32, weights_size=128))
    assert small.img_size == 128 and "at 128 px, the size the weights were trained at" in small.reason
    assert "about 32 px" in small.reason
    same = choose_transfer(TransferFacts(n_train=1000, n_classes=10, image_side=128, weights_size=128))
    assert same.img_size == 128 and same.reason == "at 128 px, the size the weights were trained at"
    unknown = choose_transfer(TransferFacts(n_train=50, n_classes=2, image_side=None, weights_size=None))
    assert unknown.img_size is None and unknown.reason == ""
    for choice in (small, same, unknown):  # the suite's rule: a full fine-tune, nothing frozen, on any facts
        assert choice.strategy == "full" and choice.freeze_at == 0 and "strategy full" in choice.strategy_reason
    for n_train, n_classes in ((20, 2), (100_000, 1000)):  # tiny and large target sets alike
        assert choose_transfer(TransferFacts(n_train, n_classes, 64, 224)).strategy == "full"
    assert choose_transfer(TransferFacts(1000, 10, 32, 128)) == small  # nothing but the facts counts
    # a wall-clock budget: images at the weights' size or larger keep it, with the stem and first stage frozen
    for n_train, n_classes, side in ((20, 2, 224), (100_000, 1000, 500)):
        timed = choose_transfer(TransferFacts(n_train, n_classes, side, 224, budget=True))
        assert (timed.strategy, timed.freeze_at, timed.img_size) == ("full", 2, 224)
        assert "with --budget the stem and first stage stay frozen (--freeze-at 2)" in timed.strategy_reason
    # ... smaller images train between their size and the weights', every layer trained, whatever the counts
    for n_train, n_classes in ((20, 2), (1000, 10), (100_000, 1000)):
        timed = choose_transfer(TransferFacts(n_train, n_classes, 32, 128, budget=True))
        assert (timed.strategy, timed.freeze_at, timed.img_size) == ("full", 0, 64)
        assert timed.reason == ("at 64 px, between the images' 32 px and the 128 px the weights were trained at "
                                "(their geometric mean): with --budget a smaller input buys more epochs")
        assert "with --budget below the weights' size nothing is frozen" in timed.strategy_reason
        assert "stay frozen" not in timed.strategy_reason
    # the branch follows the size, not the side: 200 px images on 224 px weights train at 224, frozen
    assert choose_transfer(TransferFacts(1000, 10, 200, 224, budget=True)).freeze_at == 2
    mid = choose_transfer(TransferFacts(1000, 10, 100, 224, budget=True))
    assert (mid.freeze_at, mid.img_size) == (0, 160)
    # a size the user set (--img-size) decides it the same way, and is the one the choice reports
    for set_size, frozen in ((128, 2), (160, 2), (96, 0), (32, 0)):
        user = choose_transfer(TransferFacts(1000, 10, 32, 128, budget=True, img_size=set_size))
        assert (user.freeze_at, user.img_size) == (frozen, set_size)
        assert user.reason == f"at {set_size} px, the size --img-size set"
    assert choose_transfer(TransferFacts(1000, 10, 32, 128, img_size=96)).freeze_at == 0  # no budget: never frozen
    assert choose_transfer(TransferFacts(1000, 10, 64, 128, budget=True)).img_size == 96
    unknown_side = choose_transfer(TransferFacts(1000, 10, None, 128, budget=True))
    assert (unknown_side.img_size, unknown_side.freeze_at) == (128, 2)
    unknown_weights = choose_transfer(TransferFacts(1000, 10, 32, None, budget=True))
    assert (unknown_weights.img_size, unknown_weights.freeze_at) == (None, 2)
    # the size between: a geometric mean on multiples of 32, never above the weights' size nor below 32
    assert [budget_input_size(side, w) for side, w in ((32, 128), (64, 128), (32, 224), (64, 224), (100, 224),
                                                       (200, 224), (300, 224), (8, 32), (24, 96))] == \
        [64, 96, 96, 128, 160, 224, 224, 32, 64]
    assert weights_input_size({"input_size": (3, 224, 224)}) == 224 and weights_input_size({"input_size": 96}) == 96
    assert weights_input_size({}) is None and weights_input_size({"input_size": True}) is None


def test_fine_tuning_runs_at_the_size_the_weights_were_trained_at(image_folder: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    from conftest import random_checkpoint

    ck = random_checkpoint(tmp_path, "resnet20", 40, ["a", "b"])  # its record: trained at 40 px
    res = fit(data=str(image_folder), output=str(tmp_path / "r"), model="resnet20", pretrained=str(ck),
              quiet=False, **{k: v for k, v in FAST.items() if k != "img_size"})
    out = capsys.readouterr().out
    assert "fine-tunes at 40 px, the size the weights were trained at (the images are about 24 px)" in out
    assert "note: strategy full: every layer trains from the first step" in out  # the default, and why
    saved = yaml.safe_load((res.run_dir / "config.yaml").read_text())
    assert saved["img_size"] == 40 and saved["strategy"] == "full" and saved["freeze_at"] == 0
    assert "strategy full: every layer trains" in (res.run_dir / "report.md").read_text()
    res = fit(data=str(image_folder), output=str(tmp_path / "s"), model="resnet20", pretrained=str(ck), quiet=True,
              **FAST)  # --img-size wins
    assert yaml.safe_load((res.run_dir / "config.yaml").read_text())["img_size"] == 16
