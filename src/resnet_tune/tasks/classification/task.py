"""Image classification on the one engine: one class an image, softmax head, cross-entropy, accuracy."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...engine.hardware import Precision, forward_chunked
from ...engine.task import EvalBatch, Evaluation, Task, TaskData
from .config import ClassificationConfig
from .data import build_data, class_weights

__all__ = ["ClassificationTask", "combine_batches", "cutout_batch", "mix_batch"]


def mix_batch(x: torch.Tensor, y: torch.Tensor, mixup: float, cutmix: float, g: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) on a batch; returns x, y_a, y_b, lambda."""
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(1, generator=g).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=g))).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=g).to(x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        rh, rw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
        y0, y1, x0, x1 = max(cy - rh // 2, 0), min(cy + rh // 2, h), max(cx - rw // 2, 0), min(cx + rw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, y, y[perm], lam


def cutout_batch(x: torch.Tensor, size: float, g: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): in each image, a square of side ``size`` times the shorter image side,
    centred at a uniformly drawn pixel (so the border may cut it), set to zero, the normalised images' mean.
    One vectorised step on the batch's device; the centres come from ``g`` (an exact resume redraws them)."""
    n, _, h, w = x.shape
    side = max(1, round(size * min(h, w)))
    top = torch.randint(0, h, (n,), generator=g).to(x.device) - side // 2
    left = torch.randint(0, w, (n,), generator=g).to(x.device) - side // 2
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    rows = (ys[None] >= top[:, None]) & (ys[None] < top[:, None] + side)
    cols = (xs[None] >= left[:, None]) & (xs[None] < left[:, None] + side)
    return x.masked_fill((rows[:, :, None] & cols[:, None, :])[:, None], 0)


def combine_batches(batches: list[tuple[torch.Tensor, torch.Tensor, float]]
                    ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Probabilities, targets and mean cross-entropy from per-batch results, summed in batch order."""
    if not batches:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long), float("nan")
    total, n = 0.0, 0
    for _, y, loss_sum in batches:
        total += loss_sum
        n += y.shape[0]
    return torch.cat([p for p, _, _ in batches]), torch.cat([y for _, y, _ in batches]), total / max(n, 1)


class ClassificationTask(Task):
    """One class an image: ``resnet-tune train`` (see :class:`ClassificationConfig` for the options)."""

    name = "classification"
    config_class = ClassificationConfig
    metric_columns = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"]
    best_metric = "val_acc"
    supports_feature_cache = True
    sgd_lr = (0.4, 0.05, 256)  # 0.4 x B/256 from scratch or for a linear probe, 0.05 x B/256 fine-tuning

    cfg: ClassificationConfig

    # ---- set-up

    def build_data(self, device: torch.device, channels_last: bool, rank: int, world: int) -> TaskData:
        return build_data(self, device, channels_last, rank, world)

    def choose_epochs(self, data: TaskData) -> tuple[int, str | None]:
        """From scratch on small images (64 px or less, where it was measured), enough epochs to see
        :data:`~resnet_tune.engine.defaults.MIN_SCRATCH_IMAGES` images; the embedded demo
        :data:`~resnet_tune.data.default.DEMO_EPOCHS`; fine-tuning and photos keep :attr:`default_epochs`."""
        from ...data.default import DEMO_EPOCHS
        from ...engine.defaults import scratch_epochs

        if self.cfg.data is None:
            return DEMO_EPOCHS, None
        size = data.extra.get("input_size")
        if self.pretrained is not None or not isinstance(size, int) or size > 64:
            return self.default_epochs, None
        return scratch_epochs(self.default_epochs, data.num_train)

    def build_model(self, data: TaskData, pretrained: tuple[dict[str, torch.Tensor], dict[str, Any]] | None
                    ) -> tuple[nn.Module, str]:
        from ...models import create_model

        cfg, name = self.cfg, data.model_name
        model = create_model(name, num_classes=len(data.classes), **self.architecture_options(name))
        if pretrained is None:
            return model, f"{name}, training from scratch ({self.weights_reason})"
        from ...models.pretrained import load_pretrained

        load_pretrained(model, pretrained[0], reset_head=True, source=cfg.pretrained)
        return model, f"{name}, pretrained from {cfg.pretrained} ({self.weights_reason})"

    def architecture_options(self, model_name: str) -> dict[str, Any]:
        """``--model-kwargs`` (checked again against ``model_name``: ``--model auto`` decides after the config was
        made) and ``--drop-path-rate``."""
        from ...models import model_kwargs

        cfg = self.cfg
        return {**model_kwargs(cfg.model_kwargs, model_name),
                **({"drop_path_rate": cfg.drop_path_rate} if cfg.drop_path_rate else {})}

    def criterion(self, data: TaskData, device: torch.device) -> nn.Module:
        weight = class_weights(data.extra["train_labels"], len(data.classes)).to(device) \
            if self.cfg.balance == "weighted_loss" else None
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=self.cfg.label_smoothing)

    def resolved_config(self, data: TaskData) -> ClassificationConfig:
        return self.cfg.replace(model=data.model_name, img_size=data.extra["input_size"])

    def head(self, model: nn.Module) -> nn.Module:
        return model.fc

    def feature_cache_refusal(self) -> str | None:
        if self.cfg.mixup > 0 or self.cfg.cutmix > 0:
            return "mixup and cutmix mix images, which cached features cannot"
        if self.cfg.cutout > 0:
            return "cutout erases part of each image, which cached features cannot"
        return None

    # ---- steps

    def augment_batch(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
        """The batch-level training augmentations, in order: cutout, then mixup or cutmix. Returns the images, the
        targets, the mixed-in targets (``None`` when nothing was mixed) and the weight of the first targets; every
        draw comes from ``generator`` (an exact resume repeats it). Tasks that share classification's inputs (the
        multi-label one) reuse it and combine the targets their own way."""
        cfg = self.cfg
        if cfg.cutout > 0:
            x = cutout_batch(x, cfg.cutout, generator)
        if cfg.mixup > 0 or cfg.cutmix > 0:
            return mix_batch(x, y, cfg.mixup, cfg.cutmix, generator)
        return x, y, None, 1.0

    def train_loss(self, fwd: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, ya, yb, lam = self.augment_batch(x, y, generator)
        out = fwd(x)
        if yb is None:
            return criterion(out, ya), out
        return lam * criterion(out, ya) + (1 - lam) * criterion(out, yb), out

    def train_counts(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"correct": (out.detach().argmax(1) == y).sum()}

    def train_metrics(self, loss: float, counts: dict[str, float], seen: int) -> dict[str, float]:
        return {"train_loss": loss, "train_acc": counts["correct"] / seen}

    def scores_and_loss(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        """An evaluation batch's probabilities and summed loss, from its float32 logits: softmax, cross-entropy."""
        return logits.softmax(1), F.cross_entropy(logits, y, reduction="sum").item()

    @torch.no_grad()
    def eval_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: Precision,
                   device: torch.device) -> EvalBatch:
        """Probabilities (float32, CPU), targets and the summed loss of one batch (:meth:`scores_and_loss`)."""
        with precision.autocast(device):
            out = forward_chunked(model, x)
        probs, loss_sum = self.scores_and_loss(out.float(), y)
        return EvalBatch(None, (probs.cpu(), y.cpu(), loss_sum))

    def eval_metrics(self, counts: dict[str, np.ndarray], parts: list[Any]) -> Evaluation:
        probs, targets, loss = combine_batches(parts)
        acc = float((probs.argmax(1) == targets).float().mean()) if len(targets) else float("nan")
        return Evaluation({"val_loss": loss, "val_acc": acc}, (probs, targets, loss))

    def epoch_summary(self, row: dict[str, float]) -> str:
        return (f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  val loss {row['val_loss']:.4f} "
                f"acc {row['val_acc']:.4f}")

    # ---- records and report

    def write_data_records(self, run_dir: Path, data: TaskData) -> None:
        from ...data.datasets import VAL_SPLIT_FILE, write_split

        if data.extra.get("scan") is not None:
            data.extra["scan"].write(run_dir)
        if data.extra.get("val_samples") is not None:  # what `resnet-tune evaluate RUN` evaluates on without --data
            write_split(run_dir / VAL_SPLIT_FILE, data.extra["val_samples"], data.classes)

    def report(self, run_dir: Path, data: TaskData, history: list[dict[str, float]], best: float, best_epoch: int,
               record: dict[str, Any], split: str, evaluation: Evaluation, notes: list[str]
               ) -> tuple[dict[str, Any], str]:
        from ...eval import metrics as M
        from ...eval import plots as P
        from ...eval import report as R

        probs, targets, _ = evaluation.details
        samples = data.extra.get("test_samples" if split == "test" else "val_samples")
        files = [p for p, _ in samples] if samples else None
        report = M.classification_report(probs.numpy(), targets.numpy(), data.classes, files=files)
        report["split"] = split
        (run_dir / "eval.json").write_text(json.dumps(report, indent=2))
        images = {"Training curves": P.plot_curves(history, run_dir / "curves.png").name,
                  "Confusion matrix": P.plot_confusion(np.array(report["confusion_matrix"]), data.classes,
                                                       run_dir / "confusion.png").name}
        worst = P.plot_worst(report["worst"], run_dir / "worst.png") if files else None
        if worst is not None:
            images["Worst-classified images"] = worst.name
        R.write_report(run_dir, title=f"resnet-tune run: {record['model']}", config=self.cfg.to_dict(), rows=history,
                       eval_report=report, classes=data.classes, scan_summary=data.scan_summary, notes=notes,
                       images=images)
        return report, f"{split} accuracy of the best checkpoint (epoch {best_epoch}): {report['accuracy']:.4f}"
