"""Several processes, one training run, through PyTorch's own distributed engine.

``torchrun --nproc-per-node N -m resnet_tune train ...`` (one machine) or ``torchrun --nnodes M
--node-rank R --rdzv-endpoint HOST:PORT ...`` (several) starts N processes per machine and tells
each its place in environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...). This is the
one module of resnet-tune that imports :mod:`torch.distributed`: it reads that environment, joins
the process group (NCCL on ``cuda:LOCAL_RANK``, gloo on CPUs) with a timeout on every collective,
wraps the model in :class:`~torch.nn.parallel.DistributedDataParallel`, and offers the few
collectives the trainer needs (is-main, barrier, broadcast, gather). Outside torchrun, :func:`setup`
returns a single-process :class:`Dist` whose helpers do nothing, so the training loop reads the
same with or without it.

There is no launcher, socket or gradient exchange here: torchrun starts, watches and restarts the
processes; DDP averages the gradients.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import signal
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError, ResnetTuneError, TrainingError
from ..models import fix_bn_scale

T = TypeVar("T")

#: What torchrun (and ``torch.distributed.run``) sets for every worker; all of them must be present.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

# Words in the messages of collectives that failed because another process is gone or silent.
_PEER_FAILURE_HINTS = ("gloo", "nccl", "connection closed", "connection reset", "connection refused",
                       "broken pipe", "timed out", "timeout", "processgroup", "peer", "socket", "watchdog")


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm a ``SyncBatchNorm`` (PyTorch's conversion); scales that a model holds fixed
    (``ResNetConfig.bn_scale=False``: buffers, which the conversion cannot take) stay fixed, with their values."""
    fixed = set()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.weight is not None and not isinstance(m.weight, nn.Parameter):
            w = m.weight
            del m.weight
            m.weight = nn.Parameter(w, requires_grad=False)
            fixed.add(id(m.weight))
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for m in model.modules():
        if isinstance(m, nn.SyncBatchNorm) and id(m.weight) in fixed:
            fix_bn_scale(m)
    return model


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun job (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    restart_count: int = 0  # TORCHELASTIC_RESTART_COUNT: how often torchrun restarted the job so far
    max_restarts: int = 0
    run_id: str = ""
    under_torchrun: bool = False

    @property
    def restarted(self) -> bool:
        """True in a job that torchrun restarted after a failure (``--max-restarts``)."""
        return self.under_torchrun and self.restart_count > 0


def launch_info(env: Mapping[str, str] | None = None) -> Launch:
    """Read torchrun's environment; a process not started by torchrun is rank 0 of 1."""
    env = os.environ if env is None else env
    if not all(k in env for k in TORCHRUN_VARS):
        return Launch()
    try:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
        return Launch(rank=rank, world=world, local_rank=local,
                      local_world=int(env.get("LOCAL_WORLD_SIZE", world)),
                      restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", 0) or 0),
                      max_restarts=int(env.get("TORCHELASTIC_MAX_RESTARTS", 0) or 0),
                      run_id=env.get("TORCHELASTIC_RUN_ID", ""), under_torchrun=True)
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; start resnet-tune with torchrun "
                          "rather than setting them by hand.") from None


