"""``chestzoo compare``: the three RSNA models rebuilt from their bundles, scored and timed on one test split.

The models here are untrained (weights as initialised, saved as the bundles save them): the test checks the
plumbing and the report, not the numbers, which the bundles' own learning tests cover.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from chestzoo.bundle_runs import BUNDLE_RUNS
from chestzoo.compare import MODELS, lung_dice, run_compare, write_report
from chestzoo.data import DataError

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def save_untrained(bundle: str, ckpt_dir: Path) -> None:
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLES / bundle), **BUNDLE_RUNS[bundle].test})
    torch.manual_seed(0)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt_dir / "model.pt")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare_models")
    dirs = {}
    for spec in MODELS:
        dirs[spec.bundle] = root / spec.bundle
        save_untrained(spec.bundle, dirs[spec.bundle])
    # the detector's evaluation would have chosen these; a low threshold keeps the untrained detector's boxes
    (dirs["rsna_pneumonia_detection"] / "postprocessing.json").write_text(json.dumps({"score_threshold": 0.0, "nms_iou": 0.3}))
    return {k: str(v) for k, v in dirs.items()}


def test_comparison_report(synthetic_data, checkpoints, tmp_path):
    threads_before = torch.get_num_threads()
    rsna = synthetic_data("rsna", patients=16, size=64)
    montgomery = synthetic_data("montgomery", patients=16, size=64)
    report = run_compare(rsna, str(tmp_path / "cmp"), ckpt_dirs=checkpoints, settings="test", lung_dataset_dir=montgomery,
                         device="cpu", threads=1)
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    test_items = json.loads(Path(rsna, "datalist.json").read_text())["test"]
    assert result["images"] == len(test_items) and result["with_opacity"] == sum(item["label"] for item in test_items)
    rows = result["models"]
    assert set(rows) == {m.bundle for m in MODELS}
    for bundle in ("rsna_pneumonia_classification", "rsna_pneumonia_detection"):
        assert 0.0 <= rows[bundle]["auroc"] <= 1.0
    assert rows["cxr_lung_segmentation"]["auroc"] is None  # a lung segmenter is not scored as a pneumonia model
    assert 0.0 <= rows["cxr_lung_segmentation"]["localisation"]["lung Dice"] <= 1.0
    assert result["lung_dice"]["images"] == len(json.loads(Path(montgomery, "datalist.json").read_text())["test"])
    assert 0.0 <= rows["rsna_pneumonia_detection"]["localisation"]["RSNA score"] <= 1.0
    assert all(row["ms_per_image"] > 0 for row in rows.values())
    assert result["threads"] == 1 and torch.get_num_threads() == threads_before  # set for the run only
    assert result["detector_postprocessing"] == {"score_threshold": 0.0, "nms_iou": 0.3}
    # every number has its bootstrap interval, around it, and the report prints it
    det = rows["rsna_pneumonia_detection"]
    for key, value in (("auroc", det["auroc"]), ("RSNA score", det["localisation"]["RSNA score"])):
        interval = det["ci95"][key]
        assert interval["value"] == pytest.approx(value) and interval["n_resamples"] == 1000
        assert interval["low"] is None or interval["low"] <= value <= interval["high"]
    dice = rows["cxr_lung_segmentation"]["ci95"]["lung Dice"]
    assert dice["value"] == pytest.approx(rows["cxr_lung_segmentation"]["localisation"]["lung Dice"]) and dice["unit"] == "patient"
    assert rows["rsna_pneumonia_classification"]["ci95"]["auroc"]["value"] == pytest.approx(rows["rsna_pneumonia_classification"]["auroc"])
    text = report.read_text()
    assert "| U-Net | `cxr_lung_segmentation` | lung fields | - (not a pneumonia model) | lung Dice" in text
    assert "RSNA score" in text and "(best box score)" in text
    for picture in ("01_roc.png", "02_inference_time.png", "03_examples.png"):
        assert (tmp_path / "cmp" / picture).stat().st_size > 1000, picture


def test_missing_checkpoint_names_the_file(synthetic_data, checkpoints, tmp_path):
    rsna = synthetic_data("rsna", patients=16, size=64)
    dirs = {**checkpoints, "rsna_pneumonia_classification": str(tmp_path / "nothing")}
    with pytest.raises(DataError) as info:
        run_compare(rsna, str(tmp_path / "cmp"), ckpt_dirs=dirs, settings="test", device="cpu")
    assert str(tmp_path / "nothing" / "model.pt") in str(info.value)
    with pytest.raises(ValueError, match="unknown bundles"):
        run_compare(rsna, str(tmp_path / "cmp"), ckpt_dirs={"vgg": "x"}, settings="test")


class _FixedMasks:
    """Stands in for a loaded U-Net: returns a given mask for every image."""

    def __init__(self, mask):
        self.mask = mask

    def prepare(self, path):
        return {"image": path}

    def predict(self, item):
        return self.mask


def test_lung_dice_against_the_datalist_masks(synthetic_data):
    from chestzoo.data import load_datalist, read_mask

    root = synthetic_data("montgomery", patients=16, size=64)
    datalist = os.path.join(root, "datalist.json")
    first = load_datalist(datalist, "test", file_keys=["image", "mask"])[0]
    truth = read_mask(first["mask"], merge=True)[0] > 0.5
    # the first test image's own lungs, predicted at half the resolution: near-perfect on it, less on the others
    half = truth[::2, ::2]
    assert lung_dice(_FixedMasks(half), datalist, max_images=1)["dice"] > 0.95
    zero = lung_dice(_FixedMasks(np.zeros_like(half)), datalist)
    assert zero["dice"] == 0.0 and zero["ci95"]["low"] == zero["ci95"]["high"] == 0.0


def test_report_leaves_missing_numbers_empty(tmp_path):
    result = {
        "dataset": "d", "images": 4, "with_opacity": 2, "device": "cpu", "threads": 1, "settings": "none",
        "detector_postprocessing": {"score_threshold": 0.5, "nms_iou": 0.3}, "lung_dice": None,
        "detector_box_area_in_unet_lungs": None,
        "models": {
            "rsna_pneumonia_classification": {"name": "VGG16", "kind": "classifier", "output": "p", "auroc": None, "localisation": None, "ms_per_image": 1.0},
            "cxr_lung_segmentation": {"name": "U-Net", "kind": "segmenter", "output": "lungs", "auroc": None,
                                      "localisation": {"lung Dice": None}, "ms_per_image": 2.0},
            "rsna_pneumonia_detection": {"name": "Mask R-CNN", "kind": "detector", "output": "boxes", "auroc": 0.75,
                                         "localisation": {"RSNA score": 0.5, "mAP@0.5": None}, "ms_per_image": 3.0},
        },
    }
    text = write_report(result, tmp_path / "r.md").read_text()
    assert "| VGG16 | `rsna_pneumonia_classification` | p | - | - (image level only) | 1.0 |" in text
    assert "- (no lung masks given)" in text
    assert "| 0.750 (best box score) | RSNA score 0.500, mAP@0.5 - | 3.0 |" in text


def test_command_line_help():
    done = subprocess.run([sys.executable, "-m", "chestzoo.cli", "compare", "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "DATASET_DIR" in done.stdout + done.stderr
