"""Image classification: one class an image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import DataError

__all__ = ["evaluate"]


def evaluate(checkpoint: str | Path, data: str | Path | None = None, *, batch_size: int = 64, device: str = "auto",
             output: str | Path | None = None, progress: bool = True, backend: str = "torch",
             precision: str = "auto", split_of: str | Path | None = None, tta: bool = False) -> dict[str, Any]:
    """Accuracy, top-5, per-class precision/recall/F1, confusion matrix and worst images.

    ``data`` is a folder of class folders (or a split layout, whose test split is used, else val) or a CSV.
    Without it, the run's own validation split is used: the files listed in the run folder's ``val.csv`` when
    training (never re-drawn, so files added since cannot leak in), or the embedded digits' held-out split for
    a run on the embedded default. With ``output``, writes ``eval.json``, ``confusion.png`` and ``worst.png``.
    ``checkpoint`` may be an exported model (run on ``backend`` onnxruntime or openvino); ``split_of`` names the
    run whose own validation split to use (default: the checkpoint's). ``tta``: flip test-time augmentation (the
    mean of each image's and its mirror image's outputs; recorded in the report).
    """
    from ...data.datasets import discover_eval
    from ...data.scan import scan
    from ...eval import metrics as M
    from .predictor import ClassificationPredictor

    pred = ClassificationPredictor(checkpoint, device=device, batch_size=batch_size, backend=backend,
                                   precision=precision, tta=tta)
    embedded: dict[str, Any] | None = None
    if data is None:
        data, embedded = _own_validation_split(split_of or checkpoint)
    if embedded is not None:
        probs, targets = _embedded_val_probs(pred, embedded)
        files, skipped = None, {}
    else:
        samples = discover_eval(data, pred.classes)
        report_scan = scan(samples, pred.classes, progress=progress)
        good = report_scan.good(samples)
        if not good:
            raise DataError(f"no readable images to evaluate in {data}.")
        paths = [p for p, _ in good]
        probs_list, errors = pred.run_files(paths, pred.probs)
        keep = [i for i, e in enumerate(errors) if e is None]
        probs = torch.stack([probs_list[i] for i in keep]).numpy()
        targets = np.array([good[i][1] for i in keep])
        files = [paths[i] for i in keep]
        skipped = dict(report_scan.bad)
    report = M.classification_report(probs, targets, pred.classes, files=files)
    report["checkpoint"] = str(checkpoint)
    report["data"] = str(data)
    report["skipped"] = skipped
    report["tta"] = "flip" if tta else None
    if output is not None:
        from ...eval import plots as P

        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(report, indent=2))
        P.plot_confusion(np.array(report["confusion_matrix"]), pred.classes, out / "confusion.png")
        if files:
            P.plot_worst(report["worst"], out / "worst.png")
    return report


def _own_validation_split(checkpoint: str | Path) -> tuple[str, dict[str, Any] | None]:
    """What a run was validated on: its ``val.csv``, or (with the run's configuration) the embedded digits'
    held-out split."""
    import yaml

    from ...data.datasets import VAL_SPLIT_FILE
    from ...engine.checkpoint import resolve_checkpoint

    run = resolve_checkpoint(checkpoint).parent
    if (run / VAL_SPLIT_FILE).is_file():
        return str(run / VAL_SPLIT_FILE), None
    config = run / "config.yaml"
    if config.is_file():
        try:
            saved = yaml.safe_load(config.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            saved = None
        if isinstance(saved, dict) and "data" in saved and saved["data"] is None:
            return "the embedded digits' held-out split", saved
    raise DataError(f"{run} does not record its validation images (no {VAL_SPLIT_FILE}: the checkpoint is not in a "
                    "run folder, or the run predates this record); pass the images to evaluate on with --data.")


def _embedded_val_probs(pred: Any, run_config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The predictor's probabilities on the embedded digits' held-out split, drawn as in training (the run's
    validation share and seed, at the checkpoint's input size)."""
    from ...data.default import load_digits_images
    from ...data.transforms import normalize_batch

    pp = pred.preprocessing
    _, (x, y), _ = load_digits_images(pp.input_size, float(run_config.get("val_fraction", 0.2)),
                                      int(run_config.get("seed", 0)))
    x = normalize_batch(x, pp.mean, pp.std)
    probs = torch.cat([pred.probs(x[i:i + pred.batch_size]) for i in range(0, len(x), pred.batch_size)])
    return probs.numpy(), y.numpy()
