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

import copy
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import MissingExtraError, ResnetTuneError
from ..inference.onnx import ATOL, INPUT_NAME, ONNX_OPSET, OUTPUT_NAME, RECORD_KEY, RTOL, batch_dim as _batch_dim
from ..inference.onnx import quiet_exporters as _quiet, require_onnx, write_onnx as _write_onnx
from ..models import fold_batchnorm
from . import CALIBRATION_IMAGES, FORMATS, MAX_DROP

__all__ = ["FORMATS", "ExportError", "ExportReport", "MissingExtraError", "export", "export_model", "quantise_file",
           "read_export_record", "RTOL", "ATOL", "VERIFY_BATCHES"]

_ALIASES = {"exported_program": "exported-program", "torch.export": "exported-program", "pt2": "exported-program",
            "jit": "torchscript", "script": "torchscript", "ov": "openvino", "ir": "openvino"}
#: the record's file name inside TorchScript / torch.export archives (ONNX: metadata_props[RECORD_KEY])
RECORD_FILE = "resnet_tune.json"
#: batch sizes the exported file is verified with (two, to prove the batch dimension is dynamic)
VERIFY_BATCHES = (1, 3)


class ExportError(ResnetTuneError, RuntimeError):
    """The model could not be exported, or the exported file does not reproduce the model."""


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
    #: with --int8: the float and int8 top-1 accuracy on the run's validation split, and the drop in points
    int8: dict[str, Any] | None = None

    def summary(self) -> str:
        shape = "x".join(str(s) for s in self.input_shape[1:])
        text = (f"exported {self.format} to {self.path} (input N x {shape}, dynamic batch); verified against the "
                f"eager model at batch sizes {', '.join(map(str, self.batches))}: max abs diff "
                f"{self.max_abs_diff:.2e} (tolerance rtol {self.rtol:g}, atol {self.atol:g})")
        if self.int8:
            q = self.int8
            text = (text.replace(f"exported {self.format}", f"exported {self.format} int8", 1).replace(
                    "verified against", "its float model verified against", 1)
                    + f"; int8 calibrated on {q['calibration_images']} image(s), top-1 on the run's validation "
                      f"split {100 * q['int8_accuracy']:.2f}% against {100 * q['float_accuracy']:.2f}% in float "
                      + (f"({q['drop_points']:.2f} points lost, at most {q['max_drop_points']:g} allowed)"
                         if q["drop_points"] > 0 else f"(no loss: {-q['drop_points']:+.2f} points)"))
        return text


def normalize_format(fmt: str) -> str:
    f = fmt.strip().lower()
    f = _ALIASES.get(f, f)
    if f not in FORMATS:
        from ..errors import ConfigError

        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    return f


def default_output(checkpoint_file: Path, fmt: str, int8: bool = False) -> Path:
    """``<run>/model.<ext>`` for a run's best checkpoint, ``<dir>/<stem>.<ext>`` for any other checkpoint file
    (``model.int8.<ext>`` when quantised)."""
    stem = "model" if checkpoint_file.name == "best.safetensors" else checkpoint_file.stem
    return checkpoint_file.parent / (stem + (".int8" if int8 else "") + FORMATS[fmt])


def export_model(checkpoint: str | os.PathLike[str], format: str = "onnx",  # noqa: A002 - the CLI's word
                 output: str | os.PathLike[str] | None = None, **int8: Any) -> Path:
    """Export ``checkpoint`` (a run folder or a ``.safetensors`` checkpoint) and return the verified file's path.

    ``format`` is ``onnx``, ``torchscript``, ``exported-program`` or ``openvino`` (OpenVINO's ``.xml`` + ``.bin``);
    ``output`` defaults to a file beside the checkpoint (``<run>/model.onnx``, ``model.pt``, ``model.pt2``,
    ``model.xml``). Raises :class:`ExportError` when the exported model does not reproduce the checkpoint's outputs
    (the file is then not written) and :class:`MissingExtraError` when ONNX or OpenVINO is asked for without its
    extra. ``int8=True, calibration=DIR`` quantises (see :func:`export`).
    """
    return export(checkpoint, format, output, **int8).path


