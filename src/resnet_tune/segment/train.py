"""Semantic segmentation training: ``SegTrainer(cfg).fit()`` reads top to bottom, like the
classification :class:`resnet_tune.engine.trainer.Trainer` whose helpers it uses.

setup -> data (pairs, scan, class table) -> model (backbone + head) -> strategy -> optimiser ->
(resume) -> epochs (train, validate: loss, mean IoU, pixel accuracy) -> final evaluation -> report.
"""

from __future__ import annotations

import datetime as _dt
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.transforms import normalize_batch
from ..engine import checkpoint as ckpt
from ..engine.hardware import (Precision, default_channels_last, default_workers, resolve_device, resolve_precision,
                               seed_everything, set_threads)
from ..engine.optim import make_optimizer, param_groups, set_lr
from ..engine.trainer import _EpochLoader, _mean_std_for, _progress, log, resolve_strategy, set_body_frozen, train_mode
from ..errors import ConfigError, DataError, TrainingError
from . import metrics as SM
from .config import SegConfig, save_yaml
from .losses import SegLoss, class_weights, lr_multiplier

__all__ = ["METRIC_COLUMNS", "SegResult", "SegTrainer", "fit_segmentation"]

METRIC_COLUMNS = ["epoch", "train_loss", "val_loss", "val_miou", "val_pixel_acc", "lr", "seconds", "images_per_s"]
RESUME_OVERRIDES = frozenset({"device", "progress", "workers", "threads"})
MEMORY_LIMIT = 2 * 1024**3


@dataclass
class SegResult:
    run_dir: Path
    best_miou: float
    best_epoch: int
    history: list[dict[str, float]]
    checkpoint: Path
    eval_report: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def default_lr(cfg: SegConfig, strategy: str) -> float:
    if cfg.lr is not None:
        return cfg.lr
    if cfg.optimizer == "adamw":
        return 1e-3 if strategy in ("scratch", "linear_probe") else 3e-4
    scale = cfg.batch_size / 8
    return (0.02 if strategy in ("scratch", "linear_probe") else 0.01) * scale


def _image_pixels_per_class(data: Any, pairs: list[Any]) -> np.ndarray:
    """For each class, the pixels of the training images in which it appears (median-frequency weights)."""
    out = np.zeros(data.num_classes, dtype=np.float64)
    for p in pairs:
        h, w = data.sizes[p.image]
        out += (data.pixel_counts[p.image] > 0) * float(h * w)
    return out