def is_peer_failure(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because another process died, hung or left."""
    if isinstance(err, dist.DistError):
        return True
    if isinstance(err, (RuntimeError, ConnectionError, TimeoutError)):
        text = str(err).lower()
        return any(h in text for h in _PEER_FAILURE_HINTS)
    return False


def _first_line(err: BaseException) -> str:
    """The useful part of a backend's message: its first line, without the C++ source location in front
    (``[.../gloo/transport/tcp/pair.cc:545] ``) and the generic advice after it."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    text = re.sub(r"^(\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*)+", "", text)
    text = text.split(" This is typically caused by")[0].strip()
    return text if len(text) <= 300 else text[:297] + "..."


class Dist:
    """The process group as the trainer sees it: ``Dist()`` is one process, and every helper is then
    a no-op (``broadcast_object`` returns its argument, ``gather_object`` a one-element list)."""

    def __init__(self, launch: Launch | None = None, device: torch.device | None = None,
                 enabled: bool = False, owned: bool = False, timeout_minutes: float = 10.0) -> None:
        self.launch = launch or Launch()
        self.device = device or torch.device("cpu")
        self.enabled = enabled  # a process group is up (under torchrun, even with one process)
        self.timeout_minutes = timeout_minutes
        self._owned = owned  # this object created it, so cleanup() destroys it
        self._old_sigterm: Any = None

    # ---- who am I

    @property
    def rank(self) -> int:
        return self.launch.rank if self.enabled else 0

    @property
    def world(self) -> int:
        return self.launch.world if self.enabled else 1

    @property
    def local_rank(self) -> int:
        return self.launch.local_rank if self.enabled else 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes logs, plots, reports, scan files and checkpoints."""
        return self.rank == 0

    @property
    def backend(self) -> str | None:
        return dist.get_backend() if self.enabled else None

    # ---- collectives

    def barrier(self) -> None:
        if not self.enabled:
            return
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        """``obj`` from rank ``src`` on every rank (pickled: only between this job's own processes)."""
        if not self.enabled or self.world == 1:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self._object_device())
        return box[0]  # type: ignore[return-value]

    def gather_object(self, obj: T, dst: int = 0) -> list[T] | None:
        """Every rank's ``obj`` in rank order on rank ``dst``; ``None`` elsewhere."""
        if not self.enabled or self.world == 1:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def all_gather_object(self, obj: T) -> list[T]:
        if not self.enabled or self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over all ranks (float64)."""
        if not self.enabled or self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._object_device() or "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().tolist()

    def all_reduce_tensor_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over all ranks, in place (on every rank)."""
        if self.enabled and self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_reduce_max(self, value: float) -> float:
        if not self.enabled or self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._object_device() or "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def run_on_main(self, fn: Callable[[], T], what: str = "a step") -> T:
        """Run ``fn`` on rank 0 only and hand its result (or its error) to every rank.

        For decisions that must be taken once (the run folder, whether to resume): a resnet-tune error
        on rank 0 is raised on every rank, so they all stop with the same sentence.
        """
        if not self.enabled or self.world == 1:
            return fn()
        payload: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                payload = ("ok", fn())
            except ResnetTuneError as err:
                self.broadcast_object(("err", err))
                raise
            except Exception as err:
                self.broadcast_object(("crash", f"{type(err).__name__}: {err}"))
                raise
        kind, value = self.broadcast_object(payload)
        if kind == "err":
            raise value
        if kind == "crash":
            raise TrainingError(f"training process 0 failed during {what}: {value}")
        return value

    def broadcast_tensors(self, tensors: list[torch.Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` in place with rank ``src``'s values."""
        if not self.enabled or self.world == 1:
            return
        for t in tensors:
            dist.broadcast(t.data, src=src)

    def sync_buffers(self, module: nn.Module, src: int = 0) -> None:
        """Give every rank rank ``src``'s buffers (BatchNorm statistics, which each rank updates from its
        own batches unless BatchNorm is synchronised), so that all ranks hold the model rank 0 saves."""
        self.broadcast_tensors([b for b in module.buffers()], src)

    def _object_device(self) -> torch.device | None:
        return torch.device("cuda", self.device.index) if self.device.type == "cuda" else None

    # ---- the model

    def convert_sync_bn(self, model: nn.Module) -> nn.Module:
        """BatchNorm layers that compute their statistics over the global batch (all ranks)."""
        return sync_batchnorm(model) if self.enabled else model

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (gradients averaged over ranks in the backward pass).

        Only the parameters that require gradients when it is called take part (so the trainer wraps
        again when the set of frozen layers changes); rank 0's weights and buffers are broadcast.
        """
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        if self.device.type == "cuda":
            return DDP(model, device_ids=[self.device.index], output_device=self.device.index,
                       find_unused_parameters=False)
        return DDP(model, find_unused_parameters=False)  # buffers follow rank 0's before each forward

    @staticmethod
    def no_sync(module: nn.Module) -> contextlib.AbstractContextManager:
        """DDP's ``no_sync()`` (gradients accumulate locally) for the DDP model in ``module``, which may be
        compiled; a null context for a plain model."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        m = module
        while not isinstance(m, DDP) and hasattr(m, "_orig_mod"):
            m = m._orig_mod
        return m.no_sync() if isinstance(m, DDP) else contextlib.nullcontext()

    # ---- failures

    def failure(self, err: BaseException, run_dir: Any = None) -> TrainingError:
        """The sentence a rank raises when a collective failed because another process is gone."""
        first = _first_line(err)
        where = f" The last completed epoch is saved in {run_dir}; continue it with --resume {run_dir} (with any " \
                f"number of processes)." if run_dir else ""
        return TrainingError(
            f"a training process stopped or timed out: {first} (this is rank {self.rank} of {self.world}; "
            f"another process died, was killed, or did not answer within the --dist-timeout of "
            f"{self.timeout_minutes:g} minutes; its own output says why).{where}")

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        raise TrainingError(
            f"training process {self.rank} of {self.world} was stopped by SIGTERM: torchrun stops every process "
            "when one of them fails (and starts them again with --max-restarts), and Slurm sends it when a job is "
            "cancelled or runs out of time.")

    # ---- teardown

    def cleanup(self, failed: bool = False) -> None:
        """Leave the process group (if this object joined it) and restore the SIGTERM handler.

        After a failed collective the group is left as it is (destroying a broken NCCL communicator can
        block); the process is about to exit anyway."""
        if self._old_sigterm is not None:
            with contextlib.suppress(ValueError):  # not in the main thread
                signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        if self._owned and not failed and dist.is_initialized():
            with contextlib.suppress(Exception):
                # together: a process that tears its connections down while another still uses them can
                # abort the other (gloo)
                self.barrier()
                dist.destroy_process_group()
        self._owned = False
        self.enabled = False


def setup(device: torch.device, timeout_minutes: float = 10.0, launch: Launch | None = None) -> Dist:
    """Join torchrun's process group, or return a single-process :class:`Dist` outside torchrun.

    ``device`` is what the configuration resolved to; under torchrun a CUDA device becomes
    ``cuda:LOCAL_RANK`` (one GPU per process) and the backend is NCCL, gloo on a CPU. Every
    collective fails after ``timeout_minutes`` rather than waiting forever for a process that died.
    """
    launch = launch or launch_info()
    if not launch.under_torchrun:
        return Dist(device=device)
    if device.type == "mps":
        raise ConfigError("distributed training needs CUDA GPUs or CPUs; PyTorch's process groups do not run on "
                          "Apple's MPS backend. Use --device cpu, or run one process without torchrun.")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if launch.local_rank >= count:
            raise ConfigError(f"torchrun started {launch.local_world} processes on this machine but it has "
                              f"{count} GPU(s); use --nproc-per-node {count} (one process per GPU).")
        device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    timeout = _dt.timedelta(minutes=timeout_minutes)
    owned = not dist.is_initialized()
    if owned:
        try:
            kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
            # torchrun's env:// rendezvous; its store can outlive a restart (--max-restarts with the static
            # rendezvous keeps the agent's store), so this attempt's keys get their own prefix: a restarted
            # process must never read the address of a process from the attempt before.
            store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
            store.set_timeout(timeout)
            store = dist.PrefixStore(f"resnet_tune/attempt_{launch.restart_count}", store)
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, timeout=timeout,
                                    **kwargs)
        except (RuntimeError, ValueError) as err:
            first = _first_line(err)
            raise TrainingError(f"could not join the other training processes ({backend}): {first}") from None
    ctx = Dist(launch, device, enabled=True, owned=owned, timeout_minutes=timeout_minutes)
    if launch.world > 1:
        with contextlib.suppress(ValueError):  # signal handlers can only be set in the main thread
            ctx._old_sigterm = signal.signal(signal.SIGTERM, ctx._on_sigterm)
    return ctx
