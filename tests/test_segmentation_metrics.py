"""Segmentation metrics (chestzoo.metrics.segmentation): batch Dice as MONAI computes it, HD95 that scores misses, the report."""

import json
import math

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric

from chestzoo.metrics.segmentation import BatchDiceMetric, HausdorffDistance95Metric, segmentation_report


def _square(b, c, x0, x1, size=32):
    m = torch.zeros(b, c, size, size)
    m[..., x0:x1, x0:x1] = 1
    return m


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("ignore_empty", [True, False])
def test_batch_dice_gives_monai_dice_values(include_background, ignore_empty):
    generator = torch.Generator().manual_seed(int(include_background) * 2 + int(ignore_empty))
    pred = (torch.rand(6, 3, 24, 20, generator=generator) > 0.6).float()
    truth = (torch.rand(6, 3, 24, 20, generator=generator) > 0.5).float()
    truth[0, 1] = 0  # empty truth, non-empty prediction
    truth[2, 2] = pred[2, 2] = 0  # both empty
    pred[3, 0] = 0  # missed channel
    ours = BatchDiceMetric(include_background=include_background, ignore_empty=ignore_empty)
    reference = DiceMetric(include_background=include_background, ignore_empty=ignore_empty)
    for batch in (slice(0, 4), slice(4, 6)):
        ours(pred[batch], truth[batch])
        reference(pred[batch], truth[batch])
    torch.testing.assert_close(ours.get_buffer(), reference.get_buffer(), equal_nan=True)
    torch.testing.assert_close(ours.aggregate(), reference.aggregate())
    with pytest.raises(ValueError, match="one shape"):
        ours(pred[:, :1], truth)


def test_agrees_with_monai_when_both_masks_have_pixels():
    truth = _square(2, 2, 5, 20)
    pred = truth.clone()
    pred[0, 0, 5:20, 20:24] = 1
    pred[1, 1, 5:9, 5:20] = 0
    ours, monai = HausdorffDistance95Metric(), HausdorffDistanceMetric(include_background=True, percentile=95)
    ours(pred, truth)
    monai(pred, truth)
    torch.testing.assert_close(ours.get_buffer(), monai.get_buffer())
    assert float(ours.aggregate()) > 0


def test_a_missed_lung_scores_the_diagonal_not_nan():
    truth = _square(3, 2, 5, 20)
    pred = truth.clone()
    pred[0, 1] = 0  # lung missed
    truth[1, 0] = 0  # nothing to find, and nothing found: perfect
    pred[1, 0] = 0
    truth[2, 1] = 0  # nothing to find, but something found
    metric = HausdorffDistance95Metric(reduction="none")
    values = metric(pred, truth)
    diagonal = math.sqrt(2) * 31
    assert values[0, 1] == pytest.approx(diagonal) and values[0, 0] == 0
    assert values[1, 0] == 0
    assert values[2, 1] == pytest.approx(diagonal)
    assert torch.isfinite(values).all()
    plain = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    with pytest.warns(UserWarning):
        assert not torch.isfinite(plain(pred, truth)).all(), "MONAI's own metric gives no number for a missed lung"


def test_report_summarises_per_channel_and_overall(tmp_path):
    truth = _square(4, 2, 4, 24)
    pred = truth.clone()
    pred[:, 0, 4:8] = 0
    dice = DiceMetric(include_background=True, reduction="none")(pred, truth)
    hd = HausdorffDistance95Metric(reduction="none")(pred, truth)
    details = {"test_dice": dice, "test_hd95": hd}
    report = segmentation_report(details, {"Dice": "test_dice", "HD95 (px)": "test_hd95"}, ["left lung", "right lung"], str(tmp_path))
    assert report["images"] == 4
    assert report["summary"]["Dice"] == pytest.approx(float(dice.mean()))
    assert report["metrics"]["Dice"]["per_channel"]["right lung"]["mean"] == pytest.approx(1.0)
    assert report["metrics"]["Dice"]["per_channel"]["left lung"]["mean"] == pytest.approx(float(dice[:, 0].mean()))
    assert report["summary"]["HD95 (px)"] == pytest.approx(float(hd.mean()))
    assert json.loads((tmp_path / "metrics.json").read_text())["summary"] == report["summary"]
    with pytest.raises(KeyError, match="save_details"):
        segmentation_report(details, {"IoU": "test_iou"}, ["left lung", "right lung"])
    with pytest.raises(ValueError, match="channel"):
        segmentation_report(details, {"Dice": "test_dice"}, ["lungs"])
    np.testing.assert_allclose(report["metrics"]["Dice"]["all"]["max"], 1.0)
