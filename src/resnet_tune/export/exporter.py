"""Export a checkpoint to ONNX, TorchScript or a torch.export program, verified before it is published.

Every export:

1. loads the checkpoint (weights + record) on the CPU in fp32 and folds batch-norm into the convolutions
   (:func:`resnet_tune.models.fold_batchnorm`) on a copy;
2. writes the exported model to a temporary file beside the destination, with the checkpoint's record
   (classes, preprocessing, task, metrics, architecture) embedded: ONNX ``metadata_props['resnet_tune']``,
   TorchScript extra file ``resnet_tune.json``, torch.export archive extra file ``resnet_tune.json``;
3. runs that file with its own runtime (onnxruntime, ``torch.jit.load``, ``torch.export.load``) on seeded
   random inputs of two batch sizes (1 and 3: the batch dimension is dynamic) and compares the outputs with
   the eager, unfolded model: ``|exported - eager| <= atol + rtol * |eager|`` elementwise;
4. only then renames the file into place. A failed check deletes the temporary file (an existing file at the
   destination is left untouched) and raises :class:`ExportError` naming the largest difference.

Nothing here is classification-specific: any module returned by ``load_checkpoint`` whose output is one
tensor exports (segmentation models included); the record says what the output means.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import ResnetTuneError
from ..models import fold_batchnorm
from . import FORMATS

__all__ = ["FORMATS", "ExportError", "ExportReport", "MissingExtraError", "export_model", "read_export_record",
           "RTOL", "ATOL", "VERIFY_BATCHES"]

_ALIASES = {"exported_program": "exported-program", "torch.export": "exported-program", "pt2": "exported-program",
            "jit": "torchscript", "script": "torchscript"}
#: the record's key in ONNX metadata_props, and its file name inside TorchScript / torch.export archives
RECORD_KEY = "resnet_tune"
RECORD_FILE = "resnet_tune.json"
ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "output"
#: fp32 parity tolerance between the exported model and the eager (unfolded) model
RTOL, ATOL = 1e-3, 1e-4
#: batch sizes the exported file is verified with (two, to prove the batch dimension is dynamic)
VERIFY_BATCHES = (1, 3)


class ExportError(ResnetTuneError, RuntimeError):
    """The model could not be exported, or the exported file does not reproduce the model."""


class MissingExtraError(ResnetTuneError, ImportError):
    """An optional dependency (a pip extra) is not installed."""


@dataclass
class ExportReport:
    """What :func:`export` did: the file, its format and the verification it passed."""

    path: Path
    format: str
    batches: tuple[int, ...]
    max_abs_diff: float
    rtol: float = RTOL
    atol: float = ATOL
    input_shape: tuple[int, ...] = ()
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)

    def summary(self) -> str:
        shape = "x".join(str(s) for s in self.input_shape[1:])
        return (f"exported {self.format} to {self.path} (input N x {shape}, dynamic batch); verified against the "
                f"eager model at batch sizes {', '.join(map(str, self.batches))}: max abs diff "
                f"{self.max_abs_diff:.2e} (tolerance rtol {self.rtol:g}, atol {self.atol:g})")


def normalize_format(fmt: str) -> str:
    f = fmt.strip().lower()
    f = _ALIASES.get(f, f)
    if f not in FORMATS:
        from ..errors import ConfigError

        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    return f


def default_output(checkpoint_file: Path, fmt: str) -> Path:
    """``<run>/model.<ext>`` for a run's best checkpoint, ``<dir>/<stem>.<ext>`` for any other checkpoint file."""
    stem = "model" if checkpoint_file.name == "best.safetensors" else checkpoint_file.stem
    return checkpoint_file.parent / (stem + FORMATS[fmt])


def export_model(checkpoint: str | os.PathLike[str], format: str = "onnx",  # noqa: A002 - the CLI's word
                 output: str | os.PathLike[str] | None = None) -> Path:
    """Export ``checkpoint`` (a run folder or a ``.safetensors`` checkpoint) and return the verified file's path.

    ``format`` is ``onnx``, ``torchscript`` or ``exported-program``; ``output`` defaults to a file beside the
    checkpoint (``<run>/model.onnx``, ``model.pt``, ``model.pt2``). Raises :class:`ExportError` when the exported
    model does not reproduce the checkpoint's outputs (the file is then not written) and
    :class:`MissingExtraError` when ONNX is asked for without the ``onnx`` extra.
    """
    return export(checkpoint, format, output).path


