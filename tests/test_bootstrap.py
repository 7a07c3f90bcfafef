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
