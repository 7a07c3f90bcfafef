"""Lung-PET-CT-Dx: the synthetic NBIA download and the reader that turns it into a slice datalist."""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import shutil

import numpy as np
import pydicom
import pytest

from chestzoo.data import registry
from chestzoo.data.errors import DataError
from chestzoo.data.io import read_image, window
from chestzoo.data.labels import LUNG_CT_CLASSES
from chestzoo.data.lung_pet_ct_dx import prepare
from chestzoo.data.synth.lung_pet_ct_dx import METADATA_COLUMNS, box_of, make_cases, write

PATIENTS, SIZE, SLICES = 8, 64, 24


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("lung_pet_ct_dx")
    written = write(root, patients=PATIENTS, size=SIZE, seed=3, slices=SLICES)
    summary = prepare(root, seed=0)
    with open(summary["datalist"]) as f:
        datalist = json.load(f)
    return root, written, summary, datalist


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A smaller download that the bad-input tests copy and damage."""
    root = tmp_path_factory.mktemp("lung_small")
    write(root, patients=3, size=32, seed=1, slices=12)
    return root


def _items(datalist):
    return [item for split in ("training", "validation", "test") for item in datalist[split]]


def _copy(small, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(small, target)
    return target


def _tree_digest(root) -> dict[str, str]:
    return {
        os.path.relpath(p, root): hashlib.sha256(open(p, "rb").read()).hexdigest()
        for p in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True))
        if os.path.isfile(p)
    }


def test_layout_and_metadata_columns(dataset):
    root, written, _, _ = dataset
    manifests = glob.glob(os.path.join(root, "manifest-*", "metadata.csv"))
    assert len(manifests) == 1
    with open(manifests[0], newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == METADATA_COLUMNS
        rows = list(reader)
    assert {r["Modality"] for r in rows} == {"CT", "PT"}
    for row in rows:
        folder = os.path.join(os.path.dirname(manifests[0]), row["File Location"])
        assert os.path.isdir(folder), row["File Location"]
        assert len(glob.glob(os.path.join(folder, "*.dcm"))) == int(row["Number of Images"])
        assert row["File Location"].startswith(f"./Lung-PET-CT-Dx/{row['Subject ID']}/")
        study_folder, series_folder = row["File Location"].split("/")[-2:]
        assert study_folder.endswith(row["Study UID"][-5:]) and series_folder.endswith(row["Series UID"][-5:])
    subjects = {r["Subject ID"] for r in rows}
    assert len(subjects) == PATIENTS and {s[len("Lung_Dx-")] for s in subjects} <= set(LUNG_CT_CLASSES)
    ct = pydicom.dcmread(glob.glob(os.path.join(root, "manifest-*", "Lung-PET-CT-Dx", "*", "*", "*", "1-01.dcm"))[0])
    assert ct.SOPClassUID == pydicom.uid.CTImageStorage
    assert float(ct.RescaleIntercept) == -1024 and float(ct.RescaleSlope) == 1
    for keyword in ("ImagePositionPatient", "SliceLocation", "InstanceNumber", "PixelSpacing", "SliceThickness"):
        assert keyword in ct
    assert written["pet_series"] >= 1


def test_every_box_equals_the_true_tumour_extent(dataset):
    _, written, summary, datalist = dataset
    cases = {case.subject: case for case in make_cases(PATIENTS, SIZE, 3, SLICES)}
    items = _items(datalist)
    assert len(items) == PATIENTS * SLICES == summary["slices"]
    annotated = 0
    for item in items:
        case = cases[item["patient"]]
        _, tumour = case.render(item["slice"])
        truth = box_of(tumour)
        if truth is None:
            assert item["box"] == [] and item["box_label"] == []
        else:
            annotated += 1
            assert item["box"] == [truth]
            assert item["box_label"] == [list(LUNG_CT_CLASSES).index(case.letter)]
        assert item["label"] == list(LUNG_CT_CLASSES).index(case.letter)
        assert item["slice_position"] == pytest.approx(item["slice"] / (SLICES - 1), abs=1e-4)
    assert annotated == written["annotated_slices"] == summary["annotated_slices"] > 0
    for subject in cases:  # the tumour spans several consecutive slices of every patient
        shown = sorted(i["slice"] for i in items if i["patient"] == subject and i["box"])
        assert len(shown) >= 2 and shown == list(range(shown[0], shown[-1] + 1))


def test_slices_follow_image_position_not_file_names(dataset):
    root, _, _, datalist = dataset
    items = _items(datalist)
    base = os.path.dirname(os.path.join(root, "datalist.json"))
    reversed_numbering = 0
    for subject in {i["patient"] for i in items}:
        series = sorted((i for i in items if i["patient"] == subject), key=lambda i: i["slice"])
        headers = [pydicom.dcmread(os.path.join(base, i["image"]), stop_before_pixels=True) for i in series]
        z = [float(h.ImagePositionPatient[2]) for h in headers]
        assert z == sorted(z, reverse=True)  # slice 0 is the head end
        reversed_numbering += int(headers[0].InstanceNumber) == len(headers)
    assert reversed_numbering >= 1  # a caudo-cranially numbered series was among them


def test_reader_gives_hounsfield_units_and_lung_window(dataset):
    root, _, _, datalist = dataset
    assert datalist["window"] == [-600.0, 1500.0]
    assert datalist["labels"] == datalist["box_classes"] == list(LUNG_CT_CLASSES.values())
    cases = {case.subject: case for case in make_cases(PATIENTS, SIZE, 3, SLICES)}
    checked = 0
    for item in _items(datalist):
        if not item["box"]:
            continue
        path = os.path.join(root, item["image"])
        hu = read_image(path, "ct")
        case = cases[item["patient"]]
        xs, ys = case.grid()
        _, tumour = case.render(item["slice"])
        lungs = case.lungs(item["slice"], xs, ys)
        lung = (lungs["right"] | lungs["left"]) & ~tumour
        x0, y0, x1, y1 = item["box"][0]
        inside = hu[y0:y1, x0:x1][tumour[y0:y1, x0:x1]]
        assert abs(np.median(inside) - 40) < 25
        assert abs(np.median(hu[lung]) + 850) < 60
        assert np.median(hu[:2, :2]) < -950  # air in the corner
        stored = pydicom.dcmread(path).pixel_array
        assert abs(np.median(stored[lung]) - (1024 - 850)) < 60  # the file itself holds HU + 1024
        lung_window = window(hu, *datalist["window"])
        assert np.median(lung_window[tumour]) > 0.85 and 0.2 < np.median(lung_window[lung]) < 0.45
        checked += 1
        if checked == 5:
            break
    assert checked == 5


def test_pet_series_are_skipped(dataset):
    root, written, summary, datalist = dataset
    assert summary["left_out"]["PT series"] == written["pet_series"]
    for item in _items(datalist):
        modality = pydicom.dcmread(os.path.join(root, item["image"]), stop_before_pixels=True).Modality
        assert modality == "CT"


def test_patients_are_split_disjointly(dataset):
    _, _, summary, datalist = dataset
    seen = {}
    for split in ("training", "validation", "test"):
        for item in datalist[split]:
            assert seen.setdefault(item["patient"], split) == split
    assert len(seen) == PATIENTS == summary["patients"]


def test_walking_the_folders_without_metadata_gives_the_same_datalist(dataset, tmp_path):
    root, _, _, datalist = dataset
    copy = tmp_path / "walk"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("metadata.csv", "datalist.json"))
    summary = prepare(copy, seed=0)
    with open(summary["datalist"]) as f:
        walked = json.load(f)
    assert summary["left_out"]["PT series"] >= 1
    for split in ("training", "validation", "test"):
        assert walked[split] == datalist[split]


def test_same_seed_same_bytes(tmp_path):
    write(tmp_path / "a", patients=2, size=32, seed=5, slices=8)
    write(tmp_path / "b", patients=2, size=32, seed=5, slices=8)
    write(tmp_path / "c", patients=2, size=32, seed=6, slices=8)
    a, b, c = (_tree_digest(tmp_path / n) for n in "abc")
    assert a == b
    assert a != c


def test_registry_runs_both_sides(tmp_path):
    written = registry.synth("lung_pet_ct_dx", str(tmp_path), patients=2, size=32, seed=0, slices=8)
    summary = registry.prepare("lung_pet_ct_dx", str(tmp_path))
    assert summary["slices"] == 16 and written["ct_slices"] == 16
    assert os.path.isfile(tmp_path / "datalist.json")


# --- bad input: every error names the file at fault -----------------------------------------------------------


def _xmls(root):
    return sorted(glob.glob(os.path.join(root, "*", "Annotation", "*", "*.xml")))


def test_xml_naming_an_unknown_slice(small, tmp_path):
    root = _copy(small, tmp_path)
    xml = _xmls(root)[0]
    stray = os.path.join(os.path.dirname(xml), "1.2.3.4.5.6.7.xml")
    shutil.copy(xml, stray)
    with pytest.raises(DataError, match="1.2.3.4.5.6.7.xml.*matches no CT slice"):
        prepare(root)
    summary = prepare(root, strict="false")  # as `--strict false` arrives from the command line
    assert summary["left_out"]["annotations matching no CT slice"] == 1


def test_malformed_xml(small, tmp_path):
    root = _copy(small, tmp_path)
    xml = _xmls(root)[0]
    with open(xml, "w") as f:
        f.write("<annotation><object><name>A</name><bndbox><xmin>3</xmin>")
    with pytest.raises(DataError, match=f"{os.path.basename(xml)}: malformed annotation XML"):
        prepare(root)


def test_box_outside_the_slice_and_unknown_class(small, tmp_path):
    root = _copy(small, tmp_path)
    first, second = _xmls(root)[:2]
    text = open(first).read()
    with open(first, "w") as f:
        f.write(text.replace("<xmax>", "<xmax>9").replace("</xmax>", "0</xmax>"))
    with pytest.raises(DataError, match=f"{os.path.basename(first)}: box .* outside"):
        prepare(root)
    with open(first, "w") as f:
        f.write(text)
    text = open(second).read()
    with open(second, "w") as f:
        name = text.split("<name>")[1].split("</name>")[0]
        f.write(text.replace(f"<name>{name}</name>", "<name>Q</name>"))
    with pytest.raises(DataError, match=f"{os.path.basename(second)}: class 'Q'"):
        prepare(root)


def test_missing_dicom(small, tmp_path):
    root = _copy(small, tmp_path)
    series = glob.glob(os.path.join(root, "manifest-*", "Lung-PET-CT-Dx", "*", "*Chest*", "*"))[0]
    os.remove(os.path.join(series, "1-05.dcm"))
    with pytest.raises(DataError, match=r"metadata.csv, row \d+: series .* has 11 DICOM files but metadata.csv lists 12"):
        prepare(root)


def test_series_folder_without_dicom(small, tmp_path):
    root = _copy(small, tmp_path)
    series = sorted(glob.glob(os.path.join(root, "manifest-*", "Lung-PET-CT-Dx", "*", "*Chest*", "*")))[1]
    for path in glob.glob(os.path.join(series, "*.dcm")):
        os.remove(path)
    with pytest.raises(DataError, match=f"{os.path.basename(series)}: series folder holds no DICOM"):
        prepare(root)


def test_damaged_dicom(small, tmp_path):
    root = _copy(small, tmp_path)
    series = glob.glob(os.path.join(root, "manifest-*", "Lung-PET-CT-Dx", "*", "*Chest*", "*"))[0]
    with open(os.path.join(series, "1-03.dcm"), "wb") as f:
        f.write(b"not a dicom file")
    with pytest.raises(DataError, match="1-03.dcm: cannot read DICOM header"):
        prepare(root)


def test_empty_metadata(small, tmp_path):
    root = _copy(small, tmp_path)
    metadata = glob.glob(os.path.join(root, "manifest-*", "metadata.csv"))[0]
    open(metadata, "w").close()
    with pytest.raises(DataError, match="metadata.csv: metadata.csv is empty"):
        prepare(root)
    with open(metadata, "w") as f:
        f.write(",".join(METADATA_COLUMNS) + "\n")
    with pytest.raises(DataError, match="metadata.csv: metadata.csv lists no series"):
        prepare(root)
