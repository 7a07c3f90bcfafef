"""The RSNA Pneumonia Detection Challenge (2018) metric and submission format.

The challenge's evaluation page defines the score of one image at an IoU threshold ``t`` as
``TP(t) / (TP(t) + FP(t) + FN(t))``: predicted boxes are taken in descending order of confidence, and a
prediction is a hit (true positive) when its IoU with a not yet matched ground-truth box is *greater than* ``t``;
unmatched predictions are false positives, unmatched ground-truth boxes false negatives. The image's score is the
mean over ``t`` in 0.40, 0.45, ..., 0.75, and the challenge score is the mean over images, where

- an image without ground-truth boxes and without predictions is left out of the mean;
- an image without ground-truth boxes but with any prediction scores 0 (and counts);
- an image with ground-truth boxes but no prediction scores 0.

Matching: each prediction, in confidence order, takes the unmatched ground-truth box it overlaps most (above
``t``). The widely used public kernel ("mean average precision metric" by Yicheng Chen) loops over ground-truth
boxes first and accepts IoU >= ``t``; the two agree except for exact ties and for crowded overlapping boxes, which
the challenge page says do not occur in its data.

The submission file has a header ``patientId,PredictionString`` and one row per test image; the prediction string
is a space-separated list of ``confidence x y width height`` groups (top-left corner and size in pixels of the
1024 x 1024 image), empty for an image without predictions.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from ignite.metrics import Metric

from ..data.errors import DataError
from .detection import box_iou

RSNA_IOU_THRESHOLDS = tuple(round(0.40 + 0.05 * k, 2) for k in range(8))  # 0.40 ... 0.75
SUBMISSION_COLUMNS = ("patientId", "PredictionString")
# score thresholds and NMS IoUs tried on validation when tuning the post-processing
SCORE_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05 ... 0.95
NMS_IOUS = (0.1, 0.2, 0.3, 0.4, 0.5)


def _boxes(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value if value is not None else [], dtype=np.float64)
    return array.reshape(-1, 4) if array.size else np.zeros((0, 4))


def _scores(value, n: int) -> np.ndarray:
    if value is None:
        return np.ones(n)
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if len(array) != n:
        raise ValueError(f"{n} predicted boxes but {len(array)} scores")
    return array


def image_precisions(pred_boxes, pred_scores, true_boxes, thresholds: Sequence[float] = RSNA_IOU_THRESHOLDS) -> list[float] | None:
    """``TP / (TP + FP + FN)`` at each IoU threshold for one image, or None when the image is left out.

    Boxes are ``[x_min, y_min, x_max, y_max]``; ``pred_scores`` orders the predictions (None: as given).
    """
    pred, truth = _boxes(pred_boxes), _boxes(true_boxes)
    scores = _scores(pred_scores, len(pred))
    if len(truth) == 0 and len(pred) == 0:
        return None
    if len(truth) == 0 or len(pred) == 0:
        return [0.0] * len(thresholds)
    order = np.argsort(-scores, kind="stable")
    ious = box_iou(pred[order], truth)
    out = []
    for t in thresholds:
        taken = np.zeros(len(truth), dtype=bool)
        tp = 0
        for row in ious:
            candidates = np.where(~taken & (row > t), row, -1.0)
            best = int(np.argmax(candidates))
            if candidates[best] > t:
                taken[best] = True
                tp += 1
        fp, fn = len(pred) - tp, len(truth) - tp
        out.append(tp / (tp + fp + fn))
    return out


def image_score(pred_boxes, pred_scores, true_boxes, thresholds: Sequence[float] = RSNA_IOU_THRESHOLDS) -> float | None:
    """The challenge score of one image: the mean of :func:`image_precisions` (None when the image is left out)."""
    precisions = image_precisions(pred_boxes, pred_scores, true_boxes, thresholds)
    return None if precisions is None else float(np.mean(precisions))


def _get(item: Mapping, key: str):
    return item.get(key) if isinstance(item, Mapping) else None


def rsna_score(
    predictions: Sequence[Mapping],
    targets: Sequence[Mapping],
    score_threshold: float = 0.0,
    thresholds: Sequence[float] = RSNA_IOU_THRESHOLDS,
) -> dict:
    """The challenge score over a data set.

    ``predictions``: per image ``{"boxes": (N, 4), "scores": (N,)}``; ``targets``: per image ``{"boxes": (M, 4)}``
    (same order). Predictions scoring below ``score_threshold`` are dropped first. Returns ``{"score", "images"
    (counted), "left_out" (no truth, no prediction), "per_threshold" (mean TP/(TP+FP+FN) at each IoU), "image_scores"
    (per image, None where left out)}``; ``score`` is NaN when every image is left out.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} images")
    per_image: list[float | None] = []
    rows = []
    for prediction, target in zip(predictions, targets):
        boxes = _boxes(_get(prediction, "boxes"))
        scores = _scores(_get(prediction, "scores"), len(boxes))
        keep = scores >= score_threshold
        precisions = image_precisions(boxes[keep], scores[keep], _get(target, "boxes"), thresholds)
        per_image.append(None if precisions is None else float(np.mean(precisions)))
        if precisions is not None:
            rows.append(precisions)
    counted = [s for s in per_image if s is not None]
    return {
        "score": float(np.mean(counted)) if counted else float("nan"),
        "images": len(counted),
        "left_out": len(per_image) - len(counted),
        "iou_thresholds": [float(t) for t in thresholds],
        "per_threshold": [float(v) for v in np.mean(rows, axis=0)] if rows else [],
        "image_scores": per_image,
    }


