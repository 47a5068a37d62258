"""Evaluating a multi-label checkpoint on labelled images, at the thresholds it was trained with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ...errors import DataError

__all__ = ["evaluate_multilabel", "format_multilabel"]


def evaluate_multilabel(checkpoint: str | Path, data: str | Path | None = None, *, batch_size: int = 64,
                        device: str = "auto", precision: str = "auto", output: str | Path | None = None,
                        progress: bool = True, label_sep: str | None = None, backend: str = "torch",
                        tta: bool = False) -> dict[str, Any]:
    """mAP (macro and micro), per-label precision/recall/F1/AP, micro/macro F1, exact match and Hamming loss at the
    checkpoint's thresholds. ``data``: a labelled CSV (its test rows, else val rows, else all); default: the run's
    own validation split (``val_labels.csv`` in its folder). With ``output``: ``eval.json`` and the two figures.
    ``tta``: flip test-time augmentation (the mean of each image's and its mirror image's outputs)."""
    from ...data.scan import scan
    from ...engine.checkpoint import resolve_checkpoint
    from ...eval import plots as P
    from ...eval.multilabel import multilabel_report
    from .data import discover_eval_labels, targets_of
    from .predictor import MultiLabelPredictor
    from .task import SPLIT_FILE

    pred = MultiLabelPredictor(checkpoint, device=device, precision=precision, batch_size=batch_size,
                               backend=backend, tta=tta)
    if data is None:
        own = resolve_checkpoint(checkpoint).parent / SPLIT_FILE
        if not own.is_file():
            raise DataError(f"{own.parent} does not record its validation images (no {SPLIT_FILE}); pass a labelled "
                            "CSV with --data.")
        data = own
    samples = discover_eval_labels(str(data), pred.classes, label_sep)
    found = scan([(p, 0) for p, _ in samples], ["image"], progress=progress)
    good = found.good(samples)
    if not good:
        raise DataError(f"no readable images to evaluate in {data}.")
    rows, errors = pred.run_files([p for p, _ in good], pred.probs)
    keep = [i for i, e in enumerate(errors) if e is None]
    probs = torch.stack([rows[i] for i in keep]).numpy()
    targets = targets_of([good[i] for i in keep], len(pred.classes))
    report = multilabel_report(probs, targets, pred.classes, pred.thresholds.numpy())
    report["tta"] = "flip" if tta else None
    report.update(checkpoint=str(checkpoint), data=str(data), skipped=dict(found.bad),
                  thresholds=pred.record.get("thresholds"))
    if output is not None:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(report, indent=2))
        P.plot_label_ap(report, out / "label_ap.png")
        P.plot_error_cooccurrence(probs >= pred.thresholds.numpy()[None, :], targets, pred.classes,
                                  out / "error_cooccurrence.png")
    return report


def format_multilabel(report: dict[str, Any]) -> str:
    """A few lines for the console."""
    lines = [f"{report['images']} images, {len(report['labels'])} labels: macro mAP {100 * report['macro_map']:.2f}%, "
             f"micro mAP {100 * report['micro_map']:.2f}%",
             f"at the checkpoint's thresholds: micro-F1 {report['micro_f1']:.4f}, macro-F1 {report['macro_f1']:.4f}, "
             f"exact match {100 * report['exact_match']:.2f}%, Hamming loss {report['hamming_loss']:.4f}"]
    if report["left_out"]:
        lines.append(f"left out of macro figures (no positive image): {', '.join(report['left_out'])}")
    width = max(len(r["label"]) for r in report["per_label"])
    lines.append(f"{'label':<{width}}      AP  precision  recall     F1  support")
    for r in report["per_label"]:
        ap = "     -" if r["ap"] is None else f"{100 * r['ap']:5.1f}%"
        lines.append(f"{r['label']:<{width}}  {ap}  {r['precision']:9.3f}  {r['recall']:6.3f}  {r['f1']:5.3f}  "
                     f"{r['support']:7d}")
    return "\n".join(lines)