def export(checkpoint: str | os.PathLike[str], format: str = "onnx",  # noqa: A002
           output: str | os.PathLike[str] | None = None) -> ExportReport:
    """:func:`export_model` returning an :class:`ExportReport` (used by the CLI to say what was verified)."""
    from ..engine.checkpoint import load_checkpoint, resolve_checkpoint

    fmt = normalize_format(format)
    if fmt == "onnx":
        _require_onnx()
    ck = resolve_checkpoint(checkpoint)
    dest = Path(output) if output is not None else default_output(ck, fmt)
    if dest.is_dir():
        dest = dest / default_output(ck, fmt).name
    eager, record = load_checkpoint(ck, "cpu")
    eager = eager.float().eval()
    shape = input_shape(record, eager)
    record = dict(record, export={"format": fmt, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
                                  "input_shape": ["batch", *shape[1:]], "dtype": "float32", "batchnorm_folded": True,
                                  "opset": ONNX_OPSET if fmt == "onnx" else None,
                                  "input": "normalised float images (N, C, H, W): resize, centre-crop, scale to "
                                           "[0, 1], then (x - mean) / std with the record's preprocessing",
                                  "tolerance": {"rtol": RTOL, "atol": ATOL}})
    folded = fold_batchnorm(copy.deepcopy(eager)).eval()
    for p in folded.parameters():
        p.requires_grad_(False)

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"cannot create the folder {dest.parent} for {dest.name} ({err.strerror or err}); choose "
                          "another --output.") from None
    # The file is written under its final name inside a private temporary folder beside the destination (the
    # archive formats name their root folder after the file), verified there, then renamed into place.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    tmp = tmp_dir / dest.name
    try:
        example = torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            out = folded(example)
        if not isinstance(out, torch.Tensor):
            raise ExportError(f"the model returns {type(out).__name__}, not one tensor; only single-output models "
                              "can be exported.")
        try:
            _WRITERS[fmt](folded, example, tmp, record)
        except (ExportError, MissingExtraError):
            raise
        except Exception as err:  # exporter internals raise many error types
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ExportError(f"the {fmt} exporter failed on this model ({type(err).__name__}: {msg}).") from err
        report = verify(fmt, tmp, eager, shape)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    report.path = dest
    return report


# --- helpers --------------------------------------------------------------------------------------

def input_shape(record: dict[str, Any], model: nn.Module) -> tuple[int, int, int, int]:
    """``(1, C, H, W)`` from the record's preprocessing (square input of ``input_size``) and channels."""
    pp = record.get("preprocessing") or {}
    size = pp.get("input_size")
    if size is None:
        cfg = getattr(model, "cfg", None)
        size = cfg.input_size[-1] if cfg is not None else 224
    if isinstance(size, (list, tuple)):
        h, w = (int(size[-2]), int(size[-1])) if len(size) >= 2 else (int(size[0]), int(size[0]))
    else:
        h = w = int(size)
    chans = int(record.get("in_chans") or getattr(model, "in_chans", 3))
    return (1, chans, h, w)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise MissingExtraError(f"ONNX export needs onnx, onnxscript and onnxruntime ({err.name or 'onnx'} is not "
                                "installed); install them with pip install 'resnet-tune[onnx]'.") from None


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence the exporters' progress prints and tracer/deprecation warnings."""
    import io
    import logging
    from contextlib import redirect_stdout

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript",
                                               "torch.fx.experimental.symbolic_shapes", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1, max=65536)


# --- writers: (folded model, example batch, path, record) -> file at path ----------------------------

def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path, record: dict[str, Any]) -> None:
    with _quiet():
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=ONNX_OPSET,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: _batch_dim()},), verbose=False, external_data=False)
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise ExportError("torch.onnx.export returned no program.")
    meta = program.model.metadata_props
    meta[RECORD_KEY] = json.dumps(record)
    meta["classes"] = json.dumps(record.get("classes", []))
    meta["preprocessing"] = json.dumps(record.get("preprocessing", {}))
    meta["task"] = str(record.get("task", ""))
    program.model.producer_name = "resnet-tune"
    program.model.doc_string = f"{record.get('model', 'model')} exported by resnet-tune ({record.get('task')})"
    with _quiet():
        program.save(str(path), external_data=False)


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path, record: dict[str, Any]) -> None:
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={RECORD_FILE: json.dumps(record)})


