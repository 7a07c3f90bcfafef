"""Single-label classification metrics with one class of interest (e.g. RSNA "Lung Opacity" against the rest).

A classifier's softmax probabilities (samples, classes) and integer labels become: AUROC of the positive class
against all others, a decision threshold on that class's probability chosen on *validation* data, and accuracy,
sensitivity and specificity on *test* data at that threshold, with the confusion matrix. With more than two classes
the report adds one-vs-rest AUROC per class and the argmax accuracy and confusion matrix over all classes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from .bootstrap import bootstrap_interval
from .classification import auroc, choose_thresholds
from .report import THRESHOLDS_FILE, write_json


def _scores_and_labels(probabilities, labels) -> tuple[np.ndarray, np.ndarray]:
    """``(samples, classes)`` float scores and ``(samples,)`` int labels; one-hot labels are turned into indices."""
    p = probabilities.detach().float().cpu().numpy() if isinstance(probabilities, torch.Tensor) else np.asarray(probabilities, dtype=np.float64)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (samples, classes), got shape {p.shape}")
    if y.ndim == 2 and y.shape == p.shape:
        y = y.argmax(axis=1)
    y = y.reshape(-1)
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"{p.shape[0]} predictions but {y.shape[0]} labels")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1] or not np.all(np.equal(np.mod(y, 1), 0))):
        raise ValueError(f"labels must be class indices in 0..{p.shape[1] - 1}")
    return p.astype(np.float64), y.astype(np.int64)


def confusion_matrix(true, predicted, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` counts; rows are the true class, columns the predicted class."""
    true, predicted = np.asarray(true, dtype=np.int64).reshape(-1), np.asarray(predicted, dtype=np.int64).reshape(-1)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (true, predicted), 1)
    return matrix


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator > 0 else None


def binary_metrics(scores, positive, threshold: float) -> dict:
    """AUROC, and accuracy / sensitivity / specificity / PPV / NPV when predicting positive at ``score >= threshold``.

    ``scores`` are the positive class's probabilities, ``positive`` the 0/1 truth. Undefined ratios (no positives,
    say) are None rather than NaN so that the result stays valid JSON.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(positive).reshape(-1).astype(bool)
    predicted = s >= threshold
    tp, fn = int((predicted & y).sum()), int((~predicted & y).sum())
    tn, fp = int((~predicted & ~y).sum()), int((predicted & ~y).sum())
    auc = auroc(s, y.astype(np.float64)) if s.size else float("nan")
    return {
        "auroc": None if math.isnan(auc) else auc,
        "accuracy": _ratio(tp + tn, s.size),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "threshold": float(threshold),
        "counts": {"tp": tp, "fn": fn, "tn": tn, "fp": fp},
    }


def choose_threshold(scores, positive, rule: str = "youden") -> float:
    """Decision threshold on the positive class's probability: maximal Youden's J (``"youden"``) or F1 (``"f1"``)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
    y = np.asarray(positive, dtype=np.float64).reshape(-1, 1)
    return float(choose_thresholds(s, y, rule)[0])


