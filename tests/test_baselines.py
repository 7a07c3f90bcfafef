"""No-learning baselines: every task runs on synthetic data; the numbers are checked on hand-made data."""

from __future__ import annotations

import json
import os

import fire
import numpy as np
import pytest
from PIL import Image

from chestzoo.baselines import correlation, run_baselines, template_baseline
from chestzoo.cli import ChestZoo
from chestzoo.data.labels import NIH_BOX_LABELS, NIH_LABELS, PEDIATRIC_CLASSES, RSNA_TARGETS

QUICK = {"n_resamples": 20, "size": 16, "thumbnail": 8}
SPLITS = ("training", "validation", "test")


def _png(path, array) -> str:
    Image.fromarray(np.clip(array * 255, 0, 255).astype(np.uint8)).save(path)
    return str(path)


def _write(folder, name: str, header: dict, splits: dict) -> str:
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        json.dump({**header, **splits}, f)
    return path


def _classification_set(folder, shuffle: bool = False, counts=(60, 20, 40), size: int = 16, patients: bool = True) -> str:
    """Noise images; positives have one bright pixel at (5, 7). ``shuffle``: the same images with random labels."""
    rng = np.random.default_rng(1)
    splits = {}
    for split, n in zip(SPLITS, counts):
        labels = np.arange(n) % 2
        items = []
        for i, label in enumerate(labels):
            image = rng.uniform(0.0, 0.7, (size, size))
            image[5, 7] = 1.0 if label else image[5, 7]
            shown = int(rng.integers(0, 2)) if shuffle else int(label)
            item = {"image": _png(folder / f"{split}{i}.png", image), "label": shown}
            items.append({**item, "patient": f"{split}{i}"} if patients else item)
        splits[split] = items
    return _write(folder, "datalist.json", {"labels": list(PEDIATRIC_CLASSES)}, splits)


def test_pixel_baseline_finds_a_planted_shortcut(tmp_path):
    _classification_set(tmp_path)
    report = run_baselines(str(tmp_path), **QUICK)
    task = report["tasks"]["pediatric_classification"]
    pixel = task["baselines"]["pixel"]
    assert pixel["metrics"]["AUROC"]["value"] == pytest.approx(1.0)
    assert pixel["settings"]["PNEUMONIA"] == {"row": 5, "column": 7, "sign": 1, "training_auroc": pytest.approx(1.0)}
    assert task["baselines"]["prevalence"]["metrics"]["AUROC"]["value"] == pytest.approx(0.5)
    assert task["headline"]["value"] == pytest.approx(1.0) and task["unit"] == "patient"


def test_pixel_baseline_on_shuffled_labels_is_chance(tmp_path):
    _classification_set(tmp_path, shuffle=True, counts=(60, 20, 200), patients=False)
    report = run_baselines(str(tmp_path), **QUICK)
    task = report["tasks"]["pediatric_classification"]
    pixel = task["baselines"]["pixel"]["metrics"]["AUROC"]
    assert abs(pixel["value"] - 0.5) < 0.12 and pixel["low"] < 0.5 < pixel["high"]
    # items without a patient: the bootstrap resamples images, and says so
    assert task["unit"] == "image" and pixel["unit"] == "image"
    assert "image bootstrap" in (tmp_path / "baselines" / "baselines.md").read_text()


def test_template_is_the_correlation_with_the_class_mean_difference():
    rng = np.random.default_rng(0)
    x_train, x_test = rng.random((8, 6)), rng.random((5, 6))
    y_train = np.array([[1], [1], [1], [0], [0], [0], [0], [1]], dtype=float)
    scores, _ = template_baseline(x_train, y_train, x_test, ["finding"])
    template = x_train[y_train[:, 0] == 1].mean(axis=0) - x_train[y_train[:, 0] == 0].mean(axis=0)
    expected = [np.corrcoef(image, template)[0, 1] for image in x_test]
    np.testing.assert_allclose(scores[:, 0], expected, rtol=1e-10)
    np.testing.assert_allclose(correlation(x_test, x_test.T)[np.arange(5), np.arange(5)], 1.0)


def test_constant_mask_agrees_with_numpy(tmp_path):
    rng = np.random.default_rng(2)
    masks = {split: [] for split in SPLITS}
    splits = {}
    for split, n in zip(SPLITS, (5, 2, 4)):
        items = []
        for i in range(n):
            left, right = np.zeros((16, 16)), np.zeros((16, 16))
            top, bottom = rng.integers(1, 6), rng.integers(10, 15)
            left[top:bottom, 2:7], right[top:bottom, 9:14] = 1, 1
            masks[split].append(np.maximum(left, right))
            paths = [_png(tmp_path / f"{split}{i}_{side}.png", m) for side, m in (("l", left), ("r", right))]
            image = _png(tmp_path / f"{split}{i}.png", rng.random((16, 16)))
            items.append({"image": image, "patient": f"p{split}{i}", "mask": paths, "label": 0})
        splits[split] = items
    _write(tmp_path, "datalist.json", {"labels": ["normal", "tuberculosis"]}, splits)
    report = run_baselines(str(tmp_path), **QUICK)
    row = report["tasks"]["lung_segmentation"]["baselines"]["mean_mask"]
    constant = np.mean(masks["training"], axis=0) >= 0.5
    dice = [2 * (constant * m).sum() / (constant.sum() + m.sum()) for m in masks["test"]]
    assert row["metrics"]["Dice"]["value"] == pytest.approx(np.mean(dice))
    assert row["settings"]["mask_pixels"] == int(constant.sum())
    assert row["metrics"]["HD95 (px)"]["value"] >= 0


