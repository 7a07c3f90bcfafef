"""rsna_pneumonia_classification: the shared bundle checks, plus outputs, the three-class override, class balance,
bad files, resuming, multi-process training and learning."""

from bundle_harness import bundle_tests; globals().update(bundle_tests("rsna_pneumonia_classification"))  # noqa: E702

import csv
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from bundle_harness import (bundle_workflow, check_learned, check_settings_follow_sources, check_training_resumes,
                            check_untrained_fails, config_path, train_in_two_processes)
from chestzoo.bundle_runs import BUNDLE_RUNS
from chestzoo.data import UnreadableFiles
from chestzoo.data.labels import RSNA_CLASSES, RSNA_TARGETS

NAME = "rsna_pneumonia_classification"
RUN = BUNDLE_RUNS[NAME]
BUNDLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles", NAME)
# learning test: VGG16-BN from scratch at 32 x 32 on 112 training radiographs, three epochs without augmentation
LEARN_DATA = RUN.demo_data  # the demo's data and settings: the test backs the demo report's verdict
LEARN = {**RUN.demo, "resume": False}


def config(name: str) -> str:
    return config_path(NAME, name)


def workflow(name: str, **overrides) -> ConfigWorkflow:
    return bundle_workflow(NAME, name, **overrides)


def run_configs(names, **overrides) -> None:
    for name in names:
        wf = workflow(name, **overrides)
        wf.run()
        wf.finalize()


