"""Training that survives, for the classification, detection and GAN bundles: a SIGKILLed run resumes with
the same command, two runs with one seed agree on CPU, bad files stop the run with one error or are skipped and
reported, a NaN loss stops the run and keeps the last good checkpoint, and two Gloo processes train as one."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from PIL import Image

from chestzoo.bundle_runs import BUNDLE_RUNS, override_args
from chestzoo.data import UnreadableFiles
from chestzoo.engines.resilience import NonFiniteLoss

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
# per bundle: the key of the trained network in the checkpoint, and test overrides on top of BundleRun.test
SPECS = {
    "cxr14_lse_classification": {"model_key": "model", "overrides": {}},
    "cxr_pathology_detection": {"model_key": "model", "overrides": {}},
    "lung_ct_dcgan": {"model_key": "generator", "overrides": {"save_interval": 1}},
}
NAMES = list(SPECS)
KILL_EPOCHS = 3
TIMEOUT = 600


def _configs(name: str) -> Path:
    return BUNDLES / name / "configs"


def _overrides(name: str, tmp_path: Path, dataset_dir: str, **more) -> dict:
    return {**BUNDLE_RUNS[name].test, **SPECS[name]["overrides"], "bundle_root": str(BUNDLES / name), "dataset_dir": dataset_dir,
            "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval"), **more}


def _workflow(name: str, overrides: dict) -> ConfigWorkflow:
    configs = _configs(name)
    wf = ConfigWorkflow(config_file=str(configs / "train.json"), meta_file=str(configs / "metadata.json"), logging_file=False,
                        workflow_type="train", **overrides)
    wf.initialize()
    return wf


def _cause(exc: BaseException, kind: type) -> BaseException | None:
    while exc is not None and not isinstance(exc, kind):
        exc = exc.__cause__ or exc.__context__
    return exc


@pytest.fixture(scope="module")
def datasets(synthetic_data):
    return lambda name: synthetic_data(BUNDLE_RUNS[name].dataset, **BUNDLE_RUNS[name].test_data)


def _trainer_epoch(path: Path) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)["trainer"]
    return state["iteration"] // state["epoch_length"]


@pytest.mark.parametrize("name", NAMES)
def test_killed_run_resumes_with_the_same_command(name, datasets, tmp_path):
    """SIGKILL inside epoch 2 or later, then the same command again: it continues from the last checkpoint and ends at
    max_epochs with the iteration count of an uninterrupted run."""
    configs = _configs(name)
    overrides = _overrides(name, tmp_path, datasets(name), max_epochs=KILL_EPOCHS)
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs / "train.json"), "--meta_file", str(configs / "metadata.json")]
    command += override_args(overrides)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    models = tmp_path / "models"

    first_log = tmp_path / "first.log"
    with open(first_log, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path), env=env)
        deadline = time.monotonic() + TIMEOUT
        # ignite's progress bar prints "Epoch [e/E]: [i/L]": wait for an iteration of an epoch after the first checkpoint
        later_epoch = re.compile(rf"Epoch \[([2-9])/{KILL_EPOCHS}\]: \[[1-9]\d*/")
        while True:
            assert proc.poll() is None, f"the run ended before it could be killed:\n{first_log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "no checkpoint within the time limit"
            if list(models.glob("checkpoint_epoch=*.pt")) and later_epoch.search(first_log.read_text(errors="replace")):
                break
            time.sleep(0.05)
        proc.kill()
        assert proc.wait() == -9
    killed_at = sorted(models.glob("checkpoint_epoch=*.pt"))
    assert len(killed_at) == 1, killed_at
    resumed_from = _trainer_epoch(killed_at[0])
    assert 1 <= resumed_from < KILL_EPOCHS

    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, cwd=str(tmp_path), env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert f"Restored all variables from {killed_at[0]}" in output
    epochs_run = sorted({int(e) for e in re.findall(rf"Epoch \[(\d+)/{KILL_EPOCHS}\]", output)})
    assert epochs_run == list(range(resumed_from + 1, KILL_EPOCHS + 1)), f"the second run trained epochs {epochs_run}"
    final = models / f"checkpoint_epoch={KILL_EPOCHS}.pt"
    state = torch.load(final, map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == KILL_EPOCHS * state["trainer"]["epoch_length"]
    assert sorted(models.glob("checkpoint_epoch=*.pt")) == [final], "n_saved=1 holds across the restart"
    if "progress" in state:  # the validation state went on: best-model score and early-stopping counter are carried
        assert 1 <= state["progress"]["best_metric_epoch"] <= KILL_EPOCHS
        assert len(state["progress"]["best_checkpoint"]) == 1
        assert state["progress"]["early_stop"]["counter"] <= KILL_EPOCHS - state["progress"]["best_metric_epoch"]


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_result_on_cpu(name, datasets, tmp_path):
    """Two runs with one seed on CPU give identical weights, optimiser state and metrics."""
    runs = []
    for run in ("a", "b"):
        overrides = _overrides(name, tmp_path / run, datasets(name), max_epochs=1, resume=False, seed=7, device="$torch.device('cpu')")
        wf = _workflow(name, overrides)
        wf.run()
        wf.finalize()
        runs.append(torch.load(tmp_path / run / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True))
    a, b = runs
    key = SPECS[name]["model_key"]
    assert a[key].keys() == b[key].keys()
    for weight in a[key]:
        torch.testing.assert_close(a[key][weight], b[key][weight], rtol=0, atol=0, msg=f"{key}.{weight} differs")
    assert a.get("progress") == b.get("progress"), "validation metrics differ"
    if name == "lung_ct_dcgan":
        histories = [json.load(open(tmp_path / run / "eval" / "train_history.json")) for run in ("a", "b")]
        assert histories[0] == histories[1]
    # a different seed changes the result: the comparison above can fail
    other = _overrides(name, tmp_path / "c", datasets(name), max_epochs=1, resume=False, seed=8, device="$torch.device('cpu')")
    wf = _workflow(name, other)
    wf.run()
    wf.finalize()
    c = torch.load(tmp_path / "c" / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    assert any(not torch.equal(a[key][w], c[key][w]) for w in a[key])


def _bad_datalist(dataset_dir: str, datalist: str, out: Path) -> tuple[str, list[str]]:
    """A copy of ``datalist`` with absolute paths and three bad training items appended (copies of a good one with a
    missing file, a truncated PNG and a DICOM cut short); returns its path and the three bad file names."""
    from chestzoo.data.synth import dicom

    source = os.path.join(dataset_dir, datalist)
    content = json.load(open(source))
    for split in ("training", "validation", "test"):
        for item in content.get(split, []):
            for key, value in item.items():
                if isinstance(value, str) and not os.path.isabs(value) and os.path.isfile(os.path.join(dataset_dir, value)):
                    item[key] = os.path.join(dataset_dir, value)
    out.mkdir(parents=True)
    missing = out / "missing.png"
    png = out / "corrupt.png"
    Image.new("L", (64, 64), 128).save(png)
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    dcm = out / "truncated.dcm"
    ds = dicom.new_dataset("1.2.840.10008.5.1.4.1.1.7", str(dicom.make_uid(0, "truncated")))
    ds.Modality = "DX"
    dicom.set_pixels(ds, torch.zeros(64, 64, dtype=torch.uint8).numpy(), photometric="MONOCHROME2")
    dicom.save(ds, dcm)
    dcm.write_bytes(dcm.read_bytes()[:-1000])
    # a slice from mid-volume, which lung_ct_dcgan's slice selection keeps (its trim drops the first and last 15 %)
    template = min(content["training"], key=lambda item: abs(item.get("slice_position", 0.5) - 0.5))
    content["training"] += [{**template, "image": str(path)} for path in (missing, png, dcm)]
    path = out / "datalist.json"
    path.write_text(json.dumps(content))
    return str(path), [str(missing), str(png), str(dcm)]


@pytest.mark.parametrize("name", NAMES)
def test_bad_files_stop_the_run_or_are_skipped(name, datasets, tmp_path):
    datalist, bad = _bad_datalist(datasets(name), BUNDLE_RUNS[name].datalist, tmp_path / "data")
    with pytest.raises(Exception) as info:
        _workflow(name, _overrides(name, tmp_path / "strict", datasets(name), datalist=datalist)).run()
    error = _cause(info.value, UnreadableFiles)
    assert error is not None, f"not the screening error: {info.value!r}"
    assert sorted(error.problems) == sorted(bad), "the error names exactly the three bad files"
    message = str(error)
    assert all(path in message for path in bad) and "skip_bad" in message
    assert "file not found" in error.problems[bad[0]] and "truncated" in error.problems[bad[2]]

    skip = tmp_path / "skip"
    wf = _workflow(name, _overrides(name, skip, datasets(name), datalist=datalist, skip_bad=True))
    wf.run()
    wf.finalize()
    report = json.load(open(skip / "eval" / "skipped_training.json"))
    assert sorted(report["skipped"]) == sorted(bad) and report["kept"] == report["checked"] - 3
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 1 and (skip / "models" / "checkpoint_epoch=1.pt").is_file()


def _poison_images(batch) -> None:
    if isinstance(batch, dict):
        for key, value in batch.items():
            if key == "image" and isinstance(value, torch.Tensor) and value.is_floating_point():
                value.fill_(math.nan)
            else:
                _poison_images(value)
    elif isinstance(batch, (list, tuple)):
        for value in batch:
            _poison_images(value)


@pytest.mark.parametrize("name", NAMES)
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(name, datasets, tmp_path):
    """Epoch 1 trains normally; in epoch 2 the images turn NaN: the run stops with a message naming checkpoint 1, and
    no later or final checkpoint of the broken weights is written."""
    wf = _workflow(name, _overrides(name, tmp_path, datasets(name), max_epochs=3))
    trainer = wf.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, lambda engine: engine.state.epoch >= 2 and _poison_images(engine.state.batch))
    with pytest.raises(Exception) as info:
        wf.run()
    error = _cause(info.value, NonFiniteLoss)
    assert error is not None, f"not the non-finite loss error: {info.value!r}"
    good = tmp_path / "models" / "checkpoint_epoch=1.pt"
    assert "loss is not finite" in str(error) and "at epoch 2" in str(error) and str(good) in str(error)
    assert sorted(p.name for p in (tmp_path / "models").glob("checkpoint*.pt")) == [good.name]
    state = torch.load(good, map_location="cpu", weights_only=True)
    model = state[SPECS[name]["model_key"]]
    assert all(torch.isfinite(w).all() for w in model.values() if w.is_floating_point())
    best = tmp_path / "models" / "model.pt"
    if best.is_file():
        weights = torch.load(best, map_location="cpu", weights_only=True)
        assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


@pytest.mark.slow
def test_gan_trains_in_two_processes_on_cpu(datasets, tmp_path):
    """lung_ct_dcgan's multi_gpu_train.json with torchrun, two Gloo processes: both train, rank 0 alone writes."""
    name = "lung_ct_dcgan"
    configs = _configs(name)
    overrides = _overrides(name, tmp_path, datasets(name), max_epochs=2)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle", "run"]
    command += ["--config_file", json.dumps([str(configs / "train.json"), str(configs / "multi_gpu_train.json")]), "--meta_file", str(configs / "metadata.json")]
    command += override_args(overrides)
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, cwd=str(tmp_path), env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint_epoch=2.pt", "checkpoint_final.pt", "model.pt"], "one set of checkpoints"
    state = torch.load(models / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state["generator"]), "checkpoints hold the plain network, not the DDP wrapper"
    n_train = len(_workflow(name, _overrides(name, tmp_path / "single", datasets(name))).parser.get_parsed_content("train#items"))
    assert state["trainer"]["epoch_length"] == math.ceil(math.ceil(n_train / 2) / BUNDLE_RUNS[name].test["batch_size"]), "each rank trains on half"
