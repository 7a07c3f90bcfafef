"""cxr14_lse_classification: the shared bundle checks, plus what this bundle adds (outputs, resume, learning)."""

from bundle_harness import bundle_tests; globals().update(bundle_tests("cxr14_lse_classification"))  # noqa: E702

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from bundle_harness import (bundle_workflow, check_learned, check_offline_weights_fail_clearly,
                            check_settings_follow_sources, check_training_resumes, check_untrained_fails, config_path,
                            train_in_two_processes)
from chestzoo.bundle_runs import BUNDLE_RUNS
from chestzoo.data.labels import NIH_BOX_LABELS, NIH_LABELS

NAME = "cxr14_lse_classification"
RUN = BUNDLE_RUNS[NAME]
BUNDLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles", NAME)
# the learning test: small synthetic set, small images, a few epochs; its bar is BundleRun.margins (chestzoo.evidence)
LEARN_DATA = RUN.demo_data  # the demo's data and settings: the test backs the demo report's verdict
LEARN = {**RUN.demo, "resume": False, "heatmap_methods": ["lse"], "localization_overlays": 0}


def config(name: str) -> str:
    return config_path(NAME, name)


def workflow(name: str, **overrides) -> ConfigWorkflow:
    return bundle_workflow(NAME, name, **overrides)


def test_evaluation_outputs(bundle_outputs):
    out = bundle_outputs["output_dir"]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["labels"] == list(NIH_LABELS)
    assert set(metrics["test"]["per_class"]) == set(NIH_LABELS)
    assert 0.0 <= metrics["test"]["mean_auroc"] <= 1.0
    assert metrics["summary"]["mean AUROC"] == metrics["test"]["mean_auroc"]
    thresholds = json.load(open(os.path.join(out, "thresholds.json")))["thresholds"]
    assert list(thresholds) == list(NIH_LABELS)
    rows = list(csv.DictReader(open(os.path.join(out, "metrics.csv"))))
    assert [r["label"] for r in rows] == list(NIH_LABELS) + ["mean"]
    assert Image.open(os.path.join(out, "roc.png")).size[0] > 100
    localization = json.load(open(os.path.join(out, "localization.json")))
    assert localization["images"] > 0, "the synthetic test split has boxed images"
    assert set(localization["methods"]) == {"lse", "gradcam"}
    for result in localization["methods"].values():
        assert result["thresholds"] == pytest.approx([0.1, 0.25, 0.5, 0.75, 0.9])  # Wang et al. 2017, Table 4
        assert result["overall"]["n"] > 0 and len(result["overall"]["accuracy"]) == 5
        assert result["overall"]["accuracy"] == sorted(result["overall"]["accuracy"], reverse=True)
    assert os.listdir(os.path.join(out, "localization")), "no localisation overlay written"


