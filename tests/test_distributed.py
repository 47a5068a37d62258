"""Training under torchrun: sharding, equality with one process, only rank 0 writing, failures, restarts.

The end-to-end tests start real jobs with ``python -m torch.distributed.run`` (CPU, gloo, two processes of
one thread each) on tiny image folders made here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import resnet_tune as rt
from resnet_tune.data.loaders import (EpochLoader, MemoryLoader, eval_batch_ids, eval_shard, train_batches, train_seen,
                                      train_shard)
from resnet_tune.engine import checkpoint as ckpt
from resnet_tune.engine import distributed as D
from resnet_tune.engine.trainer import Trainer
from resnet_tune.errors import ConfigError
from resnet_tune.tasks.classification import ClassificationTask, TrainConfig
from resnet_tune.tasks.classification.task import combine_batches

from conftest import COLOURS, make_image

LIVENESS_S = 120  # a job that lost a process must end by itself well within this (guards against a hang)


# --- sharding, in process -------------------------------------------------------------------------

class _Indexed(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((1,), float(i)), i


@pytest.mark.parametrize("n,world,batch", [(24, 2, 4), (27, 2, 4), (43, 3, 4), (10, 4, 2), (5, 2, 4)])
@pytest.mark.parametrize("weighted,flip,scale", [(False, "random", None), (True, "random", None),
                                                 (False, "alternate", None), (False, "random", (0.3, 1.0)),
                                                 (False, "alternate", (0.3, 1.0))])
def test_train_shards_are_disjoint_and_cover_what_one_process_trains(n: int, world: int, batch: int,
                                                                     weighted: bool, flip: str, scale) -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 255, (n, 3, 16, 16), dtype=torch.uint8)
    labels = torch.arange(n)
    weights = torch.rand(n) if weighted else None
    kw = dict(train=True, mean=(0.5,) * 3, std=(0.25,) * 3, seed=3, weights=weights, flip=flip, scale=scale,
              size=12 if scale else None)
    for epoch in (0, 1):
        one = MemoryLoader(images, labels, batch * world, **kw)
        one.set_epoch(epoch)
        ranks = [MemoryLoader(images, labels, batch, rank=r, world=world, **kw) for r in range(world)]
        files = [EpochLoader(_Indexed(n), batch, True, 0, torch.device("cpu"), 3, weights, r, world)
                 for r in range(world)]
        for loader in ranks + files:
            loader.set_epoch(epoch)
        seen = [r.epoch_indices() for r in ranks]
        assert [f.epoch_indices() for f in files] == seen  # both loaders shard alike
        assert len({len(s) for s in seen}) == 1 and len({len(r) for r in ranks + files}) == 1  # same step count
        if not weighted:  # drawn without replacement: each sample once, on one rank
            flat = [i for s in seen for i in s]
            assert len(flat) == len(set(flat))
        per = n // world
        assert len(seen[0]) == train_seen(per, batch)
        if per >= batch:
            # the same samples, in the same global batches, with the same crops and flips as one process
            assert sorted(i for s in seen for i in s) == sorted(one.epoch_indices())
            assert len(ranks[0]) == len(one) == n // (batch * world)
            for step, xy in enumerate(zip(one, *ranks)):
                (x1, y1), parts = xy[0], xy[1:]
                for r, (x, y) in enumerate(parts):  # rank r's batch is the r-th block of the single batch
                    block = slice(r * batch, (r + 1) * batch)
                    assert torch.equal(y, y1[block]) and torch.equal(x, x1[block]), (step, r)
            got = [sorted(int(v) for x, _ in f for v in x.flatten()) for f in files]
            assert got == [sorted(s) for s in seen]
            # and the micro-batches of one process with `world` accumulation steps at the same batch size: rank r's
            # batch is its r-th micro-batch of each step, crops and flips included
            micro = MemoryLoader(images, labels, batch, accum_steps=world, **kw)
            micro.set_epoch(epoch)
            steps = list(micro)
            for step, parts in enumerate(zip(*ranks)):
                for r, (x, y) in enumerate(parts):
                    xm, ym = steps[step * world + r]
                    assert torch.equal(y, ym) and torch.equal(x, xm), (step, r)
    assert train_batches(1, 4) == 0 and train_batches(3, 4) == 1 and train_batches(9, 4) == 2


@pytest.mark.parametrize("n,world,batch", [(18, 2, 8), (17, 3, 4), (3, 4, 2), (0, 2, 4)])
def test_eval_shards_hold_every_sample_once_in_one_process_batches(n: int, world: int, batch: int) -> None:
    parts = [eval_shard(n, batch, r, world).tolist() for r in range(world)]
    assert sorted(i for p in parts for i in p) == list(range(n))
    ids = [list(eval_batch_ids(n, batch, r, world)) for r in range(world)]
    assert sorted(b for i in ids for b in i) == list(range(-(-n // batch)))
    images = torch.randint(0, 255, (n, 3, 8, 8), dtype=torch.uint8)
    single = list(MemoryLoader(images, torch.arange(n), batch, train=False, mean=(0.,) * 3, std=(1.,) * 3))
    for r in range(world):
        loader = MemoryLoader(images, torch.arange(n), batch, train=False, mean=(0.,) * 3, std=(1.,) * 3, rank=r,
                              world=world)
        assert loader.batch_ids() == ids[r] and len(loader) == len(ids[r])
        for b, (x, y) in zip(loader.batch_ids(), loader):
            assert torch.equal(x, single[b][0]) and torch.equal(y, single[b][1])
        files = EpochLoader(_Indexed(n), batch, False, 0, torch.device("cpu"), 0, None, r, world)
        assert files.batch_ids() == ids[r]
        assert [y.tolist() for _, y in files] == [single[b][1].tolist() for b in ids[r]]
    assert train_shard(torch.arange(7), 0, 1)[0].tolist() == list(range(7))


def test_launch_info_config_and_single_process_helpers() -> None:
    assert D.launch_info({}) == D.Launch()
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "h",
           "MASTER_PORT": "1", "TORCHELASTIC_RESTART_COUNT": "1", "TORCHELASTIC_MAX_RESTARTS": "2",
           "TORCHELASTIC_RUN_ID": "job7"}
    info = D.launch_info(env)
    assert (info.rank, info.world, info.local_rank, info.local_world, info.restarted) == (3, 4, 1, 2, True)
    assert not D.launch_info({**env, "TORCHELASTIC_RESTART_COUNT": "0"}).restarted
    assert D.launch_info({k: v for k, v in env.items() if k != "MASTER_ADDR"}) == D.Launch()
    with pytest.raises(ConfigError, match="integers"):
        D.launch_info({**env, "RANK": "x"})
    one = D.setup(torch.device("cpu"), launch=D.Launch())
    assert not one.enabled and one.is_main and one.world == 1
    assert one.broadcast_object(5) == 5 and one.gather_object(5) == [5] and one.all_reduce_sum([1.0]) == [1.0]
    assert one.run_on_main(lambda: "x") == "x"
    model = torch.nn.Linear(2, 2)
    assert one.wrap(model) is model and one.convert_sync_bn(model) is model
    # --sync-bn on a network with fixed BatchNorm scales (buffers, which PyTorch's conversion cannot take): they stay
    # fixed buffers with their values, the learned ones stay parameters
    fixed = rt.create_model("resnet9_narrow", bn_scale=False)
    fixed.bn1.weight.fill_(2.0)
    keys = set(fixed.state_dict())
    synced = D.sync_batchnorm(fixed)
    bns = [m for m in synced.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert len(bns) == 8 and not any(isinstance(m.weight, torch.nn.Parameter) for m in bns)
    assert set(synced.state_dict()) == keys and torch.equal(synced.bn1.weight, torch.full((64,), 2.0))
    learned = D.sync_batchnorm(rt.create_model("resnet9_narrow"))
    assert all(isinstance(m.weight, torch.nn.Parameter) for m in learned.modules()
               if isinstance(m, torch.nn.SyncBatchNorm))
    assert D.is_peer_failure(RuntimeError("[pair.cc:545] Read error: Connection reset by peer"))
    assert not D.is_peer_failure(ValueError("bad value"))
    msg = str(one.failure(RuntimeError("[/x/gloo/pair.cc:545] Read error [127.0.0.1]:1: Connection reset by "
                                       "peer. This is typically caused by a remote worker"), "runs/r"))
    assert msg.startswith("a training process stopped or timed out: Read error [127.0.0.1]:1: Connection reset")
    assert "--resume runs/r" in msg and "pair.cc" not in msg
    cfg = TrainConfig(batch_size=32, accum_steps=2)
    task = ClassificationTask(cfg)
    assert task.default_lr("scratch", 4) == pytest.approx(4 * task.default_lr("scratch", 1))
    assert TrainConfig().dist_timeout == 10.0 and TrainConfig().sync_bn is False
    with pytest.raises(ConfigError, match="dist_timeout"):
        TrainConfig(dist_timeout=0)


def test_restarted_job_without_output_finds_its_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun with --max-restarts and no --output, rank 0 notes the folder it chose in
    runs/.torchrun-<rendezvous id>; the restarted job (TORCHELASTIC_RESTART_COUNT > 0) looks there."""
    monkeypatch.chdir(tmp_path)
    first = Trainer(ClassificationTask, TrainConfig(model="resnet20"))
    first.dist = D.Dist(D.Launch(world=2, max_restarts=1, run_id="job/7", under_torchrun=True))
    run = first.decide_run_dir("resnet20")
    assert (tmp_path / "runs" / ".torchrun-job_7").read_text() == str(run)
    again = Trainer(ClassificationTask, TrainConfig(model="resnet20"))
    again.dist = D.Dist(D.Launch(world=2, max_restarts=1, restart_count=1, run_id="job/7", under_torchrun=True))
    assert again.find_restart_state() is None  # nothing saved yet: start again
    (run / ckpt.STATE).write_bytes(b"")
    assert again.find_restart_state() == str(run)
    anonymous = Trainer(ClassificationTask, TrainConfig(model="resnet20"))
    anonymous.dist = D.Dist(D.Launch(world=2, max_restarts=1, run_id="none", under_torchrun=True))
    anonymous.decide_run_dir("resnet20")  # without a rendezvous id there is no safe name for a note: use --output
    assert sorted(p.name for p in (tmp_path / "runs").glob(".torchrun-*")) == [".torchrun-job_7"]