def export(checkpoint: str | os.PathLike[str], format: str = "onnx",  # noqa: A002
           output: str | os.PathLike[str] | None = None, *, int8: bool = False,
           calibration: str | os.PathLike[str] | None = None, max_drop: float = MAX_DROP,
           calibration_images: int = CALIBRATION_IMAGES, progress: bool = False) -> ExportReport:
    """:func:`export_model` returning an :class:`ExportReport` (used by the CLI to say what was verified).

    With ``int8`` (``onnx``: ONNX Runtime's static quantiser, QDQ, per-channel int8 weights; ``openvino``: NNCF),
    the verified float model is quantised with activation ranges calibrated on up to ``calibration_images``
    images from ``calibration`` (a folder, searched recursively); the int8 and float models are then both
    evaluated on the run's own validation split, and the int8 file (``model.int8.onnx``, ``model.int8.xml``) is
    written only if its top-1 accuracy is at most ``max_drop`` points below the float model's; otherwise
    :class:`ExportError` gives both figures and nothing is written."""
    from ..engine.checkpoint import load_checkpoint, resolve_checkpoint

    fmt = normalize_format(format)
    if fmt == "onnx":
        _require_onnx()
    if fmt == "openvino":
        from ..inference.engines import require

        _require_onnx()
        require("openvino")
    ck = resolve_checkpoint(checkpoint)
    if int8:
        _check_int8(fmt, calibration, max_drop, ck)
    dest = Path(output) if output is not None else default_output(ck, fmt, int8)
    if dest.is_dir():
        dest = dest / default_output(ck, fmt, int8).name
    eager, record = load_checkpoint(ck, "cpu")
    eager = eager.float().eval()
    shape = input_shape(record, eager)
    folded = fold_batchnorm(copy.deepcopy(eager)).eval()
    record = dict(record, export={"format": fmt, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
                                  "input_shape": ["batch", *shape[1:]], "dtype": "int8" if int8 else "float32",
                                  # (a BN after a max-pool, as in conv_pool_bn stage entries, stays a BN)
                                  "batchnorm_folded": not any(isinstance(m, nn.BatchNorm2d)
                                                              for m in folded.modules()),
                                  "opset": ONNX_OPSET if fmt in ("onnx", "openvino") else None,
                                  "input": "normalised float images (N, C, H, W): resize, centre-crop, scale to "
                                           "[0, 1], then (x - mean) / std with the record's preprocessing",
                                  "tolerance": {"rtol": RTOL, "atol": ATOL}})
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
    tmp = tmp_dir / (dest.name if not int8 else "float" + FORMATS[fmt])
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
        if int8:
            quantised = tmp_dir / dest.name
            report.int8 = _quantise(fmt, tmp, quantised, record, ck, Path(str(calibration)), calibration_images,
                                    max_drop, progress)
            tmp = quantised
        _publish(tmp, dest)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    report.path = dest
    return report


