"""Pediatric pneumonia (Kermany et al. 2018): synthetic chest_xray folders -> reader -> datalist, images, bad input."""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from chestzoo.data import DataError, check_patient_disjoint, load_datalist, read_image, registry
from chestzoo.data.labels import PEDIATRIC_CLASSES
from chestzoo.data.pediatric import patient_of, prepare
from chestzoo.data.synth import pediatric as synth
from chestzoo.data.synth.phantom import to_uint8

PATIENTS, SIZE, SEED = 30, 64, 0
SPLITS = ("training", "validation", "test")
NAME = re.compile(r"^((NORMAL2-)?IM-\d{4}-\d{4}|person\d+_(bacteria|virus)_\d+)\.jpeg$")


@pytest.fixture(scope="module")
def download(tmp_path_factory):
    """The Kaggle archive's nesting: <root>/chest_xray/{train,val,test}/..."""
    root = tmp_path_factory.mktemp("pediatric")
    synth.write(root, patients=PATIENTS, size=SIZE, seed=SEED)
    return str(root)


@pytest.fixture(scope="module")
def prepared(download):
    summary = prepare(download)
    with open(summary["datalist"]) as f:
        return summary, json.load(f)


def _expected_patient(image):
    return ("test:" if image.folder == "test" else "") + image.patient


