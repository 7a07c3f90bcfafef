"""Detection metrics: COCO-style average precision per class, score-threshold sweeps, Wang-style localisation.

Inputs are per-image lists, in the same image order: predictions ``{"boxes": (N, 4), "labels": (N,), "scores":
(N,)}`` and ground truth ``{"boxes": (M, 4), "labels": (M,)}`` with boxes ``[x_min, y_min, x_max, y_max]`` in
pixels and 0-based class indices (numpy arrays, tensors or lists).

Average precision follows the COCO evaluation (pycocotools ``COCOeval``, bbox, area "all", 100 detections per
image and class, no crowd boxes) at one IoU threshold: detections of a class are matched greedily in descending
score order, each to the unmatched ground-truth box of highest IoU at or above the threshold; precision is made
monotone and read at the 101 recall points 0, 0.01, ..., 1. Classes without ground truth have no AP (NaN) and are
left out of the mean, as COCO does. ``tests/test_detection_metrics.py`` checks the numbers against pycocotools.

Because matching runs in score order, the matches of the detections above any score threshold are the same as in
the full matching; :func:`match_detections` is therefore computed once and serves AP, precision/recall/F1 at every
threshold of a sweep, and the threshold choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .localization import localization_accuracy

COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
# Wang et al. 2017 (ChestX-ray8), Table 4: localisation accuracy is reported at these T(IoBB).
WANG_IOBB_THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)
SWEEP_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 9))  # 0.05 ... 0.40, as in the DLIA 2025 seed


def _array(value, shape_tail: tuple[int, ...], dtype) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=dtype)
    if array.size == 0:
        return np.zeros((0, *shape_tail), dtype=dtype)
    return array.reshape(-1, *shape_tail)


def as_numpy(item: dict, scores: bool = True) -> dict[str, np.ndarray]:
    """One image's boxes / labels (/ scores) as numpy arrays of the right shapes (empty ones included)."""
    out = {"boxes": _array(item.get("boxes", []), (4,), np.float64), "labels": _array(item.get("labels", []), (), np.int64)}
    if scores:
        out["scores"] = _array(item.get("scores", []), (), np.float64)
        if len(out["scores"]) != len(out["boxes"]):
            raise ValueError(f"{len(out['boxes'])} boxes but {len(out['scores'])} scores")
    if len(out["labels"]) != len(out["boxes"]):
        raise ValueError(f"{len(out['boxes'])} boxes but {len(out['labels'])} labels")
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of ``[x_min, y_min, x_max, y_max]`` boxes (continuous coordinates, no +1)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass
class ClassMatches:
    """All detections of one class over a dataset, in COCO's accumulation order, and whether each matched."""

    scores: np.ndarray  # (D,) descending
    matched: np.ndarray  # (D,) bool
    n_truth: int
    image: np.ndarray | None = None  # (D,) index of each detection's image, for bootstrap resamples
    truth_per_image: np.ndarray | None = None  # (images,) ground-truth boxes of the class in each image


def _match_image(boxes: np.ndarray, truth: np.ndarray, iou_threshold: float) -> np.ndarray:
    """COCO's greedy matching of score-sorted ``boxes`` to ``truth``: which detections found a box."""
    matched = np.zeros(len(boxes), dtype=bool)
    if len(boxes) == 0 or len(truth) == 0:
        return matched
    ious = box_iou(boxes, truth)
    taken = np.zeros(len(truth), dtype=bool)
    for d in range(len(boxes)):
        best, m = min(iou_threshold, 1 - 1e-10), -1
        for g in range(len(truth)):
            # like COCOeval: skip taken boxes, keep the last box of the highest IoU >= threshold
            if taken[g] or ious[d, g] < best:
                continue
            best, m = ious[d, g], g
        if m >= 0:
            matched[d], taken[m] = True, True
    return matched


