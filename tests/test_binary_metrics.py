"""Single-label metrics with a class of interest (chestzoo.metrics.binary) against scikit-learn."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import roc_auc_score

from chestzoo.metrics.binary import binary_metrics, choose_threshold, confusion_matrix, single_label_report

RSNA_CLASSES = ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"]


def _fake(n: int, classes: int, seed: int, signal: float = 1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), y] += signal
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return p, y


def test_confusion_matrix_matches_sklearn():
    rng = np.random.default_rng(0)
    true, pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    np.testing.assert_array_equal(confusion_matrix(true, pred, 3), sk_confusion_matrix(true, pred, labels=[0, 1, 2]))


def test_binary_metrics_by_hand():
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.7, 0.2, 0.1, 0.6])
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    m = binary_metrics(scores, truth, threshold=0.5)
    # predicted positive: 0.9, 0.8, 0.7, 0.6 -> tp 3 (0.9, 0.8, 0.6), fp 1 (0.7); fn 1 (0.4); tn 3
    assert m["counts"] == {"tp": 3, "fn": 1, "tn": 3, "fp": 1}
    assert m["sensitivity"] == pytest.approx(0.75) and m["specificity"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.75) and m["ppv"] == pytest.approx(0.75)
    assert m["auroc"] == pytest.approx(roc_auc_score(truth, scores))
    empty = binary_metrics(scores, np.zeros(8), threshold=0.5)
    assert empty["sensitivity"] is None and empty["auroc"] is None


def test_threshold_maximises_youden_on_validation():
    scores = np.array([0.1, 0.2, 0.35, 0.4, 0.6, 0.8, 0.9])
    truth = np.array([0, 0, 1, 0, 1, 1, 1])
    t = choose_threshold(scores, truth, "youden")
    assert t == pytest.approx(0.6)  # sensitivity 3/4, specificity 1: J = 3/4 (0.35 gives 1 + 2/3 - 1)
    j = lambda thr: binary_metrics(scores, truth, thr)["sensitivity"] + binary_metrics(scores, truth, thr)["specificity"] - 1  # noqa: E731
    assert all(j(t) >= j(other) - 1e-12 for other in scores)


def test_binary_report_uses_validation_threshold_on_test(tmp_path):
    val, test = _fake(80, 2, 1), _fake(120, 2, 2)
    report = single_label_report(val, test, ["No pneumonia", "Lung Opacity"], "Lung Opacity", str(tmp_path))
    t = choose_threshold(val[0][:, 1], val[1] == 1)
    assert report["test"]["threshold"] == pytest.approx(t)
    expected = binary_metrics(test[0][:, 1], test[1] == 1, t)
    for key in ("AUROC", "accuracy", "sensitivity", "specificity"):
        assert report["summary"][key] == pytest.approx(expected[key.lower()])
    assert report["summary"]["AUROC"] == pytest.approx(roc_auc_score(test[1], test[0][:, 1]))
    matrix = np.array(report["test"]["confusion_matrix"]["rows_true_columns_predicted"])
    np.testing.assert_array_equal(matrix, sk_confusion_matrix(test[1], (test[0][:, 1] >= t).astype(int)))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["summary"] == report["summary"]
    assert json.loads((tmp_path / "thresholds.json").read_text())["thresholds"] == {"Lung Opacity": pytest.approx(t)}
    for name in ("01_confusion_matrix.png", "02_roc.png"):
        assert Image.open(tmp_path / name).size[0] > 100
    assert not (tmp_path / "03_confusion_matrix_classes.png").exists()


def test_three_class_report_with_one_hot_tensors(tmp_path):
    (vp, vy), (tp, ty) = _fake(60, 3, 3, 2.0), _fake(90, 3, 4, 2.0)
    one_hot = lambda y: torch.nn.functional.one_hot(torch.as_tensor(y), 3).float()  # noqa: E731
    report = single_label_report((torch.as_tensor(vp), one_hot(vy)), (torch.as_tensor(tp), one_hot(ty)), RSNA_CLASSES, "Lung Opacity", str(tmp_path))
    assert report["summary"]["AUROC"] == pytest.approx(roc_auc_score(ty == 2, tp[:, 2]))
    classes = report["test"]["classes"]
    assert classes["accuracy"] == pytest.approx(float(np.mean(tp.argmax(1) == ty)))
    np.testing.assert_array_equal(np.array(classes["confusion_matrix"]), sk_confusion_matrix(ty, tp.argmax(1), labels=[0, 1, 2]))
    for i, name in enumerate(RSNA_CLASSES):
        assert classes["auroc_one_vs_rest"][name] == pytest.approx(roc_auc_score(ty == i, tp[:, i]))
    assert report["test"]["confusion_matrix"]["classes"] == ["not Lung Opacity", "Lung Opacity"]
    assert (tmp_path / "03_confusion_matrix_classes.png").is_file()


def test_bad_inputs_are_refused():
    p, y = _fake(10, 2, 5)
    with pytest.raises(ValueError, match="positive class"):
        single_label_report((p, y), (p, y), ["a", "b"], "c")
    with pytest.raises(ValueError, match="columns"):
        single_label_report((p, y), (p, y), RSNA_CLASSES, "Lung Opacity")
    with pytest.raises(ValueError, match="class indices"):
        single_label_report((p, y + 5), (p, y), ["a", "b"], "b")
