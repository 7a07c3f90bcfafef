"""COCO-style AP agrees with pycocotools; threshold sweeps and Wang-style localisation count what they claim."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou as tv_box_iou

from chestzoo.metrics.detection import (
    box_iou,
    filter_by_score,
    localization_report,
    match_detections,
    mean_average_precision,
    scores_at_threshold,
    sweep_thresholds,
)

NAMES = ["a", "b", "c", "d"]


def random_case(seed: int, images: int = 25, classes: int = 4):
    """Ground truth and noisy predictions: jittered true boxes, wrong labels, false positives, empty images, ties.

    Boxes stay well formed (x_max > x_min): COCOeval would silently ignore a detection of negative area.
    """
    rng = np.random.default_rng(seed)
    predictions, targets = [], []
    for _ in range(images):
        m = int(rng.integers(0, 4))
        corner = rng.uniform(0, 80, (m, 2))
        truth = np.concatenate([corner, corner + rng.uniform(4, 40, (m, 2))], axis=1)
        labels = rng.integers(0, classes - 1, m)  # the last class never has ground truth
        boxes, plabels, scores = [], [], []
        for k in range(m):
            for _ in range(int(rng.integers(0, 3))):  # duplicates too
                jittered = truth[k] + rng.normal(0, 3, 4)
                boxes.append(np.concatenate([np.minimum(jittered[:2], jittered[2:] - 1), np.maximum(jittered[2:], jittered[:2] + 1)]))
                plabels.append(labels[k] if rng.random() < 0.85 else rng.integers(0, classes))
                scores.append(rng.random())
        for _ in range(int(rng.integers(0, 4))):
            c = rng.uniform(0, 80, 2)
            boxes.append(np.concatenate([c, c + rng.uniform(4, 40, 2)]))
            plabels.append(rng.integers(0, classes))
            scores.append(rng.random() * 0.8)
        predictions.append({"boxes": np.asarray(boxes).reshape(-1, 4), "labels": np.asarray(plabels, dtype=int),
                            "scores": np.round(np.asarray(scores), 1)})  # rounded: many ties in score
        targets.append({"boxes": truth, "labels": labels})
    return predictions, targets


def pycocotools_ap(predictions, targets, classes: int, iou: float = 0.5) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {"images": [{"id": i + 1, "width": 256, "height": 256} for i in range(len(targets))],
          "categories": [{"id": c + 1, "name": str(c)} for c in range(classes)], "annotations": []}
    for i, t in enumerate(targets):
        for b, label in zip(t["boxes"], t["labels"]):
            w, h = b[2] - b[0], b[3] - b[1]
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                                      "bbox": [float(b[0]), float(b[1]), float(w), float(h)], "area": float(w * h), "iscrowd": 0})
    detections = [{"image_id": i + 1, "category_id": int(label) + 1, "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                   "score": float(s)} for i, p in enumerate(predictions) for b, label, s in zip(p["boxes"], p["labels"], p["scores"])]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        evaluation = COCOeval(coco_gt, coco_dt, "bbox")
        evaluation.params.iouThrs = np.array([iou])
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][0, :, :, 0, -1]  # (recall points, classes) for area "all", 100 dets
    return [float(precision[:, c].mean()) if (precision[:, c] > -1).all() else float("nan") for c in range(classes)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("iou", [0.5, 0.75])
def test_average_precision_agrees_with_pycocotools(seed, iou):
    predictions, targets = random_case(seed)
    ours = mean_average_precision(predictions, targets, NAMES, iou_threshold=iou)
    theirs = pycocotools_ap(predictions, targets, len(NAMES), iou)
    for name, expected in zip(NAMES, theirs):
        if np.isnan(expected):
            assert ours["AP"][name] is None
        else:
            assert ours["AP"][name] == pytest.approx(expected, abs=1e-12)
    assert ours["mAP"] == pytest.approx(np.nanmean(theirs), abs=1e-12)
    assert ours["AP"]["d"] is None, "a class without ground truth has no AP and stays out of the mean"


def test_average_precision_by_hand():
    truth = [{"boxes": [[0, 0, 10, 10]], "labels": [0]}, {"boxes": [[20, 20, 40, 40]], "labels": [0]}]
    perfect = [{"boxes": [[0, 0, 10, 10]], "labels": [0], "scores": [0.9]}, {"boxes": [[20, 20, 40, 40]], "labels": [0], "scores": [0.8]}]
    assert mean_average_precision(perfect, truth, ["x"])["mAP"] == pytest.approx(1.0)
    # a false positive scored above both true positives: precision 1/2 at recall 1/2, 2/3 at recall 1
    worse = [{"boxes": [[0, 0, 10, 10], [50, 50, 60, 60]], "labels": [0, 0], "scores": [0.7, 0.95]},
             {"boxes": [[20, 20, 40, 40]], "labels": [0], "scores": [0.6]}]
    assert mean_average_precision(worse, truth, ["x"])["mAP"] == pytest.approx(2 / 3)
    # IoU just below the threshold is a miss; the right box with the wrong class is a miss
    shifted = [{"boxes": [[0, 0, 10, 10]], "labels": [0], "scores": [0.9]}, {"boxes": [[30, 20, 50, 40]], "labels": [0], "scores": [0.8]}]
    assert mean_average_precision(shifted, truth, ["x"])["AP"]["x"] == pytest.approx(0.5, abs=0.01)
    wrong_class = [{"boxes": [[0, 0, 10, 10]], "labels": [1], "scores": [0.9]}, {"boxes": [], "labels": [], "scores": []}]
    result = mean_average_precision(wrong_class, truth, ["x", "y"])
    assert result["AP"] == {"x": 0.0, "y": None}


def test_box_iou_matches_torchvision():
    rng = np.random.default_rng(3)
    a = np.concatenate([c := rng.uniform(0, 50, (7, 2)), c + rng.uniform(1, 30, (7, 2))], axis=1)
    b = np.concatenate([c := rng.uniform(0, 50, (5, 2)), c + rng.uniform(1, 30, (5, 2))], axis=1)
    np.testing.assert_allclose(box_iou(a, b), tv_box_iou(torch.as_tensor(a), torch.as_tensor(b)).numpy(), atol=1e-12)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 5)


def test_scores_at_a_threshold_equal_scoring_the_filtered_predictions():
    """Matching runs in score order, so counting the matches above t equals matching only what is above t."""
    predictions, targets = random_case(4)
    matches = match_detections(predictions, targets, len(NAMES))
    for t in (0.05, 0.3, 0.6):
        counted = scores_at_threshold(matches, [t] * len(NAMES))
        filtered = [filter_by_score(p, t) for p in predictions]
        direct = scores_at_threshold(match_detections(filtered, targets, len(NAMES)), [0.0] * len(NAMES))
        assert (counted["tp"], counted["fp"], counted["fn"]) == (direct["tp"], direct["fp"], direct["fn"])
        n_kept = sum(int((np.asarray(p["scores"]) >= t).sum()) for p in predictions)
        assert counted["tp"] + counted["fp"] == n_kept


def test_sweep_chooses_the_best_f1():
    truth = [{"boxes": [[0, 0, 10, 10]], "labels": [0]}, {"boxes": [[0, 0, 10, 10]], "labels": [1]}]
    # class 0: the true box scores 0.3, a false one 0.12 -> best threshold above 0.12; class 1: true box at 0.08
    predictions = [{"boxes": [[0, 0, 10, 10], [40, 40, 50, 50]], "labels": [0, 0], "scores": [0.3, 0.12]},
                   {"boxes": [[0, 0, 10, 10]], "labels": [1], "scores": [0.08]}]
    result = sweep_thresholds(predictions, truth, ["p", "q"])
    assert [row["threshold"] for row in result["sweep"]] == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4])
    assert result["per_class"]["p"] == pytest.approx(0.15)
    assert result["per_class"]["q"] == pytest.approx(0.05)
    assert result["threshold"] == pytest.approx(0.05)  # both true boxes kept (F1 0.8) beats one (F1 0.67)
    row = result["sweep"][0]
    assert (row["precision"], row["recall"]) == pytest.approx((2 / 3, 1.0))


def test_localization_counts_iobb_like_wang():
    truth = [{"boxes": [[10, 10, 30, 30], [50, 50, 60, 60]], "labels": [0, 1]}]
    # inside the first box: IoBB 1; a box 4x the area around the second: IoBB 0.25; plus a stray box of class 0
    predictions = [{"boxes": [[12, 12, 20, 20], [45, 45, 65, 65], [80, 80, 90, 90]], "labels": [0, 1, 0], "scores": [0.9, 0.9, 0.9]}]
    report = localization_report(predictions, truth, ["a", "b"], 0.5, thresholds=(0.1, 0.25, 0.5))
    assert report["per_class"]["a"]["accuracy"] == [1.0, 1.0, 1.0]
    assert report["per_class"]["b"]["accuracy"] == [1.0, 0.0, 0.0]  # correct means IoBB strictly above T
    assert report["per_class"]["a"]["afp"] == [1.0, 1.0, 1.0]  # the stray box
    # below the score threshold nothing is kept
    assert localization_report(predictions, truth, ["a", "b"], 0.95)["overall"]["accuracy"][0] == 0.0


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="outside"):
        mean_average_precision([{"boxes": [[0, 0, 1, 1]], "labels": [5], "scores": [1.0]}], [{"boxes": [], "labels": []}], NAMES)
    with pytest.raises(ValueError, match="predictions for"):
        mean_average_precision([], [{"boxes": [], "labels": []}], NAMES)
    with pytest.raises(ValueError, match="scores"):
        mean_average_precision([{"boxes": [[0, 0, 1, 1]], "labels": [0], "scores": []}], [{"boxes": [], "labels": []}], NAMES)
