"""rsna_pneumonia_detection: the shared bundle checks, plus its outputs, lung clipping, defaults and learning."""

from bundle_harness import bundle_tests; globals().update(bundle_tests("rsna_pneumonia_detection"))  # noqa: E702

import csv
import json
import os

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from bundle_harness import (bundle_workflow, check_learned, check_offline_weights_fail_clearly,
                            check_settings_follow_sources, check_untrained_fails, config_path, not_yet_learned)
from chestzoo.bundle_runs import BUNDLE_RUNS
from chestzoo.data import DataError, load_datalist
from chestzoo.data.synth import rsna as synth_rsna
from chestzoo.engines.rsna_detection import decode_mask
from chestzoo.metrics.rsna import read_submission, score_submission

NAME = "rsna_pneumonia_detection"
RUN = BUNDLE_RUNS[NAME]
BUNDLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles", NAME)
# the learning test: the demo's compact detector on a smaller synthetic set; its bar is BundleRun.margins
# (chestzoo.evidence): the RSNA score interval's lower end against the best fixed-box baseline
LEARN_DATA = RUN.demo_data  # the demo's data and settings: the test backs the demo report's verdict
LEARN = {**RUN.demo, "resume": False, "examples": 0}


def config(name: str) -> str:
    return config_path(NAME, name)


def workflow(name: str, **overrides) -> ConfigWorkflow:
    return bundle_workflow(NAME, name, **overrides)


def test_evaluation_outputs(bundle_outputs):
    out, ckpt = bundle_outputs["output_dir"], bundle_outputs["ckpt_dir"]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert set(metrics["summary"]) == {"RSNA score", "mAP@0.5", "image AUROC"}
    test_items = load_datalist(os.path.join(bundle_outputs["dataset_dir"], "datalist.json"), "test")
    assert metrics["test"]["images"] == len(test_items) == len(metrics["test"]["per_image"])
    assert metrics["test"]["with_opacity"] == sum(1 for item in test_items if item["box"])
    assert metrics["test"]["rsna"]["iou_thresholds"] == pytest.approx([0.4 + 0.05 * k for k in range(8)])
    settings = json.load(open(os.path.join(ckpt, "postprocessing.json")))
    assert settings == json.load(open(os.path.join(out, "postprocessing.json"))) == {k: metrics["postprocessing"][k] for k in settings}
    assert 0.0 < settings["score_threshold"] < 1.0 and settings["nms_iou"] in (0.1, 0.2, 0.3, 0.4, 0.5, 0.7)
    assert len(metrics["validation"]["tuning"]) == 6 * 19
    for picture in ("01_test_examples.png", "02_rsna_by_iou.png", "03_validation_tuning.png"):
        assert Image.open(os.path.join(out, picture)).size[0] > 100
    state = torch.load(os.path.join(ckpt, "checkpoint_final.pt"), map_location="cpu", weights_only=True)
    assert set(state) == {"model", "optimizer", "lr_scheduler", "trainer", "progress"}  # what a stopped run resumes from


