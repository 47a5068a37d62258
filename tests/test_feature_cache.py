"""Frozen-backbone epochs on cached features: the same training, far fewer backbone passes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import resnet_tune as rt
from resnet_tune.engine import checkpoint as ckpt
from resnet_tune import fit
from resnet_tune.tasks.classification import TrainConfig
from resnet_tune.errors import ConfigError
from resnet_tune.models.resnet import ResNet

FAST = dict(batch_size=8, img_size=16, progress=False, precision="fp32", deterministic=True, model="resnet20")


@pytest.fixture
def pretrained(tmp_path: Path) -> Path:
    """A resnet20 with trained-looking BatchNorm statistics, so that frozen features have a sane scale."""
    torch.manual_seed(1)
    model = rt.create_model("resnet20").train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(32, 3, 16, 16))
    path = tmp_path / "pre.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


class _Count:
    """Counts the images that go through the backbone (ResNet.forward_features)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.images = 0
        original = ResNet.forward_features

        def counted(model: ResNet, x: torch.Tensor) -> torch.Tensor:
            self.images += x.shape[0]
            return original(model, x)

        monkeypatch.setattr(ResNet, "forward_features", counted)


def test_cached_head_epochs_equal_uncached_training(image_folder: Path, tmp_path: Path, pretrained: Path) -> None:
    """With the file loader and one view per frozen epoch, the cache computes what running the backbone
    every epoch computes: the same images, the same augmentation, the same batches in the same order."""
    opts = dict(FAST, data=str(image_folder), pretrained=str(pretrained), strategy="linear_probe", epochs=3,
                loader="workers", workers=0, quiet=True)
    plain = fit(output=str(tmp_path / "plain"), cache_views=0, **opts)
    cached = fit(output=str(tmp_path / "cached"), cache_views=3, **opts)
    a, b = load_file(str(plain.run_dir / ckpt.LAST)), load_file(str(cached.run_dir / ckpt.LAST))
    assert a.keys() == b.keys()
    for k in a:  # the backbone sees other batch compositions, so rounding may differ in the last bits
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    for r1, r2 in zip(plain.history, cached.history, strict=True):
        assert r1["val_acc"] == r2["val_acc"]
        for key in ("train_loss", "train_acc", "val_loss"):
            assert r1[key] == pytest.approx(r2[key], rel=1e-5, abs=1e-6), key
    assert any("cached backbone features (3 augmented view(s)" in n for n in cached.notes)
    assert not any("cached backbone features" in n for n in plain.notes)


