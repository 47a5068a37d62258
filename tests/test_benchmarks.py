"""Benchmark scripts: the GPU script runs end to end on a CPU for a few steps (it is run for real on a lent GPU);
the ledger helpers pair runs and keep machines apart."""

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


def test_ledger_pairs_only_runs_of_one_backbone_draw_and_keeps_machines_apart() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from common import pair_by_seed, paired, per_cpu
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    old, new = {"sha256": None}, {"sha256": "7d71"}
    base = [{"seed": 0, "acc": 0.50, "backbone": old}, {"seed": 1, "acc": 0.55, "backbone": new}]
    arm = [{"seed": 0, "acc": 0.60, "backbone": new},  # seed 0 rerun on a retrained backbone: not comparable
           {"seed": 1, "acc": 0.57, "backbone": new}, {"seed": 2, "acc": 0.9, "backbone": new}]
    assert [a["seed"] for a, _ in pair_by_seed(arm, base)] == [0, 1]
    pairs = pair_by_seed(arm, base, same="backbone")
    assert [(a["seed"], b["seed"]) for a, b in pairs] == [(1, 1)]
    assert paired(pairs, "acc") == "+2.0 (one seed)"
    runs = [{"cpu": "AMD EPYC", "date": "2026-12-03", "s": 14.0},
            {"cpu": "Intel(R) Xeon(R) Processor", "date": "2026-12-04", "s": 7.0},
            {"cpu": "Intel(R) Xeon(R) Processor", "date": "2026-12-04", "s": 8.0}]
    assert per_cpu(runs, lambda r: r["s"]) == "7.5 (Intel Xeon) / 14.0 (AMD EPYC)"
    assert per_cpu(runs[1:], lambda r: r["s"], 0) == "8"


def test_recipes_time_to_milestones_counts_every_epoch_until_the_first_that_reaches_it() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from recipes import minutes_to
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    rows = [{"val_acc": 0.85, "seconds": 60.0}, {"val_acc": 0.91, "seconds": 66.0},
            {"val_acc": 0.89, "seconds": 60.0}, {"val_acc": 0.931, "seconds": 54.0}]
    assert minutes_to(rows) == {"0.90": 2.1, "0.93": 4.0, "0.94": None}
    assert minutes_to([]) == {"0.90": None, "0.93": None, "0.94": None}