def _publish(tmp: Path, dest: Path) -> None:
    """Flush ``tmp`` (and OpenVINO's weights file beside it) and rename into place, the weights first."""
    umask = os.umask(0)
    os.umask(umask)
    pairs = [(tmp.with_suffix(".bin"), dest.with_suffix(".bin"))] if tmp.suffix == ".xml" else []
    for src, dst in [*pairs, (tmp, dest)]:
        with open(src, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(src, 0o666 & ~umask)
        os.replace(src, dst)


def _check_int8(fmt: str, calibration: Any, max_drop: float, ck: Path) -> None:
    """The int8 options are usable: a format that quantises, a calibration folder, a classification run."""
    from ..engine.checkpoint import read_record
    from . import INT8_FORMATS

    if fmt not in INT8_FORMATS:
        raise ExportError(f"--int8 quantises ONNX and OpenVINO models; use --format onnx or openvino, not {fmt}.")
    if calibration is None:
        raise ExportError("--int8 needs --calibration DIR: a folder of images like the ones the model will see (a "
                          "few hundred of the training images do), to calibrate the int8 ranges.")
    if not Path(calibration).is_dir():
        raise ExportError(f"the calibration folder {calibration} does not exist.")
    if not math.isfinite(max_drop):
        raise ExportError(f"--max-drop must be a number of points, got {max_drop}.")
    task = read_record(ck).get("task", "classification")
    if task != "classification":
        raise ExportError(f"--int8 checks the quantised model's top-1 accuracy, so it takes classification runs; "
                          f"{ck} is a {task} run (export it in float).")


def _calibration_batches(record: dict[str, Any], folder: Path, limit: int) -> list[np.ndarray]:
    """Up to ``limit`` images of ``folder`` preprocessed as the model's evaluation, in batches of 16."""
    from ..data.datasets import list_images
    from ..data.images import load_image
    from ..data.transforms import Preprocessing, eval_transform
    from ..errors import DataError

    transform = eval_transform(Preprocessing.from_dict(record["preprocessing"]))
    files = list_images([str(folder)])
    step = max(1, len(files) // max(1, limit))  # spread over the sorted list: every class folder contributes
    images = []
    for path in files[::step] + [f for i, f in enumerate(files) if i % step]:
        try:
            images.append(transform(load_image(path)).numpy())
        except DataError:
            continue
        if len(images) >= limit:
            break
    if not images:
        raise ExportError(f"no readable images in the calibration folder {folder}.")
    return [np.stack(images[i:i + 16]).astype(np.float32) for i in range(0, len(images), 16)]


def _quantise(fmt: str, float_path: Path, out: Path, record: dict[str, Any], ck: Path, calibration: Path,
              limit: int, max_drop: float, progress: bool) -> dict[str, Any]:
    """Quantise the float model at ``float_path`` into ``out`` and check its accuracy against the float model on
    the run's validation split (raises :class:`ExportError` when it drops by more than ``max_drop`` points)."""
    from ..tasks.classification.evaluation import evaluate

    batches = _calibration_batches(record, calibration, limit)
    try:
        quantise_file(fmt, float_path, out, batches, record)
    except (ExportError, MissingExtraError):
        raise
    except Exception as err:  # quantiser internals raise many error types
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"the {fmt} int8 quantiser failed on this model ({type(err).__name__}: {msg}).") from err
    backend = "onnxruntime" if fmt == "onnx" else "openvino"
    ref = evaluate(ck, batch_size=64, device="cpu", precision="fp32", progress=progress)
    got = evaluate(out, batch_size=64, device="cpu", precision="fp32", backend=backend, split_of=ck,
                   progress=progress)
    drop = 100.0 * (ref["accuracy"] - got["accuracy"])
    figures = {"float_accuracy": ref["accuracy"], "int8_accuracy": got["accuracy"], "drop_points": round(drop, 3),
               "max_drop_points": max_drop, "validated_on": ref["data"], "images": int(np.sum(ref["support"]))
               if "support" in ref else None, "calibration_images": sum(len(b) for b in batches)}
    if drop > max_drop:
        raise ExportError(f"the int8 model loses {drop:.2f} points of top-1 accuracy on the run's validation split "
                          f"({100 * ref['accuracy']:.2f}% float, {100 * got['accuracy']:.2f}% int8; at most "
                          f"{max_drop:g} allowed by --max-drop); nothing was written. Try more or more typical "
                          "--calibration images, or export in float.")
    return figures


def quantise_file(fmt: str, float_path: Path, out: Path, batches: list[np.ndarray], record: dict[str, Any]) -> None:
    """Post-training static int8 quantisation of the float ``onnx`` (ONNX Runtime's quantiser: QDQ, int8 weights
    per channel, uint8 activations) or ``openvino`` (NNCF) model at ``float_path`` into ``out``, with activation
    ranges calibrated on ``batches`` (normalised images, N x C x H x W) and ``record`` embedded. No accuracy check:
    :func:`export` does that."""
    (_quantise_onnx if fmt == "onnx" else _quantise_openvino)(float_path, out, batches, record)


def _quantise_onnx(float_path: Path, out: Path, batches: list[np.ndarray], record: dict[str, Any]) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.it, None)
            return None if b is None else {INPUT_NAME: b}

    prepared = out.with_name("prepared.onnx")
    with _quiet():
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    model = onnx.load(str(out))
    del model.metadata_props[:]
    for key, value in {RECORD_KEY: json.dumps(record), "classes": json.dumps(record.get("classes", [])),
                       "preprocessing": json.dumps(record.get("preprocessing", {})),
                       "task": str(record.get("task", ""))}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(out))