def resolve_pretrained(source: str, cfg: Any, model_name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights named by ``--pretrained``: everything :func:`resnet_tune.models.pretrained.resolve_source`
    reads, plus torchvision segmentation checkpoints saved as ``.pth`` (``backbone.*`` / ``classifier.*``)."""
    from ..models.pretrained import resolve_source

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


class SegTrainer:
    """One segmentation training run. ``SegTrainer(cfg).fit()`` or :func:`fit_segmentation`."""

    def __init__(self, cfg: SegConfig | None = None, *, resume: str | Path | None = None, quiet: bool = False,
                 overrides: dict[str, Any] | None = None) -> None:
        from .config import from_dict

        self.resume_dir = Path(resume) if resume else None
        self.state: dict[str, Any] | None = None
        if self.resume_dir is not None:
            self.state = ckpt.load_state(self.resume_dir / ckpt.STATE)
            if self.state.get("task") != "segmentation":
                raise ConfigError(f"{self.resume_dir} is not a segmentation run; resume it with `resnet-tune train "
                                  "--resume`.")
            changes = {k: v for k, v in (overrides or {}).items()}
            bad = sorted(set(changes) - RESUME_OVERRIDES)
            if bad:
                raise ConfigError(f"a resumed run keeps its saved configuration; {', '.join(bad)} cannot change on "
                                  f"resume (only {', '.join(sorted(RESUME_OVERRIDES))} can).")
            cfg = from_dict({**self.state["config"], **changes, "output": str(self.resume_dir)}, "the saved run")
        elif cfg is None:
            cfg = from_dict(overrides or {}, "options")
        self.cfg = cfg
        self.quiet = quiet
        self.notes: list[str] = []

    def say(self, msg: str) -> None:
        if not self.quiet:
            log(msg)

    # ---- setup

    def _run_dir(self) -> Path:
        cfg = self.cfg
        if self.resume_dir is not None:
            return self.resume_dir
        if cfg.output:
            out = Path(cfg.output)
            if (out / ckpt.STATE).exists():
                raise ConfigError(f"{out} already holds a training run; resume it with --resume {out} or choose "
                                  "another --output folder.")
        else:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path("runs") / f"seg-{cfg.model}-{cfg.head}-{stamp}"
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create the run folder {out} ({err.strerror or err}); choose another "
                              "--output.") from None
        return out

    def _data(self, device: torch.device, mean: tuple) -> dict[str, Any]:
        from .data import SegDataset, discover_pairs, estimate_bytes, find_class_table, read_class_table, scan_pairs
        from .data import median_size, summary_lines

        cfg = self.cfg
        if not cfg.data:
            raise ConfigError("segmentation needs --data DIR with images/ and masks/ folders (or train/images and "
                              "train/masks).")
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
                          keep=in_memory, workers=cfg.workers, progress=cfg.progress and not self.quiet
                          and sys.stderr.isatty())
        summary = summary_lines(data, splits)
        train_p, val_p, test_p = data.split(splits.train), data.split(splits.val), data.split(splits.test)
        if len(train_p) < 2:
            raise DataError(f"the training split of {cfg.data} has {len(train_p)} usable image/mask pair(s); training "
                            "needs at least two (see the scan report above for skipped pairs).")
        if not val_p:
            raise DataError(f"the validation split of {cfg.data} has no usable image/mask pairs; add some or raise "
                            "--val-fraction.")
        mh, mw = median_size(data)
        crop = cfg.crop or (max(16, min(512, mh)), max(16, min(512, mw)))
        fill = tuple(int(round(255 * m)) for m in mean)
        lut = table.colour_lut() if table else None
        common = dict(lut=lut, ignore_index=cfg.ignore_index, fill=fill, seed=cfg.seed)
        train_ds = SegDataset(train_p, data, train=True, crop=crop, scale=(cfg.scale_min, cfg.scale_max),
                              hflip=cfg.hflip, **common)
        workers = 0 if in_memory else (cfg.workers if cfg.workers is not None else default_workers(device))

        def eval_loader(pairs: list[Any]) -> _EpochLoader:
            same = len({data.sizes[p.image] for p in pairs}) <= 1
            return _EpochLoader(SegDataset(pairs, data, **common), cfg.batch_size if same else 1, False, workers,
                                device, cfg.seed, None, 0, 1)

        train = _EpochLoader(train_ds, cfg.batch_size, True, workers, device, cfg.seed, None, 0, 1)
        desc = (f"{cfg.data} ({splits.layout}; usable: train {len(train_p)}, val {len(val_p)}"
                + (f", test {len(test_p)}" if test_p else "") + f"), {data.num_classes} classes, crops "
                f"{crop[0]}x{crop[1]}, ignore index {cfg.ignore_index}"
                + (f"; decoded into memory in {time.perf_counter() - t0:.1f}s" if in_memory else ""))
        return {"data": data, "splits": splits, "table": table, "train_pairs": train_p, "val_pairs": val_p,
                "test_pairs": test_p, "train": train, "val": eval_loader(val_p),
                "crop": crop, "summary": summary, "description": desc, "in_memory": in_memory}

    def prepare(self, run_dir: Path | None) -> dict[str, Any]:
        """Device, data, model, strategy, loss and optimiser: everything before the first step."""
        from ..models.pretrained import load_pretrained
        from ..models.segmentation import backbone_state, create_segmenter

        cfg = self.cfg
        from ..models import get_preset

        get_preset(cfg.model)  # a misspelt name stops here, before the data is read
        set_threads(cfg.threads)
        device = resolve_device(cfg.device)
        precision = resolve_precision(cfg.precision, device)
        seed_everything(cfg.seed, cfg.deterministic)

        pre_state, pre_meta = None, None
        if cfg.pretrained:
            from ..models import get_config

            pre_state, pre_meta = resolve_pretrained(cfg.pretrained, get_config(cfg.model), cfg.model)
        mean, std = _mean_std_for(cfg.model, pre_meta)
        d = self._data(device, mean)
        data = d["data"]
        self.say(f"data: {d['description']}")
        self.say(d["summary"])
        if run_dir is not None:
            data.report.write(run_dir)

        model = create_segmenter(cfg.model, data.num_classes, head=cfg.head, output_stride=cfg.output_stride,
                                 aux=cfg.aux)
        strategy = resolve_strategy(cfg)  # type: ignore[arg-type]  # reads .strategy and .pretrained only
        if pre_state is not None:
            whole = any(k.startswith("classifier.") for k in pre_state)
            try:
                if not whole:
                    raise ValueError
                from ..models.segmentation import load_torchvision_segmentation

                load_torchvision_segmentation(model, pre_state)
                self.say(f"model: {cfg.model} + {cfg.head}, all weights from {cfg.pretrained}, strategy {strategy}")
            except (ValueError, RuntimeError):
                load_pretrained(model.backbone, backbone_state(pre_state), reset_head=True, source=cfg.pretrained)
                self.say(f"model: {cfg.model} + {cfg.head} (output stride {model.output_stride}), backbone from "
                         f"{cfg.pretrained}, strategy {strategy}")
        else:
            self.notes.append("no pretrained weights were given: trained from scratch (pass --pretrained to fine-tune)")
            self.say(f"model: {cfg.model} + {cfg.head} (output stride {model.output_stride}), from scratch")
        model = model.to(device)
        channels_last = cfg.channels_last if cfg.channels_last is not None else \
            default_channels_last(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.say(f"device: {device}, precision {precision.name}, channels_last {channels_last}")

        lr = default_lr(cfg, strategy)
        decay = cfg.lr_decay if strategy == "freeze_unfreeze" else 1.0
        groups = param_groups(model, lr, cfg.weight_decay, decay)
        optimizer = make_optimizer(cfg.optimizer, groups, lr, cfg.momentum, False, cfg.weight_decay)
        counts = data.counts(d["train_pairs"])
        weight = class_weights(counts, _image_pixels_per_class(data, d["train_pairs"]), cfg.class_weights)
        if weight is not None:
            if 0 <= cfg.ignore_index < len(weight):
                weight[cfg.ignore_index] = 0.0
            self.say("class weights: " + ", ".join(f"{n} {w:.2f}" for n, w in zip(data.class_names, weight.tolist())))
        criterion = SegLoss(weight, cfg.ignore_index, cfg.dice).to(device)
        steps_per_epoch = max(len(d["train"]), 1)
        return {**d, "device": device, "precision": precision, "channels_last": channels_last, "model": model,
                "strategy": strategy, "optimizer": optimizer, "criterion": criterion, "lr": lr, "mean": mean,
                "std": std, "class_weights": weight, "steps_per_epoch": steps_per_epoch,
                "total_steps": steps_per_epoch * cfg.epochs, "warmup": int(cfg.warmup_epochs * steps_per_epoch)}

    # ---- the loop

    def fit(self) -> SegResult:
        cfg = self.cfg
        run_dir = self._run_dir()
        s = self.prepare(run_dir)
        data, model, optimizer, criterion = s["data"], s["model"], s["optimizer"], s["criterion"]
        device, precision, strategy = s["device"], s["precision"], s["strategy"]
        history: list[dict[str, float]] = []
        start_epoch, best, best_epoch = 0, -math.inf, -1
        if self.state is not None:
            if list(self.state.get("classes", [])) != data.class_names:
                raise ConfigError(f"the data in {cfg.data} no longer gives the classes this run was started with; "
                                  "resume needs the same data.")
            start_epoch, best, best_epoch, history = self._restore(model, optimizer)
            self.say(f"resumed {run_dir} after epoch {start_epoch} (best val mIoU {best:.4f} at epoch {best_epoch})")
        save_yaml(cfg, run_dir / "config.yaml")

        preprocessing = {"mean": list(s["mean"]), "std": list(s["std"]), "crop_size": list(s["crop"]),
                         "eval_mode": cfg.eval_mode, "eval_overlap": cfg.eval_overlap}
        extra = {**model.describe(), "ignore_index": cfg.ignore_index, "colours": [list(c) for c in data.colours],
                 "mask_colours": bool(s["table"] is not None and s["table"].colours), "strategy": strategy,
                 "pretrained": cfg.pretrained,
                 "class_weights": s["class_weights"].tolist() if s["class_weights"] is not None else None}
        bad_after = 0
        for epoch in range(start_epoch, cfg.epochs):
            frozen = strategy == "linear_probe" or (strategy == "freeze_unfreeze" and epoch < cfg.freeze_epochs)
            set_body_frozen(model, frozen)
            t0 = time.perf_counter()
            train_loss, seen = self.train_one_epoch(model, s["train"], optimizer, criterion, precision, device, epoch,
                                                    s)
            train_time = time.perf_counter() - t0
            val_loss, cm = self.validate(model, s["val"], criterion, precision, device, s)
            miou, pix = SM.mean_iou(cm, cfg.ignore_index), SM.pixel_accuracy(cm)
            row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_miou": miou,
                   "val_pixel_acc": pix, "lr": optimizer.param_groups[-1]["lr"],
                   "seconds": time.perf_counter() - t0, "images_per_s": seen / max(train_time, 1e-9)}
            history.append(row)
            improved = miou > best or (best_epoch < 0)
            if improved:
                best, best_epoch, bad_after = miou, epoch + 1, 0
            else:
                bad_after += 1
            metrics = {"val_miou": miou, "val_pixel_acc": pix, "val_loss": val_loss, "train_loss": train_loss}
            rec = ckpt.model_record(model, classes=data.class_names, preprocessing=preprocessing, task="segmentation",
                                    metrics=metrics, extra={**extra, "epoch": epoch + 1})
            ckpt.save_checkpoint(run_dir / ckpt.LAST, model, rec)
            if improved:
                ckpt.save_checkpoint(run_dir / ckpt.BEST, model, rec)
            ckpt.save_state(run_dir / ckpt.STATE, {
                "task": "segmentation", "config": cfg.to_dict(), "epoch": epoch + 1, "classes": data.class_names,
                "model": {k: v.detach().cpu() for k, v in ckpt.unwrap(model).state_dict().items()},
                "optimizer": optimizer.state_dict(), "rng": ckpt.rng_state(), "best": best,
                "best_epoch": best_epoch, "history": history,
            })
            write_metrics(run_dir / "metrics.csv", history)
            self.say(f"epoch {epoch + 1}/{cfg.epochs}  train loss {train_loss:.4f}  val loss {val_loss:.4f} "
                     f"mIoU {miou:.4f} pixel acc {pix:.4f}  lr {row['lr']:.2e}  {row['seconds']:.1f}s  "
                     f"{row['images_per_s']:.1f} img/s" + ("  *" if improved else "")
                     + ("  (frozen backbone)" if frozen else ""))
            if cfg.early_stop and bad_after >= cfg.early_stop:
                self.say(f"early stop: no improvement in validation mean IoU for {cfg.early_stop} epochs")
                self.notes.append(f"stopped early after epoch {epoch + 1}")
                break
        return self._finish(run_dir, s, history, best, best_epoch)

    def _restore(self, model: nn.Module, optimizer: torch.optim.Optimizer
                 ) -> tuple[int, float, int, list[dict[str, float]]]:
        st = self.state
        assert st is not None
        ckpt.unwrap(model).load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        ckpt.set_rng_state(st["rng"])
        return int(st["epoch"]), float(st["best"]), int(st["best_epoch"]), list(st["history"])

    def _batch(self, x: torch.Tensor, s: dict[str, Any]) -> torch.Tensor:
        x = normalize_batch(x.to(s["device"], non_blocking=True), s["mean"], s["std"])
        return x.contiguous(memory_format=torch.channels_last) if s["channels_last"] else x

    def train_one_epoch(self, model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                        precision: Precision, device: torch.device, epoch: int, s: dict[str, Any]
                        ) -> tuple[float, int]:
        cfg = self.cfg
        train_mode(model)
        loader.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout: a function of the epoch, for exact resume
        step = epoch * s["steps_per_epoch"]
        total = torch.zeros((), device=device)
        seen = 0
        show = cfg.progress and not self.quiet and sys.stderr.isatty()
        bar = _progress(loader, len(loader), f"epoch {epoch + 1}/{cfg.epochs}", show)
        optimizer.zero_grad(set_to_none=True)
        params = [p for p in model.parameters()]
        for i, (x, y) in enumerate(bar):
            x = self._batch(x, s)
            y = y.to(device, non_blocking=True)
            with precision.autocast(device):
                out = model.forward_all(x)
            loss = criterion(out["out"], y)
            if "aux" in out:
                loss = loss + cfg.aux_weight * criterion(out["aux"], y)
            if not torch.isfinite(loss.detach()).item():
                raise TrainingError(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, batch {i + 1}; lower the learning rate (now "
                    f"{optimizer.param_groups[-1]['lr']:.3g}) or use --precision fp32. No checkpoint was written for "
                    "this epoch; the last good one is untouched.")
            loss.backward()
            set_lr(optimizer, lr_multiplier(step, s["total_steps"], cfg.schedule, s["warmup"], cfg.poly_power))
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            n = y.shape[0]
            total += loss.detach().float() * n
            seen += n
            if show and i % 5 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if seen == 0:
            raise DataError("the training loader produced no batch; the training split is too small for the batch size "
                            "(lower --batch-size).")
        return total.item() / seen, seen

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Any, criterion: nn.Module, precision: Precision,
                 device: torch.device, s: dict[str, Any]) -> tuple[float, np.ndarray]:
        """Mean loss (per image) and the pixel confusion matrix over a loader of full images."""
        from .predictor import infer_logits

        cfg = self.cfg
        model.eval()
        c = s["data"].num_classes
        cm = np.zeros((c, c), dtype=np.int64)
        total, n = 0.0, 0
        for x, y in loader:
            x = self._batch(x, s)
            y = y.to(device)
            logits = infer_logits(model, x, precision, device, cfg.eval_mode, s["crop"], cfg.eval_overlap)
            total += float(criterion(logits, y)) * y.shape[0]
            n += y.shape[0]
            cm += SM.confusion_matrix(logits.argmax(1), y, c, cfg.ignore_index)
        return total / max(n, 1), cm

    # ---- the end

    def _finish(self, run_dir: Path, s: dict[str, Any], history: list[dict[str, float]], best: float,
                best_epoch: int) -> SegResult:
        from ..eval import metrics as M
        from ..eval import report as R
        from .evaluate import evaluate_items, iter_items, plot_seg_curves, write_eval_outputs
        from .predictor import infer_logits, palette_for

        cfg = self.cfg
        data, device, precision = s["data"], s["device"], s["precision"]
        best_path = run_dir / ckpt.BEST
        model, rec = ckpt.load_checkpoint(best_path, device)
        if s["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        split, pairs = ("test", s["test_pairs"]) if s["test_pairs"] else ("validation", s["val_pairs"])

        def predict(image: np.ndarray) -> np.ndarray:
            x = self._batch(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None], s)
            logits = infer_logits(model, x, precision, device, cfg.eval_mode, s["crop"], cfg.eval_overlap)
            return logits[0].argmax(0).cpu().numpy().astype(np.uint8)

        lut = palette_for(data.colours, data.num_classes, cfg.ignore_index)
        table = s["table"]
        report, worst = evaluate_items(predict, iter_items(pairs, data, table.colour_lut() if table else None),
                                       data.class_names, cfg.ignore_index)
        report["split"] = split
        report["checkpoint"] = str(best_path)
        paths = write_eval_outputs(report, worst, run_dir, lut)
        curves = plot_seg_curves(history, run_dir / "curves.png")
        images = {"Training curves": curves.name,
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
        notes = self.notes + ["Evaluation accuracy, precision, recall and F1 count pixels; support is pixels."]
        out = R.write_report(run_dir, title=f"resnet-tune segmentation run: {rec['model']} + {rec['head']}",
                             config=cfg.to_dict(), rows=history, eval_report=eval_for_report, classes=names,
                             scan_summary=s["summary"], notes=notes, images=images)
        text = out.read_text(encoding="utf-8")
        section = seg_markdown(report, best, best_epoch, split) + "\n\n"
        at = next((text.index(h) for h in ("## Figures", "## Training history") if h in text), len(text))
        out.write_text(text[:at] + section + text[at:], encoding="utf-8")
        self.say(f"{split} mean IoU of the best checkpoint (epoch {best_epoch}): {report['mean_iou']:.4f}, "
                 f"pixel accuracy {report['pixel_acc']:.4f}")
        self.say(f"done: model {best_path}, report {run_dir / 'report.md'}")
        return SegResult(run_dir, best, best_epoch, history, best_path, report, self.notes)


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


def write_metrics(path: Path, history: list[dict[str, float]]) -> None:
    from ..engine.trainer import write_metrics as _write

    _write(path, history, METRIC_COLUMNS)


def fit_segmentation(cfg: SegConfig | None = None, *, resume: str | Path | None = None, quiet: bool = False,
                     **options: Any) -> SegResult:
    """Train a segmenter: ``fit_segmentation(data="camvid/", head="unet", epochs=20)``."""
    from .config import from_dict

    if resume is not None:
        return SegTrainer(resume=resume, quiet=quiet, overrides=options).fit()
    if cfg is None:
        cfg = from_dict(options, source="fit_segmentation()")
    elif options:
        cfg = cfg.replace(**options)
    return SegTrainer(cfg, quiet=quiet).fit()
