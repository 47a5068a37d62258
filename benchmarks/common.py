"""Shared helpers for the benchmarks: the machine's measured peak, timing and a header saying what ran where."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(repeats: int) -> str:
    import torchvision

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()
    return (f"hardware: {dev}, {os.cpu_count()} CPU threads visible, torch threads {torch.get_num_threads()}; "
            f"torch {torch.__version__}, torchvision {torchvision.__version__}, python {platform.python_version()}; "
            f"median of {repeats} timed windows")


def timed(fn: Callable[[], None], repeats: int = 5, warmup: int = 1, sync: Callable[[], None] | None = None
          ) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` windows after ``warmup`` untimed calls."""
    sync = sync or (torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None))
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5, device: str = "cpu") -> float:
    """Measured GFLOP/s of an n x n matmul in ``dtype``: the issue's yardstick for this machine's peak."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sec = timed(lambda: torch.mm(a, b), repeats=repeats)
    return 2 * n**3 / sec / 1e9


def conv_peak(dtype: torch.dtype, repeats: int = 5, device: str = "cpu") -> float:
    """Measured GFLOP/s of one large 3x3 convolution (256 -> 256 channels, 28x28, batch 32, channels_last),
    in ``dtype`` via autocast. On the project's EPYC the fp32 convolution runs at 2.5x the fp32 matmul
    (oneDNN vs the BLAS behind ``torch.mm``), so the matmul alone is no ceiling for fp32 convolutions."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(32, 256, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    dev = torch.device(device)
    amp = dtype != torch.float32

    def run() -> None:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype, enabled=amp):
            conv(x)

    sec = timed(run, repeats=repeats)
    return 2 * 32 * 256 * 256 * 9 * 28 * 28 / sec / 1e9


def measured_peaks() -> dict[str, tuple[float, float]]:
    """(4096 matmul, 3x3 convolution) GFLOP/s for fp32 and bf16 on this CPU, and a line that says so."""
    return {"fp32": (matmul_peak(torch.float32), conv_peak(torch.float32)),
            "bf16": (matmul_peak(torch.bfloat16), conv_peak(torch.bfloat16))}


def peaks_line(peaks: dict[str, tuple[float, float]]) -> str:
    fp32, bf16 = peaks["fp32"], peaks["bf16"]
    return (f"measured peak: 4096 matmul fp32 {fp32[0]:.0f}, bf16 {bf16[0]:.0f} GFLOP/s; 3x3 conv fp32 "
            f"{fp32[1]:.0f}, bf16 {bf16[1]:.0f} GFLOP/s")


