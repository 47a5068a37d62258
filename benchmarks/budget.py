"""``--budget``: planned vs actual wall-clock and accuracy (issue 17).

Runs ``resnet-tune train --data DATA --budget B`` (everything else at its defaults) as a separate process for each
budget and data set, and reports the wall-clock of the whole command against the budget (the budget counts from
the command's start to its report), the plans it printed, and the accuracy it reached on the reported split. Run it
on an otherwise idle machine: the budget is wall-clock time, so anything else running eats into it.

Resumable in the sense that a finished run (its ``summary.json``) is skipped; an interrupted run is started again
(a resumed budgeted run re-plans, so its wall-clock would not measure one command). Usage::

    python benchmarks/budget.py --work /work/bench_runs/budget --data cifar10 --budgets 5m 15m 30m
    python benchmarks/budget.py --work /work/bench_runs/budget --table
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, cpu_name  # noqa: E402

DATASETS = {"cifar10": DATA / "cifar10", "imagenette": DATA / "imagenette", "eurosat": DATA / "eurosat"}


def parse_seconds(text: str) -> float:
    from resnet_tune.engine.budget import parse_duration

    return parse_duration(text)


def run(work: Path, name: str, budget: str, extra: list[str]) -> dict:
    out = work / name / budget
    summary = out / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "resnet_tune", "train", "--data", str(DATASETS[name]), "--budget", budget,
           "--output", str(out / "run"), "--no-progress", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RESNET_TUNE_OFFLINE": "1"})
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    report = json.loads((out / "run" / "eval.json").read_text())
    plans = [line for line in proc.stdout.splitlines() if line.startswith("budget plan")]
    import yaml

    config = yaml.safe_load((out / "run" / "config.yaml").read_text())
    res = {"budget": budget, "budget_s": parse_seconds(budget), "seconds": seconds, "accuracy": report["accuracy"],
           "split": report.get("split"), "plans": plans, "model": config["model"], "img_size": config["img_size"],
           "epochs": len((out / "run" / "metrics.csv").read_text().splitlines()) - 1,
           "cpu": cpu_name(), "command": " ".join(["resnet-tune train --data", str(DATASETS[name]), "--budget", budget,
                                                   *extra])}
    summary.write_text(json.dumps(res, indent=2))
    return res


def table(work: Path) -> None:
    print("| data | budget | model (chosen) | wall-clock (s) | actual / budget | epochs | first plan "
          "| accuracy (split) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in DATASETS:
        for path in sorted((work / name).glob("*/summary.json"), key=lambda p: parse_seconds(p.parent.name)):
            r = json.loads(path.read_text())
            first = r["plans"][0].split(": ", 1)[1].split(" expected")[0] if r["plans"] else "-"
            model = f"{r['model']} at {r['img_size']} px" if "model" in r else "-"
            print(f"| {name} | {r['budget']} | {model} | {r['seconds']:.0f} | {r['seconds'] / r['budget_s']:.3f} | "
                  f"{r['epochs']} | {first} | {r['accuracy'] * 100:.2f}% ({r['split']}) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--data", nargs="+", default=["cifar10"], choices=list(DATASETS))
    ap.add_argument("--budgets", nargs="+", default=["5m", "15m", "30m"])
    ap.add_argument("--table", action="store_true")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="further options for resnet-tune train, after --")
    args = ap.parse_args()
    if args.table:
        return table(args.work)
    extra = [a for a in args.extra if a != "--"]
    print(f"CPU: {cpu_name()}", flush=True)
    for name in args.data:
        for budget in args.budgets:
            r = run(args.work, name, budget, extra)
            print(f"{name} --budget {budget}: {r['seconds']:.0f} s ({r['seconds'] / r['budget_s']:.3f} of the "
                  f"budget), {r['epochs']} epochs, accuracy {r['accuracy']:.4f} ({r['split']})", flush=True)


if __name__ == "__main__":
    main()