def test_head_epochs_run_the_backbone_once(image_folder: Path, tmp_path: Path, pretrained: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """One cached view: the training and validation images go through the backbone once for all frozen
    epochs; uncached, once per epoch (the report takes the best epoch's own validation: no final pass)."""
    count = _Count(monkeypatch)
    opts = dict(FAST, data=str(image_folder), pretrained=str(pretrained), strategy="linear_probe", epochs=4,
                loader="memory", val_fraction=0.2, quiet=True)
    res = fit(output=str(tmp_path / "cached"), cache_views=1, **opts)
    n_train, n_val = 24, 6  # the fixture: 3 classes x 10 images, a fifth held out

    assert count.images == n_train + n_val
    assert len(res.history) == 4 and all(0.0 <= r["val_acc"] <= 1.0 for r in res.history)

    count.images = 0
    plain = fit(output=str(tmp_path / "plain"), cache_views=0, **opts)
    assert count.images == 4 * n_train + 4 * n_val  # 24 = 3 full batches of 8 each epoch
    assert len(plain.history) == 4 and plain.eval_report is not None  # from the best epoch's own validation


def test_freeze_unfreeze_with_cache_resumes_exactly(image_folder: Path, tmp_path: Path, pretrained: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted inside the cached phase, the resumed run rebuilds the same cache and ends bit-identical;
    after the frozen epochs the whole network trains."""
    opts = dict(FAST, data=str(image_folder), pretrained=str(pretrained), strategy="freeze_unfreeze",
                freeze_epochs=2, epochs=3, loader="memory", cache_views=1, ema=True)
    full = fit(output=str(tmp_path / "full"), quiet=True, **opts)
    monkeypatch.setenv("RESNET_TUNE_DEBUG_INTERRUPT_AT", "2")  # Ctrl-C at the start of that epoch
    with pytest.raises(KeyboardInterrupt):
        fit(output=str(tmp_path / "part"), quiet=True, **opts)
    monkeypatch.delenv("RESNET_TUNE_DEBUG_INTERRUPT_AT")
    fit(resume=tmp_path / "part", quiet=True)
    sa = ckpt.load_state(full.run_dir / ckpt.STATE)["model"]
    sb = ckpt.load_state(tmp_path / "part" / ckpt.STATE)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    before = load_file(str(pretrained))
    assert not torch.equal(sa["conv1.weight"], before["conv1.weight"])  # the body trained after unfreezing


def test_mixup_runs_the_backbone_and_says_why(image_folder: Path, tmp_path: Path, pretrained: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    count = _Count(monkeypatch)
    res = fit(data=str(image_folder), pretrained=str(pretrained), strategy="linear_probe", epochs=2, mixup=0.2,
              output=str(tmp_path / "m"), loader="memory", quiet=True, **FAST)
    assert any("mixup and cutmix mix images" in n for n in res.notes)
    assert count.images == 2 * 24 + 2 * 6  # no final pass: the best epoch's own validation is reported


def test_cache_views_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="cache_views must be >= 0"):
        TrainConfig(cache_views=-1)


@pytest.mark.parametrize("scale", [None, (0.35, 1.0)])
def test_memory_loader_views_cover_every_image_once_with_its_own_augmentation(scale) -> None:
    """Also with random resized crops (``scale``)."""
    from resnet_tune.data.loaders import MemoryLoader, eval_shard

    x = torch.randint(0, 256, (21, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(21) % 3
    kw = dict(train=True, mean=(0.5,) * 3, std=(0.25,) * 3, seed=5, scale=scale, size=6 if scale else None)
    loaders = [MemoryLoader(x, y, 4, rank=r, world=2, **kw) for r in range(2)]
    one = MemoryLoader(x, y, 4, **kw)
    for view in (0, 1):
        whole = {int(i): xb for idx, xs, _ in one.view_batches(view) for i, xb in zip(idx, xs)}
        assert sorted(whole) == list(range(21))
        parts = {int(i): xb for ld in loaders for idx, xs, _ in ld.view_batches(view) for i, xb in zip(idx, xs)}
        assert sorted(parts) == list(range(21))  # two processes: disjoint shares, the same pixels
        assert all(torch.equal(parts[i], whole[i]) for i in whole)
        assert len(eval_shard(21, 4, 0, 2)) + len(eval_shard(21, 4, 1, 2)) == 21
    v0 = {int(i): xb for idx, xs, _ in one.view_batches(0) for i, xb in zip(idx, xs)}
    v1 = {int(i): xb for idx, xs, _ in one.view_batches(1) for i, xb in zip(idx, xs)}
    assert any(not torch.equal(v0[i], v1[i]) for i in v0)  # views differ


def test_report_reuses_the_last_validation_pass_when_it_was_the_best(image_folder: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """One epoch is always the best: its validation predictions make the report, no second pass (and with
    precise_bn off, the model sees each training and validation image once)."""
    import json

    count = _Count(monkeypatch)
    res = fit(data=str(image_folder), output=str(tmp_path / "r"), epochs=1, loader="memory", quiet=True,
              precise_bn=False, **{k: v for k, v in FAST.items() if k != "deterministic"})
    assert count.images == 24 + 6
    report = json.loads((res.run_dir / "eval.json").read_text())
    assert report["split"] == "validation" and report["num_samples"] == 6
    assert report["accuracy"] == pytest.approx(res.history[-1]["val_acc"])