def test_inference_outputs(bundle_outputs):
    out = bundle_outputs["output_dir"]
    predictions = json.load(open(os.path.join(out, "predictions.json")))
    settings = json.load(open(os.path.join(bundle_outputs["ckpt_dir"], "postprocessing.json")))
    assert (predictions["score_threshold"], predictions["nms_iou"]) == (settings["score_threshold"], settings["nms_iou"])
    test_images = sorted(os.listdir(os.path.join(bundle_outputs["dataset_dir"], "stage_2_test_images")))
    images = predictions["images"]
    assert len(images) == min(RUN.test["max_images"], len(test_images))
    size = RUN.test_data["size"]
    for record in images:
        assert record["size"] == [size, size]  # boxes and masks are in pixels of the file, not of the network input
        assert all(s >= settings["score_threshold"] for s in record["scores"])
        assert len(record["boxes"]) == len(record["scores"]) == len(record["masks"])
        for box, rle in zip(record["boxes"], record["masks"]):
            assert 0 <= box[0] < box[2] <= size and 0 <= box[1] < box[3] <= size
            assert decode_mask(rle).shape == (size, size)
        assert Image.open(os.path.join(out, record["overlay"])).mode == "RGB"
    with open(os.path.join(out, "submission.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["patientId"] for r in rows] == [r["patientId"] for r in images]
    submitted = read_submission(os.path.join(out, "submission.csv"))
    for record in images:
        boxes, scores = submitted[record["patientId"]]
        expected = np.asarray(record["boxes"], dtype=np.float64).reshape(-1, 4)
        assert np.allclose(boxes, expected, atol=0.06) and np.allclose(scores, record["scores"], atol=1e-4)


def test_inference_writes_boxes_masks_and_submission_in_file_pixels(bundle_outputs, tmp_path):
    """With every detection kept (threshold 0), the outputs carry boxes and masks: check their geometry and the CSV."""
    import shutil

    ckpt = tmp_path / "models"
    ckpt.mkdir()
    shutil.copy(os.path.join(bundle_outputs["ckpt_dir"], "model.pt"), ckpt / "model.pt")
    (ckpt / "postprocessing.json").write_text(json.dumps({"score_threshold": 0.0, "nms_iou": 0.5}))
    out = tmp_path / "out"
    wf = workflow("inference", dataset_dir=bundle_outputs["dataset_dir"], ckpt_dir=str(ckpt), output_dir=str(out),
                  **{**RUN.test, "image_size": 32})  # the network sees 32 x 32; outputs must still be in the files' 64 x 64
    wf.run()
    wf.finalize()
    images = json.load(open(out / "predictions.json"))["images"]
    assert sum(len(r["boxes"]) for r in images) > 0
    size = RUN.test_data["size"]
    submitted = read_submission(str(out / "submission.csv"))
    for record in images:
        assert record["scores"] == sorted(record["scores"], reverse=True)
        for box, rle in zip(record["boxes"], record["masks"]):
            mask = decode_mask(rle)
            assert mask.shape == (size, size)
            if mask.any():  # a mask lies within (about) its box: mapped back with the same factor
                rows, cols = np.nonzero(mask)
                assert cols.min() >= box[0] - 2 and cols.max() <= box[2] + 2 and rows.min() >= box[1] - 2 and rows.max() <= box[3] + 2
        boxes, scores = submitted[record["patientId"]]
        order = np.argsort(-np.asarray(record["scores"]), kind="stable")
        assert np.allclose(boxes, np.asarray(record["boxes"]).reshape(-1, 4)[order], atol=0.06)


def test_submission_of_a_labelled_split_scores_as_evaluation_did(bundle_outputs, tmp_path):
    dirs = {"dataset_dir": bundle_outputs["dataset_dir"], "ckpt_dir": bundle_outputs["ckpt_dir"], "output_dir": str(tmp_path)}
    wf = workflow("inference", **dirs, **{**RUN.test, "max_images": None, "input_split": "test"})
    wf.run()
    wf.finalize()
    items = load_datalist(os.path.join(bundle_outputs["dataset_dir"], "datalist.json"), "test")
    truth = {os.path.basename(item["image"])[:-4]: item["box"] for item in items}
    scored = score_submission(str(tmp_path / "submission.csv"), truth)
    metrics = json.load(open(os.path.join(bundle_outputs["output_dir"], "metrics.json")))
    assert scored["images"] == metrics["test"]["rsna"]["images"]
    assert scored["score"] == pytest.approx(metrics["test"]["rsna"]["score"], abs=0.02, nan_ok=True)


def _write_phantom_lungs(root: str, folder) -> None:
    """The synthetic images' true lung fields as ``<patientId>_lungs.png``, as the lung segmentation bundle writes them."""
    options = RUN.test_data
    for study in synth_rsna.plan(options["patients"], options.get("seed", 0)):
        phantom = synth_rsna.render(study, options["size"], options.get("seed", 0))
        Image.fromarray(phantom.lungs.astype(np.uint8) * 255).save(folder / f"{study.patient_id}_lungs.png")


def test_instance_masks_are_clipped_to_lung_masks(bundle_dataset, tmp_path):
    lungs = tmp_path / "lungs"
    lungs.mkdir()
    _write_phantom_lungs(bundle_dataset, lungs)
    parser = ConfigParser()
    parser.read_config(config("train"))
    parser.update({**RUN.test, "dataset_dir": bundle_dataset, "output_dir": str(tmp_path / "out"), "lung_masks": str(lungs),
                   "affine_prob": 0.0, "flip_prob": 0.0, "intensity_prob": 0.0})
    items = parser.get_parsed_content("train#items")
    assert all(item["lung"] for item in items)
    transform = parser.get_parsed_content("train#preprocessing")
    positive = next(item for item in items if item["box"])
    sample = transform(dict(positive))
    masks, boxes = sample["masks"].numpy().astype(bool), sample["box"].numpy()
    lung = np.asarray(Image.open(positive["lung"][0])) > 0
    assert "lung" not in sample and masks.shape[0] == len(boxes)
    for mask, box in zip(masks, boxes):
        inside = np.zeros_like(mask)
        inside[int(round(box[1])):int(round(box[3])), int(round(box[0])):int(round(box[2]))] = True
        assert mask.any() and not (mask & ~inside).any()
        assert not (mask & ~lung).any()  # the synthetic opacities lie in the lungs, so clipping keeps lung pixels only
    (lungs / f"{os.path.basename(items[0]['image'])[:-4]}_lungs.png").unlink()
    parser.update({"lung_masks": str(lungs)})  # resets what the parser resolved before
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("train#items")
    cause = info.value
    while cause is not None and not isinstance(cause, DataError):
        cause = cause.__cause__ or cause.__context__
    assert cause is not None and "lung mask missing" in str(cause)


def test_detector_outputs_masks_and_a_packed_tensor():
    parser = ConfigParser()
    parser.read_config(config("inference"))
    parser.update(RUN.test)
    network = parser.get_parsed_content("network_def").eval()
    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        packed = network(images)
        listed = network(list(images))
    assert packed.shape == (2, 6, RUN.test["detections_per_image"])
    assert set(listed[0]) == {"boxes", "labels", "scores", "masks"}
    assert listed[0]["masks"].shape[1:] == (1, 64, 64)
    for k in range(2):
        n = len(listed[k]["scores"])
        assert torch.allclose(packed[k, 4, :n], listed[k]["scores"]) and (packed[k, 5, n:] == -1).all()


def test_real_settings_are_the_default():
    parser = ConfigParser()
    parser.read_config(config("train"))
    expected = {"backbone": "resnet50_fpn_v2", "pretrained": True, "image_size": 512, "batch_size": 4, "learning_rate": 0.005,
                "mask_head_channels": 256, "mask_head_layers": 4, "fpn_channels": 256, "mask_shape": "box", "lung_masks": None}
    for key, value in expected.items():
        assert parser[key] == value, key
    assert parser["network_def"]["_target_"] == "chestzoo.networks.mask_rcnn.MaskRCNNDetector"
    assert parser["optimizer_name"] == "sgd" and parser["sgd"]["_target_"] == "torch.optim.SGD"
    for name in ("evaluate", "inference"):
        other = ConfigParser()
        other.read_config(config(name))
        assert other["pretrained"] is False and other["image_size"] == 512  # weights come from the checkpoint


# Every real-data setting with its source, as in the table "Settings and their sources" of docs/README.md:
# (config key, value, source).
# The report gives no Mask R-CNN training settings: "report" is the README of krakshak/kaggle-pneumonia-detection-model-comparision; a
# change here must change that table too.
TORCHVISION_OR_OURS = [
    ("backbone", "resnet50_fpn_v2", "ours"), ("pretrained", True, "ours: COCO weights"),
    ("trainable_backbone_layers", 5, "ours (torchvision: 3)"), ("fpn_channels", 256, "torchvision default"),
    ("representation_size", 1024, "torchvision default"), ("mask_head_layers", 4, "torchvision default"),
    ("mask_head_channels", 256, "torchvision default"), ("proposals_train", 2000, "torchvision default"),
    ("proposals_test", 1000, "torchvision default"), ("roi_batch_size", 512, "torchvision default"),
    ("detections_per_image", 100, "torchvision default"), ("detector_nms_iou", 0.7, "ours (torchvision: 0.5)"),
    ("min_score", 0.01, "ours (torchvision: 0.05)"), ("nms_iou", 0.3, "ours, tuned on validation"),
    ("mask_shape", "box", "ours: RSNA has boxes only"), ("image_size", 512, "ours"), ("optimizer_name", "sgd", "ours"),
    ("momentum", 0.9, "ours"), ("weight_decay", 1e-4, "ours"), ("learning_rate", 0.005, "ours"), ("batch_size", 4, "ours"),
    ("warmup_epochs", 1, "ours"), ("min_learning_rate", 1e-6, "ours"), ("clip_grad_norm", 10.0, "ours"),
    ("max_epochs", 20, "ours"), ("early_stop_patience", 5, "ours"), ("flip_prob", 0.5, "ours"), ("affine_prob", 0.5, "ours"),
    ("rotate_degrees", 10.0, "ours"), ("shift_fraction", 0.05, "ours"), ("scale_range", 0.1, "ours"),
    ("intensity_prob", 0.5, "ours"), ("brightness", 0.1, "ours"), ("contrast", 0.1, "ours"), ("lung_masks", None, "ours"),
]


def test_settings_follow_their_sources():
    """The real-data defaults are those of the docs' "Settings and their sources" table."""
    parser = check_settings_follow_sources(NAME, TORCHVISION_OR_OURS)
    assert parser["network_def"]["_target_"] == "chestzoo.networks.mask_rcnn.MaskRCNNDetector"  # report: Mask R-CNN


def test_offline_coco_weights_fail_clearly(tmp_path, monkeypatch):
    check_offline_weights_fail_clearly(NAME, tmp_path, monkeypatch)


@pytest.mark.slow
@not_yet_learned("RSNA score 0.003 [0.000, 0.007], best baseline 0.000 [0.000, 0.000], bar 0.100")
def test_learns_to_localise_opacities(synthetic_data, tmp_path):
    """Trained as in the demo on synthetic RSNA, the detector finds the opacities on its test split (challenge metric)."""
    root = synthetic_data("rsna", **LEARN_DATA)
    dirs = {"dataset_dir": root, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    for name in ("train", "evaluate"):
        wf = workflow(name, **dirs, **LEARN)
        wf.run()
        wf.finalize()
    check_learned(NAME, dirs["output_dir"], root)


@pytest.mark.slow
def test_untrained_network_fails_the_learning_check(synthetic_data, tmp_path):
    check_untrained_fails(NAME, synthetic_data("rsna", **LEARN_DATA), tmp_path, **LEARN)


def test_mask_head_size_is_configurable_on_the_small_backbones():
    from torch import nn

    from chestzoo.networks.mask_rcnn import MaskRCNNDetector

    net = MaskRCNNDetector(1, backbone="resnet18_fpn", fpn_channels=32, fpn_stages=[3, 4], anchor_sizes=[32, 64, 128],
                           representation_size=32, mask_head_channels=24, mask_head_layers=3)
    convs = [m for m in net.model.roi_heads.mask_head.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [24, 24, 24] and convs[0].in_channels == 32
    assert net.model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 2  # background + Lung Opacity
    with pytest.raises(ValueError, match="torchvision's mask head"):
        MaskRCNNDetector(1, backbone="resnet50_fpn_v2", mask_head_channels=64)