def _box_set(folder, name: str, header: dict, boxes: list, label_of_box: int) -> str:
    """Half the images hold bright patches exactly in ``boxes`` (the same boxes on every positive), half none."""
    rng = np.random.default_rng(3)
    splits = {}
    for split, n in zip(SPLITS, (12, 8, 8)):
        items = []
        for i in range(n):
            image = rng.uniform(0.0, 0.3, (32, 32))
            positive = i % 2 == 0
            for x0, y0, x1, y1 in boxes if positive else []:
                image[y0:y1, x0:x1] = 0.9
            item = {"image": _png(folder / f"{split}{i}.png", image), "patient": f"{split}{i}", "label": int(positive),
                    "box": [list(b) for b in boxes] if positive else [], "box_label": [label_of_box] * len(boxes) if positive else []}
            if name == "datalist_boxes.json":
                item["label"] = [int(positive and k == label_of_box) for k in range(len(NIH_LABELS))]
            items.append(item)
        splits[split] = items
    return _write(folder, name, header, splits)


def test_detection_baselines_find_a_fixed_box(tmp_path):
    header = {"labels": list(NIH_LABELS), "box_classes": list(NIH_BOX_LABELS)}
    _box_set(tmp_path, "datalist_boxes.json", header, [(4, 8, 14, 24)], label_of_box=2)
    report = run_baselines(str(tmp_path), task="nih_detection", **QUICK)
    task = report["tasks"]["nih_detection"]
    for row in task["baselines"].values():
        assert row["metrics"]["mAP@0.5"]["value"] == pytest.approx(1.0)
        assert row["per_class"]["Effusion"]["value"] == pytest.approx(1.0) and row["per_class"]["Mass"]["value"] is None
    assert task["baselines"]["mean_box_template"]["settings"]["boxes"] == [
        {"class": "Effusion", "side": "left", "box_fraction": [4 / 32, 8 / 32, 14 / 32, 24 / 32], "share": 1.0}]


def test_rsna_detection_one_fixed_box_per_lung(tmp_path):
    header = {"labels": list(RSNA_TARGETS), "box_classes": ["Lung Opacity"]}
    _box_set(tmp_path, "datalist.json", header, [(3, 6, 13, 26), (19, 6, 29, 26)], label_of_box=0)
    report = run_baselines(str(tmp_path), **QUICK)
    assert set(report["tasks"]) == {"rsna_classification", "rsna_detection"}
    for row in report["tasks"]["rsna_detection"]["baselines"].values():
        assert row["metrics"]["mAP@0.5"]["value"] == pytest.approx(1.0)
        assert row["metrics"]["RSNA score"]["value"] == pytest.approx(1.0)
        assert [b["side"] for b in row["settings"]["boxes"]] == ["left", "right"]


@pytest.mark.parametrize("dataset, tasks", [
    ("nih", {"nih_classification", "nih_detection"}),
    ("rsna", {"rsna_classification", "rsna_detection"}),
    ("montgomery", {"lung_segmentation"}),
    ("pediatric", {"pediatric_classification"}),
])
def test_every_task_runs_on_synthetic_data(synthetic_data, tmp_path, dataset, tasks):
    out = tmp_path / "baselines"
    report = run_baselines(synthetic_data(dataset), out=str(out), **QUICK)
    assert set(report["tasks"]) == tasks
    assert json.loads((out / "baselines.json").read_text()) == json.loads(json.dumps(report))
    text = (out / "baselines.md").read_text()
    for name, task in report["tasks"].items():
        assert f"## {name}" in text and task["headline"]["metric"] in task["metrics"]
        for row in task["baselines"].values():
            assert set(row["metrics"]) == set(task["metrics"])


def test_cli_writes_the_files(tmp_path, capsys):
    _classification_set(tmp_path)
    out = tmp_path / "out"
    fire.Fire(ChestZoo, command=["baselines", "--dataset_dir", str(tmp_path), "--out", str(out), "--task",
                                 "pediatric_classification", "--size", "16", "--thumbnail", "8", "--n_resamples", "10",
                                 "--max_images", "10"], name="chestzoo")
    printed = capsys.readouterr().out
    assert "| pixel |" in printed and "## pediatric_classification" in printed
    report = json.loads((out / "baselines.json").read_text())
    assert report["max_images"] == 10 and report["tasks"]["pediatric_classification"]["images"]["training"] == 10
    assert (out / "baselines.md").read_text().strip() == printed.strip()


def test_an_evaluation_gets_its_baselines_beside_its_numbers(tmp_path):
    """add_to_evaluation (the bundles' evaluate.json, last step) scores the datalist it is given, even under another
    name, and writes the report into the evaluation's metrics.json and folder."""
    from chestzoo.baselines import add_to_evaluation

    data = tmp_path / "data"
    data.mkdir()
    renamed = data / "my_split.json"
    os.rename(_classification_set(data), renamed)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"summary": {"AUROC": 0.9}}))
    report = add_to_evaluation(str(out), str(renamed), "pediatric_classification", max_images=40)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["summary"] == {"AUROC": 0.9} and metrics["baselines"] == json.loads(json.dumps(report))
    task = report["tasks"]["pediatric_classification"]
    assert task["datalist"] == "my_split.json" and task["headline"]["value"] == pytest.approx(1.0)
    assert (out / "baselines" / "baselines.md").is_file()
    with pytest.raises(ValueError, match="one task"):
        run_baselines(str(data), task=["pediatric_classification", "rsna_classification"], datalist=str(renamed))