# --- end to end under torchrun ----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESNET_TUNE_DEBUG", "TORCHELASTIC"))}
    for k in D.TORCHRUN_VARS:
        env.pop(k, None)
    src = str(Path(rt.__file__).resolve().parents[1])
    env.update(OMP_NUM_THREADS="1", XDG_CACHE_HOME=str(cache), PYTHONPATH=os.pathsep.join(
        [src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep), **extra)
    return env


def _torchrun(args: list[str], cwd: Path, cache: Path, nproc: int = 2, launcher: list[str] = (), timeout: float = 150,
              command: tuple[str, ...] = ("train",), **env: str) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
           str(_free_port()), *launcher, "-m", "resnet_tune", *command, *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(cache, **env), capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - t0


def _single(args: list[str], cwd: Path, cache: Path, command: tuple[str, ...] = ("train",),
            **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnet_tune", *command, *args], cwd=cwd, env=_env(cache, **env),
                          capture_output=True, text=True, timeout=150)


def _ok(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One two-process run (2 x batch 4) and one single-process run (1 x batch 8) of a linear probe: frozen
    BatchNorm statistics, fp32, deterministic, so that both compute the same thing up to rounding."""
    root = tmp_path_factory.mktemp("ddp")
    for i, (name, colour) in enumerate(COLOURS.items()):
        for j in range(8):
            make_image(root / "data" / "train" / name / f"{name}_{j:03d}.png", colour, 24, seed=i * 1000 + j)
        for j in range(6):
            make_image(root / "data" / "val" / name / f"{name}_{j:03d}.png", colour, 24, seed=i * 1000 + 500 + j)
    torch.manual_seed(1)
    pre = rt.create_model("resnet20").train()
    with torch.no_grad():  # BatchNorm statistics of a sort, so that the frozen features are of a sane scale
        for _ in range(4):
            pre(torch.randn(32, 3, 16, 16))
    save_file({k: v.contiguous() for k, v in pre.state_dict().items()}, str(root / "pre.safetensors"))
    options = ["--data", str(root / "data"), "--epochs", "2", "--img-size", "16", "--no-progress", "--precision",
               "fp32", "--model", "resnet20", "--pretrained", str(root / "pre.safetensors"), "--strategy",
               "linear_probe", "--deterministic", "--seed", "3"]
    cache = root / "cache"
    (root / "two").mkdir()
    two, seconds = _torchrun([*options, "--batch-size", "4"], root / "two", cache,
                             RESNET_TUNE_DEBUG_SAMPLES=str(root / "seen2"))
    one = _single([*options, "--batch-size", "8", "--output", str(root / "one")], root, cache,
                  RESNET_TUNE_DEBUG_SAMPLES=str(root / "seen1"))
    return {"root": root, "options": options, "cache": cache, "two": two, "one": one, "seconds": seconds}


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open() as f:
        return list(csv.DictReader(f))


def test_two_processes_train_like_one_and_only_rank_0_writes(job: dict) -> None:
    root = job["root"]
    out = _ok(job["two"])
    _ok(job["one"])
    assert "global batch 8 = batch size 4 per process x 2 process(es)" in out
    assert out.count("epoch 2/2") == 1  # only rank 0 logs

    # one run folder (runs/<model>-<date>-<time>, chosen on rank 0), one set of checkpoints, nothing else
    assert sorted(p.name for p in (root / "two").iterdir()) == ["runs"]
    (run,) = list((root / "two" / "runs").iterdir())
    assert run.name.startswith("resnet20-")
    names = sorted(p.name for p in run.iterdir())
    assert names == sorted(["best.json", "best.safetensors", "last.json", "last.safetensors", "last.state.pt",
                            "config.yaml", "metrics.csv", "eval.json", "report.md", "curves.png", "confusion.png",
                            "worst.png", "data_scan.json", "bad_files.txt", "val.csv"])
    state = ckpt.load_state(run / ckpt.STATE)
    assert state["world"] == 2 and state["epoch"] == 2
    assert "global batch 8" in (run / "config.yaml").read_text()

    # each epoch: the ranks trained disjoint samples that together are exactly what one process trained
    for epoch in (1, 2):
        r0 = (root / "seen2" / f"rank0-epoch{epoch}.txt").read_text().split()
        r1 = (root / "seen2" / f"rank1-epoch{epoch}.txt").read_text().split()
        single = (root / "seen1" / f"rank0-epoch{epoch}.txt").read_text().split()
        assert len(r0) == len(r1) == 12 and not set(r0) & set(r1)
        assert sorted(r0 + r1, key=int) == sorted(single, key=int) == [str(i) for i in range(24)]

    # the same weights as one process with the same global batch (up to summation order)
    a, b = load_file(str(run / ckpt.LAST)), load_file(str(root / "one" / ckpt.LAST))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)
    rows2, rows1 = _csv(run / "metrics.csv"), _csv(root / "one" / "metrics.csv")
    for r2, r1 in zip(rows2, rows1, strict=True):
        assert r2["val_acc"] == r1["val_acc"]
        for key in ("train_loss", "train_acc", "val_loss"):
            assert float(r2[key]) == pytest.approx(float(r1[key]), rel=1e-5), key


def test_gradient_accumulation_matches_one_process(job: dict, tmp_path: Path) -> None:
    """2 processes x batch 2 x 2 accumulation steps (gradients exchanged on the second micro-step only) train
    like 1 process x batch 4 x 2 accumulation steps: the same micro-batches, the same updates."""
    options = [*job["options"], "--batch-size", "2", "--accum-steps", "2"]
    two, _ = _torchrun([*options, "--output", str(tmp_path / "two")], tmp_path, job["cache"])
    _ok(two)
    options[options.index("--batch-size") + 1] = "4"
    _ok(_single([*options, "--output", str(tmp_path / "one")], tmp_path, job["cache"]))
    a, b = load_file(str(tmp_path / "two" / ckpt.LAST)), load_file(str(tmp_path / "one" / ckpt.LAST))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)
    assert [r["lr"] for r in _csv(tmp_path / "two" / "metrics.csv")] == \
        [r["lr"] for r in _csv(tmp_path / "one" / "metrics.csv")]


def test_distributed_evaluation_equals_one_process_exactly(job: dict) -> None:
    """Evaluation is sharded by batch and gathered back in order: the numbers of the two-process run are
    those one process computes from the same weights with the same batches, to the last bit."""
    from resnet_tune.data.datasets import discover
    from resnet_tune.data.loaders import decode_to_memory
    from resnet_tune.engine.hardware import Precision, default_channels_last
    from resnet_tune.eval.metrics import classification_report

    _ok(job["two"])
    (run,) = list((job["root"] / "two" / "runs").iterdir())
    from resnet_tune.data.transforms import Preprocessing

    splits = discover(str(job["root"] / "data"))

    layout = default_channels_last(torch.device("cpu"), deterministic=True)  # the trainer's, for --deterministic

    def one_process(checkpoint: Path, as_trained: bool) -> tuple[torch.Tensor, torch.Tensor, float, dict]:
        model, rec = ckpt.load_checkpoint(checkpoint)
        if as_trained and layout:  # as the trainer holds it
            model = model.to(memory_format=torch.channels_last)
        pp = Preprocessing.from_dict(rec["preprocessing"])
        x, y = decode_to_memory(splits.val, pp)
        # eval batch = 2 x batch size 4, in the trainer's layout
        loader = MemoryLoader(x, y, 8, train=False, mean=pp.mean, std=pp.std, channels_last=layout)
        task = ClassificationTask(TrainConfig())
        model.eval()
        parts = [task.eval_batch(model, x, y, Precision(None, False), torch.device("cpu")).part for x, y in loader]
        return (*combine_batches(parts), rec)

    # when the last epoch is the best the report holds that epoch's validation pass (the model as trained);
    # otherwise the best checkpoint is evaluated again as loaded
    st = ckpt.load_state(run / ckpt.STATE)
    probs, targets, _, rec = one_process(run / ckpt.BEST, st["best_epoch"] == st["epoch"])
    assert len(targets) == 18  # 3 evaluation batches (8, 8, 2): rank 0 computed two, rank 1 one
    expected = classification_report(probs.numpy(), targets.numpy(), rec["classes"], files=[p for p, _ in splits.val])
    report = json.loads((run / "eval.json").read_text())
    report.pop("split")
    assert report == json.loads(json.dumps(expected))
    assert 0.4 < report["accuracy"] < 1.0  # not a constant prediction: the comparison means something

    probs, targets, loss, _ = one_process(run / ckpt.LAST, True)
    last = _csv(run / "metrics.csv")[-1]
    acc = float((probs.argmax(1) == targets).float().mean())
    assert (last["val_loss"], last["val_acc"]) == (f"{loss:.6g}", f"{acc:.6g}")
    state = ckpt.load_state(run / ckpt.STATE)
    assert (state["history"][-1]["val_loss"], state["history"][-1]["val_acc"]) == (loss, acc)  # to the last bit


def test_killed_process_stops_the_job_and_leaves_a_resumable_checkpoint(job: dict, tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    options = list(job["options"])
    options[options.index("--epochs") + 1] = "3"
    proc, seconds = _torchrun([*options, "--batch-size", "4", "--output", str(out_dir), "--dist-timeout", "0.5"],
                              tmp_path, job["cache"], timeout=LIVENESS_S + 30, RESNET_TUNE_DEBUG_DIE_AT="1:3")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and seconds < LIVENESS_S, out[-3000:]
    assert "rank 1: exiting at the start of epoch 3" in out
    # rank 0 names the failure itself (its collective broke), or was stopped by torchrun and says so
    assert "a training process stopped or timed out" in out or "was stopped by SIGTERM" in out, out[-3000:]
    state = ckpt.load_state(out_dir / ckpt.STATE)
    assert state["epoch"] == 2 and len(_csv(out_dir / "metrics.csv")) == 2
    ckpt.load_checkpoint(out_dir / ckpt.LAST)
    # continue it in one process: from the last completed epoch, with a note that it is not bit-exact
    res = _ok(_single(["--resume", str(out_dir)], tmp_path, job["cache"]))
    assert "resumed with 1 process(es) where the run was saved with 2" in res
    assert ckpt.load_state(out_dir / ckpt.STATE)["epoch"] == 3 and len(_csv(out_dir / "metrics.csv")) == 3
    assert (out_dir / "report.md").is_file()


def test_torchrun_restart_resumes_from_the_checkpoint_by_itself(job: dict, tmp_path: Path) -> None:
    """--max-restarts 1 and a process that dies at the start of epoch 2 on the first attempt: the restarted
    job resumes epoch 2 from the checkpoint, and ends with the weights of the uninterrupted run."""
    _ok(job["two"])
    out_dir = tmp_path / "run"
    proc, _ = _torchrun([*job["options"], "--batch-size", "4", "--output", str(out_dir)], tmp_path, job["cache"],
                        launcher=["--max-restarts", "1"], RESNET_TUNE_DEBUG_DIE_AT="1:2")
    out = _ok(proc)
    assert "rank 1: exiting at the start of epoch 2" in out
    assert f"torchrun restarted the job (restart 1 of 1): resuming {out_dir} from its last checkpoint" in out
    assert "resumed" in out and out.count("epoch 1/2") == 1 and out.count("epoch 2/2") == 1
    assert [r["epoch"] for r in _csv(out_dir / "metrics.csv")] == ["1", "2"]
    (ref,) = list((job["root"] / "two" / "runs").iterdir())
    a, b = load_file(str(ref / ckpt.LAST)), load_file(str(out_dir / ckpt.LAST))
    assert all(torch.equal(a[k], b[k]) for k in a)  # same number of processes: exact


def test_sync_bn_needs_gpus_under_torchrun(job: dict, tmp_path: Path) -> None:
    proc, _ = _torchrun([*job["options"], "--batch-size", "4", "--output", str(tmp_path / "r"), "--sync-bn"],
                        tmp_path, job["cache"])
    assert proc.returncode != 0
    assert "--sync-bn needs CUDA GPUs" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_silent_process_times_out_instead_of_hanging(job: dict, tmp_path: Path) -> None:
    """A process that stops answering (SIGSTOP) without dying: the others give up after --dist-timeout."""
    options = [o for o in job["options"] if o != "--deterministic"]
    options[options.index("--epochs") + 1] = "400"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(_free_port()), "-m", "resnet_tune", "train", *options, "--batch-size", "4", "--output",
           str(tmp_path / "r"), "--dist-timeout", "0.25"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(job["cache"]), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "r" / ckpt.STATE).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                  text=True).stdout.split()]
        rank1 = next(p for p in workers if "LOCAL_RANK=1\0" in Path(f"/proc/{p}/environ").read_text())
        os.kill(rank1, signal.SIGSTOP)
        out, _ = proc.communicate(timeout=LIVENESS_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and time.monotonic() - t0 < LIVENESS_S + 60
    assert "a training process stopped or timed out: Timed out" in out


# --- segmentation on the same engine ------------------------------------------------------------------------

@pytest.mark.slow  # 20-30 s of torchrun start-up: in CI's slow phase (the engine's DDP path is tested above)
def test_segmentation_two_processes_equal_one_process_with_accumulation(tmp_path: Path) -> None:
    """2 processes at batch 2 train exactly the micro-batches of 1 process at batch 2 with --accum-steps 2 (rank r's
    batch is the r-th micro-batch, augmentation is drawn per sample): the same weights; and the distributed
    evaluation of the final checkpoint gives the mean IoU one process computes, to the last bit."""
    from test_segment import make_seg_data

    data = make_seg_data(tmp_path / "seg", counts=(8, 4, 4))
    options = ["--data", str(data), "--epochs", "2", "--batch-size", "2", "--img-size", "24", "--precision", "fp32",
               "--deterministic", "--head", "unet", "--model", "resnet18", "--no-progress", "--seed", "1"]
    cache = tmp_path / "cache"
    two, _ = _torchrun([*options, "--output", str(tmp_path / "two")], tmp_path, cache, command=("segment", "train"),
                       timeout=300)
    _ok(two)
    _ok(_single([*options, "--accum-steps", "2", "--output", str(tmp_path / "one")], tmp_path, cache,
                command=("segment", "train")))
    a, b = load_file(str(tmp_path / "two" / ckpt.LAST)), load_file(str(tmp_path / "one" / ckpt.LAST))
    assert a.keys() == b.keys()
    statistics = ("running_mean", "running_var", "num_batches_tracked")  # DDP keeps rank 0's
    compared = [k for k in a if not k.endswith(statistics)]
    assert len(compared) > 50
    for k in compared:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)

    # the test split's report of the two-process run (evaluated by both processes) against one process evaluating
    # the same best checkpoint: resuming the finished run re-runs only that final evaluation
    distributed = json.loads((tmp_path / "two" / "eval.json").read_text())
    _ok(_single(["--resume", str(tmp_path / "two")], tmp_path, cache, command=("segment", "train")))
    single = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert distributed["confusion_matrix"] == single["confusion_matrix"]
    assert distributed["mean_iou"] == single["mean_iou"] and distributed["num_images"] == 4



@pytest.mark.slow  # 20-30 s of torchrun start-up: in CI's slow phase (the engine's DDP path is tested above)
def test_multilabel_two_processes_equal_one_process_with_accumulation(tmp_path: Path) -> None:
    """The multi-label task under torchrun: 2 processes at batch 4 train what 1 process trains at batch 4 with
    --accum-steps 2, and the distributed evaluation (probabilities gathered in batch order) gives exactly the mAP
    one process computes on the same best checkpoint."""
    from test_multilabel_train import make_multilabel_data

    csv = make_multilabel_data(tmp_path / "ml", n=40)
    options = ["--data", str(csv), "--epochs", "2", "--batch-size", "4", "--img-size", "16", "--precision", "fp32",
               "--deterministic", "--model", "resnet20", "--no-progress", "--seed", "2"]
    cache = tmp_path / "cache"
    two, _ = _torchrun([*options, "--output", str(tmp_path / "two")], tmp_path, cache, timeout=300)
    assert "multi-label data:" in _ok(two)
    _ok(_single([*options, "--accum-steps", "2", "--output", str(tmp_path / "one")], tmp_path, cache))
    a, b = load_file(str(tmp_path / "two" / ckpt.LAST)), load_file(str(tmp_path / "one" / ckpt.LAST))
    statistics = ("running_mean", "running_var", "num_batches_tracked")  # DDP keeps rank 0's
    compared = [k for k in a if not k.endswith(statistics)]
    assert len(compared) > 20
    for k in compared:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f'{k}: {m}')
    distributed = json.loads((tmp_path / "two" / "eval.json").read_text())
    _ok(_single(["--resume", str(tmp_path / "two")], tmp_path, cache))  # a finished run: the final evaluation again
    single = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert distributed["macro_map"] == single["macro_map"] and distributed["micro_f1"] == single["micro_f1"]
    assert distributed["images"] == single["images"] == 8