def read_metrics(run: Path) -> list[dict[str, float]]:
    """A run folder's ``metrics.csv``, every value a float (NaN where an epoch has none: ``--val-every``)."""
    with (run / "metrics.csv").open(newline="") as f:
        return [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def cifar_subset_csv(path: Path, per_class: int, val_per_class: int, seed: int = 0) -> Path:
    """A CSV of path,label,split over ``../shared/data/cifar10/train`` (no copies of the images):
    ``per_class`` training and the next ``val_per_class`` validation images a class, drawn with ``seed``.
    Written once; an existing file is reused, so runs that read it stay resumable."""
    return subset_csv(path, DATA / "cifar10" / "train", per_class, val_per_class, seed)


def subset_csv(path: Path, train_dir: Path, per_class: int | None, val_per_class: int, seed: int = 0,
               test_dir: Path | None = None, test_split: str = "test") -> Path:
    """A CSV of path,label,split over the class folders of ``train_dir`` (no copies of the images): ``per_class``
    training (None: all but the validation images) and the next ``val_per_class`` validation images a class, drawn
    with ``seed``, and every image of ``test_dir``'s class folders as ``test_split`` (``test``, or ``val`` for a run
    validated on it) when it is given. Written once; an existing file is reused, so runs that read it stay
    resumable."""
    if path.exists():
        return path
    root = Path(train_dir).resolve()
    rng = random.Random(seed)
    rows = []
    for cls in sorted(p.name for p in root.iterdir() if p.is_dir()):
        files = sorted(str(p) for p in (root / cls).iterdir())
        rng.shuffle(files)
        n = len(files) - val_per_class if per_class is None else per_class
        rows += [(f, cls, "train") for f in files[:n]]
        rows += [(f, cls, "val") for f in files[n:n + val_per_class]]
        if test_dir is not None:
            rows += [(str(p), cls, test_split) for p in sorted((Path(test_dir).resolve() / cls).iterdir())]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    return path


#: Target sets of the transfer and small-data benchmarks: (training folder, evaluation folder) under ``DATA``, or
#: ``digits`` (written by :func:`digits_folder`). The training folder's held-out part is the validation split that
#: selection looks at; the evaluation folder is the test split, reported once per final choice.
TARGET_FOLDERS = {"eurosat": ("eurosat/train", "eurosat/val"), "cifar10": ("cifar10/train", "cifar10/test")}


def target_csv(work: Path, target: str, per_class: int, val_per_class: int, seed: int = 0) -> Path:
    """``per_class`` train and ``val_per_class`` val images a class of a target's training folder (drawn with
    ``seed``) and its whole evaluation folder as ``test``, as a CSV of paths (written once, then reused)."""
    if target == "digits":
        return digits_folder(work, per_class, val_per_class, seed)
    train_dir, test_dir = (DATA / p for p in TARGET_FOLDERS[target])
    name = f"{target}_{per_class}.csv" if val_per_class == 10 else f"{target}_{per_class}_{val_per_class}.csv"
    return subset_csv(work / name, train_dir, per_class, val_per_class, seed, test_dir)


def digits_folder(work: Path, per_class: int, val_per_class: int, seed: int = 0, size: int = 32) -> Path:
    """scikit-learn's handwritten digits (the embedded default's images, rendered at ``size`` px as the default
    does) as PNG files under ``work/digits`` and a CSV: ``per_class`` train and ``val_per_class`` val images a
    class drawn with ``seed``, every other image ``test``. Written once, then reused."""
    from PIL import Image

    from resnet_tune.data.default import load_digits_images

    path = work / f"digits_{per_class}_{val_per_class}.csv"
    if path.exists():
        return path
    (x_a, y_a), (x_b, y_b), classes = load_digits_images(size=size)
    x, y = torch.cat([x_a, x_b]), torch.cat([y_a, y_b])
    root = work / "digits"
    rng = random.Random(seed)
    rows = []
    for c, name in enumerate(classes):
        idx = [int(i) for i in torch.nonzero(y == c).flatten()]
        rng.shuffle(idx)
        for k, i in enumerate(idx):
            f = root / name / f"{i:04d}.png"
            if not f.exists():
                f.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(f)
            split = "train" if k < per_class else "val" if k < per_class + val_per_class else "test"
            rows.append((str(f), name, split))
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    return path


def cli_run(code: Path, out: Path, args: list[str]) -> dict:
    """One training run through the command line of the code in ``code`` (its ``src`` folder first on PYTHONPATH),
    resumed when an earlier attempt was interrupted; its figures, cached in ``out/summary.json`` (a finished run is
    not run again)."""
    import subprocess
    import sys

    summary = out / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())
    env = {**os.environ, "PYTHONPATH": str(Path(code).resolve()), "RESNET_TUNE_OFFLINE": "1"}
    resume = (out / "last.state.pt").exists()
    cmd = [sys.executable, "-m", "resnet_tune", "train", *(["--resume", str(out)] if resume else
                                                            [*args, "--output", str(out)]), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    seconds = time.perf_counter() - t0
    rows = read_metrics(out)
    report = json.loads((out / "eval.json").read_text())
    res = {"test_acc": report["accuracy"], "split": report.get("split"),
           "best_val_acc": max(r["val_acc"] for r in rows),
           "max_val_loss": max(r["val_loss"] for r in rows),
           "max_train_loss": max(r["train_loss"] for r in rows), "seconds": seconds,
           "epoch_train_seconds": [r["train_seconds"] for r in rows],
           "command": " ".join(["resnet-tune train", *args]), "log": proc.stdout[-6000:],
           "device": next((line[8:] for line in proc.stdout.splitlines() if line.startswith("device: ")), None)}
    summary.write_text(json.dumps(res, indent=2))
    return res


#: The benchmarks' ledger in the repository: one JSON file a finished run, ``results/<bench>/<key>/seed<N>.json``.
#: Each session gets a new machine, so run folders do not outlive it; campaigns accumulate their seeds here.
LEDGER = Path(__file__).resolve().parent / "results"


def ledger_write(bench: str, key: str, seed: int, res: dict, **facts: object) -> Path:
    """Keep a finished run's figures (not its log) with ``facts`` (what it ran on), the CPU, torch and the date; an
    existing entry is never rewritten."""
    import datetime

    path = LEDGER / bench / key / f"seed{seed}.json"
    if not path.exists():
        entry = {k: v for k, v in res.items() if k != "log"}
        entry.update(facts, cpu=cpu_name(), torch=torch.__version__, date=datetime.date.today().isoformat())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entry, indent=1) + "\n")
    return path


