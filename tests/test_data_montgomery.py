"""Montgomery County set: the synthetic NLM layout and the reader that turns it into a mask datalist."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from chestzoo.data import registry
from chestzoo.data.errors import DataError
from chestzoo.data.io import read_image, read_mask
from chestzoo.data.montgomery import prepare
from chestzoo.data.synth.montgomery import ASPECT, _upper_zone_tb, render_patient, write
from chestzoo.data.synth.phantom import render_chest

PATIENTS, SIZE, SEED = 12, 96, 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("montgomery")
    written = write(root, patients=PATIENTS, size=SIZE, seed=SEED)
    summary = prepare(root, seed=0)
    with open(summary["datalist"]) as f:
        datalist = json.load(f)
    return root, written, summary, datalist


def _items(datalist):
    return [item for split in ("training", "validation", "test") for item in datalist[split]]


def _resolve(root, path):
    return os.path.join(root, path)


def test_layout(dataset):
    root, written, _, _ = dataset
    base = os.path.join(root, "MontgomerySet")
    images = sorted(os.listdir(os.path.join(base, "CXR_png")))
    assert len(images) == PATIENTS == written["patients"]
    for name in images:
        for folder in ("ManualMask/leftMask", "ManualMask/rightMask"):
            assert os.path.isfile(os.path.join(base, folder, name))
        reading = open(os.path.join(base, "ClinicalReadings", name.replace(".png", ".txt"))).read().splitlines()
        assert reading[0].startswith("Patient's Sex: ") and reading[0][-1] in "MF"
        assert reading[1].startswith("Patient's Age: ") and reading[1].endswith("Y")
        assert (reading[2] == "normal") == name.endswith("_0.png")
    assert 0 < written["tuberculosis"] < PATIENTS


def test_items_labels_and_sizes(dataset):
    root, written, summary, datalist = dataset
    assert datalist["labels"] == ["normal", "tuberculosis"]
    assert datalist["mask_channels"] == ["left lung", "right lung"]
    items = _items(datalist)
    assert len(items) == PATIENTS == summary["patients"]
    assert summary["tuberculosis"] == written["tuberculosis"]
    height, width = int(round(SIZE * ASPECT)), SIZE
    for item in items:
        name = os.path.basename(item["image"])
        assert item["patient"] == name[:11] and item["label"] == int(name[12])
        left, right = item["mask"]
        assert "leftMask" in left and "rightMask" in right
        image = read_image(_resolve(root, item["image"]))
        assert image.shape == (height, width) and height > width  # portrait like the 4020 x 4892 originals
        assert read_mask([_resolve(root, m) for m in item["mask"]], merge=False).shape == (2, height, width)


def test_masks_are_the_true_lungs_left_and_right_not_swapped(dataset):
    root, _, _, datalist = dataset
    for item in _items(datalist):
        index = int(item["patient"].split("_")[1]) - 1
        truth = render_patient(index, SIZE, SEED).chest
        masks = [_resolve(root, m) for m in item["mask"]]
        union = read_mask(masks)[0].astype(bool)
        assert np.array_equal(union, truth.lungs)
        left, right = read_mask(masks, merge=False).astype(bool)
        assert np.array_equal(left, truth.left_lung) and np.array_equal(right, truth.right_lung)
        columns = np.arange(left.shape[1])
        # a PA film shows the patient's left lung on the image's right
        assert (left * columns).sum() / left.sum() > left.shape[1] / 2 > (right * columns).sum() / right.sum()
        assert not (left & right).any()


def test_tuberculosis_brightens_an_upper_zone():
    """Patients differ too much for a brightness threshold to find TB; on one chest, TB brightens its upper zone."""
    chest = render_chest(np.random.default_rng(0), 120, width=SIZE)
    for seed in range(4):
        image, _ = _upper_zone_tb(np.random.default_rng(seed), chest.image, chest.right_lung)
        rows = np.nonzero(chest.right_lung.any(axis=1))[0]
        cut = rows[0] + 0.4 * (rows[-1] - rows[0])
        upper = chest.right_lung & (np.arange(chest.image.shape[0])[:, None] < cut)
        change = image - chest.image
        assert change[upper].mean() > 0.01 and change[upper].max() > 0.1 and np.abs(change[chest.left_lung]).max() == 0


def test_patients_are_split_disjointly_and_deterministically(dataset, tmp_path):
    root, _, _, datalist = dataset
    seen = {}
    for split in ("training", "validation", "test"):
        for item in datalist[split]:
            assert seen.setdefault(item["patient"], split) == split
    again = prepare(root, out=tmp_path / "again.json", seed=0)
    with open(again["datalist"]) as f:
        rerun = json.load(f)
    for split in set(seen.values()):
        assert [i["patient"] for i in rerun[split]] == [i["patient"] for i in datalist[split]]


def test_same_seed_same_bytes(tmp_path):
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        write(tmp_path / name, patients=3, size=48, seed=seed)

    def digest(folder):
        files = sorted(glob.glob(os.path.join(folder, "**", "*.*"), recursive=True))
        return {os.path.relpath(f, folder): hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files}

    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_registry_and_nested_root(tmp_path):
    registry.synth("montgomery", str(tmp_path / "NLM-MontgomeryCXRSet"), patients=2, size=48, seed=0)
    summary = registry.prepare("montgomery", str(tmp_path))  # MontgomerySet found one level down
    assert summary["patients"] == 2 and os.path.isfile(tmp_path / "datalist.json")


# --- bad input ---------------------------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path):
    write(tmp_path, patients=3, size=48, seed=0)
    return tmp_path / "MontgomerySet"


def test_missing_mask(small):
    name = sorted(os.listdir(small / "CXR_png"))[1]
    os.remove(small / "ManualMask" / "rightMask" / name)
    with pytest.raises(DataError, match=f"rightMask/{name}: right lung mask of {name} is missing"):
        prepare(small)


def test_mask_of_another_size(small):
    name = sorted(os.listdir(small / "CXR_png"))[0]
    mask = small / "ManualMask" / "leftMask" / name
    Image.open(mask).resize((40, 40)).save(mask)
    with pytest.raises(DataError, match=f"leftMask/{name}: left lung mask is 40x40 but its image {name} is 48x58"):
        prepare(small)


def test_unexpected_file_name(small):
    shutil.copy(small / "CXR_png" / sorted(os.listdir(small / "CXR_png"))[0], small / "CXR_png" / "scan 7.png")
    with pytest.raises(DataError, match="scan 7.png: file name does not follow"):
        prepare(small)
