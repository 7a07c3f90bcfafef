"""Detection overlays: predicted boxes with class names and scores, ground truth beside them, as PNG.

Boxes are ``[x_min, y_min, x_max, y_max]`` pixels of the image drawn (a box ``[0, 0, W, H]`` frames the whole
image). Each class has its own colour; ground-truth boxes are white with the class name under the box, predictions
in their class colour with "name score" above it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

TRUTH_COLOUR = (255, 255, 255)


def class_colour(index: int) -> tuple[int, int, int]:
    """A distinct colour per class index (matplotlib's tab10, cycled)."""
    from matplotlib import colormaps

    r, g, b, _ = colormaps["tab10"](int(index) % 10)
    return int(r * 255), int(g * 255), int(b * 255)


def _grey(image) -> np.ndarray:
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    grey = np.asarray(image, dtype=np.float32)
    if grey.ndim == 3 and grey.shape[0] in (1, 3):
        grey = grey.mean(axis=0)
    if grey.ndim != 2:
        raise ValueError(f"image must be (H, W) or (C, H, W), got shape {grey.shape}")
    return np.clip(grey, 0.0, 1.0)


def _rows(value, width: int) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value if value is not None else [], dtype=np.float64)
    return array.reshape(-1, width) if width > 1 else array.reshape(-1)


def draw_detections(
    image,
    boxes=(),
    labels=(),
    scores=None,
    class_names: Sequence[str] = (),
    truth_boxes=(),
    truth_labels=(),
    title: str | None = None,
    upscale_to: int = 512,
) -> Image.Image:
    """RGB picture of a grey radiograph with predicted and ground-truth boxes.

    Small images are enlarged (nearest neighbour) so that the shorter side reaches ``upscale_to`` pixels and the
    labels stay readable; boxes are scaled with them.
    """
    grey = _grey(image)
    factor = max(1, int(np.ceil(upscale_to / min(grey.shape)))) if upscale_to else 1
    picture = Image.fromarray((grey * 255.0 + 0.5).astype(np.uint8), mode="L").convert("RGB")
    if factor > 1:
        picture = picture.resize((grey.shape[1] * factor, grey.shape[0] * factor), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / 400))

    def name(label) -> str:
        label = int(label)
        return class_names[label] if 0 <= label < len(class_names) else str(label)

    t_boxes, t_labels = _rows(truth_boxes, 4) * factor, _rows(truth_labels, 1)
    for box, label in zip(t_boxes, t_labels):
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=TRUTH_COLOUR, width=width)
        draw.text((box[0] + 2, box[3] + 1), name(label), fill=TRUTH_COLOUR)
    p_boxes, p_labels = _rows(boxes, 4) * factor, _rows(labels, 1)
    p_scores = _rows(scores, 1) if scores is not None else np.full(len(p_boxes), np.nan)
    for box, label, score in zip(p_boxes, p_labels, p_scores):
        colour = class_colour(int(label))
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=colour, width=width)
        text = name(label) if np.isnan(score) else f"{name(label)} {score:.2f}"
        draw.text((box[0] + 2, max(0, box[1] - 11)), text, fill=colour)
    if title:
        draw.text((4, 4), title, fill=(255, 255, 0))
    return picture


def write_detection_overlay(path: str, image, **kwargs) -> str:
    """:func:`draw_detections` saved as PNG at ``path`` (folders created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    draw_detections(image, **kwargs).save(path)
    return path


def grid(pictures: Sequence[Image.Image], columns: int = 2, gap: int = 4) -> Image.Image:
    """Tile pictures row by row on a black background (each cell as large as the largest picture)."""
    if not pictures:
        raise ValueError("no pictures to tile")
    cell_w = max(p.size[0] for p in pictures)
    cell_h = max(p.size[1] for p in pictures)
    columns = max(1, min(columns, len(pictures)))
    rows = -(-len(pictures) // columns)
    canvas = Image.new("RGB", (columns * cell_w + (columns - 1) * gap, rows * cell_h + (rows - 1) * gap))
    for k, picture in enumerate(pictures):
        canvas.paste(picture, ((k % columns) * (cell_w + gap), (k // columns) * (cell_h + gap)))
    return canvas
