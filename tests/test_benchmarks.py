"""benchmarks/run.py at tiny sizes: the JSON it writes, ratios computed from what it measured, and the memory claim."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def bench(tmp_path, *args):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(RUN), "--out", str(out), "--workdir", str(tmp_path / "work"), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text()), done.stdout


def test_benchmark_json_shape_and_ratios(tmp_path):
    report, table = bench(
        tmp_path, "--bundles", "cxr14_lse_classification,lung_ct_dcgan", "--settings", "test", "--image-size", "32", "--batch-size", "2",
        "--batches", "2", "--repeats", "2", "--loader-images", "4", "--loader-source-size", "96", "--loader-size", "32",
        "--memory-images", "40,120", "--memory-size", "16",
    )
    assert report["machine"]["device"] == "cpu" and report["machine"]["cpu_cores_available"] >= 1
    cxr = report["bundles"]["cxr14_lse_classification"]
    for kind in ("train", "inference"):
        result = cxr[kind]
        for side in ("bundle", "plain"):
            r = result[side]
            assert r["images"] == 2 * 2 * 2 and len(r["run_seconds"]) == 2 and r["peak_rss_mb"] > 0
            assert r["images_per_s"] == pytest.approx(r["images"] / r["seconds"], rel=1e-3)
        assert result["ratio"] == pytest.approx(result["bundle"]["images_per_s"] / result["plain"]["images_per_s"])
        assert len(result["run_ratios"]) == 2
    # the GAN trainer has no plain loop here: reported as not measured, not given a number
    assert "skipped" in report["bundles"]["lung_ct_dcgan"] and "ratio" not in report["bundles"]["lung_ct_dcgan"]
    loader = report["loader"]
    assert loader["images"] == 4 and loader["source_size"] == 96
    assert loader["ratio_cached_over_uncached"] == pytest.approx(loader["cached"]["images_per_s"] / loader["uncached"]["images_per_s"])
    memory = report["memory"]
    assert [r["images"] for r in memory["runs"]] == [40, 120]
    assert memory["ratio_largest_over_smallest"] == pytest.approx(memory["runs"][1]["peak_rss_mb"] / memory["runs"][0]["peak_rss_mb"])
    assert "| cxr14_lse_classification train" in table and "not measured" in table


def test_training_memory_does_not_grow_with_the_cached_dataset(tmp_path):
    """DESIGN/issue 10: peak RSS of an epoch over 20,000 cached images within 10% of the same over 1,000."""
    report, _ = bench(tmp_path, "--bundles", "", "--loader-images", "0", "--memory-images", "1000,20000", "--memory-size", "64")
    runs = report["memory"]["runs"]
    assert [r["images"] for r in runs] == [1000, 20000] and runs[1]["images"] == 20000
    assert report["memory"]["ratio_largest_over_smallest"] <= 1.10, runs