def _write_exported_program(model: nn.Module, example: torch.Tensor, path: Path, record: dict[str, Any]) -> None:
    with _quiet():
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},), strict=False)
        torch.export.save(ep, str(path), extra_files={RECORD_FILE: json.dumps(record)})


_WRITERS: dict[str, Callable[[nn.Module, torch.Tensor, Path, dict[str, Any]], None]] = {
    "onnx": _write_onnx, "torchscript": _write_torchscript, "exported-program": _write_exported_program}


# --- runners: path -> callable(batch) -> output tensor, using the format's own runtime -----------------

def _run_onnx(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(4, torch.get_num_threads()))
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: torch.from_numpy(np.asarray(sess.run(None, {name: x.numpy()})[0]))


def _run_torchscript(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    with _quiet():
        m = torch.jit.load(str(path), map_location="cpu")
    return lambda x: m(x)


def _run_exported_program(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    with _quiet():
        ep = torch.export.load(str(path))
    m = ep.module()
    return lambda x: m(x)


_RUNNERS: dict[str, Callable[[Path], Callable[[torch.Tensor], torch.Tensor]]] = {
    "onnx": _run_onnx, "torchscript": _run_torchscript, "exported-program": _run_exported_program}


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The eager (unfolded) model's output: what the exported file must reproduce."""
    return model(x)


def verify(fmt: str, path: Path, eager: nn.Module, shape: tuple[int, ...], batches: tuple[int, ...] = VERIFY_BATCHES,
           rtol: float = RTOL, atol: float = ATOL) -> ExportReport:
    """Run the file at ``path`` with its own runtime and compare with ``eager``; raise :class:`ExportError` if not close."""
    try:
        run = _RUNNERS[fmt](path)
    except Exception as err:
        raise ExportError(f"the exported {fmt} file cannot be loaded by its runtime ({type(err).__name__}: "
                          f"{str(err).strip()[:300]}).") from err
    gen = torch.Generator().manual_seed(1234)
    worst, shapes = 0.0, []
    for n in batches:
        x = torch.randn(n, *shape[1:], generator=gen)
        with torch.no_grad():
            ref = _reference(eager, x).float()
            try:
                got = run(x.clone())
            except Exception as err:
                raise ExportError(f"the exported {fmt} model failed to run at batch size {n} ({type(err).__name__}: "
                                  f"{str(err).strip()[:300]}).") from err
            got = torch.as_tensor(got).float()
        if got.shape != ref.shape:
            raise ExportError(f"the exported {fmt} model's output at batch size {n} has shape {tuple(got.shape)}, "
                              f"the eager model's {tuple(ref.shape)}; the export is broken.")
        diff = (got - ref).abs()
        max_abs = float(diff.max()) if diff.numel() else 0.0
        if not bool(torch.isfinite(got).all()) or bool((diff > atol + rtol * ref.abs()).any()):
            idx = int(diff.flatten().argmax()) if diff.numel() else 0
            raise ExportError(f"the exported {fmt} model does not reproduce the checkpoint: at batch size {n} its "
                              f"outputs differ from the eager model's by up to max abs diff {max_abs:.3g} (at flat "
                              f"index {idx}: {float(got.flatten()[idx]):.6g} vs {float(ref.flatten()[idx]):.6g}; "
                              f"tolerance rtol {rtol:g}, atol {atol:g}); the file was not written.")
        worst = max(worst, max_abs)
        shapes.append(tuple(got.shape))
    return ExportReport(path, fmt, tuple(batches), worst, rtol, atol, tuple(shape), shapes)


# --- reading the record back ------------------------------------------------------------------------

def read_export_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The resnet-tune record embedded in an exported ``.onnx``, TorchScript ``.pt`` or ``.pt2`` file."""
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"{p} does not exist.")
    head = p.read_bytes()[:4]
    if head[:2] == b"PK":  # a zip archive: TorchScript or torch.export
        import zipfile

        with zipfile.ZipFile(p) as z:
            for name in z.namelist():
                if name.endswith("/" + RECORD_FILE) or name == RECORD_FILE:
                    return json.loads(z.read(name))
        raise ExportError(f"{p} holds no {RECORD_FILE}; it was not exported by resnet-tune.")
    _require_onnx()
    import onnx

    model = onnx.load(str(p), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == RECORD_KEY:
            return json.loads(prop.value)
    raise ExportError(f"{p} has no '{RECORD_KEY}' metadata; it was not exported by resnet-tune.")
