"""cxr_lung_segmentation: the shared bundle checks, plus outputs, the left/right override, the loss, learning, and
lung masks for RSNA DICOMs."""

from bundle_harness import bundle_tests; globals().update(bundle_tests("cxr_lung_segmentation"))  # noqa: E702

import json
import os

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.losses import DiceLoss
from PIL import Image

from bundle_harness import (bundle_workflow, check_learned, check_settings_follow_sources, check_untrained_fails,
                            config_path)
from chestzoo.bundle_runs import BUNDLE_RUNS
from chestzoo.data import load_datalist, read_image, read_mask

NAME = "cxr_lung_segmentation"
RUN = BUNDLE_RUNS[NAME]
BUNDLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles", NAME)
# learning test: a small U-Net at 64 x 64 on 28 training radiographs
LEARN_DATA = {"patients": 40, "size": 64}
LEARN = {**RUN.test, "image_size": 64, "features": [8, 16, 32, 64, 128, 8], "max_epochs": 6, "batch_size": 4, "resume": False}
RSNA_MIN_DICE = 0.8
NOISY_MIN_DICE = 0.85


def config(name: str) -> str:
    return config_path(NAME, name)


def run_configs(names, **overrides) -> None:
    for name in names:
        wf = bundle_workflow(NAME, name, **overrides)
        wf.run()
        wf.finalize()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def test_evaluation_outputs(bundle_outputs):
    out = bundle_outputs["output_dir"]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["channels"] == ["lungs"]
    assert set(metrics["summary"]) == {"Dice", "IoU", "HD95 (px)", "Dice without post-processing"}
    n_test = len(json.load(open(os.path.join(bundle_outputs["dataset_dir"], "datalist.json")))["test"])
    assert metrics["images"] == n_test
    assert 0.0 <= metrics["summary"]["Dice"] <= 1.0 and metrics["summary"]["IoU"] <= metrics["summary"]["Dice"] + 1e-6
    assert np.isfinite(metrics["summary"]["HD95 (px)"])
    assert Image.open(os.path.join(out, "01_examples.png")).size[0] >= 256
    assert os.path.isfile(os.path.join(out, "test_dice_raw.csv")), "per-image values from MetricsSaver"


def test_inference_outputs(bundle_outputs):
    out = bundle_outputs["output_dir"]
    masks = json.load(open(os.path.join(out, "masks.json")))
    assert masks["channels"] == ["lungs"] and len(masks["images"]) == RUN.test["max_images"]
    for record in masks["images"]:
        assert "CXR_png" in record["image"], "the Montgomery radiographs by default"
        (png,) = record["masks"]
        mask = read_image(os.path.join(out, png), "mask")
        assert mask.shape == read_image(record["image"]).shape, "masks come back at the size of the input image"
        nifti = read_image(os.path.join(out, record["nifti"]), "ct")
        np.testing.assert_array_equal(nifti > 0, mask > 0)
        assert Image.open(os.path.join(out, record["overlay"])).mode == "RGB"
    assert os.path.isfile(os.path.join(out, "02_inference_overlays.png"))


