"""`chestzoo verify`: every bundle passes the zoo checks and the ONNX check on the tests' small networks, and the
checks catch broken bundles."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from chestzoo import bundle_checks as checks
from chestzoo.bundle_checks import BUNDLES_DIR, CheckFailed
from chestzoo.bundle_runs import BUNDLE_RUNS
from chestzoo.verify import run_verify

NAMES = sorted(name for name in BUNDLE_RUNS if (BUNDLES_DIR / name).is_dir())


@pytest.mark.parametrize("name", NAMES)
def test_every_bundle_passes_verify(name, synthetic_data):
    run = BUNDLE_RUNS[name]
    results = {r.name: r for r in run_verify(name, settings="test", dataset_dir=synthetic_data(run.dataset, **run.test_data), echo=False)}
    assert set(results) == set(checks.CHECKS)
    failed = {n: r.detail for n, r in results.items() if r.status == "fail"}
    assert not failed, failed
    expected_skips = {check for check, applies in (("torchscript", run.torchscript), ("onnx", run.onnx)) if not applies}
    assert {n for n, r in results.items() if r.status == "skip"} == expected_skips, {n: r.detail for n, r in results.items()}
    if run.onnx:
        assert "ONNX Runtime equals PyTorch" in results["onnx"].detail
    else:  # the skip says why: both exporters tried, with their reasons
        assert "torch.export exporter" in results["onnx"].detail and "TorchScript-based exporter" in results["onnx"].detail


@pytest.fixture()
def broken_copy(tmp_path):
    """A copy of the smallest bundle to break."""
    def copy(name="lung_ct_dcgan"):
        dest = tmp_path / name
        shutil.copytree(BUNDLES_DIR / name, dest, ignore=shutil.ignore_patterns("models", "eval", "__pycache__"))
        return dest
    return copy


def _edit_json(path, edit):
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content, indent=4) + "\n")


def test_verify_catches_a_version_missing_from_the_changelog(broken_copy):
    bundle = broken_copy()
    _edit_json(bundle / "configs" / "metadata.json", lambda m: m.update(version="9.9.9"))
    with pytest.raises(CheckFailed, match="not a key of changelog"):
        checks.check_metadata(bundle, checks.default_schema())


def test_verify_catches_missing_files_and_bad_json(broken_copy):
    bundle = broken_copy()
    (bundle / "docs" / "data_license.txt").unlink()
    with pytest.raises(CheckFailed, match="data_license"):
        checks.check_files(bundle)
    (bundle / "configs" / "extra.json").write_text('{"a": "/home/someone/data"}')
    with pytest.raises(CheckFailed, match="4-space"):
        checks.check_json_style(bundle)


def test_verify_catches_a_wrong_output_shape(broken_copy):
    bundle = broken_copy()
    _edit_json(bundle / "configs" / "metadata.json", lambda m: m["network_data_format"]["outputs"]["pred"].update(num_channels=3))
    results = {r.name: r for r in checks.verify_bundle(bundle, overrides=BUNDLE_RUNS["lung_ct_dcgan"].test, checks=("net_in_out",))}
    assert results["net_in_out"].status == "fail"


def test_verify_catches_missing_properties(broken_copy, synthetic_data):
    bundle = broken_copy()
    run = BUNDLE_RUNS["lung_ct_dcgan"]
    config = bundle / "configs" / "inference.json"  # the inferer under another id: the infer property is missing
    content = json.loads(config.read_text().replace('"@inferer"', '"@my_inferer"'))
    content["my_inferer"] = content.pop("inferer")
    config.write_text(json.dumps(content, indent=4) + "\n")
    with pytest.raises(CheckFailed, match="inferer"):
        checks.check_properties(bundle, ("inference",), synthetic_data(run.dataset, **run.test_data), overrides=run.test)


def test_onnx_check_reports_outputs_that_differ(monkeypatch):
    """An ONNX graph that computes something else fails the comparison: the check is not a formality."""
    import torch

    real_export = torch.onnx.export

    class Shifted(torch.nn.Module):
        def __init__(self, network):
            super().__init__()
            self.network = network

        def forward(self, x):
            return self.network(x) + 1.0

    monkeypatch.setattr(torch.onnx, "export", lambda model, *args, **kwargs: real_export(Shifted(model), *args, **kwargs))
    with pytest.raises(CheckFailed, match="differs from PyTorch"):
        checks.check_onnx(BUNDLES_DIR / "lung_ct_dcgan", overrides=BUNDLE_RUNS["lung_ct_dcgan"].test)


def test_command_line_writes_results_and_exit_code(tmp_path, synthetic_data):
    run = BUNDLE_RUNS["lung_ct_dcgan"]
    out = tmp_path / "verify.json"
    done = subprocess.run([sys.executable, "-m", "chestzoo.cli", "verify", "lung_ct_dcgan", "--dataset_dir",
                           synthetic_data(run.dataset, **run.test_data), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS  onnx" in done.stdout and "0 failed" in done.stdout
    report = json.loads(out.read_text())
    assert report["bundle"] == "lung_ct_dcgan" and {r["status"] for r in report["results"]} <= {"pass", "skip"}
