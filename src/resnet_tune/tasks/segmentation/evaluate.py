"""Evaluate a segmentation checkpoint: pixel accuracy, per-class and mean IoU, confusion matrix,
and the worst images shown as image / ground truth / prediction.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ...errors import DataError
from . import metrics as SM

__all__ = ["evaluate_items", "evaluate_segmentation", "plot_seg_curves", "plot_worst_segmentations",
           "write_eval_outputs"]

Item = tuple[str, np.ndarray, np.ndarray]  # (file, image (H, W, 3) uint8, mask (H, W) ids)


def evaluate_items(predict: Callable[[np.ndarray], np.ndarray], items: Iterable[Item], classes: list[str],
                   ignore_index: int = 255, worst_n: int = 6, progress: bool = False, total: int | None = None
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run ``predict`` (image -> (H, W) class ids) over ``items`` and score it.

    Returns the report of :func:`resnet_tune.segment.metrics.segmentation_report` plus ``num_images``,
    ``seconds``, ``images_per_s`` and ``per_image`` (file, mean IoU, pixel accuracy), and the
    ``worst_n`` images by per-image mean IoU (with their arrays, for plotting).
    """
    c = len(classes)
    cm = np.zeros((c, c), dtype=np.int64)
    per_image: list[dict[str, Any]] = []
    heap: list[tuple[float, int, dict[str, Any]]] = []
    t0 = time.perf_counter()
    it: Iterable[Item] = items
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(items, total=total, desc="evaluate", unit="img", leave=False)
    n = 0
    for i, (name, image, mask) in enumerate(it):
        pred = predict(image)
        one = SM.confusion_matrix(pred, mask, c, ignore_index)
        cm += one
        miou, acc = SM.mean_iou(one, ignore_index), SM.pixel_accuracy(one)
        per_image.append({"file": name, "mean_iou": miou, "pixel_acc": acc})
        n += 1
        if worst_n and not math.isnan(miou):
            entry = {"file": name, "mean_iou": miou, "pixel_acc": acc, "image": image, "mask": mask, "pred": pred}
            key = (-miou, -i, entry)  # a max-heap on IoU keeps the lowest worst_n
            if len(heap) < worst_n:
                heapq.heappush(heap, key)  # type: ignore[misc]
            elif miou < -heap[0][0]:
                heapq.heapreplace(heap, key)  # type: ignore[misc]
    if n == 0:
        raise DataError("there are no usable image/mask pairs to evaluate (see the scan report above).")
    seconds = time.perf_counter() - t0
    report = SM.segmentation_report(cm, classes, ignore_index)
    report.update(num_images=n, seconds=seconds, images_per_s=n / max(seconds, 1e-9), per_image=per_image,
                  ignore_index=ignore_index, classes=list(classes))
    worst = [e for _, _, e in sorted(heap, key=lambda k: (-k[0], -k[1]))]
    report["worst"] = [{"file": w["file"], "mean_iou": w["mean_iou"], "pixel_acc": w["pixel_acc"]} for w in worst]
    return report, worst


def plot_worst_segmentations(worst: list[dict[str, Any]], lut: np.ndarray, out_png: str | Path,
                             ignore_index: int = 255, classes: list[str] | None = None) -> Path | None:
    """One row per image: the image, the ground truth over it, the prediction over it."""
    if not worst:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from .predictor import overlay

    rows = len(worst)
    h, w = worst[0]["image"].shape[:2]
    aspect = w / max(h, 1)
    fig, axes = plt.subplots(rows, 3, figsize=(3 * 2.6 * aspect, 2.6 * rows + 0.4), squeeze=False)
    for r, e in enumerate(worst):
        img = Image.fromarray(e["image"])
        gt = np.where(e["mask"] == ignore_index, 255, e["mask"])
        panels = [(img, Path(e["file"]).name), (overlay(img, gt, lut), "ground truth"),
                  (overlay(img, e["pred"], lut), f"prediction: mIoU {100 * e['mean_iou']:.1f}%")]
        for ax, (im, title) in zip(axes[r], panels):
            ax.imshow(np.asarray(im))
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle("Worst images by mean IoU: image / ground truth / prediction", fontsize=10)
    if classes:
        from matplotlib.patches import Patch

        present = sorted({int(v) for e in worst for v in np.unique(np.concatenate(
            [e["mask"].ravel(), e["pred"].ravel()])).tolist() if 0 <= v < len(classes)})[:24]
        handles = [Patch(color=lut[i] / 255.0, label=classes[i]) for i in present]
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    else:
        fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=100, facecolor="white")
    finally:
        plt.close(fig)
    return out


