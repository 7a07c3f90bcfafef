"""Weakly supervised localisation as in Wang et al. 2017: heatmap -> boxes, IoBB, accuracy at T(IoBB).

IoBB (intersection over the detected box) = area(predicted box & ground-truth box) / area(predicted box). A ground
truth box counts as localised at threshold T when some predicted box of its class has IoBB > T; predicted boxes that
localise no ground truth box at T are false positives. Boxes are ``[x_min, y_min, x_max, y_max]`` in pixels, as in
the datalists.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

IOBB_THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)


def _area(box) -> float:
    return max(0.0, float(box[2]) - float(box[0])) * max(0.0, float(box[3]) - float(box[1]))


def intersection(a, b) -> float:
    return _area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])


def iobb(predicted, truth) -> float:
    """Intersection over the predicted box's area (0 for an empty predicted box)."""
    area = _area(predicted)
    return intersection(predicted, truth) / area if area > 0 else 0.0


def iou(a, b) -> float:
    inter = intersection(a, b)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def normalize_heatmap(heatmap) -> np.ndarray:
    """Min-max scale a heatmap to [0, 1] (a constant map becomes all zeros)."""
    h = np.asarray(heatmap, dtype=np.float64)
    low, high = float(h.min()), float(h.max())
    return (h - low) / (high - low) if high > low else np.zeros_like(h)


def boxes_from_heatmap(heatmap, threshold: float = 0.5, max_boxes: int | None = None) -> list[list[float]]:
    """Boxes around the connected regions where the min-max normalised ``heatmap`` (H, W) reaches ``threshold``.

    Sorted by each region's summed heat, strongest first; ``max_boxes`` keeps only the first ones.
    """
    h = normalize_heatmap(heatmap)
    if h.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {h.shape}")
    regions, count = ndimage.label(h >= threshold) if h.max() > 0 else (None, 0)
    if count == 0:
        return []
    heat = ndimage.sum_labels(h, regions, index=np.arange(1, count + 1))
    slices = ndimage.find_objects(regions)
    boxes = []
    for index in np.argsort(-heat, kind="stable"):
        ys, xs = slices[index]
        boxes.append([float(xs.start), float(ys.start), float(xs.stop), float(ys.stop)])
    return boxes[:max_boxes] if max_boxes is not None else boxes


def scale_boxes(boxes: Iterable[Sequence[float]], from_size: Sequence[int], to_size: Sequence[int]) -> list[list[float]]:
    """Map boxes between image sizes given as (H, W)."""
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in boxes]


def localization_accuracy(cases: Iterable[dict], thresholds: Sequence[float] = IOBB_THRESHOLDS) -> dict:
    """Accuracy and average false positives per class at each IoBB threshold.

    ``cases``: one dict per (image, class) with ``"label"`` (class name), ``"truth"`` (list of ground-truth boxes)
    and ``"predicted"`` (list of predicted boxes for that class in that image).

    Returns ``{"thresholds": [...], "per_class": {name: {"n": boxes, "accuracy": [...], "afp": [...]}},
    "overall": {"n": ..., "accuracy": [...], "afp": [...]}}`` with one entry per threshold; ``afp`` is the mean number
    of false-positive boxes per (image, class) case.
    """
    hits: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(thresholds)))
    false_pos: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(thresholds)))
    n_boxes: dict[str, int] = defaultdict(int)
    n_cases: dict[str, int] = defaultdict(int)
    for case in cases:
        name, truth, predicted = case["label"], case["truth"], case["predicted"]
        n_boxes[name] += len(truth)
        n_cases[name] += 1
        overlap = np.array([[iobb(p, t) for t in truth] for p in predicted]).reshape(len(predicted), len(truth))
        for k, threshold in enumerate(thresholds):
            good = overlap > threshold
            hits[name][k] += good.any(axis=0).sum()
            false_pos[name][k] += (~good.any(axis=1)).sum()

    def summary(names: list[str]) -> dict:
        boxes = sum(n_boxes[n] for n in names)
        cases_n = sum(n_cases[n] for n in names)
        acc = sum(hits[n] for n in names) / boxes if boxes else np.full(len(thresholds), np.nan)
        afp = sum(false_pos[n] for n in names) / cases_n if cases_n else np.full(len(thresholds), np.nan)
        return {"n": boxes, "accuracy": [float(a) for a in acc], "afp": [float(a) for a in afp]}

    names = sorted(n_boxes)
    return {
        "thresholds": [float(t) for t in thresholds],
        "per_class": {n: summary([n]) for n in names},
        "overall": summary(names),
    }
