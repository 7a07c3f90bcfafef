"""Multi-label AUROC, thresholds and P/R/F1 (against scikit-learn), IoBB localisation, reports and plots."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score, roc_curve

from chestzoo.metrics import (
    MeanAUROC,
    auroc,
    boxes_from_heatmap,
    choose_thresholds,
    iobb,
    iou,
    localization_accuracy,
    mean_auroc,
    multilabel_auroc,
    precision_recall_f1,
    read_thresholds,
    scale_boxes,
    write_multilabel_report,
)
from chestzoo.visualize import overlay


@pytest.fixture
def scored():
    """Scores with ties (rounded) and a learnable signal; 6 classes, the last one all negative."""
    rng = np.random.default_rng(1)
    y = (rng.random((300, 6)) < 0.25).astype(float)
    y[:, 5] = 0
    s = np.round(rng.random((300, 6)) + 0.6 * y, 1)
    return s, y


def test_auroc_agrees_with_sklearn(scored):
    s, y = scored
    for c in range(5):
        assert auroc(s[:, c], y[:, c]) == pytest.approx(roc_auc_score(y[:, c], s[:, c]), abs=1e-12)
    assert math.isnan(auroc(s[:, 5], y[:, 5]))
    assert auroc(torch.tensor([0.1, 0.9]), torch.tensor([0, 1])) == 1.0


def test_mean_auroc_skips_and_reports_single_valued_labels(scored):
    s, y = scored
    names = ["a", "b", "c", "d", "e", "never"]
    report = multilabel_auroc(s, y, names)
    assert report["skipped"] == ["never"] and report["per_class"]["never"] is None
    expected = np.mean([roc_auc_score(y[:, c], s[:, c]) for c in range(5)])
    assert report["mean_auroc"] == pytest.approx(expected)
    assert mean_auroc(s, y) == pytest.approx(expected)
    assert math.isnan(mean_auroc(s[:, 5:], y[:, 5:]))
    with pytest.raises(ValueError, match="0 or 1"):
        auroc([0.1, 0.2], [0, 2])


def test_mean_auroc_handler_in_an_engine(scored):
    from ignite.engine import Engine

    s, y = scored
    batches = [(torch.tensor(s[i : i + 32]), torch.tensor(y[i : i + 32])) for i in range(0, len(s), 32)]

    def step(engine, batch):  # decollated output, as MONAI engines give it
        return [{"pred": p, "label": t} for p, t in zip(*batch)]

    engine = Engine(step)
    from monai.handlers import from_engine

    MeanAUROC(output_transform=from_engine(["pred", "label"])).attach(engine, "mean_auc")
    engine.run(batches)
    assert engine.state.metrics["mean_auc"] == pytest.approx(mean_auroc(s, y))
    pred, label = engine.state.metric_details["mean_auc"]
    np.testing.assert_allclose(pred.numpy(), s)
    np.testing.assert_allclose(label.numpy(), y)


def test_f1_thresholds_are_the_best_on_validation(scored):
    s, y = scored
    thresholds = choose_thresholds(s, y, "f1")
    for c in range(5):
        best = max(f1_score(y[:, c], s[:, c] >= t) for t in np.unique(s[:, c]))
        assert f1_score(y[:, c], s[:, c] >= thresholds[c]) == pytest.approx(best)
    assert thresholds[5] == 0.5  # nothing to choose from without positives


def test_youden_thresholds(scored):
    s, y = scored
    thresholds = choose_thresholds(s, y, "youden")
    for c in range(5):
        fpr, tpr, cuts = roc_curve(y[:, c], s[:, c])
        assert thresholds[c] == pytest.approx(cuts[np.argmax(tpr - fpr)])
    with pytest.raises(ValueError, match="rule"):
        choose_thresholds(s, y, "accuracy")


def test_precision_recall_f1_agree_with_sklearn(scored):
    s, y = scored
    thresholds = np.linspace(0.3, 0.8, 6)
    ours = precision_recall_f1(s, y, thresholds)
    p, r, f, support = precision_recall_fscore_support(y, s >= thresholds, average=None, zero_division=0)
    np.testing.assert_allclose(ours["precision"], p)
    np.testing.assert_allclose(ours["recall"], r)
    np.testing.assert_allclose(ours["f1"], f)
    np.testing.assert_array_equal(ours["support"], support)


def test_iobb_is_intersection_over_the_predicted_box():
    truth = [0, 0, 10, 10]
    assert iobb([5, 5, 15, 15], truth) == pytest.approx(25 / 100)
    assert iobb([2, 2, 4, 4], truth) == 1.0  # a small box inside the truth is fully correct
    assert iou([2, 2, 4, 4], truth) == pytest.approx(4 / 100)
    assert iobb([20, 20, 30, 30], truth) == 0.0
    assert iobb([3, 3, 3, 9], truth) == 0.0  # empty predicted box


def test_boxes_from_heatmap():
    heat = np.zeros((40, 50))
    heat[5:10, 3:8] = 1.0  # small, weak region
    heat[20:30, 30:45] = 2.0  # large, strong region
    assert boxes_from_heatmap(heat, 0.4) == [[30.0, 20.0, 45.0, 30.0], [3.0, 5.0, 8.0, 10.0]]
    assert boxes_from_heatmap(heat, 0.75) == [[30.0, 20.0, 45.0, 30.0]]
    assert boxes_from_heatmap(heat, 0.4, max_boxes=1) == [[30.0, 20.0, 45.0, 30.0]]
    assert boxes_from_heatmap(np.ones((8, 8)), 0.5) == []
    assert scale_boxes([[1, 2, 3, 4]], (10, 20), (20, 40)) == [[2.0, 4.0, 6.0, 8.0]]


def test_localization_accuracy():
    cases = [
        {"label": "Mass", "truth": [[0, 0, 10, 10]], "predicted": [[5, 5, 15, 15], [50, 50, 60, 60]]},  # IoBB 0.25 and 0
        {"label": "Mass", "truth": [[0, 0, 10, 10]], "predicted": [[1, 1, 9, 9]]},  # IoBB 1
        {"label": "Nodule", "truth": [[0, 0, 4, 4], [20, 20, 24, 24]], "predicted": []},
    ]
    result = localization_accuracy(cases, thresholds=(0.1, 0.5))
    assert result["per_class"]["Mass"] == {"n": 2, "accuracy": [1.0, 0.5], "afp": [0.5, 1.0]}
    assert result["per_class"]["Nodule"] == {"n": 2, "accuracy": [0.0, 0.0], "afp": [0.0, 0.0]}
    assert result["overall"]["accuracy"] == [0.5, 0.25]
    assert result["overall"]["afp"] == pytest.approx([1 / 3, 2 / 3])


def test_report_files(scored, tmp_path):
    s, y = scored
    names = ["a", "b", "c", "d", "e", "never"]
    report = write_multilabel_report((s[:150], y[:150]), (torch.tensor(s[150:]), torch.tensor(y[150:])), names, str(tmp_path))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert report["test"]["skipped"] == ["never"]
    expected = choose_thresholds(s[:150], y[:150])
    np.testing.assert_allclose(read_thresholds(str(tmp_path / "thresholds.json"), names), expected)
    assert report["test"]["per_class"]["a"]["auroc"] == pytest.approx(roc_auc_score(y[150:, 0], s[150:, 0]))
    assert report["test"]["per_class"]["b"]["f1"] == pytest.approx(f1_score(y[150:, 1], s[150:, 1] >= expected[1]))
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["label"] for r in rows] == names + ["mean"]
    assert float(rows[-1]["auroc"]) == pytest.approx(report["test"]["mean_auroc"], abs=1e-4)
    with Image.open(tmp_path / "roc.png") as png:
        assert png.size[0] >= 500
    # labels the file does not name keep the default; no file at all gives the default everywhere
    np.testing.assert_allclose(read_thresholds(str(tmp_path / "thresholds.json"), ["zz", "a"], 0.3), [0.3, expected[0]])
    np.testing.assert_allclose(read_thresholds(str(tmp_path / "absent.json"), names), 0.5)


def test_overlay_draws_heatmap_and_boxes():
    image = np.full((40, 60), 0.5, dtype=np.float32)
    heat = np.zeros((40, 60))
    heat[10:20, 10:20] = 1.0
    picture = np.asarray(overlay(image, heat, boxes=[[30, 5, 50, 35]], truth=[[2, 2, 8, 8]]))
    assert picture.shape == (40, 60, 3)
    assert tuple(picture[5, 40]) == (255, 255, 0)  # predicted box outline in yellow
    assert tuple(picture[2, 5]) == (0, 255, 0)  # ground truth outline in green
    assert picture[15, 15, 0] > picture[15, 15, 2]  # hot region is red
    assert picture[30, 5, 2] > picture[30, 5, 0]  # cold region is blue
    with pytest.raises(ValueError, match="differ"):
        overlay(image, heat[:10])
