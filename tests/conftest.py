"""Shared fixtures: tiny image folders made on the fly (no data is shipped with the tests)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("KERAS_BACKEND", "torch")

try:  # Hypothesis profiles for the fuzz tests (tests/test_fuzz.py); the other tests do not need Hypothesis
    from hypothesis import settings
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    pass
else:
    # The default suite: a bounded number of examples, derandomised so that every run (and CI) tries the same ones.
    settings.register_profile("fuzz", max_examples=30, deadline=None, derandomize=True, database=None,
                              print_blob=True)
    # ``python -m pytest -m slow``: many more examples (RESNET_TUNE_FUZZ_EXAMPLES, default 600), different on every
    # run; print_blob prints what reproduces a failure.
    settings.register_profile("fuzz-slow", max_examples=int(os.environ.get("RESNET_TUNE_FUZZ_EXAMPLES", "600")),
                              deadline=None, database=None, print_blob=True)

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 50, 220)}


def make_image(path: Path, colour: tuple[int, int, int], size: int = 24, seed: int = 0, fmt: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour)[None, None, :] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def random_checkpoint(root: Path, name: str, size: int, classes: list[str], seed: int = 0) -> Path:
    """A checkpoint of a fresh preset with non-trivial batch-norm statistics (so folding is really tested)."""
    import torch
    from torch import nn

    import resnet_tune as rt
    from resnet_tune.engine import checkpoint as ckpt

    torch.manual_seed(seed)
    model = rt.create_model(name, num_classes=len(classes))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.0)
            m.bias.data.uniform_(-0.1, 0.1)
    pp = {"input_size": size, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": size,
          "interpolation": "bilinear"}
    rec = ckpt.model_record(model, classes=classes, preprocessing=pp, metrics={"val_acc": 0.5})
    return ckpt.save_checkpoint(root / name / "best.safetensors", model, rec)


def make_folder(root: Path, per_class: int = 10, size: int = 24, classes: dict | None = None, ext: str = "png"
                ) -> Path:
    for i, (name, colour) in enumerate((classes or COLOURS).items()):
        for j in range(per_class):
            make_image(root / name / f"{name}_{j:03d}.{ext}", colour, size, seed=i * 1000 + j)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "data")


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty caches for every test: weights a developer has downloaded never change what a test sees."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(cache / "torch"))
    monkeypatch.setenv("KERAS_HOME", str(cache / "keras"))
    monkeypatch.setenv("HF_HOME", str(cache / "huggingface"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


@pytest.fixture(autouse=True)
def network_attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tests never reach the internet, with or without a connection: a URL off the loopback interface fails
    as it does offline (so ``pretrained=auto`` warns and trains from scratch), and every URL the code tries to
    open is recorded here (a test asserts that a run touched no network). Processes a test starts inherit
    ``RESNET_TUNE_OFFLINE=1``: they download nothing. Tests of downloads delete it and use a loopback server."""
    import urllib.error
    import urllib.parse
    import urllib.request

    attempts: list[str] = []
    real = urllib.request.urlopen
    monkeypatch.setenv("RESNET_TUNE_OFFLINE", "1")  # and the same in the processes a test starts

    def guarded(req, *args, **kwargs):  # type: ignore[no-untyped-def]
        url = req.full_url if isinstance(req, urllib.request.Request) else str(req)
        attempts.append(url)
        if urllib.parse.urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise urllib.error.URLError("network access is disabled in the tests")
        return real(req, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)
    return attempts


@pytest.fixture(scope="session")
def colour_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny colour classifier of test_serve.py as a run folder, trained once for the serve tests."""
    from test_serve import train_colour_checkpoint

    return train_colour_checkpoint(tmp_path_factory.mktemp("colours"))
