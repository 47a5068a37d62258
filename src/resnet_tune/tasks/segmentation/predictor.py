"""The segmentation predictor: a class mask and its overlay for every image (``segment predict``,
``segment evaluate``, the web service).

``SegmentationPredictor("runs/seg").predict_image(pil_image)`` returns ``(mask, overlay)``: the class id of
every pixel as a (H, W) uint8 array at the image's size, and the image blended with the colour-coded
mask. Inference is on the full image, or in overlapping windows (``mode="sliding"``) for inputs much
larger than the training crops.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ...data.transforms import normalize_batch
from ...engine.hardware import Precision
from ...errors import ConfigError, DataError
from ...inference.predictor import Predictor
from .data import IGNORE_COLOUR, default_palette

__all__ = ["SegPredictor", "SegmentationPredictor", "colorize", "describe_shares", "infer_logits", "overlay",
           "palette_for", "sliding_window_logits"]


def palette_for(colours: Sequence[Sequence[int]] | None, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """A (256, 3) uint8 lookup table: the classes' colours, the ignore colour, VOC colours elsewhere."""
    lut = default_palette(256)
    for i, c in enumerate(colours or []):
        if i < 256:
            lut[i] = c
    if 0 <= ignore_index < 256 and ignore_index >= num_classes:
        lut[ignore_index] = IGNORE_COLOUR
    return lut


def colorize(mask: np.ndarray, lut: np.ndarray) -> Image.Image:
    """Class ids (H, W) -> an RGB image with each class in its colour."""
    m = np.asarray(mask)
    m = np.where((m >= 0) & (m < 256), m, 255).astype(np.uint8)
    return Image.fromarray(lut[m], "RGB")