def test_inference_outputs(bundle_outputs):
    out = bundle_outputs["output_dir"]
    predictions = json.load(open(os.path.join(out, "predictions.json")))
    assert predictions["labels"] == list(NIH_LABELS)
    images = predictions["images"]
    assert len(images) == RUN.test["max_images"]
    saved = json.load(open(os.path.join(out, "thresholds.json")))["thresholds"]
    assert predictions["thresholds"] == pytest.approx([saved[n] for n in NIH_LABELS]), "inference must use the thresholds from evaluation"
    for record in images:
        found = {f["label"] for f in record["findings"]}
        for i, name in enumerate(NIH_LABELS):
            assert (record["probabilities"][name] >= predictions["thresholds"][i]) == (name in found)
        for finding in record["findings"]:
            assert set(finding["overlays"]) == {"lse", "gradcam"}
            for png in finding["overlays"].values():
                with Image.open(os.path.join(out, png)) as picture:
                    assert picture.mode == "RGB" and picture.size == (RUN.test_data["size"],) * 2
    with open(os.path.join(out, "predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [r["image"] for r in images]
    assert float(rows[0][NIH_LABELS[0]]) == pytest.approx(images[0]["probabilities"][NIH_LABELS[0]], abs=1e-6)


def test_training_resumes_from_the_last_checkpoint(bundle_dataset, tmp_path):
    state = torch.load(check_training_resumes(NAME, bundle_dataset, tmp_path) / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert set(state) == {"model", "optimizer", "lr_scheduler", "trainer", "progress"}
    assert state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"]


def test_eight_label_variant(bundle_dataset, tmp_path):
    parser = ConfigParser()
    parser.read_config(config("train"))
    parser.update({**RUN.test, "dataset_dir": bundle_dataset, "output_dir": str(tmp_path), "label_set": "box"})
    assert parser.get_parsed_content("labels") == list(NIH_BOX_LABELS)
    assert parser.get_parsed_content("network_def").classifier.out_features == 8
    item = parser.get_parsed_content("train#dataset").data[0]
    sample = parser.get_parsed_content("validate#preprocessing")(dict(item))
    expected = [item["label"][NIH_LABELS.index(n)] for n in NIH_BOX_LABELS]
    assert sample["label"].tolist() == expected
    assert tuple(sample["image"].shape) == (1, RUN.test["image_size"], RUN.test["image_size"])
    for name in ("evaluate", "inference"):
        other = ConfigParser()
        other.read_config(config(name))
        other.update({"label_set": "box", "pretrained": False, "backbone": "resnet18"})
        assert other.get_parsed_content("network_def").classifier.out_features == 8


def test_real_settings_are_the_default():
    parser = ConfigParser()
    parser.read_config(config("train"))
    for key, value in {"backbone": "resnet50", "image_size": 512, "batch_size": 16, "learning_rate": 1e-4, "pretrained": True, "lse_r": 10.0, "loss_mode": "batch"}.items():
        assert parser[key] == value, key
    assert len(parser.get_parsed_content("labels")) == 14
    assert parser["network_def"]["transition_channels"] == 2048
    assert parser["optimizer"]["_target_"] == "torch.optim.Adam"


# Every real-data setting with its source (Wang et al. 2017, arXiv:1705.02315v5), as in the table "Settings and their
# sources" of docs/README.md: (config key, value, source, deviation). A change here must change that table too.
WANG_2017_SETTINGS = [
    ("backbone", "resnet50", "Sec. 3.1/4: ImageNet ResNet-50", None),
    ("pretrained", True, "Sec. 3.1/4: ImageNet weights", None),
    ("lse_r", 10.0, "Sec. 4: LSE r = 10", None),
    ("loss_mode", "batch", "Sec. 3.1 Eq. 1: beta_P, beta_N over a batch", None),
    ("label_set", "all", "appendix B: 14 findings", None),
    ("image_size", 512, "not stated; 1024 x 1024 images, 32 x 32 heatmaps", "ours: memory and time"),
    ("learning_rate", 1e-4, "not stated", "ours"),
    ("batch_size", 16, "Sec. 4: batch size x iteration size = 80", "ours: effective batch 16"),
    ("max_epochs", 30, "not stated (ResNet-50: about 10,000 iterations)", "ours"),
]


def test_settings_follow_their_sources():
    """The real-data defaults are those of the docs' "Settings and their sources" table, deviations included."""
    from chestzoo.metrics.localization import IOBB_THRESHOLDS

    parser = check_settings_follow_sources(NAME, WANG_2017_SETTINGS)
    assert len(parser.get_parsed_content("labels")) == 14  # appendix B
    # Sec. 3.1: D = 2048 for ResNet; the three configs build the same network
    for name in ("train", "evaluate", "inference"):
        other = ConfigParser()
        other.read_config(config(name))
        assert other["network_def"]["transition_channels"] == 2048, name
    # deviation: Sec. 4 trains with SGD
    assert parser["optimizer"]["_target_"] == "torch.optim.Adam"
    # deviation: Sec. 3.2 thresholds the [0, 255] map at 60 and at 180; here one threshold at half the range
    inference = ConfigParser()
    inference.read_config(config("inference"))
    assert inference["heatmap_threshold"] == 0.5
    # Table 4 / Table 19: localisation accuracy at T(IoBB) = 0.1, 0.25, 0.5, 0.75, 0.9
    assert tuple(IOBB_THRESHOLDS) == (0.1, 0.25, 0.5, 0.75, 0.9)


def test_offline_imagenet_weights_fail_clearly(tmp_path, monkeypatch):
    check_offline_weights_fail_clearly(NAME, tmp_path, monkeypatch)


@pytest.mark.slow
def test_learns_the_synthetic_findings(synthetic_data, tmp_path):
    """Trained as in the demo on the synthetic NIH set, the classifier's mean AUROC interval clears the best
    no-learning baseline by the bundle's margin."""
    root = synthetic_data("nih", **LEARN_DATA)
    dirs = {"dataset_dir": root, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    for name in ("train", "evaluate"):
        wf = workflow(name, **dirs, **LEARN)
        wf.run()
        wf.finalize()
    check_learned(NAME, dirs["output_dir"], root)


@pytest.mark.slow
def test_untrained_network_fails_the_learning_check(synthetic_data, tmp_path):
    check_untrained_fails(NAME, synthetic_data("nih", **LEARN_DATA), tmp_path, **LEARN)


@pytest.mark.slow
def test_multi_process_training_on_cpu(bundle_dataset, bundle_outputs, tmp_path):
    """multi_gpu_train.json with two CPU processes (Gloo): each rank trains on its half of the data, fine-tuning a
    checkpoint (loaded into the DistributedDataParallel wrapper's network)."""
    train_in_two_processes(NAME, tmp_path, dataset_dir=bundle_dataset, ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"),
                           init_ckpt=os.path.join(bundle_outputs["ckpt_dir"], "model.pt"))
    state = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    n_train = len(json.load(open(os.path.join(bundle_dataset, "datalist.json")))["training"])
    assert state["trainer"]["epoch_length"] == math.ceil(math.ceil(n_train / 2) / RUN.test["batch_size"])
    assert sorted(os.listdir(tmp_path / "models")) == ["checkpoint_epoch=1.pt", "model.pt"], "rank 0 alone writes, once"


def test_inference_reads_png_and_dicom_alike(bundle_outputs, tmp_path):
    """The same radiograph as an 8-bit PNG and as a MONOCHROME1 DICOM gets the same probabilities."""
    from chestzoo.data.io import read_image
    from chestzoo.data.synth import dicom
    from chestzoo.data.synth.phantom import to_uint8
    from chestzoo.visualize import list_images

    source = list_images(bundle_outputs["dataset_dir"])[0]
    pixels = to_uint8(read_image(source))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(pixels).save(inputs / "film.png")
    ds = dicom.new_dataset("1.2.840.10008.5.1.4.1.1.7", str(dicom.make_uid(0, "film")))
    ds.Modality = "DX"
    dicom.set_pixels(ds, 255 - pixels, photometric="MONOCHROME1")
    dicom.save(ds, inputs / "film.dcm")
    out = tmp_path / "eval"
    wf = workflow("inference", dataset_dir=str(inputs), ckpt_dir=bundle_outputs["ckpt_dir"], output_dir=str(out), **{**RUN.test, "max_images": None})
    wf.run()
    wf.finalize()
    records = {os.path.basename(r["image"]): r for r in json.load(open(out / "predictions.json"))["images"]}
    assert set(records) == {"film.png", "film.dcm"}
    png, dcm = (np.array(list(records[n]["probabilities"].values())) for n in ("film.png", "film.dcm"))
    np.testing.assert_allclose(dcm, png, atol=1e-5)

    # the input gate: a knee (the same pixels under another BodyPartExamined) is left out and listed with its reason
    ds.BodyPartExamined = "EXTREMITY"
    dicom.save(ds, inputs / "knee.dcm")
    wf = workflow("inference", dataset_dir=str(inputs), ckpt_dir=bundle_outputs["ckpt_dir"], output_dir=str(out), **{**RUN.test, "max_images": None})
    wf.run()
    wf.finalize()
    assert {os.path.basename(r["image"]) for r in json.load(open(out / "predictions.json"))["images"]} == {"film.png", "film.dcm"}
    refused = json.load(open(out / "refused_inputs.json"))
    assert refused["accepted"] == 2 and [(os.path.basename(r["image"]), r["reason"]) for r in refused["refused"]] == [
        ("knee.dcm", "BodyPartExamined is EXTREMITY, not the chest")]