def ledger_read(bench: str) -> dict[str, list[dict]]:
    """Every recorded run of a benchmark, by key (``a/b/c``), seeds in order (each entry's ``seed`` from its file
    name)."""
    root = LEDGER / bench
    out: dict[str, list[dict]] = {}
    for p in sorted(root.glob("**/seed*.json")):
        entry = {**json.loads(p.read_text()), "seed": int(p.stem[4:])}
        out.setdefault(p.parent.relative_to(root).as_posix(), []).append(entry)
    return out


def summaries(folder: Path) -> list[dict]:
    """The ``summary.json`` of every finished seed (``seed*/``) of one arm's folder (:func:`cli_run`)."""
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("seed*/summary.json"))]


def pair_by_seed(runs: list[dict], base: list[dict], same: str | None = None) -> list[tuple[dict, dict]]:
    """The ledger entries of ``runs`` paired with those of ``base`` that ran the same seed (and, with ``same``, have
    the same value under that key: e.g. ``"backbone"``, so that a seed rerun on a retrained backbone is not paired
    with the old one's)."""
    by_seed = {r["seed"]: r for r in base}
    return [(r, by_seed[r["seed"]]) for r in runs if r.get("seed") in by_seed
            and (same is None or r.get(same) == by_seed[r["seed"]].get(same))]


def per_cpu(runs: list[dict], value, digits: int = 1) -> str:
    """``value(run)`` averaged per CPU model (ledger entries from different sessions ran on different machines,
    whose times do not compare): ``"9.7 (Intel Xeon) / 14.0 (AMD EPYC)"``, the latest machine first."""
    groups: dict[str, list[float]] = {}
    for r in sorted(runs, key=lambda r: r.get("date", ""), reverse=True):
        cpu = " ".join(w for w in str(r.get("cpu", "?")).replace("(R)", "").split() if w != "Processor")
        groups.setdefault(cpu, []).append(value(r))
    return " / ".join(f"{statistics.mean(v):.{digits}f}" + (f" ({cpu})" if len(groups) > 1 else "")
                      for cpu, v in groups.items())


def paired(pairs: list[tuple[dict, dict]], key: str) -> str:
    """Mean and standard error of the differences ``a - b`` of ``key`` in points (accuracies as fractions)."""
    diffs = [100 * (a[key] - b[key]) for a, b in pairs]
    if not diffs:
        return "-"
    if len(diffs) == 1:
        return f"{diffs[0]:+.1f} (one seed)"
    return f"{statistics.mean(diffs):+.1f} ± {statistics.stdev(diffs) / len(diffs) ** 0.5:.1f}"


def mean_sd(values: list[float], digits: int = 1) -> str:
    """``mean% ± sd (n)`` of fractions, as the tables print them."""
    pct = [100 * v for v in values]
    sd = statistics.stdev(pct) if len(pct) > 1 else 0.0
    return f"{statistics.mean(pct):.{digits}f}% ± {sd:.{digits}f} ({len(pct)})"


def run_or_resume(out: Path, **options) -> float:
    """Train into ``out`` with the public ``fit`` unless it is finished; resume it if it was interrupted.
    Returns the wall seconds of the whole run (kept in ``out/timing.json`` across resumes)."""
    from resnet_tune.engine.checkpoint import STATE
    from resnet_tune import fit

    timing = out / "timing.json"
    if (out / "eval.json").exists():
        return json.loads(timing.read_text())["seconds"] if timing.exists() else 0.0
    options.setdefault("pretrained", "none")  # the benchmarks train from scratch unless they name weights
    before = json.loads(timing.read_text())["seconds"] if timing.exists() else 0.0
    t0 = time.perf_counter()
    if (out / STATE).exists():
        fit(resume=out, progress=False)
    else:
        fit(output=str(out), progress=False, **options)
    seconds = before + time.perf_counter() - t0
    timing.write_text(json.dumps({"seconds": seconds}))
    return seconds
