"""Multi-label image recognition on the one engine: several labels an image, one sigmoid a label, binary
cross-entropy, macro mean average precision chooses the best checkpoint, per-label thresholds tuned on validation.

It shares classification's model, head, pretrained weights, strategies, mixing and input handling (the class it
extends) and differs in the data (label sets from a CSV), the loss, the metrics, the record and the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...engine.task import Evaluation, Task, TaskData, require_usable
from ..classification.data import choose_model, image_loaders, scratch_hint
from ..classification.task import ClassificationTask, combine_batches
from .config import MultiLabelConfig

__all__ = ["MultiLabelTask", "SPLIT_FILE", "SmoothedBCE", "multilabel_markdown", "pos_weights"]

#: the validation split of a run, written into its folder (path and labels), for ``evaluate RUN``
SPLIT_FILE = "val_labels.csv"


def multilabel_markdown(report: dict[str, Any], best_epoch: int) -> str:
    """The report's multi-label section: the figures of the best checkpoint and a table per label."""
    th = report.get("thresholds") or {}
    rule = {"f1": "each label's F1"}.get(th.get("rule", "f1"), th.get("rule", ""))
    lines = [f"## Multi-label evaluation ({report['split']} split, best checkpoint of epoch {best_epoch})", "",
             f"- **macro mAP {100 * report['macro_map']:.2f}%**, micro mAP {100 * report['micro_map']:.2f}%",
             f"- at the thresholds tuned on validation (rule: {rule}): micro-F1 {report['micro_f1']:.4f}, macro-F1 "
             f"{report['macro_f1']:.4f}, exact match {100 * report['exact_match']:.2f}%, Hamming loss "
             f"{report['hamming_loss']:.4f} ({report['images']} images)"]
    if th.get("fallback"):
        lines.append(f"- labels with too few validation positives took the global threshold "
                     f"{th['global']:.3f}: {', '.join(th['fallback'])}")
    if report["left_out"]:
        lines.append(f"- left out of macro figures (no positive image in this split): {', '.join(report['left_out'])}")
    lines += ["", "| label | AP | precision | recall | F1 | support | threshold |", "|:--|--:|--:|--:|--:|--:|--:|"]
    for r in report["per_label"]:
        ap = "–" if r["ap"] is None else f"{100 * r['ap']:.1f}%"
        lines.append(f"| {r['label']} | {ap} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                     f"{r['support']} | {r['threshold']:.3f} |")
    return "\n".join(lines)


class SmoothedBCE(nn.Module):
    """Binary cross-entropy on logits, with optional label smoothing (targets pulled towards 0.5) and per-label
    positive weights."""

    def __init__(self, smoothing: float = 0.0, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = targets.float()
        if self.smoothing:
            t = t * (1 - self.smoothing) + 0.5 * self.smoothing
        return F.binary_cross_entropy_with_logits(logits.float(), t, pos_weight=self.pos_weight)


def pos_weights(targets: torch.Tensor) -> torch.Tensor:
    """Each label's negatives/positives ratio in the training split (1 for a label without positives)."""
    pos = targets.float().sum(0)
    neg = targets.shape[0] - pos
    return torch.where(pos > 0, neg / pos.clamp(min=1), torch.ones_like(pos))


class MultiLabelTask(ClassificationTask):
    """Several labels an image: ``resnet_tune.fit(task="multilabel", data="labels.csv")``."""

    name = "multilabel"
    config_class = MultiLabelConfig
    metric_columns = ["epoch", "train_loss", "val_loss", "val_map", "val_micro_map", "val_micro_f1", "lr", "seconds",
                      "images_per_s"]
    best_metric = "val_map"

    cfg: MultiLabelConfig
    #: the usual epochs: the longer runs of single-label training from scratch on small images were not measured on
    #: several labels an image
    choose_epochs = Task.choose_epochs

    # ---- set-up

    def build_data(self, device: torch.device, channels_last: bool, rank: int, world: int) -> TaskData:
        from ...data.scan import scan
        from ...data.transforms import Preprocessing
        from ...errors import ConfigError
        from ...models import mean_std_for
        from .data import discover_multilabel

        cfg = self.cfg
        if cfg.data is None:
            raise ConfigError("a multi-label run needs --data, a CSV of images and their labels.")
        splits = discover_multilabel(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed, label_sep=cfg.label_sep)
        everything = splits.train + splits.val + (splits.test or [])
        report = scan([(p, 0) for p, _ in everything], ["image"], workers=cfg.workers,
                      progress=cfg.progress and rank == 0)
        train_s, val_s = report.good(splits.train), report.good(splits.val)
        test_s = report.good(splits.test) if splits.test else None
        require_usable(len(train_s), len(val_s), cfg.data)
        splits.train, splits.val, splits.test = train_s, val_s, test_s
        median = report.median_size()
        name, size, weights = choose_model(self, float(min(median)) if median else None, len(train_s), len(val_s),
                                           len(splits.labels), world)
        cfg = self.cfg
        mean, std = mean_std_for(name, weights[1] if weights else None)
        pp = Preprocessing.for_size(size, mean, std)
        n_labels = len(splits.labels)
        parts = {"train": train_s, "val": val_s, "test": test_s}
        targets = {k: torch.from_numpy(splits.targets(k)).float() for k, v in parts.items() if v}
        samples = {k: [(p, t) for (p, _), t in zip(v, targets[k])] if v else None for k, v in parts.items()}
        loaders, use_memory, how = image_loaders(cfg, samples, targets, pp, device, channels_last, rank, world)
        desc = f"{cfg.data} ({splits.describe()}) at {size}x{size}{how}"
        hint = None if weights else scratch_hint(name, len(train_s), n_labels)
        return TaskData(splits.labels, loaders["train"], loaders["val"], loaders.get("test"), len(train_s), desc, name,
                        pp.to_dict(), notes=list(splits.notes) + ([hint] if hint else []),
                        scan_summary=report.summary() + "\n" + splits.label_summary(frequencies=False)
                        + "\n(label frequencies: labels.txt in the run folder)",
                        target_shape=(n_labels,),
                        extra={"scan": report, "splits": splits, "train_targets": targets["train"],
                               "val_samples": val_s, "test_samples": test_s, "input_size": size,
                               "in_memory": use_memory})

    def criterion(self, data: TaskData, device: torch.device) -> nn.Module:
        weight = pos_weights(data.extra["train_targets"]).to(device) if self.cfg.balance == "pos_weight" else None
        return SmoothedBCE(self.cfg.label_smoothing, weight)

    # ---- steps

    def train_loss(self, fwd: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, yb, lam = self.augment_batch(x, y, generator)
        if yb is not None:  # label sets mix like the images: lam * y_a + (1 - lam) * y_b
            y = lam * y + (1 - lam) * yb
        out = fwd(x)
        return criterion(out, y), out

    def train_counts(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def train_metrics(self, loss: float, counts: dict[str, float], seen: int) -> dict[str, float]:
        return {"train_loss": loss}

    def scores_and_loss(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Sigmoid probabilities and the binary cross-entropy summed over images (averaged over labels)."""
        return logits.sigmoid(), F.binary_cross_entropy_with_logits(logits, y.float(), reduction="sum").item() / \
            y.shape[1]

    def eval_metrics(self, counts: dict[str, np.ndarray], parts: list[Any]) -> Evaluation:
        from ...eval.multilabel import multilabel_report, tune_thresholds

        probs, targets, loss = combine_batches(parts)
        p, t = probs.numpy(), targets.numpy().round().astype(np.uint8)
        thresholds = tune_thresholds(t, p, target_precision=self.cfg.target_precision,
                                     min_positives=self.cfg.min_threshold_positives)
        labels = self.data.classes if self.data is not None else [str(j) for j in range(t.shape[1])]
        report = multilabel_report(p, t, labels, thresholds.values)
        metrics = {"val_loss": loss, "val_map": report["macro_map"], "val_micro_map": report["micro_map"],
                   "val_micro_f1": report["micro_f1"]}
        return Evaluation(metrics, (probs, targets, loss, thresholds, report))

    def epoch_summary(self, row: dict[str, float]) -> str:
        return (f"train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f} mAP {row['val_map']:.4f} "
                f"micro-F1 {row['val_micro_f1']:.4f}")

    # ---- records and report

    def evaluation_record(self, evaluation: Evaluation) -> dict[str, Any]:
        thresholds = evaluation.details[3]
        labels = self.data.classes if self.data is not None else []
        return {"thresholds": thresholds.to_dict(labels)}

    def write_data_records(self, run_dir: Path, data: TaskData) -> None:
        import csv

        if data.extra.get("scan") is not None:
            data.extra["scan"].write(run_dir)
        (run_dir / "labels.txt").write_text(data.extra["splits"].label_summary() + "\n", encoding="utf-8")
        with open(run_dir / SPLIT_FILE, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "labels"])
            for path, labs in data.extra["val_samples"]:
                w.writerow([path, ";".join(data.classes[j] for j in labs)])

    def report(self, run_dir: Path, data: TaskData, history: list[dict[str, float]], best: float, best_epoch: int,
               record: dict[str, Any], split: str, evaluation: Evaluation, notes: list[str]
               ) -> tuple[dict[str, Any], str]:
        from ...eval import plots as P
        from ...eval import report as R
        from ...eval.multilabel import multilabel_report

        probs, targets, _, _, _ = evaluation.details
        th = record.get("thresholds", {}).get("per_label", {})
        values = [th.get(lab, 0.5) for lab in data.classes]  # the best checkpoint's, tuned on validation
        report = multilabel_report(probs.numpy(), targets.numpy().round().astype(np.uint8), data.classes, values)
        report["split"] = split
        report["thresholds"] = record.get("thresholds")
        (run_dir / "eval.json").write_text(json.dumps(report, indent=2))
        curves = P.plot_curves(history, run_dir / "curves.png", best_key="val_map", score_name="mAP / micro-F1",
                               score_keys=(("val_map", "validation mAP"), ("val_micro_f1", "validation micro-F1")),
                               loss_name="binary cross-entropy")
        images = {"Training curves": curves.name,
                  "Average precision per label": P.plot_label_ap(report, run_dir / "label_ap.png").name,
                  "Label co-occurrence of errors": P.plot_error_cooccurrence(
                      probs.numpy() >= np.asarray(values)[None, :], targets.numpy() > 0.5, data.classes,
                      run_dir / "error_cooccurrence.png").name}
        R.write_report(run_dir, title=f"resnet-tune multi-label run: {record['model']}", config=self.cfg.to_dict(),
                       rows=history, eval_report=None, classes=data.classes, scan_summary=data.scan_summary,
                       notes=notes, images=images, sections=[multilabel_markdown(report, best_epoch)])
        left = f"; left out of macro figures (no positives): {', '.join(report['left_out'])}" \
            if report["left_out"] else ""
        return report, (f"{split} mAP of the best checkpoint (epoch {best_epoch}): {report['macro_map']:.4f} "
                        f"(micro-F1 {report['micro_f1']:.4f} at the tuned thresholds){left}")