def parser_for(name: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(config(name))
    parser.update({"bundle_root": BUNDLE, **overrides})
    return parser


def test_evaluation_outputs(bundle_outputs):
    out = bundle_outputs["output_dir"]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["classes"] == list(RSNA_TARGETS) and metrics["positive_class"] == "Lung Opacity"
    assert set(metrics["summary"]) == {"AUROC", "accuracy", "sensitivity", "specificity"}
    matrix = np.array(metrics["test"]["confusion_matrix"]["rows_true_columns_predicted"])
    n_test = len(json.load(open(os.path.join(bundle_outputs["dataset_dir"], "datalist.json")))["test"])
    assert matrix.shape == (2, 2) and matrix.sum() == n_test == metrics["test"]["images"]
    (tn, fp), (fn, tp) = matrix
    assert metrics["test"]["accuracy"] == pytest.approx((tp + tn) / n_test)
    threshold = json.load(open(os.path.join(out, "thresholds.json")))["thresholds"]["Lung Opacity"]
    assert metrics["test"]["threshold"] == pytest.approx(threshold)
    assert metrics["validation"]["threshold"] == pytest.approx(threshold), "one threshold, chosen on validation"
    for png in ("01_confusion_matrix.png", "02_roc.png"):
        assert Image.open(os.path.join(out, png)).size[0] > 100


def test_inference_outputs(bundle_outputs):
    out = bundle_outputs["output_dir"]
    predictions = json.load(open(os.path.join(out, "predictions.json")))
    assert predictions["classes"] == list(RSNA_TARGETS)
    saved = json.load(open(os.path.join(out, "thresholds.json")))["thresholds"]["Lung Opacity"]
    assert predictions["threshold"] == pytest.approx(saved), "inference must use the threshold chosen in evaluation"
    images = predictions["images"]
    test_images = os.listdir(os.path.join(bundle_outputs["dataset_dir"], "stage_2_test_images"))
    assert len(images) == min(RUN.test["max_images"], len(test_images))
    assert all(r["image"].endswith(".dcm") and "stage_2_test_images" in r["image"] for r in images), "the official test DICOMs by default"
    for record in images:
        probabilities = record["probabilities"]
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert record["positive"] == (probabilities["Lung Opacity"] >= saved)
        with Image.open(os.path.join(out, record["overlay"])) as picture:
            assert picture.mode == "RGB" and picture.size == (RUN.test_data["size"],) * 2, "overlay at the stored image size"
    rows = list(csv.DictReader(open(os.path.join(out, "predictions.csv"))))
    assert [r["image"] for r in rows] == [r["image"] for r in images]
    assert Image.open(os.path.join(out, "04_gradcam_examples.png")).size[0] >= 256


def test_three_class_override(bundle_dataset, tmp_path):
    """``--target class``: the three RSNA classes, with the pneumonia decision still on "Lung Opacity"."""
    dirs = {"dataset_dir": bundle_dataset, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    run_configs(["train", "evaluate", "inference"], **dirs, **{**RUN.test, "target": "class"})
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert metrics["classes"] == list(RSNA_CLASSES)
    assert np.array(metrics["test"]["classes"]["confusion_matrix"]).shape == (3, 3)
    assert set(metrics["test"]["classes"]["auroc_one_vs_rest"]) == set(RSNA_CLASSES)
    assert "class accuracy" in metrics["summary"]
    assert (tmp_path / "eval" / "03_confusion_matrix_classes.png").is_file()
    predictions = json.load(open(tmp_path / "eval" / "predictions.json"))
    assert all(list(r["probabilities"]) == list(RSNA_CLASSES) for r in predictions["images"])
    parser = parser_for("train", **dirs, **RUN.test, target="class")
    data = parser.get_parsed_content("train_data")
    datalist = json.load(open(os.path.join(bundle_dataset, "datalist.json")))["training"]
    assert [d["label"] for d in data] == [d["class"] for d in datalist], "labels come from the detailed class"


def test_class_balance_modes(bundle_dataset, tmp_path):
    dirs = {"dataset_dir": bundle_dataset, "output_dir": str(tmp_path)}
    sampler = parser_for("train", **dirs, **RUN.test).get_parsed_content("train#dataloader").sampler
    assert isinstance(sampler, torch.utils.data.WeightedRandomSampler), "balanced sampling is the default"
    weighted = parser_for("train", **dirs, **RUN.test, balance="weights")
    loader, loss = weighted.get_parsed_content("train#dataloader"), weighted.get_parsed_content("loss")
    assert not isinstance(loader.sampler, torch.utils.data.WeightedRandomSampler)
    counts = np.bincount([d["label"] for d in weighted.get_parsed_content("train_data")], minlength=2)
    np.testing.assert_allclose(loss.weight.cpu().numpy(), counts.sum() / (2 * counts), rtol=1e-6)
    assert parser_for("train", **dirs, **RUN.test, balance="none").get_parsed_content("loss").weight is None
    with pytest.raises(RuntimeError) as info:
        workflow("train", **dirs, **RUN.test, balance="oversample")
    assert "balance must be one of" in str(info.value.__cause__)


def test_unreadable_dicom_stops_or_is_skipped(bundle_dataset, tmp_path):
    root = tmp_path / "rsna"
    shutil.copytree(bundle_dataset, root)
    first = json.load(open(root / "datalist.json"))["training"][0]["image"]
    (root / first).write_bytes(b"DICM but not really")
    dirs = {"dataset_dir": str(root), "output_dir": str(tmp_path / "eval")}
    with pytest.raises(Exception) as info:
        parser_for("train", **dirs, **RUN.test).get_parsed_content("train_data")
    cause = info.value
    while cause is not None and not isinstance(cause, UnreadableFiles):
        cause = cause.__cause__ or cause.__context__
    assert cause is not None and os.path.basename(first) in str(cause)
    kept = parser_for("train", **dirs, **RUN.test, skip_bad=True).get_parsed_content("train_data")
    assert os.path.basename(first) not in {os.path.basename(d["image"]) for d in kept}
    report = json.load(open(tmp_path / "eval" / "skipped_training.json"))
    assert len(report["skipped"]) == 1 and report["kept"] == report["checked"] - 1


def test_training_resumes_from_the_last_checkpoint(bundle_dataset, tmp_path):
    state = torch.load(check_training_resumes(NAME, bundle_dataset, tmp_path) / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert set(state) == {"model", "optimizer", "lr_scheduler", "trainer", "progress"}


def test_real_settings_are_the_default():
    parser = ConfigParser()
    parser.read_config(config("train"))
    expected = {"image_size": 224, "pretrained": True, "trainable_blocks": None, "head": "gap", "batch_norm": False,
                "learning_rate": 1e-4, "balance": "sampler", "target": "label", "augment": True}
    for key, value in expected.items():
        assert parser[key] == value, key
    assert parser["optimizer"]["_target_"] == "torch.optim.Adam"
    assert parser["loss"]["_target_"] == "torch.nn.CrossEntropyLoss"
    assert parser["network_def"]["_target_"] == "chestzoo.networks.vgg.VGG16Classifier"
    assert parser.get_parsed_content("classes") == list(RSNA_TARGETS)


# Every real-data setting with its source, as in the table "Settings and their sources" of docs/README.md:
# (config key, value, source). "report" is the README of krakshak/kaggle-pneumonia-detection-model-comparision; a
# change here must change that table too.
REPORT_SETTINGS = [
    ("pretrained", True, "report: pretrained VGG16"), ("batch_norm", False, "report: VGG16"),
    ("trainable_blocks", None, "report: fine-tuned top layers (which ones: ours)"), ("head", "gap", "ours"),
    ("image_size", 224, "ours: VGG16's ImageNet input"), ("target", "label", "report: binary"),
    ("learning_rate", 1e-4, "ours"), ("batch_size", 32, "ours"), ("max_epochs", 20, "ours"),
    ("early_stop_patience", 5, "ours"), ("balance", "sampler", "ours, as the report recommends"), ("augment", True, "ours"),
]


def test_settings_follow_their_sources():
    """The real-data defaults are those of the docs' "Settings and their sources" table."""
    parser = check_settings_follow_sources(NAME, REPORT_SETTINGS)
    assert parser["network_def"]["_target_"] == "chestzoo.networks.vgg.VGG16Classifier"  # report: VGG16
    assert parser["loss"]["_target_"] == "torch.nn.CrossEntropyLoss"  # report: categorical cross-entropy
    assert parser["optimizer"]["_target_"] == "torch.optim.Adam"  # report: Adam
    assert parser["lr_scheduler"]["patience"] == 2 and parser["lr_scheduler"]["factor"] == 0.1  # ours


@pytest.mark.slow
def test_multi_process_training_on_cpu(bundle_dataset, tmp_path):
    """multi_gpu_train.json with two CPU processes (Gloo) and the distributed class-balanced sampler."""
    train_in_two_processes(NAME, tmp_path, dataset_dir=bundle_dataset, ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"))
    state = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    n_train = len(json.load(open(os.path.join(bundle_dataset, "datalist.json")))["training"])
    assert state["trainer"]["epoch_length"] == math.ceil(math.ceil(n_train / 2) / RUN.test["batch_size"])
    assert os.path.isfile(tmp_path / "models" / "model.pt")


@pytest.mark.slow
def test_learns_to_detect_lung_opacity(synthetic_data, tmp_path):
    """Trained as in the demo on synthetic RSNA DICOMs, the classifier separates opacity from no opacity on the test split."""
    root = synthetic_data("rsna", **LEARN_DATA)
    dirs = {"dataset_dir": root, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    run_configs(["train", "evaluate"], **dirs, **LEARN)
    check_learned(NAME, dirs["output_dir"], root)


@pytest.mark.slow
def test_untrained_network_fails_the_learning_check(synthetic_data, tmp_path):
    check_untrained_fails(NAME, synthetic_data("rsna", **LEARN_DATA), tmp_path, **LEARN)