def nms(prediction: Mapping, iou_threshold: float) -> dict[str, np.ndarray]:
    """Non-maximum suppression of one image's boxes at ``iou_threshold`` (IoU > threshold suppresses), score-sorted.

    Other per-box entries of ``prediction`` (labels, masks) are kept in step with the boxes.
    """
    import torch
    from torchvision.ops import nms as tv_nms

    boxes = _boxes(prediction.get("boxes"))
    scores = _scores(prediction.get("scores"), len(boxes))
    if iou_threshold >= 1.0 or len(boxes) == 0:
        keep = np.argsort(-scores, kind="stable")
    else:
        keep = tv_nms(torch.as_tensor(boxes), torch.as_tensor(scores), float(iou_threshold)).numpy()
    out = {}
    for key, value in prediction.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        value = np.asarray(value)
        out[key] = value[keep] if value.ndim and len(value) == len(boxes) else value
    out["boxes"], out["scores"] = boxes[keep], scores[keep]
    return out


def postprocess(prediction: Mapping, score_threshold: float, nms_iou: float = 1.0) -> dict[str, np.ndarray]:
    """NMS at ``nms_iou`` (1.0: none), then keep the boxes scoring at least ``score_threshold``."""
    out = nms(prediction, nms_iou)
    keep = out["scores"] >= score_threshold
    n = len(keep)
    return {k: (v[keep] if np.ndim(v) and len(v) == n else v) for k, v in out.items()}


