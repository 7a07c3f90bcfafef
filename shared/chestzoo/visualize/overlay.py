"""Heatmap and box overlays on grey radiographs, written as PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..metrics.localization import normalize_heatmap


def _jet(values: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps["jet"](values)[..., :3] * 255.0).astype(np.float32)


def overlay(image, heatmap=None, boxes: Sequence[Sequence[float]] = (), alpha: float = 0.4, truth: Sequence[Sequence[float]] = (), text: str | None = None) -> Image.Image:
    """RGB picture of a grey ``image`` (H, W) in [0, 1] with a jet ``heatmap`` (H, W, min-max scaled) blended in.

    ``boxes`` are drawn in yellow (predicted), ``truth`` boxes in green; ``text`` goes in the top-left corner of
    images at least 128 pixels on each side.
    """
    grey = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if grey.ndim != 2:
        raise ValueError(f"image must be (H, W), got {grey.shape}")
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=2)
    if heatmap is not None:
        heat = np.asarray(heatmap, dtype=np.float32)
        if heat.shape != grey.shape:
            raise ValueError(f"heatmap {heat.shape} and image {grey.shape} differ in size")
        rgb = (1.0 - alpha) * rgb + alpha * _jet(normalize_heatmap(heat))
    picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(picture)
    width = max(1, round(max(grey.shape) / 256))
    for colour, group in (((0, 255, 0), truth), ((255, 255, 0), boxes)):
        for box in group:
            draw.rectangle([float(box[0]), float(box[1]), float(box[2]) - 1, float(box[3]) - 1], outline=colour, width=width)
    if text and min(grey.shape) >= 128:  # on thumbnails the caption would hide the picture
        draw.text((2 * width, 2 * width), text, fill=(255, 255, 255))
    return picture


def write_overlay(path: str, image, heatmap=None, boxes=(), truth=(), text: str | None = None, alpha: float = 0.4) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    overlay(image, heatmap, boxes, alpha=alpha, truth=truth, text=text).save(path)
    return path
