"""The GPU benchmark script runs end to end on a CPU for a few steps (it is run for real on a lent GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnet_tune.engine.hardware import resolve_precision

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_script_runs_a_few_steps_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--size", "32",
                           "--batch", "2", "--steps", "1", "--no-compile", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    figures = json.loads(out.read_text())
    names = [row[0] for row in figures["train"]]
    assert names == ["torchvision plain loop, fp32", "torchvision AMP + channels_last", "resnet-tune fit() defaults"]
    assert all(row[1] > 0 for row in figures["train"] + figures["inference"])
    # the Predictor's own choice on this CPU: bf16 where the CPU has it, fp32 otherwise (CI machines differ)
    expected = resolve_precision("auto", torch.device("cpu")).name
    assert figures["inference"][1][0].startswith(f"resnet-tune Predictor ({expected}, folded BN")
    assert "| resnet-tune fit() defaults |" in proc.stdout and "Inference, batch 2" in proc.stdout
