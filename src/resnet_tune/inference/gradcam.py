"""Grad-CAM (Selvaraju et al. 2017): where in the image the evidence for a class lies.

The gradient of the class score with respect to the last stage's feature map, averaged over space, weights
that feature map's channels; the positive part of the weighted sum, upsampled to the input size and scaled to
[0, 1], is the heat-map. It runs on the eager (unfolded) model: folding batch-norm does not change the maths,
but the eager model is the one trained and the one whose modules carry the names below.

For a model whose output has spatial dimensions (a segmentation model: ``(N, K, H, W)``) the class score is
the sum of that class's output over all pixels.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

__all__ = ["explain_image", "grad_cam", "overlay", "target_layer"]

_LOCK = threading.Lock()  # hooks are registered on the module: one Grad-CAM at a time per process


def target_layer(model: nn.Module, layer: str | nn.Module | None = None) -> nn.Module:
    """The module whose output Grad-CAM explains: ``layer`` (a module or a dotted name), else the last stage."""
    if isinstance(layer, nn.Module):
        return layer
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"the model has no module called {layer!r}") from None
    for m in (model, getattr(model, "backbone", None), getattr(model, "encoder", None)):
        if m is None:
            continue
        names = getattr(m, "stage_names", None)
        if names:
            return getattr(m, names[-1])
        if isinstance(getattr(m, "layer4", None), nn.Module):
            return m.layer4
    raise ValueError("cannot find the last stage of this model (no stage_names and no layer4); pass layer=")


def _cams(model: nn.Module, x: torch.Tensor, target: int | Sequence[int] | None = None,
          layer: str | nn.Module | None = None) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Heat-maps (N, H, W), the explained class of each image and the model's output."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    module = target_layer(model, layer)
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        store["act"] = out if isinstance(out, torch.Tensor) else out[0]

    ref = next(model.parameters(), None)
    x = x.detach().to(device=ref.device if ref is not None else x.device,
                      dtype=ref.dtype if ref is not None and ref.dtype.is_floating_point else torch.float32)
    was_training = model.training
    with _LOCK:
        model.eval()
        handle = module.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                xin = x.clone().requires_grad_(True)  # so that the feature map is part of a graph
                out = model(xin)
                if not isinstance(out, torch.Tensor):
                    raise ValueError(f"Grad-CAM needs a model returning one tensor, got {type(out).__name__}")
                act = store["act"]
                scores = out.float()
                if scores.dim() > 2:  # dense output (N, K, ...): a class's score is its sum over positions
                    scores = scores.flatten(2).sum(2)
                n = scores.shape[0]
                if target is None:
                    classes = scores.argmax(1).tolist()
                elif isinstance(target, int):
                    classes = [int(target)] * n
                else:
                    classes = [int(t) for t in target]
                for c in classes:
                    if not 0 <= c < scores.shape[1]:
                        raise ValueError(f"class index {c} is out of range for a model with {scores.shape[1]} "
                                         "outputs")
                picked = scores[torch.arange(n), torch.tensor(classes, device=scores.device)].sum()
                (grads,) = torch.autograd.grad(picked, act)
        finally:
            handle.remove()
            model.train(was_training)
    act, grads = act.detach().float(), grads.float()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * act).sum(1, keepdim=True))
    cam = nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values.view(-1, 1, 1)
    cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam)).clamp_(0, 1)
    return cam.cpu(), classes, out.detach().float().cpu()


def grad_cam(model: nn.Module, x: torch.Tensor, target: int | Sequence[int] | None = None,
             layer: str | nn.Module | None = None) -> torch.Tensor:
    """Grad-CAM heat-map of ``x`` (one image ``(C, H, W)`` / ``(1, C, H, W)`` -> ``(H, W)``; a batch -> ``(N, H, W)``).

    ``target`` is the class index to explain (default: the predicted class), ``layer`` the module or its dotted
    name (default: the last stage, ``model.layer4`` or the last of ``model.stage_names``). Values are in [0, 1]
    (1 at the peak; all zeros when no position has positive evidence).
    """
    cams, _, _ = _cams(model, x, target, layer)
    return cams[0] if (x.dim() == 3 or x.shape[0] == 1) else cams


def _jet(v: np.ndarray) -> np.ndarray:
    """The 'jet' colour map: [0, 1] -> RGB uint8 (blue, cyan, yellow, red)."""
    v = np.clip(v, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0, 1)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0, 1)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0, 1)
    return (np.stack([r, g, b], -1) * 255).round().astype(np.uint8)


def overlay(image: Image.Image, heatmap: torch.Tensor | np.ndarray, alpha: float = 0.65) -> Image.Image:
    """``image`` with ``heatmap`` (H, W in [0, 1], any size: it is resized to the image) blended on top in colour.

    The colour map is 'jet' (blue = no evidence, red = the most); its opacity rises with the heat from
    ``0.4 * alpha`` to ``alpha``, so the image stays readable where there is no evidence.
    """
    base = image.convert("RGB")
    h = heatmap.detach().cpu().numpy() if isinstance(heatmap, torch.Tensor) else np.asarray(heatmap)
    h = np.asarray(h, dtype=np.float32).squeeze()
    if h.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {h.shape}")
    hm = Image.fromarray(np.clip(h * 255.0, 0, 255).round().astype(np.uint8), mode="L")
    hm = hm.resize(base.size, Image.Resampling.BILINEAR)
    heat = np.asarray(hm, dtype=np.float32) / 255.0
    colour = _jet(heat).astype(np.float32)
    a = (alpha * (0.4 + 0.6 * heat))[..., None]
    out = np.asarray(base, dtype=np.float32) * (1 - a) + colour * a
    return Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8), mode="RGB")


def _crop_box(size: tuple[int, int], pp: Any) -> tuple[float, float, float, float]:
    """The part of the original image the model sees: its centre crop mapped back to original pixels."""
    w, h = size
    scale = pp.resize / min(w, h)  # the shorter side is resized to pp.resize
    side_w, side_h = min(pp.input_size / scale, w), min(pp.input_size / scale, h)
    left, top = (w - side_w) / 2, (h - side_h) / 2
    return left, top, left + side_w, top + side_h


def explain_image(predictor: Any, image: Image.Image, target: int | str | None = None, *, max_side: int = 768,
                  min_side: int = 256) -> tuple[Image.Image, dict[str, Any]]:
    """Grad-CAM overlay of ``image`` for a classification predictor (its ``eager`` model, ``preprocess`` and
    ``preprocessing``).

    Returns the overlay (the region the model sees, at the image's resolution, scaled to between ``min_side``
    and ``max_side`` pixels on its longer side) and ``{"class", "index", "prob"}`` of the explained class.
    """
    classes = list(predictor.classes)
    if isinstance(target, str):
        if target not in classes:
            raise KeyError(target)
        target = classes.index(target)
    x = predictor.preprocess([image])
    eager = predictor.eager
    ref = next(eager.parameters())
    cams, picked, out = _cams(eager, x.to(ref.device), target)
    probs = out.flatten(2).mean(2).softmax(1)[0] if out.dim() > 2 else out.softmax(1)[0]
    idx = picked[0]
    crop = image.convert("RGB").crop(tuple(round(v) for v in _crop_box(image.size, predictor.preprocessing)))
    longer = max(crop.size)
    scale = min(max_side / longer, max(1.0, min_side / longer))
    if scale != 1.0:
        crop = crop.resize((max(1, math.floor(crop.width * scale)), max(1, math.floor(crop.height * scale))),
                           Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
    info = {"class": classes[idx] if idx < len(classes) else str(idx), "index": idx, "prob": round(float(probs[idx]), 6)}
    return overlay(crop, cams[0]), info