def overlay(image: Image.Image, mask: np.ndarray, lut: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The image blended with its colour-coded mask (``alpha`` = weight of the colours)."""
    colours = colorize(mask, lut)
    if colours.size != image.size:
        colours = colours.resize(image.size, Image.NEAREST)
    return Image.blend(image.convert("RGB"), colours, alpha)


@torch.no_grad()
def sliding_window_logits(model: nn.Module, x: Tensor, window: tuple[int, int], overlap: float = 1 / 3) -> Tensor:
    """Logits of (N, 3, H, W) from overlapping ``window`` tiles, averaged where they overlap.

    Inputs smaller than the window are padded with zeros (the mean colour after normalisation).
    """
    n, _, h, w = x.shape
    wh, ww = window
    ph, pw = max(wh - h, 0), max(ww - w, 0)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    H, W = x.shape[-2:]
    sh, sw = max(1, int(wh * (1 - overlap))), max(1, int(ww * (1 - overlap)))
    rows = [min(i * sh, H - wh) for i in range(math.ceil(max(H - wh, 0) / sh) + 1)]
    cols = [min(j * sw, W - ww) for j in range(math.ceil(max(W - ww, 0) / sw) + 1)]
    out: Tensor | None = None
    count = torch.zeros((1, 1, H, W), device=x.device)
    for top in sorted(set(rows)):
        for left in sorted(set(cols)):
            logits = model(x[:, :, top:top + wh, left:left + ww]).float()
            if out is None:
                out = torch.zeros((n, logits.shape[1], H, W), device=x.device)
            out[:, :, top:top + wh, left:left + ww] += logits
            count[:, :, top:top + wh, left:left + ww] += 1
    assert out is not None
    return (out / count)[:, :, :h, :w]


@torch.no_grad()
def infer_logits(model: nn.Module, x: Tensor, precision: Precision, device: torch.device, mode: str = "full",
                 window: tuple[int, int] | None = None, overlap: float = 1 / 3) -> Tensor:
    """Float logits for a normalised batch, on the full image or in sliding windows."""
    with precision.autocast(device):
        if mode == "sliding" and window is not None and (x.shape[-2] > window[0] or x.shape[-1] > window[1]):
            return sliding_window_logits(model, x, window, overlap)
        return model(x).float()


class SegmentationPredictor(Predictor):
    """Load a segmentation checkpoint once, then predict masks for PIL images or files.

    Args (besides :class:`~resnet_tune.inference.Predictor`'s):
        mode: ``full`` (whole image) or ``sliding`` (windows of ``window``, default the training crop);
            default: the mode recorded at training.
        window, overlap: the sliding windows (H, W) and their overlap.
    """

    task = "segmentation"
    batchable = False  # images keep their own size
    exportable = False  # images of any size, whole or in sliding windows: the torch backend only
    flip_tta = False  # per-pixel outputs: a mirror image's mask would have to be flipped back
    service_description = "Segment images: class shares of the pixels and the colour-coded mask as an overlay."
    error_fields = {"classes": {}}

    def __init__(self, checkpoint: str | Path, *, mode: str | None = None, window: tuple[int, int] | None = None,
                 overlap: float | None = None, **options: Any) -> None:
        options.setdefault("batch_size", 1)
        super().__init__(checkpoint, **options)
        pp = self.record.get("preprocessing") or {}
        self.mean = tuple(pp.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(pp.get("std", (0.229, 0.224, 0.225)))
        self.mode = mode or pp.get("eval_mode", "full")
        if self.mode not in ("full", "sliding"):
            raise ConfigError(f"inference mode {self.mode!r} is not valid; use full or sliding.")
        crop = pp.get("crop_size")
        self.window = tuple(window) if window else (tuple(crop) if crop else None)  # type: ignore[assignment]
        self.overlap = overlap if overlap is not None else float(pp.get("eval_overlap", 1 / 3))
        self.num_classes = len(self.classes)
        self.ignore_index = int(self.record.get("ignore_index", 255))
        self.colours = [tuple(c) for c in self.record.get("colours") or []]
        self.lut = palette_for(self.colours, self.num_classes, self.ignore_index)

    def to_tensor(self, image: Image.Image | np.ndarray | Tensor) -> Tensor:
        """A PIL image, (H, W, 3) uint8 array or (3, H, W) uint8 tensor -> normalised (1, 3, H, W)."""
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"), dtype=np.uint8)
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)
        x = image.unsqueeze(0) if image.dim() == 3 else image
        x = normalize_batch(x.to(self.device), self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.no_grad()
    def logits(self, image: Image.Image | np.ndarray | Tensor) -> Tensor:
        """Float logits (C, H, W) on the CPU."""
        x = self.to_tensor(image)
        return infer_logits(self.model, x, self.precision, self.device, self.mode, self.window, self.overlap)[0].cpu()

    def predict_mask(self, image: Image.Image | np.ndarray | Tensor) -> np.ndarray:
        """The class id of every pixel, (H, W) uint8."""
        return self.logits(image).argmax(0).numpy().astype(np.uint8)

    def colorize(self, mask: np.ndarray) -> Image.Image:
        return colorize(mask, self.lut)

    def overlay(self, image: Image.Image, mask: np.ndarray, alpha: float = 0.5) -> Image.Image:
        return overlay(image, mask, self.lut, alpha)

    def predict_image(self, image: Image.Image) -> tuple[np.ndarray, Image.Image]:
        """``(mask, overlay)``: class ids (H, W) uint8 and the image blended with the colour-coded mask."""
        image = image.convert("RGB")
        mask = self.predict_mask(image)
        return mask, self.overlay(image, mask)

    def shares(self, mask: np.ndarray) -> list[dict[str, Any]]:
        """Each class present in ``mask`` with its share of the pixels, largest first."""
        counts = np.bincount(mask.ravel(), minlength=256)
        order = sorted((i for i in range(256) if counts[i]), key=lambda i: (-counts[i], i))
        return [{"class": self.classes[i] if i < len(self.classes) else f"ignore ({i})",
                 "fraction": round(float(counts[i] / mask.size), 6)} for i in order]

    def predict_images(self, images: Sequence[Image.Image], **options: Any) -> list[dict[str, Any]]:
        """``[{"classes": [{"class", "fraction"}], "width", "height"}]``: the classes of each image's mask."""
        out = []
        for img in images:
            mask = self.predict_mask(img.convert("RGB"))
            out.append({"classes": self.shares(mask), "width": img.width, "height": img.height})
        return out

    def explain(self, image: Image.Image, target: str | None = None) -> tuple[Image.Image, dict[str, Any]]:
        """The colour-coded mask blended over the image (every class at once: ``target`` is not used)."""
        _, ov = self.predict_image(image)
        return ov, {}

    def predict_files(self, paths: Sequence[str | os.PathLike[str]], output: str | Path | None = None,
                      **options: Any) -> list[dict[str, Any]]:
        """For each image its classes' shares; with ``output``, also ``<name>_mask.png`` (class ids),
        ``<name>_color.png`` and ``<name>_overlay.png`` there. Unreadable files are reported, not fatal."""
        from ...data.images import load_image

        out = Path(output) if output is not None else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        results: list[dict[str, Any]] = []
        used: set[str] = set()
        for f in paths:
            stem = Path(f).stem
            name, k = stem, 1
            while name in used:
                k += 1
                name = f"{stem}_{k}"
            used.add(name)
            try:
                img = load_image(f)
            except DataError as err:
                results.append({"file": str(f), "error": getattr(err, "reason", str(err))})
                continue
            mask, ov = self.predict_image(img)
            counts = np.bincount(mask.ravel(), minlength=self.num_classes)
            share = {self.classes[i]: float(c / mask.size) for i, c in enumerate(counts) if c and i < self.num_classes}
            row: dict[str, Any] = {"file": str(f)}
            if out is not None:
                paths_out = {"mask": out / f"{name}_mask.png", "color": out / f"{name}_color.png",
                             "overlay": out / f"{name}_overlay.png"}
                Image.fromarray(mask, "L").save(paths_out["mask"])
                self.colorize(mask).save(paths_out["color"])
                ov.save(paths_out["overlay"])
                row.update({k: str(v) for k, v in paths_out.items()})
            results.append({**row, "classes": share, "error": None})
        return results


#: The name this predictor had before the predictor base.
SegPredictor = SegmentationPredictor


def describe_shares(shares: dict[str, float], k: int = 3) -> str:
    top = sorted(shares.items(), key=lambda kv: -kv[1])[:k]
    return ", ".join(f"{name} {100 * s:.0f}%" for name, s in top)
