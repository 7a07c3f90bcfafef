"""Bootstrap percentile intervals: coverage, width, patient-level resampling, seeding, undefined resamples."""

import math

import numpy as np
import pytest
import torch

from chestzoo.metrics.bootstrap import _Resampler, bootstrap_interval, format_interval
from chestzoo.metrics.classification import auroc


def mean(x):
    return float(np.mean(x))


def test_interval_covers_known_mean_of_large_sample():
    x = np.random.default_rng(1).normal(2.0, 1.0, 4000)
    ci = bootstrap_interval(mean, x, n_resamples=500)
    assert ci["low"] < 2.0 < ci["high"]
    assert ci["low"] <= ci["value"] <= ci["high"]
    assert ci["unit"] == "image" and ci["n_resamples"] == 500 and ci["skipped"] == 0 and ci["level"] == 0.95
    # the percentile interval of a mean is close to the normal one, +-1.96 sd / sqrt(n)
    assert ci["high"] - ci["low"] == pytest.approx(2 * 1.96 / math.sqrt(4000), rel=0.15)


def test_width_shrinks_with_n():
    rng = np.random.default_rng(2)
    widths = []
    for n in (100, 1600):
        ci = bootstrap_interval(mean, rng.normal(size=n), n_resamples=300)
        widths.append(ci["high"] - ci["low"])
    assert widths[1] < widths[0] / 2.5  # about a quarter: sqrt(16)


def test_patient_resampling_widens_interval_for_correlated_images():
    rng = np.random.default_rng(3)
    patients = np.repeat(np.arange(50), 10)
    # ten images per patient, nearly equal: the data hold 50 independent values, not 500
    x = rng.normal(size=50)[patients] + 0.05 * rng.normal(size=500)
    by_image = bootstrap_interval(mean, x, n_resamples=400)
    by_patient = bootstrap_interval(mean, x, groups=patients.tolist(), n_resamples=400)
    assert by_patient["unit"] == "patient"
    assert by_patient["value"] == by_image["value"]
    assert (by_patient["high"] - by_patient["low"]) > 2.5 * (by_image["high"] - by_image["low"])