def _copy(download, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(download, root)
    return root


def test_folders_and_names_follow_the_release(download):
    plan = synth.plan(PATIENTS, SIZE, SEED)
    for folder in synth.FOLDERS:
        assert sorted(os.listdir(os.path.join(download, "chest_xray", folder))) == ["NORMAL", "PNEUMONIA"]
    walk = os.walk(os.path.join(download, "chest_xray"))
    on_disk = sorted(os.path.relpath(os.path.join(d, f), download) for d, _, files in walk for f in files)
    assert on_disk == sorted(image.path for image in plan)
    for image in plan:
        assert NAME.match(image.name), image.name
        assert image.name.startswith("person") == (image.label == "PNEUMONIA")
    val = [i for i in plan if i.folder == "val"]
    assert 0 < len(val) <= 8 and {i.label for i in val} == set(PEDIATRIC_CLASSES)
    pneumonia_share = sum(i.label == "PNEUMONIA" for i in plan) / len(plan)
    assert 0.62 <= pneumonia_share <= 0.85
    per_patient = {}
    for image in plan:
        per_patient.setdefault((image.folder == "test", image.patient), []).append(image)
    assert max(len(v) for v in per_patient.values()) >= 2, "no patient with several images"
    # the test folder is numbered on its own, so raw ids repeat across train and test
    assert {i.patient for i in plan if i.folder == "test"} & {i.patient for i in plan if i.folder != "test"}


def test_images_vary_in_size_and_some_are_rgb(download):
    plan = synth.plan(PATIENTS, SIZE, SEED)
    modes, sizes = set(), set()
    for image in plan:
        with Image.open(os.path.join(download, image.path)) as picture:
            assert picture.format == "JPEG"
            assert picture.size == (image.width, image.height)
            modes.add(picture.mode)
            assert (picture.mode == "RGB") == image.rgb
            sizes.add(picture.size)
    assert modes == {"L", "RGB"}
    assert len(sizes) > len(plan) // 2 and all(w != h for w, h in sizes)


def test_datalist_equals_what_was_written(prepared):
    summary, datalist = prepared
    assert datalist["labels"] == list(PEDIATRIC_CLASSES)
    plan = synth.plan(PATIENTS, SIZE, SEED)
    expected = {image.path: (_expected_patient(image), PEDIATRIC_CLASSES.index(image.label)) for image in plan}
    found = {item["image"]: (item["patient"], item["label"]) for split in SPLITS for item in datalist[split]}
    assert found == expected
    # the official test folder is the test split; train and val make up training + validation
    assert sorted(i["image"] for i in datalist["test"]) == sorted(i.path for i in plan if i.folder == "test")
    for split in SPLITS:
        for k, name in enumerate(PEDIATRIC_CLASSES):
            assert summary[split][name] == sum(1 for i in datalist[split] if i["label"] == k)


def test_validation_is_patient_wise_and_holds_both_classes(prepared, download, tmp_path):
    _, datalist = prepared
    check_patient_disjoint(datalist)
    assert {i["label"] for i in datalist["validation"]} == {0, 1}
    pool = {i["patient"] for i in datalist["training"] + datalist["validation"]}
    share = len({i["patient"] for i in datalist["validation"]}) / len(pool)
    assert 0.05 <= share <= 0.2
    # official val images are merged into the pool by default
    val_names = {i.path for i in synth.plan(PATIENTS, SIZE, SEED) if i.folder == "val"}
    assert val_names <= {i["image"] for i in datalist["training"] + datalist["validation"]}
    other = prepare(download, out=tmp_path / "seed7.json", seed=7)
    with open(other["datalist"]) as f:
        assert [i["patient"] for i in json.load(f)["validation"]] != [i["patient"] for i in datalist["validation"]]


def test_official_val_and_root_being_chest_xray(download, tmp_path):
    summary = prepare(os.path.join(download, "chest_xray"), out=tmp_path / "official.json", use_official_val="True")
    items = load_datalist(summary["datalist"], "validation")
    plan = synth.plan(PATIENTS, SIZE, SEED)
    found = sorted(os.path.relpath(i["image"], download) for i in items)
    assert found == sorted(i.path for i in plan if i.folder == "val")
    training = load_datalist(summary["datalist"], "training")
    assert len(training) == sum(1 for i in plan if i.folder == "train")
    assert all(os.path.isfile(i["image"]) for i in training)


def test_mendeley_layout_without_val(download, tmp_path):
    root = _copy(download, tmp_path)
    shutil.rmtree(root / "chest_xray" / "val")
    summary = prepare(root)
    assert sum(summary["validation"].values()) > 0
    with pytest.raises(DataError, match=r"chest_xray/val: folder not found, so use_official_val cannot be honoured"):
        prepare(root, use_official_val=True)


def test_images_read_back_as_drawn(prepared, download):
    for image in synth.plan(PATIENTS, SIZE, SEED):
        drawn = to_uint8(synth.render(image, SEED).image).astype(np.float32) / 255.0
        read = read_image(os.path.join(download, image.path))
        assert read.shape == (image.height, image.width) and read.dtype == np.float32
        error = np.abs(read - drawn)
        assert error.max() < 0.12 and error.mean() < 0.02, image


def test_same_seed_same_bytes(download, tmp_path):
    synth.write(tmp_path, patients=PATIENTS, size=SIZE, seed=SEED)
    for image in synth.plan(PATIENTS, SIZE, SEED):
        assert filecmp.cmp(os.path.join(download, image.path), tmp_path / image.path, shallow=False), image.path
    assert [i.name for i in synth.plan(PATIENTS, SIZE, SEED + 1)] != [i.name for i in synth.plan(PATIENTS, SIZE, SEED)]


def test_patient_ids_from_every_naming_scheme():
    assert patient_of("train/NORMAL/IM-0115-0001.jpeg") == "IM-0115"
    assert patient_of("NORMAL2-IM-1427-0001.jpeg") == "NORMAL2-IM-1427"
    assert patient_of("person1_bacteria_1.jpeg") == "person1"
    assert patient_of("person1000_virus_1681.jpeg") == "person1000"
    assert patient_of("NORMAL-1049278-0001.jpeg") == "1049278"
    assert patient_of("BACTERIA-1135262-0004.jpeg") == "1135262"
    assert patient_of("VIRUS-1056329-0001.jpeg") == "1056329"
    with pytest.raises(DataError, match=r"scan_0001\.jpeg: unrecognised file name"):
        patient_of("PNEUMONIA/scan_0001.jpeg")


def test_registry_runs_synth_and_prepare(tmp_path):
    summary = registry.synth("pediatric", str(tmp_path), patients=8, size=32, seed=2)
    assert summary["root"] == str(tmp_path / "chest_xray")
    prepared = registry.prepare("pediatric", str(tmp_path))
    listed = sum(sum(counts.values()) for split, counts in prepared.items() if split in SPLITS)
    assert listed == sum(summary["images"].values())


# --- bad input -----------------------------------------------------------------------------------------------


def test_missing_folder(download, tmp_path):
    root = _copy(download, tmp_path)
    shutil.rmtree(root / "chest_xray" / "train" / "NORMAL")
    with pytest.raises(DataError, match=r"chest_xray/train/NORMAL: class folder not found"):
        prepare(root)
    shutil.rmtree(root / "chest_xray" / "test")
    with pytest.raises(DataError, match=r"chest_xray/test: folder not found"):
        prepare(root)
    with pytest.raises(DataError, match="nowhere: folder not found"):
        prepare(tmp_path / "nowhere")


def test_unrecognised_file_name(download, tmp_path):
    root = _copy(download, tmp_path)
    odd = root / "chest_xray" / "train" / "PNEUMONIA" / "scan 12.jpeg"
    shutil.copy(next((root / "chest_xray" / "train" / "PNEUMONIA").iterdir()), odd)
    (root / "chest_xray" / "train" / "PNEUMONIA" / ".DS_Store").write_bytes(b"\0")  # hidden files are skipped
    with pytest.raises(DataError, match=rf"{re.escape(str(odd))}: unrecognised file name"):
        prepare(root)
    odd.unlink()
    prepare(root)
    (root / "chest_xray" / "test" / "NORMAL" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"notes\.txt: not an image file"):
        prepare(root)


def test_empty_class_folder(download, tmp_path):
    root = _copy(download, tmp_path)
    folder = root / "chest_xray" / "test" / "NORMAL"
    for path in folder.iterdir():
        path.unlink()
    with pytest.raises(DataError, match=rf"{re.escape(str(folder))}: class folder is empty"):
        prepare(root)
