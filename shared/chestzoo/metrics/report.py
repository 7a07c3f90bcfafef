"""Evaluation reports written next to a bundle's outputs: JSON for programs, CSV for people, a ROC plot."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence

import numpy as np

from .bootstrap import bootstrap_interval
from .classification import choose_thresholds, multilabel_auroc, precision_recall_f1

THRESHOLDS_FILE = "thresholds.json"


def _pair(result) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) from a tuple or from an evaluator's ``metric_details`` entry."""
    scores, labels = result
    as_np = lambda x: x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)  # noqa: E731
    return as_np(scores), as_np(labels)


def write_json(path: str, payload) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=4)
        f.write("\n")
    return path


def _interval_cells(ci: dict) -> list[str]:
    return ["" if ci[k] is None else f"{ci[k]:.4f}" for k in ("low", "high")]


def write_multilabel_report(
    validation, test, labels: Sequence[str], output_dir: str, rule: str = "f1", roc_plot: bool = True,
    groups=None, n_resamples: int = 1000, seed: int = 0,
) -> dict:
    """Per-class AUROC on test, thresholds chosen on validation, precision/recall/F1 on test at those thresholds.

    ``validation`` and ``test`` are ``(probabilities, multi-hot labels)`` pairs of shape (samples, classes).
    Writes ``metrics.json``, ``metrics.csv``, ``thresholds.json`` (read by inference) and ``roc.png`` into
    ``output_dir`` and returns the content of ``metrics.json``.

    AUROC and F1 get bootstrap 95% intervals on test (``n_resamples``, ``seed``), resampling patients when
    ``groups`` gives one patient id per test image (in the order of ``test``), else images; the thresholds stay
    fixed, since they were chosen on validation. They go beside the numbers: ``summary_ci95``, ``test.ci95``, each
    class's ``ci95``, and ``*_low``/``*_high`` columns of ``metrics.csv``.
    """
    labels = list(labels)
    val_scores, val_labels = _pair(validation)
    test_scores, test_labels = _pair(test)
    thresholds = choose_thresholds(val_scores, val_labels, rule)
    val_auc = multilabel_auroc(val_scores, val_labels, labels)
    test_auc = multilabel_auroc(test_scores, test_labels, labels)
    prf = precision_recall_f1(test_scores, test_labels, thresholds)

    def test_metrics(scores, truth):
        auc = multilabel_auroc(scores, truth, labels)
        f1 = precision_recall_f1(scores, truth, thresholds)["f1"]
        return {"mean_auroc": auc["mean_auroc"], "mean_f1": float(np.mean(f1)),
                **{("auroc", n): auc["per_class"][n] for n in labels}, **{("f1", n): f1[i] for i, n in enumerate(labels)}}

    ci = bootstrap_interval(test_metrics, test_scores, test_labels, groups=groups, n_resamples=n_resamples, seed=seed)
    per_class = {
        name: {
            "auroc": test_auc["per_class"][name],
            "threshold": float(thresholds[i]),
            "precision": float(prf["precision"][i]),
            "recall": float(prf["recall"][i]),
            "f1": float(prf["f1"][i]),
            "support": int(prf["support"][i]),
            "ci95": {"auroc": ci[("auroc", name)], "f1": ci[("f1", name)]},
        }
        for i, name in enumerate(labels)
    }
    report = {
        # headline numbers, read by the demo report
        "summary": {"mean AUROC": test_auc["mean_auroc"], "mean F1": float(np.mean(prf["f1"]))},
        "summary_ci95": {"mean AUROC": ci["mean_auroc"], "mean F1": ci["mean_f1"]},
        "labels": labels,
        "threshold_rule": rule,
        "validation": {"images": int(len(val_scores)), "mean_auroc": val_auc["mean_auroc"], "skipped": val_auc["skipped"]},
        "test": {
            "images": int(len(test_scores)),
            "mean_auroc": test_auc["mean_auroc"],
            "skipped": test_auc["skipped"],
            "mean_f1": float(np.mean(prf["f1"])),
            "per_class": per_class,
            "ci95": {"mean_auroc": ci["mean_auroc"], "mean_f1": ci["mean_f1"]},
        },
    }
    os.makedirs(output_dir, exist_ok=True)
    write_json(os.path.join(output_dir, "metrics.json"), report)
    write_json(
        os.path.join(output_dir, THRESHOLDS_FILE),
        {"rule": rule, "thresholds": {name: float(t) for name, t in zip(labels, thresholds)}},
    )
    with open(os.path.join(output_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "auroc", "threshold", "precision", "recall", "f1", "support",
                         "auroc_low", "auroc_high", "f1_low", "f1_high"])
        for name, row in per_class.items():
            auc = "" if row["auroc"] is None else f"{row['auroc']:.4f}"
            writer.writerow([name, auc, f"{row['threshold']:.4f}", f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", row["support"],
                             *_interval_cells(row["ci95"]["auroc"]), *_interval_cells(row["ci95"]["f1"])])
        mean = report["test"]["mean_auroc"]
        writer.writerow(["mean", "" if mean is None else f"{mean:.4f}", "", "", "", f"{report['test']['mean_f1']:.4f}", "",
                         *_interval_cells(ci["mean_auroc"]), *_interval_cells(ci["mean_f1"])])
    if roc_plot:
        from ..visualize.roc import plot_roc_curves

        plot_roc_curves(test_scores, test_labels, labels, os.path.join(output_dir, "roc.png"))
    return report


def read_thresholds(path: str | None, labels: Sequence[str], default: float = 0.5) -> np.ndarray:
    """Per-label thresholds from a ``thresholds.json`` written by :func:`write_multilabel_report`, else ``default``.

    Labels the file does not name keep ``default``, so a file from an 8-label model still serves those 8 of 14.
    """
    values = np.full(len(labels), float(default))
    if path and os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f).get("thresholds", {})
        for i, name in enumerate(labels):
            if name in saved:
                values[i] = float(saved[name])
    return values