def plot_seg_curves(rows: list[dict[str, Any]], out_png: str | Path) -> Path:
    """Training curves (:func:`~resnet_tune.eval.plots.plot_curves`): train/validation loss, validation mean IoU
    (the best marked) and pixel accuracy, learning rate; epochs without a validation (``--val-every``) skipped."""
    from ...eval.plots import plot_curves

    return plot_curves(rows, out_png, score_keys=(("val_miou", "validation mean IoU"),
                                                  ("val_pixel_acc", "validation pixel accuracy")),
                       score_name="mean IoU and pixel accuracy", best_key="val_miou", loss_name="loss")


def write_eval_outputs(report: dict[str, Any], worst: list[dict[str, Any]], out: str | Path, lut: np.ndarray
                       ) -> dict[str, Path]:
    """``eval.json``, ``confusion.png`` (classes without the ignore id) and ``worst.png`` in ``out``."""
    from ...eval import plots as P

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"eval": out / "eval.json"}
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    cm = np.asarray(report["confusion_matrix"])
    keep = [r["id"] for r in report["per_class"]]
    names = [r["class"] for r in report["per_class"]]
    paths["confusion"] = P.plot_confusion(cm[np.ix_(keep, keep)], names, out / "confusion.png")
    worst_png = plot_worst_segmentations(worst, lut, out / "worst.png", int(report.get("ignore_index", 255)),
                                         report.get("classes"))
    if worst_png is not None:
        paths["worst"] = worst_png
    return paths


def iter_items(pairs: list[Any], data: Any, lut: dict[int, int] | None = None) -> Iterator[Item]:
    """(file, image, mask) for each pair, from the scan's memory when it kept the arrays, else from the files."""
    from ...data.images import decode_image
    from .data import decode_mask

    for p in pairs:
        if data is not None and p.image in data.images:
            yield p.image, data.images[p.image], data.masks[p.image]
        else:
            yield p.image, np.array(decode_image(p.image)[0], dtype=np.uint8), decode_mask(p.mask, lut)


def evaluate_segmentation(checkpoint: str | Path, data: str | Path, *, device: str = "auto", precision: str = "auto",
                          output: str | Path | None = None, mode: str | None = None,
                          window: tuple[int, int] | None = None, ignore_index: int | None = None,
                          classes: str | None = None, limit: int | None = None, progress: bool = True
                          ) -> dict[str, Any]:
    """Evaluate a checkpoint on the test split of ``data`` (else val, else ``images/`` + ``masks/``).

    With ``output``: ``eval.json``, ``confusion.png`` and ``worst.png`` there.
    """
    from .data import ClassTable, discover_eval_pairs, estimate_bytes, find_class_table, read_class_table, scan_pairs
    from .predictor import SegPredictor

    pred = SegPredictor(checkpoint, device=device, precision=precision, mode=mode, window=window)
    ignore = pred.ignore_index if ignore_index is None else ignore_index
    pairs, split = discover_eval_pairs(data)
    if limit:
        pairs = pairs[:limit]
    table_path = Path(classes) if classes else find_class_table(data)
    if table_path is not None:
        table = read_class_table(table_path)
        if not table.colours and pred.record.get("mask_colours"):
            table = ClassTable(table.names, {i: tuple(c) for i, c in enumerate(pred.colours)})  # type: ignore[misc]
    else:
        colours = {i: tuple(c) for i, c in enumerate(pred.colours)} if pred.record.get("mask_colours") else {}
        table = ClassTable(dict(enumerate(pred.classes)), colours)  # type: ignore[arg-type]
    keep = estimate_bytes(pairs) < 1024**3
    scanned = scan_pairs(pairs, class_table=table, num_classes=pred.num_classes, ignore_index=ignore, keep=keep,
                         progress=progress, for_training=False)
    summary = scanned.report.summary().replace(" files in ", " image/mask pairs in ", 1)
    good = scanned.good

    def predict(image: np.ndarray) -> np.ndarray:
        return pred.predict_mask(image)

    report, worst = evaluate_items(predict, iter_items(good, scanned, table.colour_lut()), pred.classes, ignore,
                                   progress=progress, total=len(good))
    report.update(checkpoint=str(checkpoint), data=str(data), split=split, mode=pred.mode,
                  skipped=dict(scanned.report.bad), scan_summary=summary)
    if output is not None:
        write_eval_outputs(report, worst, output, pred.lut)
    return report