def match_detections(
    predictions: Sequence[dict], targets: Sequence[dict], num_classes: int, iou_threshold: float = 0.5, max_detections: int = 100
) -> list[ClassMatches]:
    """Per class: every detection's score and whether it matched a ground-truth box at ``iou_threshold``."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} images")
    scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    matched: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    truth_per_image = np.zeros((num_classes, len(targets)), dtype=int)
    for i, (prediction, target) in enumerate(zip(predictions, targets)):
        p, t = as_numpy(prediction), as_numpy(target, scores=False)
        for label in np.concatenate([p["labels"], t["labels"]]):
            if not 0 <= label < num_classes:
                raise ValueError(f"class index {label} outside 0..{num_classes - 1}")
        for c in range(num_classes):
            truth = t["boxes"][t["labels"] == c]
            truth_per_image[c, i] = len(truth)
            keep = p["labels"] == c
            order = np.argsort(-p["scores"][keep], kind="mergesort")[:max_detections]
            boxes, s = p["boxes"][keep][order], p["scores"][keep][order]
            scores[c].append(s)
            matched[c].append(_match_image(boxes, truth, iou_threshold))
    out = []
    for c in range(num_classes):
        s = np.concatenate(scores[c]) if scores[c] else np.zeros(0)
        m = np.concatenate(matched[c]) if matched[c] else np.zeros(0, dtype=bool)
        image = np.repeat(np.arange(len(scores[c])), [len(x) for x in scores[c]]).astype(np.int64)
        order = np.argsort(-s, kind="mergesort")
        out.append(ClassMatches(s[order], m[order], int(truth_per_image[c].sum()), image[order], truth_per_image[c]))
    return out


def resample_matches(matches: Sequence[ClassMatches], counts: np.ndarray) -> list[ClassMatches]:
    """The matches of a bootstrap resample in which image ``i`` was drawn ``counts[i]`` times.

    Matching is within an image, so a resample needs no new matching: each image's detections and boxes count as
    often as it was drawn (repeating keeps the score order).
    """
    out = []
    for m in matches:
        times = counts[m.image]
        out.append(ClassMatches(np.repeat(m.scores, times), np.repeat(m.matched, times), int(counts @ m.truth_per_image)))
    return out


def detection_intervals(matches: Sequence[ClassMatches], class_names: Sequence[str], thresholds: dict | None = None,
                        groups=None, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Bootstrap 95% intervals of mAP, each class's AP and, per entry of ``thresholds`` (name -> one score
    threshold per class), the F1 at those thresholds; resampling the patients ``groups`` names (one id per image),
    else images. Returns ``{"mAP": interval, "AP": {class: interval}, name: interval, ...}``."""
    from .bootstrap import bootstrap_interval

    names = list(class_names)
    thresholds = thresholds or {}
    n_images = len(matches[0].truth_per_image) if matches else 0

    def metric(index):
        resampled = resample_matches(matches, np.bincount(index, minlength=n_images))
        ap = [average_precision(m) for m in resampled]
        valid = [a for a in ap if not math.isnan(a)]
        out = {"mAP": float(np.mean(valid)) if valid else None, **{("AP", n): a for n, a in zip(names, ap)}}
        out.update({key: scores_at_threshold(resampled, t)["f1"] for key, t in thresholds.items()})
        return out

    ci = bootstrap_interval(metric, np.arange(n_images), groups=groups, n_resamples=n_resamples, seed=seed)
    return {"mAP": ci["mAP"], "AP": {n: ci[("AP", n)] for n in names}, **{key: ci[key] for key in thresholds}}