def single_label_report(
    validation,
    test,
    classes: Sequence[str],
    positive_class: str,
    output_dir: str | None = None,
    rule: str = "youden",
    plots: bool = True,
    groups=None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Evaluate a single-label classifier whose ``positive_class`` is the finding of interest.

    ``validation`` and ``test`` are ``(probabilities, labels)`` pairs: probabilities ``(samples, classes)``,
    labels as class indices or one-hot rows (an evaluator's ``metric_details`` entry works as it is). The threshold
    is chosen on validation (``rule``) and applied to test. With ``output_dir`` writes ``metrics.json`` (its
    ``summary`` holds the headline numbers), ``thresholds.json`` (read by inference), and with ``plots`` the
    confusion matrix ``01_confusion_matrix.png``, the ROC curve ``02_roc.png`` and, with more than two classes,
    ``03_confusion_matrix_classes.png``. Returns the content of ``metrics.json``.

    Test metrics at the validation threshold get bootstrap 95% intervals (``test.ci95``, and ``summary_ci95`` for
    the headline numbers), resampling the patients ``groups`` names (one id per test image) or else images. RSNA
    gives each radiograph its own patientId, so there the unit is the image.
    """
    classes = list(classes)
    if positive_class not in classes:
        raise ValueError(f"positive class {positive_class!r} is not one of {classes}")
    k = classes.index(positive_class)
    val_p, val_y = _scores_and_labels(*validation)
    test_p, test_y = _scores_and_labels(*test)
    for name, p in (("validation", val_p), ("test", test_p)):
        if p.shape[1] != len(classes):
            raise ValueError(f"{name} probabilities have {p.shape[1]} columns for {len(classes)} classes {classes}")
    threshold = choose_threshold(val_p[:, k], val_y == k, rule)
    test_binary = binary_metrics(test_p[:, k], test_y == k, threshold)
    val_binary = binary_metrics(val_p[:, k], val_y == k, threshold)
    matrix = confusion_matrix((test_y == k).astype(int), (test_p[:, k] >= threshold).astype(int), 2)
    interval_keys = ("auroc", "accuracy", "sensitivity", "specificity", "ppv", "npv")

    def test_metrics(p, y):
        values = binary_metrics(p[:, k], y == k, threshold)
        values = {key: values[key] for key in interval_keys}
        if len(classes) > 2:
            values["class accuracy"] = _ratio(int((p.argmax(axis=1) == y).sum()), len(y))
        return values

    ci = bootstrap_interval(test_metrics, test_p, test_y, groups=groups, n_resamples=n_resamples, seed=seed)
    negative_name = f"not {positive_class}" if len(classes) > 2 else classes[1 - k]
    binary_names = [negative_name, positive_class] if len(classes) > 2 else [classes[1 - k], classes[k]]
    report = {
        "classes": classes,
        "positive_class": positive_class,
        "threshold_rule": rule,
        "summary": {
            "AUROC": test_binary["auroc"],
            "accuracy": test_binary["accuracy"],
            "sensitivity": test_binary["sensitivity"],
            "specificity": test_binary["specificity"],
        },
        "summary_ci95": {name: ci[name.lower()] for name in ("AUROC", "accuracy", "sensitivity", "specificity")},
        "validation": {"images": int(len(val_y)), **val_binary},
        "test": {
            "images": int(len(test_y)),
            **test_binary,
            "confusion_matrix": {"classes": binary_names, "rows_true_columns_predicted": matrix.tolist()},
            "ci95": {key: ci[key] for key in interval_keys},
        },
    }
    if len(classes) > 2:
        per_class = {}
        for i, name in enumerate(classes):
            auc = auroc(test_p[:, i], (test_y == i).astype(np.float64)) if len(test_y) else float("nan")
            per_class[name] = None if math.isnan(auc) else auc
        valid = [v for v in per_class.values() if v is not None]
        argmax = test_p.argmax(axis=1)
        report["test"]["classes"] = {
            "auroc_one_vs_rest": per_class,
            "mean_auroc": float(np.mean(valid)) if valid else None,
            "accuracy": _ratio(int((argmax == test_y).sum()), len(test_y)),
            "confusion_matrix": confusion_matrix(test_y, argmax, len(classes)).tolist(),
        }
        report["test"]["classes"]["ci95"] = {"accuracy": ci["class accuracy"]}
        report["summary"]["class accuracy"] = report["test"]["classes"]["accuracy"]
        report["summary_ci95"]["class accuracy"] = ci["class accuracy"]
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        write_json(os.path.join(output_dir, "metrics.json"), report)
        write_json(os.path.join(output_dir, THRESHOLDS_FILE), {"rule": rule, "thresholds": {positive_class: threshold}})
        if plots:
            from ..visualize.confusion import plot_confusion_matrix
            from ..visualize.roc import plot_roc_curves

            plot_confusion_matrix(
                matrix, binary_names, os.path.join(output_dir, "01_confusion_matrix.png"),
                title=f"test, threshold {threshold:.3f} on P({positive_class})",
            )
            plot_roc_curves(
                test_p[:, k : k + 1], (test_y == k).astype(np.float64)[:, None], [positive_class],
                os.path.join(output_dir, "02_roc.png"), title="ROC curve (test)",
            )
            if len(classes) > 2:
                plot_confusion_matrix(
                    np.asarray(report["test"]["classes"]["confusion_matrix"]), classes,
                    os.path.join(output_dir, "03_confusion_matrix_classes.png"), title="test, most probable class",
                )
    return report
