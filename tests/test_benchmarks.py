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
            per_run = sorted(4 / seconds for seconds in r["run_seconds"])
            assert r["images_per_s"] == pytest.approx((per_run[0] + per_run[1]) / 2, rel=1e-3)  # the median of two
        assert len(result["run_ratios"]) == 2
        assert result["ratio"] == pytest.approx(sum(result["run_ratios"]) / 2)
    # the GAN: its own plain loop (one discriminator and one generator step per batch), inference on latent vectors
    gan = report["bundles"]["lung_ct_dcgan"]
    assert gan["plain_loop"] == "gan_loops" and gan["trainer"] == "GanTrainer"
    assert gan["train"]["plain"]["images"] == 2 * 2 * 2 and gan["inference"]["bundle"]["images"] == 2 * 2 * 2
    loader = report["loader"]
    assert loader["images"] == 4 and loader["source_size"] == 96
    assert loader["ratio_cached_over_uncached"] == pytest.approx(sum(loader["run_ratios"]) / 2)
    memory = report["memory"]
    assert [r["images"] for r in memory["runs"]] == [40, 120]
    assert memory["ratio_largest_over_smallest"] == pytest.approx(memory["runs"][1]["peak_rss_mb"] / memory["runs"][0]["peak_rss_mb"])
    assert "| cxr14_lse_classification train" in table and "| lung_ct_dcgan inference" in table and "not measured" not in table


def test_training_memory_does_not_grow_with_the_cached_dataset(tmp_path):
    """Peak RSS of an epoch over 20,000 cached images within 10% of the same over 1,000."""
    report, _ = bench(tmp_path, "--bundles", "", "--loader-images", "0", "--memory-images", "1000,20000", "--memory-size", "64")
    runs = report["memory"]["runs"]
    assert [r["images"] for r in runs] == [1000, 20000] and runs[1]["images"] == 20000
    assert report["memory"]["ratio_largest_over_smallest"] <= 1.10, runs


def load_run_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmarks_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _state(objects):
    import copy

    return [copy.deepcopy(o.state_dict()) for o in objects]


@pytest.fixture(scope="module")
def bench_work(tmp_path_factory):
    return str(tmp_path_factory.mktemp("plain_loops"))  # synthetic datasets shared by the cases


@pytest.mark.parametrize("name, loops", [
    ("cxr14_gmvae", "supervised_loops"),
    ("cxr_pathology_detection", "detection_loops"),
    ("rsna_pneumonia_detection", "detection_loops"),
    ("lung_ct_dcgan", "gan_loops"),
])
def test_plain_loop_computes_what_the_bundle_trainer_computes(name, loops, bench_work):
    """From the same weights, optimiser state, batches and random seed, one bundle epoch and one plain-loop epoch end
    with the same weights: the plain loop is the same computation without the engine around it."""
    import torch

    run = load_run_module()
    args = type("Args", (), {"settings": "test", "image_size": 32, "batch_size": 2, "batches": 2})()
    device = torch.device("cpu")
    overrides, _ = run.bundle_overrides(name, run.ROOT / "bundles" / name, bench_work, args, device)
    # what the plain loop leaves out on purpose: the GMVAE's epoch-end component reviver (changes weights after the
    # epoch) and the detectors' per-iteration learning-rate schedule (here held constant)
    overrides.update({"revive_min_usage": 0.0, "warmup_epochs": 0, "min_learning_rate": "@learning_rate"})
    trainer, loader, evaluator, infer_loader = run.bundle_engines(run.ROOT / "bundles" / name, overrides)
    builder = run.plain_loops(trainer, evaluator)
    assert builder is not None and builder.__name__ == loops
    batches = run.Batches([run.to_device_batch(b, device, False) for b in list(loader)[:2]], args.batch_size)
    trainer.data_loader = batches
    plain_train, plain_infer = builder(trainer, evaluator, device, False)

    if hasattr(trainer, "g_network"):
        stateful = [trainer.g_network, trainer.d_network, trainer.g_optimizer, trainer.d_optimizer]
    else:
        stateful = [trainer.network, trainer.optimizer]
    start = _state(stateful)
    torch.manual_seed(0)
    run.run_engine(trainer, batches)
    after_bundle = _state(stateful[:-2] if hasattr(trainer, "g_network") else stateful[:1])
    for obj, state in zip(stateful, start):
        obj.load_state_dict(state)
    torch.manual_seed(0)
    plain_train(batches)
    after_plain = _state(stateful[:-2] if hasattr(trainer, "g_network") else stateful[:1])
    changed = False
    for bundle_state, plain_state, start_state in zip(after_bundle, after_plain, start):
        for key, value in bundle_state.items():
            if value.is_floating_point():
                torch.testing.assert_close(plain_state[key], value, rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")
                changed = changed or not torch.equal(value, start_state[key])
    assert changed, "training changed no weight"
    infer_batches = batches if infer_loader is None else run.Batches([run.to_device_batch(b, device, False) for b in list(infer_loader)[:1]], args.batch_size)
    plain_infer(infer_batches)
