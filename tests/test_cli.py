"""The command line as a user meets it: bad invocations end in one sentence, help is complete, start-up is light."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from resnet_tune.cli import HelpFormatter, build_parser, main

from conftest import make_folder

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``resnet-tune ARGV`` in this process: (exit code, stdout, stderr). An exception the CLI does not turn
    into a sentence propagates and fails the test with its traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's usage errors
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder with tiny data, a trained run, and a few broken files."""
    from resnet_tune import fit

    root = tmp_path_factory.mktemp("cli")
    make_folder(root / "data", per_class=6, size=16)
    fit(data=str(root / "data"), model="resnet20", img_size=16, epochs=1, batch_size=4, quiet=True,
        output=str(root / "run"), progress=False)
    (root / "notweights.pth").write_bytes(pickle.dumps({"not": "weights"}))
    (root / "bad.safetensors").write_bytes(b"garbage" * 10)
    (root / "typo.yaml").write_text("epochz: 3\n")
    (root / "fake.png").write_bytes(b"this is not a png")
    (root / "seg" / "images").mkdir(parents=True)
    yield root


# Each case: the arguments ({w} is the work folder) and a phrase the error sentence must contain.
BAD = [
    ("train --data {w}/data --model resnet5O", "unknown model 'resnet5O'. Did you mean"),
    ("train --data {w}/nowhere", "does not exist"),
    ("train --data {w}/fake.png", "is a file but not a CSV file"),
    ("train --data {w}/data --model resnet18 --pretrained http://127.0.0.1:9/x.pth", "Could not download"),
    ("train --data {w}/data --model resnet18 --pretrained hf:microsoft/resnet-50", "HF_HUB_OFFLINE"),
    ("train --data {w}/data --model resnet18 --pretrained torchvision:Bogus_Weights.X",
     "unknown torchvision weights 'Bogus_Weights.X'"),
    ("train --data {w}/data --model resnet18 --pretrained {w}/notweights.pth", "as a PyTorch checkpoint"),
    ("train --data {w}/data --model resnet18 --pretrained {w}/missing.pth", "does not exist"),
    ("train --data {w}/data --model resnet20 --output /dev/null/run", "cannot create the run folder /dev/null/run"),
    ("train --data {w}/data --output {w}/run", "already holds a training run"),
    ("train --epochs 0", "epochs must be at least 1"),
    ("train --optimizer sgdd", "invalid choice: 'sgdd'"),
    ("train --epochs many", "invalid int value: 'many'"),
    ("train --config {w}/nope.yaml", "config file"),
    ("train --config {w}/typo.yaml", "unknown option 'epochz'"),
    ("train --resume {w}/nowhere", "does not exist"),
    ("train --resume {w}/run --epochs 9", "cannot change on resume"),
    ("lr-find --model resnet5O", "unknown model 'resnet5O'"),
    ("lr-find --data {w}/nowhere", "does not exist"),
    ("evaluate {w}/nowhere --data {w}/data", "checkpoint"),
    ("evaluate {w}/bad.safetensors --data {w}/data", "not a readable safetensors file"),
    ("evaluate {w}/notweights.pth --data {w}/data", "is not a resnet-tune checkpoint"),
    ("evaluate {w}/run --data {w}/nowhere", "does not exist"),
    ("evaluate {w}/run --data {w}/seg", "that the checkpoint does not know"),
    ("predict {w}/run {w}/nowhere.png", "does not exist"),
    ("predict {w}/nowhere {w}/data", "does not exist"),
    ("predict {w}/run {w}/data --output {w}/x.txt", "must end in .csv or .json"),
    ("predict {w}/run", "the following arguments are required"),
    ("embed {w}/bad.safetensors {w}/data --output {w}/e.npy", "not a readable safetensors file"),
    ("embed {w}/run {w}/data", "the following arguments are required: --output"),
    ("export {w}/bad.safetensors", "not a readable safetensors file"),
    ("export {w}/run --format tflite", "invalid choice: 'tflite'"),
    ("export {w}/run --format torchscript --output /dev/null/x.pt", "cannot create the folder /dev/null"),
    ("explain {w}/run {w}/nowhere.png", "file not found"),
    ("explain {w}/run {w}/fake.png", "not an image"),
    ("explain {w}/run {w}/data/red/red_000.png --class purple", "class 'purple' is not one of"),
    ("serve {w}/run --port 0", "--port must be between 1 and 65535"),
    ("serve {w}/bad.safetensors", "not a readable safetensors file"),
    ("models resnet5O", "no model matches 'resnet5O'; did you mean"),
    ("segment train --data {w}/nowhere", "does not exist"),
    ("segment train --data {w}/data --model resnet5O", "unknown model 'resnet5O'"),
    ("segment train --data {w}/data", "neither images/ and masks/"),
    ("segment train --head fpn", "invalid choice: 'fpn'"),
    ("segment evaluate {w}/bad.safetensors --data {w}/data", "not a readable safetensors file"),
    ("segment evaluate {w}/run --data {w}/data", "not a segmentation one"),
    ("segment predict {w}/run {w}/data --output {w}/out", "not a segmentation one"),
    ("nosuchcommand", "invalid choice: 'nosuchcommand'"),
]