def tune_postprocessing(
    predictions: Sequence[Mapping],
    targets: Sequence[Mapping],
    score_thresholds: Iterable[float] = SCORE_THRESHOLDS,
    nms_ious: Iterable[float] = NMS_IOUS,
) -> dict:
    """The score threshold and NMS IoU that maximise the challenge score on (validation) ``predictions``.

    ``predictions`` should come from the detector with its own NMS loose (high IoU) so that each tighter NMS tried
    here acts on nearly the raw boxes. A small validation set often gives the best score on a plateau of settings;
    the choice is then the middle of the plateau (the lower median NMS IoU among the best, then the lower median
    score threshold at that IoU), which is less likely to sit on the edge of what generalises. Returns
    ``{"score_threshold", "nms_iou", "score", "table": [{"nms_iou", "score_threshold", "score"}]}``.
    """
    score_thresholds, nms_ious = sorted(float(s) for s in score_thresholds), sorted(float(n) for n in nms_ious)
    if not score_thresholds or not nms_ious:
        raise ValueError("give at least one score threshold and one NMS IoU")
    table = []
    for iou in nms_ious:
        suppressed = [nms(p, iou) for p in predictions]
        for threshold in score_thresholds:
            result = rsna_score(suppressed, targets, score_threshold=threshold)
            score = result["score"]
            table.append({"nms_iou": iou, "score_threshold": threshold, "score": None if math.isnan(score) else score})
    best_score = max(-1.0 if r["score"] is None else r["score"] for r in table)
    tied = [r for r in table if r["score"] is not None and r["score"] >= best_score - 1e-12] or table

    def lower_median(values: list[float]) -> float:
        values = sorted(set(values))
        return values[(len(values) - 1) // 2]

    iou = lower_median([r["nms_iou"] for r in tied])
    threshold = lower_median([r["score_threshold"] for r in tied if r["nms_iou"] == iou])
    best = next(r for r in tied if r["nms_iou"] == iou and r["score_threshold"] == threshold)
    return {"score_threshold": threshold, "nms_iou": iou, "score": best["score"], "table": table}


# --- submission file ----------------------------------------------------------------------------------------------


def prediction_string(boxes, scores, decimals: int = 1) -> str:
    """``confidence x y width height`` groups of one image, in descending confidence (empty without boxes)."""
    b = _boxes(boxes)
    s = _scores(scores, len(b))
    parts = []
    for k in np.argsort(-s, kind="stable"):
        x0, y0, x1, y1 = b[k]
        parts.append(f"{s[k]:.4f} {x0:.{decimals}f} {y0:.{decimals}f} {x1 - x0:.{decimals}f} {y1 - y0:.{decimals}f}")
    return " ".join(parts)


def parse_prediction_string(text: str, path: str = "<string>", row: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes [x_min, y_min, x_max, y_max], scores)`` from one PredictionString."""
    fields = (text or "").split()
    if len(fields) % 5:
        raise DataError(path, f"PredictionString must hold groups of 5 numbers (confidence x y width height), got {len(fields)}", row=row)
    try:
        values = np.asarray([float(f) for f in fields], dtype=np.float64).reshape(-1, 5)
    except ValueError as exc:
        raise DataError(path, f"PredictionString holds a value that is not a number: {text!r}", row=row) from exc
    if np.any(values[:, 3:5] <= 0) or not np.all(np.isfinite(values)):
        raise DataError(path, "PredictionString has a box without positive, finite width and height", row=row)
    boxes = np.concatenate([values[:, 1:3], values[:, 1:3] + values[:, 3:5]], axis=1)
    return boxes, values[:, 0]


def write_submission(path: str, rows: Iterable[tuple[str, object, object]]) -> str:
    """Write the challenge CSV: ``rows`` are ``(patientId, boxes, scores)``; folders are created."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(SUBMISSION_COLUMNS)
        for patient, boxes, scores in rows:
            writer.writerow([patient, prediction_string(boxes, scores)])
    return path


def read_submission(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{patientId: (boxes, scores)}`` from a submission CSV, checked (one row per patient)."""
    from ..data.rsna import read_csv

    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for row, values in read_csv(path, SUBMISSION_COLUMNS):
        pid = values["patientId"]
        if pid in out:
            raise DataError(path, f"patient {pid} has more than one row", row=row)
        out[pid] = parse_prediction_string(values["PredictionString"], path, row)
    return out


def score_submission(path: str, truth: Mapping[str, object], thresholds: Sequence[float] = RSNA_IOU_THRESHOLDS) -> dict:
    """Score a submission CSV against ``truth`` (``{patientId: boxes}``); every truth patient needs a row."""
    submitted = read_submission(path)
    missing = sorted(set(truth) - set(submitted))
    if missing:
        raise DataError(path, f"{len(missing)} patient(s) have no row, e.g. {missing[0]}")
    patients = list(truth)
    predictions = [{"boxes": submitted[p][0], "scores": submitted[p][1]} for p in patients]
    return rsna_score(predictions, [{"boxes": truth[p]} for p in patients], thresholds=thresholds)


# --- ignite metric ------------------------------------------------------------------------------------------------


class RSNAScore(Metric):
    """The challenge score over an evaluation epoch, as an ignite metric (e.g. the key metric of validation).

    ``output_transform`` gives ``(predictions, targets)`` lists of per-image dicts (what
    :class:`chestzoo.engines.detection.DetectionEvaluator` puts in ``pred`` and ``label``). With ``tune`` the score is
    the best over ``score_thresholds`` at NMS IoU ``nms_iou`` (the post-processing evaluation would choose),
    otherwise the score at ``score_threshold``. An epoch where every image is left out reports 0.
    """

    def __init__(self, tune: bool = True, score_threshold: float = 0.5, nms_iou: float = 0.3,
                 score_thresholds: Sequence[float] = SCORE_THRESHOLDS,
                 output_transform=lambda output: (output["pred"], output["label"]), device="cpu"):
        self.tune, self.score_threshold, self.nms_iou = bool(tune), float(score_threshold), float(nms_iou)
        self.score_thresholds = [float(s) for s in score_thresholds]
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._predictions: list = []
        self._targets: list = []

    def update(self, output) -> None:
        predictions, targets = output
        if targets is None:
            raise ValueError("the RSNA score needs ground-truth boxes: the evaluated items have no 'box'")
        for prediction, target in zip(predictions, targets):
            self._predictions.append(nms({"boxes": prediction["boxes"], "scores": prediction["scores"]}, self.nms_iou))
            self._targets.append({"boxes": _boxes(target["boxes"])})

    def compute(self) -> float:
        if self.tune:
            score = tune_postprocessing(self._predictions, self._targets, self.score_thresholds, [1.0])["score"]
        else:
            score = rsna_score(self._predictions, self._targets, score_threshold=self.score_threshold)["score"]
        return 0.0 if score is None or math.isnan(score) else float(score)