def _quantise_openvino(float_path: Path, out: Path, batches: list[np.ndarray], record: dict[str, Any]) -> None:
    try:
        import nncf
    except ImportError:
        raise MissingExtraError("OpenVINO int8 needs NNCF; install it with pip install 'resnet-tune[openvino]'.") \
            from None
    import openvino as ov

    model = ov.Core().read_model(str(float_path))
    with _quiet():
        quantised = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))  # items are batches
    quantised.set_rt_info(json.dumps(record), [RECORD_KEY])
    ov.save_model(quantised, str(out), compress_to_fp16=False)


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
    require_onnx()


# --- writers: (folded model, example batch, path, record) -> file at path ----------------------------

def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path, record: dict[str, Any]) -> None:
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={RECORD_FILE: json.dumps(record)})


def _write_exported_program(model: nn.Module, example: torch.Tensor, path: Path, record: dict[str, Any]) -> None:
    with _quiet():
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},), strict=False)
        torch.export.save(ep, str(path), extra_files={RECORD_FILE: json.dumps(record)})


def _write_openvino(model: nn.Module, example: torch.Tensor, path: Path, record: dict[str, Any]) -> None:
    """OpenVINO's format (``.xml`` graph + ``.bin`` weights, float32) converted from the ONNX export, with the
    record in its runtime info."""
    import openvino as ov

    onnx_path = path.with_name(path.stem + ".from.onnx")
    _write_onnx(model, example, onnx_path, record)
    converted = ov.convert_model(str(onnx_path))
    converted.set_rt_info(json.dumps(record), [RECORD_KEY])
    ov.save_model(converted, str(path), compress_to_fp16=False)
    onnx_path.unlink()


_WRITERS: dict[str, Callable[[nn.Module, torch.Tensor, Path, dict[str, Any]], None]] = {
    "onnx": _write_onnx, "torchscript": _write_torchscript, "exported-program": _write_exported_program,
    "openvino": _write_openvino}


# --- runners: path -> callable(batch) -> output tensor, using the format's own runtime -----------------

def _run_onnx(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    from ..inference.engines import OnnxRuntimeEngine

    return OnnxRuntimeEngine(path)


def _run_openvino(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    from ..inference.engines import OpenVinoEngine

    return OpenVinoEngine(path, "LATENCY", "fp32")


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
    "onnx": _run_onnx, "torchscript": _run_torchscript, "exported-program": _run_exported_program,
    "openvino": _run_openvino}


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
    if p.suffix.lower() == ".xml":
        from ..inference.engines import read_model_record

        return read_model_record(p)
    _require_onnx()
    import onnx

    model = onnx.load(str(p), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == RECORD_KEY:
            return json.loads(prop.value)
    raise ExportError(f"{p} has no '{RECORD_KEY}' metadata; it was not exported by resnet-tune.")