@pytest.mark.parametrize("argv,phrase", BAD, ids=[b[0].replace("{w}/", "") for b in BAD])
def test_bad_invocation_ends_in_one_sentence(work: Path, argv: str, phrase: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no test touches the network
    monkeypatch.setenv("HF_HOME", str(work / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(work / "torch"))
    code, out, err = run_cli(*argv.format(w=work).split())
    assert code != 0, out + err
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("error:") or ": error: " in line]
    assert len(lines) == 1, err
    assert phrase in lines[0], err


def test_a_user_error_in_a_real_process_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "resnet_tune", "train", "--data", str(tmp_path / "none"),
                           "--model", "resnet5O"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: unknown model 'resnet5O'")
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["train", "--help"], ["segment", "train", "--help"],
                                  ["serve", "--help"], ["models"], ["models", "resnet5*", "--json"]])
def test_version_help_and_models_do_not_import_torch(argv: list[str]) -> None:
    code = ("import sys; from resnet_tune.cli import main\n"
            "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.stderr.strip().splitlines()[-1] in ("NO-TORCH 0", "NO-TORCH None"), proc.stderr


def test_import_resnet_tune_is_lazy() -> None:
    code = ("import sys, resnet_tune as rt; assert 'torch' not in sys.modules, 'eager'; "
            "m = rt.create_model('resnet18'); print(type(m).__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ResNet", proc.stderr


def _parsers(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield prefix or "resnet-tune", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prefix} {name}".strip())


def test_every_option_has_help_showing_its_default_once() -> None:
    for name, parser in _parsers(build_parser()):
        fmt = HelpFormatter(parser.prog)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            text = fmt._expand_help(action) if action.help else ""
            assert text.strip(), f"{where} has no help text"
            assert text.count("default:") <= 1, f"{where} shows its default twice: {text}"
            if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
                assert "default:" in text, f"{where} does not show its default {action.default!r}: {text}"


def test_models_pattern_without_match_suggests_names() -> None:
    code, out, err = run_cli("models", "resnet5O")
    assert code == 2 and out == ""
    assert "did you mean resnet56, resnet50" in err
    code, out, _ = run_cli("models", "resnet5*")
    assert code == 0 and "resnet50 " in out and "resnet56 " in out and "resnet18 " not in out


def test_run_folder_is_named_after_the_chosen_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_folder(tmp_path / "data", per_class=4, size=16)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("train", "--data", "data", "--epochs", "1", "--batch-size", "4", "--no-progress")
    assert code == 0, err
    runs = [p.name for p in (tmp_path / "runs").iterdir()]
    assert len(runs) == 1 and runs[0].startswith("resnet9_narrow-"), runs  # chosen from the 16 px images, not "auto"


def test_evaluate_without_data_uses_the_runs_recorded_validation_split(work: Path, tmp_path: Path) -> None:
    import csv
    import json

    from conftest import make_image

    listed = list(csv.reader((work / "run" / "val.csv").open()))
    assert listed[0] == ["path", "label"] and len(listed) > 1
    val_files = sorted(row[0] for row in listed[1:])
    assert all(Path(p).is_file() and Path(p).parent.name == label for p, label in listed[1:])
    # images added to the data folder after training must not leak into "the validation split"
    make_image(work / "data" / "red" / "zz_new.png", (220, 30, 30), 16)
    try:
        code, out, err = run_cli("evaluate", work / "run", "--output", tmp_path / "ev")
    finally:
        (work / "data" / "red" / "zz_new.png").unlink()
    assert code == 0, err
    assert "the run's own validation split" in out
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["num_samples"] == len(val_files) and report["data"] == str(work / "run" / "val.csv")


def test_evaluate_without_data_on_the_embedded_default(tmp_path: Path) -> None:
    from resnet_tune.tasks.classification import evaluate
    from resnet_tune import fit

    result = fit(epochs=1, quiet=True, output=str(tmp_path / "digits"), progress=False)
    report = evaluate(result.run_dir)
    assert report["num_samples"] == 360  # the 20% held out of scikit-learn's 1,797 digits
    assert abs(report["accuracy"] - result.best_metric) < 0.02  # the same images as the run's validation


def test_evaluate_without_data_or_record_says_what_to_pass(work: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copy(work / "run" / "best.safetensors", tmp_path / "model.safetensors")
    code, _, err = run_cli("evaluate", tmp_path / "model.safetensors")
    assert code == 2 and "does not record its validation images" in err and "--data" in err


def test_readme_small_image_rule_is_the_code() -> None:
    """The README's sentence on small images and the choice the trainer makes agree."""
    from resnet_tune.tasks.classification import TrainConfig
    from resnet_tune.tasks.classification.data import choose_model_and_size

    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "train at 32 px with a ResNet made for 32 px images, `resnet9_narrow`" in readme
    for side in (28.0, 32.0, 64.0):
        assert choose_model_and_size(TrainConfig(data="d"), side) == ("resnet9_narrow", 32)
    assert choose_model_and_size(TrainConfig(data="d", img_size=64), 64.0) == ("resnet9_narrow", 64)
    assert choose_model_and_size(TrainConfig(), None) == ("resnet9_narrow", 32)  # the embedded digits
    assert choose_model_and_size(TrainConfig(data="d"), 160.0) == ("resnet18", 224)