def average_precision(matches: ClassMatches) -> float:
    """COCO 101-point interpolated AP of one class (NaN without ground truth)."""
    if matches.n_truth == 0:
        return float("nan")
    if len(matches.scores) == 0:
        return 0.0
    tp = np.cumsum(matches.matched, dtype=np.float64)
    fp = np.cumsum(~matches.matched, dtype=np.float64)
    recall = tp / matches.n_truth
    precision = tp / (tp + fp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone: best precision at this recall or beyond
    index = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
    sampled = np.where(index < len(precision), precision[np.minimum(index, len(precision) - 1)], 0.0)
    return float(sampled.mean())


def mean_average_precision(
    predictions: Sequence[dict],
    targets: Sequence[dict],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    max_detections: int = 100,
) -> dict:
    """``{"mAP": mean over classes with ground truth, "AP": {class: AP or None}, "n_truth": {class: boxes}}``."""
    matches = match_detections(predictions, targets, len(class_names), iou_threshold, max_detections)
    ap = [average_precision(m) for m in matches]
    valid = [a for a in ap if not np.isnan(a)]
    return {
        "iou_threshold": float(iou_threshold),
        "mAP": float(np.mean(valid)) if valid else float("nan"),
        "AP": {name: (None if np.isnan(a) else a) for name, a in zip(class_names, ap)},
        "n_truth": {name: m.n_truth for name, m in zip(class_names, matches)},
    }


def _prf(tp: float, n_pred: float, n_truth: float) -> dict:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_truth if n_truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": int(tp), "fp": int(n_pred - tp), "fn": int(n_truth - tp)}


def scores_at_threshold(matches: Sequence[ClassMatches], thresholds: Sequence[float]) -> dict:
    """Precision, recall and F1 (over all classes, and per class) keeping detections scoring >= the class's threshold."""
    per_class = []
    for m, threshold in zip(matches, thresholds):
        keep = m.scores >= threshold
        per_class.append((float(m.matched[keep].sum()), float(keep.sum()), float(m.n_truth)))
    total = _prf(sum(c[0] for c in per_class), sum(c[1] for c in per_class), sum(c[2] for c in per_class))
    total["per_class"] = [_prf(*c) for c in per_class]
    return total


def sweep_thresholds(
    predictions: Sequence[dict],
    targets: Sequence[dict],
    class_names: Sequence[str],
    thresholds: Sequence[float] = SWEEP_THRESHOLDS,
    iou_threshold: float = 0.5,
) -> dict:
    """Precision / recall / F1 / mAP at each score threshold, and the thresholds that maximise F1.

    ``threshold``: the one global threshold with the best F1 over all classes (the seed's choice, ties to the
    lower threshold); ``per_class``: each class's own best-F1 threshold (a class without validation boxes, or whose
    F1 is 0 at every threshold, keeps the global one). The result is JSON-able and is what inference reads back.
    """
    if not thresholds:
        raise ValueError("give at least one threshold to sweep")
    names = list(class_names)
    matches = match_detections(predictions, targets, len(names), iou_threshold)
    rows = []
    for t in thresholds:
        row = scores_at_threshold(matches, [t] * len(names))
        kept = [ClassMatches(m.scores[m.scores >= t], m.matched[m.scores >= t], m.n_truth) for m in matches]
        aps = [average_precision(k) for k in kept]
        valid = [a for a in aps if not np.isnan(a)]
        rows.append({"threshold": float(t), "precision": row["precision"], "recall": row["recall"], "f1": row["f1"],
                     "mAP": float(np.mean(valid)) if valid else float("nan"),
                     "per_class_f1": {n: c["f1"] for n, c in zip(names, row["per_class"])}})
    best = max(rows, key=lambda r: (r["f1"], -r["threshold"]))
    per_class = {}
    for k, name in enumerate(names):
        own = max(rows, key=lambda r: (r["per_class_f1"][name], -r["threshold"]))
        # no validation box, or none found at any threshold: nothing to tune on, keep the global threshold
        per_class[name] = own["threshold"] if matches[k].n_truth and own["per_class_f1"][name] > 0 else best["threshold"]
    return {
        "criterion": f"F1 at IoU {iou_threshold:g}",
        "iou_threshold": float(iou_threshold),
        "threshold": best["threshold"],
        "per_class": per_class,
        "classes": names,
        "sweep": rows,
    }


def filter_by_score(prediction: dict, thresholds: Sequence[float] | float) -> dict[str, np.ndarray]:
    """Keep the detections whose score reaches their class's threshold (one number: the same for every class)."""
    p = as_numpy(prediction)
    if np.ndim(thresholds) == 0:
        keep = p["scores"] >= float(thresholds)
    else:
        t = np.asarray(thresholds, dtype=np.float64)
        keep = p["scores"] >= t[p["labels"]] if len(p["labels"]) else np.zeros(0, dtype=bool)
    return {key: value[keep] for key, value in p.items()}


def localization_report(
    predictions: Sequence[dict],
    targets: Sequence[dict],
    class_names: Sequence[str],
    score_thresholds: Sequence[float] | float = 0.0,
    thresholds: Sequence[float] = WANG_IOBB_THRESHOLDS,
) -> dict:
    """Wang et al. 2017 localisation accuracy and average false positives at each T(IoBB).

    A ground-truth box is localised at T when a detection of its class in the same image, kept by the score
    threshold, has IoBB > T (intersection over the detection's own area). Cases are the (image, class) pairs with
    ground truth, as in Wang et al.'s evaluation on the boxed images; ``afp`` is the mean number of kept detections
    per case that localise no box. Uses :func:`chestzoo.metrics.localization.localization_accuracy`.
    """
    cases = []
    for prediction, target in zip(predictions, targets):
        p, t = filter_by_score(prediction, score_thresholds), as_numpy(target, scores=False)
        for c in sorted(set(t["labels"].tolist())):
            cases.append({"label": class_names[c], "truth": t["boxes"][t["labels"] == c].tolist(),
                          "predicted": p["boxes"][p["labels"] == c].tolist()})
    return localization_accuracy(cases, thresholds)
