"""The RSNA challenge metric on hand-worked cases, its empty-image rules, post-processing tuning and the CSV format."""

import math

import numpy as np
import pytest

from chestzoo.data.errors import DataError
from chestzoo.metrics.rsna import (
    RSNA_IOU_THRESHOLDS,
    image_precisions,
    image_score,
    nms,
    parse_prediction_string,
    postprocess,
    prediction_string,
    read_submission,
    rsna_score,
    score_submission,
    tune_postprocessing,
    write_submission,
)


def strip(x0, x1):
    """A box spanning x0..x1 and y 0..10: IoU between such boxes is the IoU of their x intervals."""
    return [x0, 0.0, x1, 10.0]


def test_thresholds_are_the_challenge_ones():
    assert RSNA_IOU_THRESHOLDS == (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)


def test_perfect_prediction_scores_one():
    box = [10, 20, 50, 70]
    assert image_score([box], [0.9], [box]) == 1.0


def test_iou_must_be_strictly_greater_than_the_threshold():
    # IoU exactly 0.5: a hit at 0.40 and 0.45 only, not at 0.50 ("greater than" on the challenge page)
    precisions = image_precisions([[0, 0, 10, 5]], [1.0], [[0, 0, 10, 10]])
    assert precisions == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert image_score([[0, 0, 10, 5]], [1.0], [[0, 0, 10, 10]]) == pytest.approx(0.25)


def test_missed_box_and_extra_box():
    truth = [[0, 0, 10, 10], [50, 50, 60, 60]]
    # one of two boxes found: TP 1, FN 1 -> 1/2 at every threshold
    assert image_score([[0, 0, 10, 10]], [0.9], truth) == pytest.approx(0.5)
    # the box found plus a false one far away: TP 1, FP 1 -> 1/2
    assert image_score([[0, 0, 10, 10], [80, 80, 90, 90]], [0.9, 0.8], truth[:1]) == pytest.approx(0.5)
    # TP 1, FP 1, FN 1 -> 1/3
    assert image_score([[0, 0, 10, 10], [80, 80, 90, 90]], [0.9, 0.8], truth) == pytest.approx(1 / 3)


def test_a_truth_box_is_matched_once():
    truth = [[0, 0, 10, 10]]
    # two identical predictions of one box: the second is a false positive
    assert image_score([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], truth) == pytest.approx(0.5)


def test_predictions_are_matched_in_descending_confidence():
    # T1 = x 1..11, T2 = x 2..12. A = 1.4..11.4 has IoU 0.923 with T1 and 0.887 with T2;
    # B = 0..10 has IoU 0.818 with T1 and 0.667 with T2.
    t1, t2, a, b = strip(1, 11), strip(2, 12), strip(1.4, 11.4), strip(0, 10)
    # A first takes T1 (its best), B is left T2 at IoU 0.667: a hit up to t = 0.65, then TP 1, FP 1, FN 1.
    expected_a_first = (6 * 1.0 + 2 * (1 / 3)) / 8
    assert image_score([a, b], [0.9, 0.1], [t1, t2]) == pytest.approx(expected_a_first)
    # B first takes T1, A then takes T2 at IoU 0.887: every threshold has both boxes found.
    assert image_score([a, b], [0.1, 0.9], [t1, t2]) == pytest.approx(1.0)
    # the order comes from the scores, not from the order in which the boxes are listed
    assert image_score([b, a], [0.9, 0.1], [t1, t2]) == pytest.approx(1.0)


def test_empty_image_rules():
    box = [0, 0, 10, 10]
    assert image_score([], [], []) is None  # no truth, no prediction: left out
    assert image_score([box], [0.2], []) == 0.0  # prediction without truth: 0 and counted
    assert image_score([], [], [box]) == 0.0  # truth without prediction: 0
    result = rsna_score(
        [{"boxes": [box], "scores": [1.0]}, {"boxes": [], "scores": []}, {"boxes": [box], "scores": [0.3]}],
        [{"boxes": [box]}, {"boxes": []}, {"boxes": []}],
    )
    assert result["images"] == 2 and result["left_out"] == 1
    assert result["image_scores"] == [1.0, None, 0.0]
    assert result["score"] == pytest.approx(0.5)


def test_score_threshold_drops_low_confidence_boxes():
    box = [0, 0, 10, 10]
    predictions = [{"boxes": [box], "scores": [0.9]}, {"boxes": [box], "scores": [0.3]}]
    targets = [{"boxes": [box]}, {"boxes": []}]
    assert rsna_score(predictions, targets)["score"] == pytest.approx(0.5)
    kept = rsna_score(predictions, targets, score_threshold=0.5)
    assert kept["score"] == pytest.approx(1.0) and kept["left_out"] == 1


def test_all_images_left_out_gives_nan():
    result = rsna_score([{"boxes": [], "scores": []}], [{"boxes": []}])
    assert math.isnan(result["score"]) and result["images"] == 0


