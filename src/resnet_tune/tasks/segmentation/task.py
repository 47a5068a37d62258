"""Semantic segmentation on the one engine: a class for every pixel, an FCN/DeepLabV3/U-Net head on a ResNet
backbone, cross-entropy with an ignore index (plus optional Dice and class weights), mean IoU."""

from __future__ import annotations

import heapq
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...data.loaders import EpochLoader
from ...data.transforms import normalize_batch
from ...engine.hardware import Precision, default_workers
from ...engine.task import EvalBatch, Evaluation, Task, TaskData, require_usable
from . import metrics as SM
from .config import SegmentationConfig
from .losses import SegLoss, class_weights

__all__ = ["SegmentationTask", "resolve_pretrained", "seg_markdown"]

#: Decode the whole dataset into memory (``loader=auto``) below this many bytes.
MEMORY_LIMIT = 2 * 1024**3


def resolve_pretrained(source: str, cfg: Any, model_name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights named by ``--pretrained``: everything :func:`resnet_tune.models.pretrained.resolve_source`
    reads, plus torchvision segmentation checkpoints saved as ``.pth`` (``backbone.*`` / ``classifier.*``)."""
    from ...models.pretrained import resolve_source

    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() in (".pth", ".pt", ".bin"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # not a plain state dict: let resolve_source explain
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # torchvision's reference scripts
            obj = obj["model"]
        if isinstance(obj, dict) and any(str(k).startswith("backbone.") for k in obj):
            return {str(k): v for k, v in obj.items()}, {"format": "torchvision-segmentation", "source": source}
    return resolve_source(source, cfg=cfg, model_name=model_name)


def _image_pixels_per_class(data: Any, pairs: list[Any]) -> np.ndarray:
    """For each class, the pixels of the training images in which it appears (median-frequency weights)."""
    out = np.zeros(data.num_classes, dtype=np.float64)
    for p in pairs:
        h, w = data.sizes[p.image]
        out += (data.pixel_counts[p.image] > 0) * float(h * w)
    return out


class SegmentationTask(Task):
    """A class for every pixel: ``resnet-tune segment train`` (see :class:`SegmentationConfig`)."""

    name = "segmentation"
    config_class = SegmentationConfig
    metric_columns = ["epoch", "train_loss", "val_loss", "val_miou", "val_pixel_acc", "lr", "seconds",
                      "images_per_s"]
    best_metric = "val_miou"
    default_epochs = 30
    sgd_lr = (0.02, 0.01, 8)  # 0.02 x B/8 from scratch, 0.01 x B/8 fine-tuning (DeepLab's 0.01 at batch 8)

    cfg: SegmentationConfig

    # ---- set-up

    def read_weights(self, source: str, model_name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        from ...models import get_config

        return resolve_pretrained(source, get_config(model_name), model_name)

    def build_data(self, device: torch.device, channels_last: bool, rank: int, world: int) -> TaskData:
        from ...errors import ConfigError
        from ...models import mean_std_for
        from .data import SegDataset, discover_pairs, estimate_bytes, find_class_table, median_size, read_class_table
        from .data import scan_pairs, summary_lines

        cfg = self.cfg
        if not cfg.data:
            raise ConfigError("segmentation needs --data DIR with images/ and masks/ folders (or train/images and "
                              "train/masks).")
        weights = self.load_pretrained(cfg.model)
        cfg = self.cfg
        mean, std = mean_std_for(cfg.model, weights[1] if weights else None)
        splits = discover_pairs(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
        if cfg.limit:
            splits.train, splits.val = splits.train[:cfg.limit], splits.val[:cfg.limit]
            splits.test = splits.test[:cfg.limit] if splits.test else splits.test
        table_path = Path(cfg.classes) if cfg.classes else find_class_table(cfg.data)
        table = read_class_table(table_path) if table_path is not None else None
        pairs = splits.all_pairs()
        nbytes = estimate_bytes(pairs) if cfg.loader != "workers" else 0
        in_memory = cfg.loader == "memory" or (cfg.loader == "auto" and nbytes < MEMORY_LIMIT)
        t0 = time.perf_counter()
        data = scan_pairs(pairs, class_table=table, num_classes=cfg.num_classes, ignore_index=cfg.ignore_index,
                          keep=in_memory, workers=cfg.workers,
                          progress=cfg.progress and rank == 0 and sys.stderr.isatty())
        train_p, val_p, test_p = data.split(splits.train), data.split(splits.val), data.split(splits.test)
        require_usable(len(train_p), len(val_p), cfg.data, "image/mask pair(s)")
        mh, mw = median_size(data)
        crop = cfg.crop or (max(16, min(512, mh)), max(16, min(512, mw)))
        fill = tuple(int(round(255 * m)) for m in mean)
        lut = table.colour_lut() if table else None
        common = dict(lut=lut, ignore_index=cfg.ignore_index, fill=fill, seed=cfg.seed)
        train_ds = SegDataset(train_p, data, train=True, crop=crop, scale=(cfg.scale_min, cfg.scale_max),
                              hflip=cfg.hflip, **common)
        workers = 0 if in_memory else (cfg.workers if cfg.workers is not None else default_workers(device))

        def eval_loader(pairs: list[Any]) -> EpochLoader:
            same = len({data.sizes[p.image] for p in pairs}) <= 1
            return EpochLoader(SegDataset(pairs, data, **common), cfg.batch_size if same else 1, False, workers,
                               device, cfg.seed, None, rank, world)

        train = EpochLoader(train_ds, cfg.batch_size, True, workers, device, cfg.seed, None, rank, world)
        desc = (f"{cfg.data} ({splits.layout}; usable: train {len(train_p)}, val {len(val_p)}"
                + (f", test {len(test_p)}" if test_p else "") + f"), {data.num_classes} classes, crops "
                f"{crop[0]}x{crop[1]}, ignore index {cfg.ignore_index}"
                + (f"; decoded into memory in {time.perf_counter() - t0:.1f}s" if in_memory else ""))
        weight = class_weights(data.counts(train_p), _image_pixels_per_class(data, train_p), cfg.class_weights)
        notes = []
        if weight is not None:
            if 0 <= cfg.ignore_index < len(weight):
                weight[cfg.ignore_index] = 0.0
            notes.append("class weights: " + ", ".join(f"{n} {w:.2f}" for n, w in zip(data.class_names,
                                                                                     weight.tolist())))
        preprocessing = {"mean": list(mean), "std": list(std), "crop_size": list(crop), "eval_mode": cfg.eval_mode,
                         "eval_overlap": cfg.eval_overlap}
        return TaskData(list(data.class_names), train, eval_loader(val_p), eval_loader(test_p) if test_p else None,
                        len(train_p), desc, cfg.model, preprocessing, notes=notes,
                        scan_summary=summary_lines(data, splits),
                        extra={"seg": data, "table": table, "val_pairs": val_p, "test_pairs": test_p, "crop": crop,
                               "mean": mean, "std": std, "class_weights": weight})

    def build_model(self, data: TaskData, pretrained: tuple[dict[str, torch.Tensor], dict[str, Any]] | None
                    ) -> tuple[nn.Module, str]:
        from ...models.pretrained import load_pretrained
        from ...models.segmentation import backbone_state, create_segmenter, load_torchvision_segmentation

        cfg = self.cfg
        model = create_segmenter(cfg.model, len(data.classes), head=cfg.head, output_stride=cfg.output_stride,
                                 aux=cfg.aux)
        what = f"{cfg.model} + {cfg.head} (output stride {model.output_stride})"
        if pretrained is None:
            return model, f"{what}, from scratch"
        state = pretrained[0]
        if any(k.startswith("classifier.") for k in state):
            try:
                load_torchvision_segmentation(model, state)
                return model, f"{cfg.model} + {cfg.head}, all weights from {cfg.pretrained}"
            except (ValueError, RuntimeError):
                pass
        load_pretrained(model.backbone, backbone_state(state), reset_head=True, source=cfg.pretrained)
        return model, f"{what}, backbone from {cfg.pretrained}"

    def criterion(self, data: TaskData, device: torch.device) -> nn.Module:
        self._criterion = SegLoss(data.extra["class_weights"], self.cfg.ignore_index, self.cfg.dice).to(device)
        return self._criterion

    def run_name(self, data: TaskData) -> str:
        return f"seg-{self.cfg.model}-{self.cfg.head}"

    def resolved_config(self, data: TaskData) -> SegmentationConfig:
        return self.cfg

    # ---- steps

    def to_device(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images -> normalised floats (channels-last when the run uses it); masks as they are."""
        assert self.data is not None
        pp = self.data.preprocessing
        x = normalize_batch(x.to(device, non_blocking=True), pp["mean"], pp["std"])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(device, non_blocking=True)

    def resize_batch(self, x: torch.Tensor, y: torch.Tensor, size: tuple[int, int]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images resampled as every task's; the masks by nearest neighbour (class ids stay ids)."""
        x, _ = super().resize_batch(x, y, size)
        mask = torch.nn.functional.interpolate(y[:, None].float(), size=size, mode="nearest")[:, 0]
        return x, mask.to(y.dtype)

    def train_loss(self, fwd: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        out = fwd(x)  # in training mode a model with an auxiliary head answers {"out", "aux"}
        if isinstance(out, dict):
            loss = criterion(out["out"], y) + self.cfg.aux_weight * criterion(out["aux"], y)
            return loss, out["out"]
        return criterion(out, y), out

    @torch.no_grad()
    def eval_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: Precision,
                   device: torch.device) -> EvalBatch:
        """The pixel confusion matrix (summed), and per batch its loss sum and each image's mean IoU and pixel
        accuracy (gathered in order, for the report)."""
        from .predictor import infer_logits

        cfg, data = self.cfg, self.data
        assert data is not None
        c = len(data.classes)
        logits = infer_logits(model, x, precision, device, cfg.eval_mode, tuple(data.extra["crop"]), cfg.eval_overlap)
        pred = logits.argmax(1)
        per_image = []
        cm = np.zeros((c, c), dtype=np.int64)
        for i in range(y.shape[0]):
            one = SM.confusion_matrix(pred[i], y[i], c, cfg.ignore_index)
            cm += one
            per_image.append((SM.mean_iou(one, cfg.ignore_index), SM.pixel_accuracy(one)))
        loss_sum = float(self._criterion(logits, y)) * y.shape[0]
        return EvalBatch({"confusion": cm}, (loss_sum, y.shape[0], per_image))

    def eval_metrics(self, counts: dict[str, np.ndarray], parts: list[Any]) -> Evaluation:
        assert self.data is not None
        c = len(self.data.classes)
        cm = counts.get("confusion", np.zeros((c, c), dtype=np.int64))
        n = sum(p[1] for p in parts)
        loss = sum(p[0] for p in parts) / max(n, 1)
        per_image = [s for p in parts for s in p[2]]
        metrics = {"val_loss": loss, "val_miou": SM.mean_iou(cm, self.cfg.ignore_index),
                   "val_pixel_acc": SM.pixel_accuracy(cm)}
        return Evaluation(metrics, {"confusion": cm, "per_image": per_image})

    def epoch_summary(self, row: dict[str, float]) -> str:
        return (f"train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f} mIoU {row['val_miou']:.4f} "
                f"pixel acc {row['val_pixel_acc']:.4f}")

    # ---- records and report

    def record(self, data: TaskData, model: nn.Module) -> dict[str, Any]:
        seg, table, weight = data.extra["seg"], data.extra["table"], data.extra["class_weights"]
        return {**model.describe(), "ignore_index": self.cfg.ignore_index, "colours": [list(c) for c in seg.colours],
                "mask_colours": bool(table is not None and table.colours),
                "class_weights": weight.tolist() if weight is not None else None}

    def write_data_records(self, run_dir: Path, data: TaskData) -> None:
        data.extra["seg"].report.write(run_dir)

    def report(self, run_dir: Path, data: TaskData, history: list[dict[str, float]], best: float, best_epoch: int,
               record: dict[str, Any], split: str, evaluation: Evaluation, notes: list[str]
               ) -> tuple[dict[str, Any], str]:
        from ...eval import metrics as M
        from ...eval import report as R
        from .evaluate import plot_seg_curves, write_eval_outputs
        from .predictor import palette_for

        cfg = self.cfg
        seg, table = data.extra["seg"], data.extra["table"]
        pairs = data.extra["test_pairs"] if split == "test" else data.extra["val_pairs"]
        per_image = evaluation.details["per_image"]
        report = SM.segmentation_report(evaluation.details["confusion"], data.classes, cfg.ignore_index)
        seconds = evaluation.seconds
        report.update(num_images=len(per_image), seconds=seconds, images_per_s=len(per_image) / max(seconds, 1e-9),
                      per_image=[{"file": p.image, "mean_iou": m, "pixel_acc": a}
                                 for p, (m, a) in zip(pairs, per_image)],
                      ignore_index=cfg.ignore_index, classes=list(data.classes), split=split,
                      checkpoint=str(run_dir / "best.safetensors"))
        worst = self._worst(run_dir, data, pairs, per_image, table)
        report["worst"] = [{"file": w["file"], "mean_iou": w["mean_iou"], "pixel_acc": w["pixel_acc"]}
                           for w in worst]
        lut = palette_for(seg.colours, seg.num_classes, cfg.ignore_index)
        paths = write_eval_outputs(report, worst, run_dir, lut)
        images = {"Training curves": plot_seg_curves(history, run_dir / "curves.png").name,
                  "Confusion matrix (pixels)": paths["confusion"].name}
        if "worst" in paths:
            images["Worst images: image / ground truth / prediction"] = paths["worst"].name
        keep = [r["id"] for r in report["per_class"]]
        cm = np.asarray(report["confusion_matrix"])[np.ix_(keep, keep)]
        pcm = M.per_class_metrics(cm)
        names = [r["class"] for r in report["per_class"]]
        eval_for_report = {
            "accuracy": report["pixel_acc"], "num_samples": report["num_images"], "confusion_matrix": cm.tolist(),
            "per_class": [{"class": n, "precision": pcm["precision"][i], "recall": pcm["recall"][i],
                           "f1": pcm["f1"][i], "support": pcm["support"][i]} for i, n in enumerate(names)]}
        R.write_report(run_dir, title=f"resnet-tune segmentation run: {record['model']} + {record['head']}",
                       config=cfg.to_dict(), rows=history, eval_report=eval_for_report, classes=names,
                       scan_summary=data.scan_summary,
                       notes=notes + ["Evaluation accuracy, precision, recall and F1 count pixels; support is pixels."],
                       images=images, sections=[seg_markdown(report, best, best_epoch, split)])
        (run_dir / "eval.json").write_text(json.dumps(report, indent=2))
        return report, (f"{split} mean IoU of the best checkpoint (epoch {best_epoch}): {report['mean_iou']:.4f}, "
                        f"pixel accuracy {report['pixel_acc']:.4f}")

    def _worst(self, run_dir: Path, data: TaskData, pairs: list[Any], per_image: list[tuple[float, float]],
               table: Any, worst_n: int = 6) -> list[dict[str, Any]]:
        """The ``worst_n`` images by mean IoU, predicted again by the best checkpoint for the figure."""
        from ...engine import checkpoint as ckpt
        from .evaluate import iter_items
        from .predictor import infer_logits

        ranked = heapq.nsmallest(worst_n, (i for i, (m, _) in enumerate(per_image) if not math.isnan(m)),
                                 key=lambda i: per_image[i][0])
        if not ranked:
            return []
        device, precision = self.device, self.precision
        model, _ = ckpt.load_checkpoint(run_dir / ckpt.BEST, device)
        chosen = [pairs[i] for i in ranked]
        out = []
        for i, (name, image, mask) in zip(ranked, iter_items(chosen, data.extra["seg"],
                                                           table.colour_lut() if table else None)):
            x, _ = self.to_device(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None],
                                  torch.zeros(1), device, False)
            logits = infer_logits(model, x, precision, device, self.cfg.eval_mode, tuple(data.extra["crop"]),
                                  self.cfg.eval_overlap)
            pred = logits[0].argmax(0).cpu().numpy().astype(np.uint8)
            out.append({"file": name, "mean_iou": per_image[i][0], "pixel_acc": per_image[i][1], "image": image,
                        "mask": mask, "pred": pred})
        return out


def seg_markdown(report: dict[str, Any], best: float | None = None, best_epoch: int | None = None,
                 split: str | None = None) -> str:
    """A Markdown section: headline numbers and the per-class IoU table."""
    lines = ["## Segmentation metrics", ""]
    if best is not None and best_epoch is not None and best_epoch > 0:
        lines.append(f"- Best validation mean IoU: **{100 * best:.2f}%** (epoch {best_epoch})")
    where = f" on the {split} split" if split else ""
    lines += [f"- Mean IoU{where}: **{100 * report['mean_iou']:.2f}%** ({report['num_images']} images)",
              f"- Pixel accuracy: {100 * report['pixel_acc']:.2f}%, mean class accuracy "
              f"{100 * report['mean_acc']:.2f}%, frequency-weighted IoU {100 * report['fw_iou']:.2f}%", "",
              "| class | IoU | accuracy | pixels |", "|:--|--:|--:|--:|"]
    for r in report["per_class"]:
        iou = "–" if r["iou"] is None else f"{100 * r['iou']:.2f}%"
        acc = "–" if r["acc"] is None else f"{100 * r['acc']:.2f}%"
        lines.append(f"| {r['class']} | {iou} | {acc} | {r['pixels']:,} |")
    return "\n".join(lines)
