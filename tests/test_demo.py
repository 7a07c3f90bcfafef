"""The demo's plumbing: command lines that MONAI's runner reads back correctly, and the report."""

import json
import subprocess
import sys
from pathlib import Path

from chestzoo.bundle_runs import BUNDLE_RUNS, BundleRun, override_args
from chestzoo.demo import bundle_command, write_report


def test_overrides_survive_fire(tmp_path):
    """What the demo and the tests pass on the command line arrives in the config as the same Python values."""
    overrides = {"pretrained": False, "max_epochs": 2, "learning_rate": 0.001, "backbone": "resnet18", "sizes": [64, 64]}
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"result": "$[@pretrained, @max_epochs, @learning_rate, @backbone, @sizes]"}))
    probe = (
        "import sys, fire; from monai.bundle import ConfigParser\n"
        "def main(config_file, **kw):\n"
        "    p = ConfigParser(); p.read_config(config_file); p.update(kw); print(repr(p.get_parsed_content('result')))\n"
        "fire.Fire(main)"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(config)] + override_args(overrides),
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == repr([False, 2, 0.001, "resnet18", [64, 64]])


def test_bundle_command_uses_monai_runner(tmp_path):
    command = bundle_command(tmp_path, "b", "train", {"max_epochs": 1})
    assert command[1:4] == ["-m", "monai.bundle", "run"]
    assert command[command.index("--config_file") + 1].endswith("b/configs/train.json")
    assert command[-2:] == ["--max_epochs", "1"]


def test_report_labels_synthetic_numbers_and_shows_pictures(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "roc.png").write_bytes(b"png")
    run = BundleRun(dataset="nih")
    report = write_report(tmp_path, [("b", run, {"train": 10, "evaluate": 2, "inference": 1}, {"mean AUROC": 0.9})],
                          fast=True, seconds=60)
    text = report.read_text()
    assert "synthetic data" in text and "mean AUROC 0.900" in text and "10 / 2 / 1" in text
    assert "![roc](b/roc.png)" in text and "comparison" not in text
    with_comparison = write_report(tmp_path, [], fast=True, seconds=60, comparison=Path("comparison/comparison.md"))
    assert "[comparison/comparison.md](comparison/comparison.md)" in with_comparison.read_text()


def test_every_registered_bundle_has_a_folder():
    from chestzoo.demo import BUNDLES_DIR

    for name in BUNDLE_RUNS:
        assert (BUNDLES_DIR / name / "configs" / "train.json").is_file(), name


def test_bundles_share_synthetic_data_only_when_they_ask_for_the_same():
    from chestzoo.demo import data_folders

    folders = {name: folder for name, (folder, _, _) in data_folders(list(BUNDLE_RUNS), fast=False).items()}
    for a in BUNDLE_RUNS:
        for b in BUNDLE_RUNS:
            same = (BUNDLE_RUNS[a].dataset, BUNDLE_RUNS[a].demo_data) == (BUNDLE_RUNS[b].dataset, BUNDLE_RUNS[b].demo_data)
            assert (folders[a] == folders[b]) == same, (a, b)
    fast = {folder for folder, _, _ in data_folders(list(BUNDLE_RUNS), fast=True).values()}
    assert fast == {r.dataset for r in BUNDLE_RUNS.values()}, "the tests' tiny sets: one per dataset, named after it"


def test_report_shows_each_number_beside_its_best_baseline_and_verdict(tmp_path):
    from chestzoo.evidence import Margin, judge

    margin = Margin("mean AUROC", "nih_classification", margin=0.05)
    metrics = {"summary_ci95": {"mean AUROC": {"value": 0.8, "low": 0.7, "high": 0.85}}}
    baselines = {"tasks": {"nih_classification": {"headline": {"baseline": "template", "value": 0.6, "low": 0.55, "high": 0.65}}}}
    verdicts = {"b": [judge(metrics, margin, baselines)], "c": [judge(metrics, margin, {"tasks": {"nih_classification": {
        "headline": {"baseline": "pixel", "value": 0.7, "low": 0.6, "high": 0.8}}}})]}
    text = write_report(tmp_path, [], fast=True, seconds=60, evidence=verdicts).read_text()
    assert "| `b` | mean AUROC 0.800 [0.700, 0.850] | 0.600 [0.550, 0.650] (template) |" in text
    assert text.count("| clears |") == 1 and text.count("**does not clear**") == 1