def test_left_and_right_lung_as_two_channels(bundle_dataset, tmp_path):
    overrides = {**RUN.test, "merge_masks": False, "dataset_dir": bundle_dataset, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    parser = ConfigParser()
    parser.read_config(config("train"))
    parser.update({"bundle_root": BUNDLE, **overrides})
    item = parser.get_parsed_content("validate#dataset").data[0]
    sample = parser.get_parsed_content("validate#preprocessing")(dict(item))
    assert tuple(sample["label"].shape) == (2, RUN.test["image_size"], RUN.test["image_size"])
    left, right = (read_mask(p) for p in item["label"])
    assert "leftMask" in item["label"][0] and left.sum() > 0 and right.sum() > 0
    run_configs(["train", "evaluate", "inference"], **overrides)
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert metrics["channels"] == ["left lung", "right lung"]
    assert set(metrics["metrics"]["Dice"]["per_channel"]) == {"left lung", "right lung"}
    record = json.load(open(tmp_path / "eval" / "masks.json"))["images"][0]
    assert [os.path.basename(p).split("_", 3)[-1] for p in record["masks"]] == ["left_lung.png", "right_lung.png"]


def test_loss_is_dice_plus_binary_cross_entropy():
    parser = ConfigParser()
    parser.read_config(config("train"))
    parser.update({"bundle_root": BUNDLE})
    loss = parser.get_parsed_content("loss")
    torch.manual_seed(0)
    pred, label = torch.randn(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    expected = DiceLoss(sigmoid=True, batch=True)(pred, label) + torch.nn.functional.binary_cross_entropy_with_logits(pred, label)
    torch.testing.assert_close(loss(pred, label), expected)


def test_real_settings_are_the_default():
    parser = ConfigParser()
    parser.read_config(config("train"))
    for key, value in {"image_size": 256, "features": [64, 128, 256, 512, 1024, 64], "merge_masks": True, "learning_rate": 1e-3, "keep_lungs": True}.items():
        assert parser[key] == value, key
    assert parser["network_def"]["_target_"] == "BasicUNet"
    assert parser["optimizer"]["_target_"] == "torch.optim.Adam"


# Every real-data setting with its source, as in the table "Settings and their sources" of docs/README.md:
# (config key, value, source). "report" is the README of krakshak/kaggle-pneumonia-detection-model-comparision; a
# change here must change that table too.
REPORT_SETTINGS = [
    ("features", [64, 128, 256, 512, 1024, 64], "original U-Net widths (not verified); MONAI default is narrower"),
    ("learning_rate", 1e-3, "PyTorch's Adam default; not in the report"), ("image_size", 256, "ours"),
    ("batch_size", 8, "ours"), ("max_epochs", 100, "ours"), ("early_stop_patience", 10, "ours"),
    ("merge_masks", True, "ours"), ("noise_std", 0.05, "ours, for the report's noise sensitivity"), ("keep_lungs", True, "ours"),
]


def test_settings_follow_their_sources():
    """The real-data defaults are those of the docs' "Settings and their sources" table."""
    parser = check_settings_follow_sources(NAME, REPORT_SETTINGS)
    assert parser["network_def"]["_target_"] == "BasicUNet" and "norm" not in parser["network_def"]  # MONAI defaults
    assert parser["dice_loss"]["_target_"] == "DiceLoss" and parser["dice_loss"]["sigmoid"] is True  # report: Dice
    assert parser["bce_loss"]["_target_"] == "torch.nn.BCEWithLogitsLoss"  # report: binary cross-entropy
    assert parser["optimizer"]["_target_"] == "torch.optim.Adam"  # report: Adam
    assert parser["lr_scheduler"]["patience"] == 4 and parser["lr_scheduler"]["factor"] == 0.1  # ours


@pytest.mark.slow
def test_untrained_network_fails_the_learning_check(synthetic_data, tmp_path):
    check_untrained_fails(NAME, synthetic_data("montgomery", **LEARN_DATA), tmp_path, **LEARN)


@pytest.mark.slow
def test_learns_lungs_and_segments_rsna_dicoms(synthetic_data, tmp_path):
    """Trained briefly on synthetic Montgomery PNGs, the U-Net outlines the lungs on the test split and on RSNA
    DICOMs it never saw (compared with the lungs the phantom drew)."""
    from chestzoo.data.synth import rsna as synth_rsna

    root = synthetic_data("montgomery", **LEARN_DATA)
    dirs = {"dataset_dir": root, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    run_configs(["train", "evaluate"], **dirs, **LEARN)
    check_learned(NAME, dirs["output_dir"], root)
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert metrics["summary"]["HD95 (px)"] < 5, metrics["summary"]

    # noise the report's U-Net was sensitive to: Gaussian noise of std 0.1 on the [0, 1] test images
    run_configs(["evaluate"], **{**dirs, "output_dir": str(tmp_path / "noisy")}, **LEARN, test_noise_std=0.1)
    noisy = json.load(open(tmp_path / "noisy" / "metrics.json"))["summary"]
    assert noisy["Dice"] >= NOISY_MIN_DICE, noisy

    rsna_options = {"patients": 16, "size": 64}
    rsna_root = synthetic_data("rsna", **rsna_options)
    images = os.path.join(rsna_root, "stage_2_train_images")
    run_configs(["inference"], **{**dirs, "dataset_dir": images, "output_dir": str(tmp_path / "rsna")}, **{**LEARN, "max_images": None})
    records = json.load(open(tmp_path / "rsna" / "masks.json"))["images"]
    assert len(records) == 16 and all(r["image"].endswith(".dcm") for r in records)
    studies = {s.patient_id: s for s in synth_rsna.plan(rsna_options["patients"], seed=0)}
    scores = []
    for record in records:
        study = studies[os.path.basename(record["image"])[: -len(".dcm")]]
        truth = synth_rsna.render(study, rsna_options["size"], seed=0).lungs
        predicted = read_image(os.path.join(tmp_path / "rsna", record["masks"][0]), "mask") > 0
        scores.append(dice(predicted, truth))
    assert np.mean(scores) >= RSNA_MIN_DICE, scores
    assert {item["image"] for item in load_datalist(os.path.join(rsna_root, "datalist.json"), "training")} <= {r["image"] for r in records}