def test_patient_resample_takes_all_images_of_each_drawn_patient():
    groups = ["a", "b", "b", "c", "c", "c", "a"]
    sampler = _Resampler(len(groups), groups)
    rng = np.random.default_rng(0)
    for _ in range(20):
        index = sampler.sample(rng)
        drawn = [groups[i] for i in index]
        for g in set(drawn):
            # every draw of a patient brings all of its images
            assert drawn.count(g) % groups.count(g) == 0
            assert sorted(i for i in index if groups[i] == g) == sorted(
                [i for i, h in enumerate(groups) if h == g] * (drawn.count(g) // groups.count(g))
            )


def test_strata_keep_their_sizes():
    strata = [0] * 5 + [1] * 3
    sampler = _Resampler(8, None, strata)
    rng = np.random.default_rng(0)
    for _ in range(10):
        index = sampler.sample(rng)
        assert (index < 5).sum() == 5 and (index >= 5).sum() == 3


def test_same_seed_same_result_other_seed_other_result():
    x = np.random.default_rng(4).normal(size=200)
    a = bootstrap_interval(mean, x, n_resamples=200, seed=7)
    b = bootstrap_interval(mean, x, n_resamples=200, seed=7)
    c = bootstrap_interval(mean, x, n_resamples=200, seed=8)
    assert a == b
    assert a != c


def test_undefined_resamples_are_skipped_and_counted():
    # one positive among 20: resamples without it have no AUROC
    labels = np.zeros(20)
    labels[0] = 1
    scores = np.linspace(1, 0, 20)
    ci = bootstrap_interval(auroc, scores, labels, n_resamples=200)
    assert 0 < ci["skipped"] < 100  # about (19/20)^20 = 36% skipped
    assert ci["low"] is not None and ci["value"] == 1.0

    def none_mostly(x):
        return 1.0 if x.sum() == 8 else float("nan")  # defined on the data, on about 30% of resamples

    ci = bootstrap_interval(none_mostly, np.array([1.0] * 8 + [0.0] * 2), n_resamples=100)
    assert ci["value"] == 1.0 and ci["skipped"] > 50 and ci["low"] is None and ci["high"] is None


def test_mapping_metric_lists_and_tensors():
    x = torch.arange(30, dtype=torch.float64)
    boxes = [[i] for i in range(30)]  # a Python list indexed along with the tensor

    def metric(t, items):
        assert len(t) == len(items)
        return {"mean": float(t.mean()), "items": float(np.mean([b[0] for b in items])), "never": None}

    ci = bootstrap_interval(metric, x, boxes, n_resamples=50)
    assert set(ci) == {"mean", "items", "never"}
    assert ci["mean"]["value"] == ci["items"]["value"] == 14.5
    assert ci["mean"]["low"] == pytest.approx(ci["items"]["low"])  # the same resamples for every name
    assert ci["mean"]["low"] < 14.5 < ci["mean"]["high"]
    assert ci["never"]["value"] is None and ci["never"]["low"] is None and ci["never"]["skipped"] == 50


def test_mismatched_lengths_rejected():
    with pytest.raises(ValueError):
        bootstrap_interval(mean, np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        bootstrap_interval(mean, np.zeros(3), groups=[1, 2])


def test_format_interval():
    assert format_interval({"value": 0.8741, "low": 0.8423, "high": 0.9031}) == "0.874 [0.842, 0.903]"
    assert format_interval({"value": 0.8741, "low": None, "high": None}, digits=2) == "0.87"
    assert format_interval({"value": None}) == "n/a"
    assert format_interval(None) == "n/a"


# --- the intervals the evaluation reports write -------------------------------------------------------------------


def brackets(ci, digits=9):
    return ci["low"] is not None and ci["low"] - 10**-digits <= ci["value"] <= ci["high"] + 10**-digits


def clustered_scores(patients=40, per_patient=5, classes=2, seed=0):
    """Scores and labels shared by all images of a patient (plus a little noise): strongly clustered data."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(patients), per_patient)
    y = (rng.random((patients, classes)) < 0.4).astype(float)[ids]
    s = np.clip(0.5 * y + rng.random((patients, classes))[ids] * 0.7 + 0.02 * rng.random(y.shape), 0, 1)
    return s, y, [f"p{i}" for i in ids]


def test_multilabel_report_intervals_by_patient(tmp_path):
    import csv
    import json

    from chestzoo.metrics import write_multilabel_report

    s, y, patients = clustered_scores()
    report = write_multilabel_report((s, y), (s, y), ["a", "b"], str(tmp_path), roc_plot=False, groups=patients, n_resamples=200)
    assert set(report["summary_ci95"]) == set(report["summary"])
    for name, ci in report["summary_ci95"].items():
        assert ci["unit"] == "patient" and ci["n_resamples"] == 200 and brackets(ci), name
    assert report["test"]["ci95"]["mean_auroc"]["value"] == report["test"]["mean_auroc"]
    for row in report["test"]["per_class"].values():
        assert brackets(row["ci95"]["auroc"]) and row["ci95"]["auroc"]["value"] == row["auroc"]
        assert brackets(row["ci95"]["f1"]) and row["ci95"]["f1"]["value"] == pytest.approx(row["f1"])
    assert json.loads((tmp_path / "metrics.json").read_text())["summary_ci95"] == report["summary_ci95"]
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert float(rows[-1]["auroc_low"]) == pytest.approx(report["summary_ci95"]["mean AUROC"]["low"], abs=1e-4)
    by_image = write_multilabel_report((s, y), (s, y), ["a", "b"], str(tmp_path), roc_plot=False, n_resamples=200)
    image_ci, patient_ci = by_image["summary_ci95"]["mean AUROC"], report["summary_ci95"]["mean AUROC"]
    assert image_ci["unit"] == "image"
    assert patient_ci["high"] - patient_ci["low"] > 1.5 * (image_ci["high"] - image_ci["low"])


def test_single_label_report_intervals(tmp_path):
    from chestzoo.metrics.binary import single_label_report

    s, y, patients = clustered_scores(classes=1)
    p = np.concatenate([1 - s, s], axis=1)
    report = single_label_report((p, y[:, 0]), (p, y[:, 0]), ["no", "yes"], "yes", str(tmp_path), plots=False, n_resamples=200)
    assert set(report["summary_ci95"]) == set(report["summary"])
    for name, ci in report["summary_ci95"].items():
        assert ci["unit"] == "image" and brackets(ci), name
        assert ci["value"] == pytest.approx(report["summary"][name])
    assert set(report["test"]["ci95"]) == {"auroc", "accuracy", "sensitivity", "specificity", "ppv", "npv"}
    grouped = single_label_report((p, y[:, 0]), (p, y[:, 0]), ["no", "yes"], "yes", plots=False, groups=patients, n_resamples=50)
    assert grouped["summary_ci95"]["AUROC"]["unit"] == "patient"


def test_segmentation_report_intervals_by_patient(tmp_path):
    from chestzoo.metrics.bootstrap import patient_ids
    from chestzoo.metrics.segmentation import segmentation_report

    rng = np.random.default_rng(0)
    dice = torch.as_tensor(rng.uniform(0.6, 1.0, (30, 2)))
    dice[3, 1] = float("nan")  # an empty ground truth: left out of the means, as in the point estimate
    items = [{"image": f"{i}.png", "patient": f"p{i // 3}"} for i in range(30)]
    report = segmentation_report({"test_dice": dice}, {"Dice": "test_dice"}, ["left", "right"], str(tmp_path),
                                 headline={"Dice (both)": "Dice"}, groups=patient_ids(items), n_resamples=200)
    ci = report["summary_ci95"]["Dice (both)"]
    assert ci["unit"] == "patient" and brackets(ci) and ci["value"] == pytest.approx(report["summary"]["Dice (both)"])
    for name, entry in report["metrics"]["Dice"]["per_channel"].items():
        assert brackets(entry["ci95"]) and entry["ci95"]["value"] == pytest.approx(entry["mean"]), name
    assert patient_ids([{"image": "a"}]) is None
    assert patient_ids([{"patient": "x"}, {"image": "b"}]) == ["x", ("image", 1)]


def test_detection_resamples_reuse_the_matching():
    from test_detection_metrics import random_case

    from chestzoo.metrics.detection import (
        average_precision,
        detection_intervals,
        match_detections,
        mean_average_precision,
        resample_matches,
    )

    predictions, targets = random_case(0, images=30)
    names = ["a", "b", "c", "d"]
    matches = match_detections(predictions, targets, 4)
    # a resample drawing images 0, 0, 5 matches like the data set made of those images
    index = np.array([0, 0, 5])
    direct = match_detections([predictions[i] for i in index], [targets[i] for i in index], 4)
    resampled = resample_matches(matches, np.bincount(index, minlength=30))
    for a, b in zip(direct, resampled):
        assert a.n_truth == b.n_truth
        assert average_precision(a) == pytest.approx(average_precision(b), nan_ok=True)
    ci = detection_intervals(matches, names, {"f1": [0.3] * 4}, groups=[i // 2 for i in range(30)], n_resamples=100)
    assert ci["mAP"]["value"] == pytest.approx(mean_average_precision(predictions, targets, names)["mAP"])
    assert brackets(ci["mAP"]) and brackets(ci["f1"]) and ci["mAP"]["unit"] == "patient"
    assert ci["AP"]["d"]["value"] is None and ci["AP"]["d"]["low"] is None  # no ground truth of class d


def test_detection_report_intervals():
    from test_detection_metrics import random_case

    from chestzoo.metrics.detection_report import evaluate_variant

    predictions, targets = random_case(1, images=30)
    result = evaluate_variant(predictions, targets, predictions, targets, ["a", "b", "c", "d"], n_resamples=100)
    assert result["test_ci95"]["mAP"]["value"] == pytest.approx(result["test"]["mAP"])
    assert result["test_ci95"]["f1"]["value"] == pytest.approx(result["test_at_threshold"]["f1"])
    assert brackets(result["test_ci95"]["mAP"]) and result["test_ci95"]["mAP"]["unit"] == "image"


def test_rsna_evaluation_intervals(tmp_path):
    from chestzoo.engines.rsna_detection import write_evaluation

    rng = np.random.default_rng(0)
    records = []
    for i in range(40):
        truth = np.array([[10.0, 10.0, 40.0, 50.0]]) if i % 2 else np.zeros((0, 4))
        boxes = np.concatenate([truth + rng.normal(0, 4, truth.shape), [[60.0, 60.0, 80.0, 90.0]]])
        scores = np.concatenate([rng.uniform(0.5, 1.0, len(truth)), [rng.uniform(0.0, 0.7)]])
        records.append({"image": f"{i}.dcm", "patientId": str(i), "size": [100, 100], "boxes": boxes, "scores": scores, "truth": truth})
    metrics = write_evaluation(records, records, str(tmp_path), examples=0, n_resamples=100)
    assert set(metrics["summary_ci95"]) == set(metrics["summary"])
    for name, ci in metrics["summary_ci95"].items():
        assert ci["unit"] == "image" and brackets(ci), name
        assert ci["value"] == pytest.approx(metrics["summary"][name]), name


def test_frechet_interval():
    from chestzoo.metrics.frechet import frechet_distance_between, frechet_interval

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(600, 4)), rng.normal(0.5, 1.0, size=(500, 4))
    ci = frechet_interval(real, fake, n_resamples=200)
    assert ci["value"] == pytest.approx(frechet_distance_between(real, fake))
    assert ci["low"] < 4 * 0.25 < ci["high"]  # the true distance: squared mean shift, same covariances
    grouped = frechet_interval(real, fake, real_groups=[i // 6 for i in range(600)], n_resamples=50)
    assert grouped["unit"] == "patient / generated image" and grouped["value"] == ci["value"]
    # few features in many dimensions: every resample's distance lies above the data's; the shift by the bootstrap
    # bias brings the interval back around the point estimate
    real, fake = rng.normal(size=(60, 48)), rng.normal(size=(60, 48))
    ci = frechet_interval(real, fake, n_resamples=200)
    assert ci["bias"] > 0 and brackets(ci)
    assert ci["low"] + ci["bias"] > ci["value"], "the plain percentile interval would miss the point estimate"


def test_demo_shows_intervals_beside_headline_numbers(tmp_path):
    import json

    from chestzoo.demo import _summary

    ci = {"value": 0.8741, "low": 0.8423, "high": 0.9031, "unit": "patient"}
    (tmp_path / "metrics.json").write_text(json.dumps({"summary": {"mean AUROC": 0.8741, "epochs": 3, "F1": 0.5},
                                                       "summary_ci95": {"mean AUROC": ci}}))
    assert _summary(tmp_path) == {"mean AUROC": "0.874 [0.842, 0.903]", "epochs": 3, "F1": 0.5}
