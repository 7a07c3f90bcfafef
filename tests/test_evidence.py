"""chestzoo.evidence: a bundle's interval against the best no-learning baseline, the rule of the learning tests."""

import pytest

from chestzoo.bundle_runs import BUNDLE_RUNS
from chestzoo.evidence import Margin, judge


def interval(value, low, high):
    return {"value": value, "low": low, "high": high}


def baselines(value, name="template"):
    return {"tasks": {"nih_classification": {"headline": {"baseline": name, "metric": "AUROC", **interval(value, value - 0.04, value + 0.04)}}}}


def metrics(key, value, low, high, **more):
    return {"summary": {key: value}, "summary_ci95": {key: interval(value, low, high), **more}}


def test_the_lower_end_of_the_interval_must_clear_baseline_plus_margin():
    margin = Margin("mean AUROC", "nih_classification", margin=0.05)
    assert judge(metrics("mean AUROC", 0.75, 0.66, 0.80), margin, baselines(0.60))["passed"]
    # the point estimate clears the bar, the interval's lower end does not
    verdict = judge(metrics("mean AUROC", 0.75, 0.64, 0.80), margin, baselines(0.60))
    assert not verdict["passed"] and verdict["bar"] == pytest.approx(0.65)
    assert "does not clear" in verdict["text"] and "template" in verdict["text"]


def test_a_factor_raises_the_bar_above_the_margin_when_the_baseline_is_large():
    margin = Margin("mean AUROC", "nih_classification", margin=0.10, factor=2.0)
    assert judge(metrics("mean AUROC", 0.5, 0.25, 0.6), margin, baselines(0.05))["bar"] == pytest.approx(0.15)
    verdict = judge(metrics("mean AUROC", 0.5, 0.35, 0.6), margin, baselines(0.2))
    assert verdict["bar"] == pytest.approx(0.4) and not verdict["passed"]


def test_an_undefined_interval_never_clears():
    assert not judge(metrics("mean AUROC", 0.9, None, None), Margin("mean AUROC", "nih_classification"), baselines(0.5))["passed"]


def test_a_generator_must_be_far_below_its_untrained_self_with_intervals_apart():
    margin = Margin("FD", factor=3.0, untrained="FD untrained G")
    far = metrics("FD", 10.0, 8.0, 12.0, **{"FD untrained G": interval(60.0, 50.0, 70.0)})
    assert judge(far, margin)["passed"]
    overlapping = metrics("FD", 10.0, 8.0, 55.0, **{"FD untrained G": interval(60.0, 50.0, 70.0)})
    assert not judge(overlapping, margin)["passed"]
    not_far_enough = metrics("FD", 25.0, 22.0, 28.0, **{"FD untrained G": interval(60.0, 50.0, 70.0)})
    assert not judge(not_far_enough, margin)["passed"]


def test_missing_numbers_are_errors_not_failures():
    with pytest.raises(KeyError, match="summary_ci95"):
        judge({"summary": {}}, Margin("mean AUROC", "nih_classification"), baselines(0.5))
    with pytest.raises(KeyError, match="rsna_detection"):
        judge(metrics("RSNA score", 0.5, 0.4, 0.6), Margin("RSNA score", "rsna_detection"), baselines(0.5))


def test_every_bundle_has_a_bar_on_a_known_baseline_task():
    from chestzoo.baselines import TASKS

    for name, run in BUNDLE_RUNS.items():
        assert run.margins, f"{name} has no bar to clear"
        for margin in run.margins:
            assert margin.task in TASKS or (margin.task is None and margin.untrained), (name, margin)


def test_judge_all_runs_the_named_baselines_once_per_dataset(synthetic_data):
    from chestzoo.evidence import judge_all

    root = synthetic_data("montgomery")
    margins = (Margin("Dice", "lung_segmentation", margin=0.08),)
    reports = {}
    perfect = judge_all(metrics("Dice", 1.0, 1.0, 1.0), margins, root, reports)
    assert [v["passed"] for v in perfect] == [True] and list(reports) == [(root, "lung_segmentation")]
    first = reports[root, "lung_segmentation"]
    poor = judge_all(metrics("Dice", 0.5, 0.4, 0.6), margins, root, reports)
    assert [v["passed"] for v in poor] == [False] and reports[root, "lung_segmentation"] is first
    assert poor[0]["baseline"]["baseline"] == "mean_mask"


def test_judge_all_prefers_the_baselines_the_evaluation_scored(tmp_path):
    """An evaluation that scored its baselines (metrics.json "baselines") is judged against them; the dataset folder
    is not read."""
    from chestzoo.evidence import judge_all

    scored = {"tasks": {"lung_segmentation": {"headline": {"baseline": "mean_mask", "metric": "Dice", "value": 0.7,
                                                           "low": 0.65, "high": 0.75}}}}
    margins = (Margin("Dice", "lung_segmentation", margin=0.08),)
    verdicts = judge_all({**metrics("Dice", 0.9, 0.79, 0.95), "baselines": scored}, margins, str(tmp_path / "absent"))
    assert [v["passed"] for v in verdicts] == [True] and verdicts[0]["bar"] == pytest.approx(0.78)