def test_per_threshold_means():
    result = rsna_score([{"boxes": [[0, 0, 10, 5]], "scores": [1.0]}], [{"boxes": [[0, 0, 10, 10]]}])
    assert result["per_threshold"] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 predictions for 1 images"):
        rsna_score([{}, {}], [{}])
    with pytest.raises(ValueError, match="scores"):
        image_score([[0, 0, 1, 1]], [0.1, 0.2], [])


def test_nms_keeps_the_best_of_overlapping_boxes():
    prediction = {"boxes": [[0, 0, 10, 10], [0, 0, 10, 8], [50, 50, 60, 60]], "scores": [0.6, 0.9, 0.5], "labels": [0, 0, 0]}
    loose = nms(prediction, 1.0)
    assert loose["scores"].tolist() == [0.9, 0.6, 0.5] and len(loose["labels"]) == 3
    tight = nms(prediction, 0.5)  # IoU of the first two is 0.8
    assert tight["boxes"].tolist() == [[0, 0, 10, 8], [50, 50, 60, 60]]
    assert postprocess(prediction, score_threshold=0.55, nms_iou=0.5)["scores"].tolist() == [0.9]


def test_tuning_drops_false_positives_on_negative_images():
    box, near = [0, 0, 10, 10], [0, 0, 10, 7]  # IoU 0.7: a duplicate NMS at <= 0.6 removes
    predictions = [
        {"boxes": [box, near], "scores": [0.9, 0.8]},
        {"boxes": [[30, 30, 40, 40]], "scores": [0.3]},  # false positive on an image without opacity
    ]
    targets = [{"boxes": [box]}, {"boxes": []}]
    tuned = tune_postprocessing(predictions, targets, score_thresholds=[0.1, 0.2, 0.4, 0.5, 0.85], nms_ious=[0.5, 0.9])
    assert tuned["score"] == pytest.approx(1.0)
    assert tuned["nms_iou"] == 0.5
    assert 0.3 < tuned["score_threshold"] <= 0.85
    assert len(tuned["table"]) == 10


def test_prediction_string_round_trip():
    text = prediction_string([[10, 20, 40, 60], [1, 2, 3, 4]], [0.5, 0.75])
    assert text == "0.7500 1.0 2.0 2.0 2.0 0.5000 10.0 20.0 30.0 40.0"
    boxes, scores = parse_prediction_string(text)
    assert boxes.tolist() == [[1, 2, 3, 4], [10, 20, 40, 60]]
    assert scores.tolist() == [0.75, 0.5]
    assert prediction_string([], []) == ""


def test_submission_file_round_trip_and_scoring(tmp_path):
    path = str(tmp_path / "sub" / "submission.csv")
    write_submission(path, [("p1", [[0, 0, 10, 10]], [0.9]), ("p2", np.zeros((0, 4)), [])])
    lines = open(path).read().splitlines()
    assert lines == ["patientId,PredictionString", "p1,0.9000 0.0 0.0 10.0 10.0", "p2,"]
    read = read_submission(path)
    assert read["p1"][0].tolist() == [[0, 0, 10, 10]] and len(read["p2"][0]) == 0
    result = score_submission(path, {"p1": [[0, 0, 10, 10]], "p2": []})
    assert result["score"] == 1.0 and result["left_out"] == 1
    with pytest.raises(DataError, match="no row"):
        score_submission(path, {"p1": [[0, 0, 10, 10]], "p3": []})


def test_bad_submission_rows_name_file_and_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("patientId,PredictionString\np1,0.9 0 0 10\n")
    with pytest.raises(DataError) as info:
        read_submission(str(path))
    assert "bad.csv" in str(info.value) and "row 2" in str(info.value)
    path.write_text("patientId,PredictionString\np1,0.9 0 0 10 -4\n")
    with pytest.raises(DataError, match="positive"):
        read_submission(str(path))
    path.write_text("patientId,PredictionString\np1,\np1,\n")
    with pytest.raises(DataError, match="more than one row"):
        read_submission(str(path))


def test_ignite_metric_tunes_the_score_threshold():
    import torch

    from chestzoo.metrics.rsna import RSNAScore

    box = [0.0, 0.0, 10.0, 10.0]
    predictions = [
        {"boxes": torch.tensor([box]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([[30.0, 30.0, 40.0, 40.0]]), "scores": torch.tensor([0.3]), "labels": torch.tensor([0])},
    ]
    targets = [{"boxes": torch.tensor([box]), "labels": torch.tensor([0])}, {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0)}]
    tuned, fixed = RSNAScore(tune=True), RSNAScore(tune=False, score_threshold=0.1)
    for metric in (tuned, fixed):
        metric.reset()
        metric.update((predictions[:1], targets[:1]))
        metric.update((predictions[1:], targets[1:]))
    assert tuned.compute() == pytest.approx(1.0)  # a threshold above 0.3 drops the false positive
    assert fixed.compute() == pytest.approx(0.5)
    empty = RSNAScore()
    empty.reset()
    empty.update(([{"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0)}], [{"boxes": torch.zeros((0, 4))}]))
    assert empty.compute() == 0.0
    with pytest.raises(ValueError, match="ground-truth"):
        empty.update((predictions, None))
