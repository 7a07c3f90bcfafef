"""RSNA Pneumonia Detection Challenge: synthetic release -> reader -> datalist, images, and bad input."""

from __future__ import annotations

import csv
import filecmp
import json
import os
import shutil

import numpy as np
import pydicom
import pytest

from chestzoo.data import DataError, check_patient_disjoint, load_datalist, read_image, registry
from chestzoo.data.labels import RSNA_CLASSES, RSNA_TARGETS
from chestzoo.data.rsna import prepare
from chestzoo.data.synth import dicom
from chestzoo.data.synth import rsna as synth
from chestzoo.data.synth.phantom import to_uint8

PATIENTS, SIZE, SEED = 30, 64, 0
SPLITS = ("training", "validation", "test")
JPEG_MAX_ERROR, JPEG_MEAN_ERROR = 0.1, 0.02  # quality 95 on a 64-pixel phantom: about 0.03 and 0.006


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna")
    summary = synth.write(root, patients=PATIENTS, size=SIZE, seed=SEED)
    return str(root), summary


@pytest.fixture(scope="module")
def prepared(release):
    root, _ = release
    summary = prepare(root)
    with open(summary["datalist"]) as f:
        return root, summary, json.load(f)


def _items(datalist):
    return {item["patient"]: item for split in SPLITS for item in datalist[split]}


def _copy(release, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(release[0], root)
    return root


def _rewrite(path, edit):
    """Apply ``edit`` to the data rows (lists of fields) of a CSV file."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows[1:] = edit(rows[1:])
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def test_synthetic_release_has_the_real_layout(release):
    root, summary = release
    assert sorted(os.listdir(root)) == sorted(
        [synth.TRAIN_LABELS, synth.CLASS_INFO, synth.SAMPLE_SUBMISSION, synth.TRAIN_IMAGES, synth.TEST_IMAGES]
    )
    with open(os.path.join(root, synth.TRAIN_LABELS)) as f:
        labels = list(csv.reader(f))
    with open(os.path.join(root, synth.CLASS_INFO)) as f:
        classes = list(csv.reader(f))
    assert labels[0] == ["patientId", "x", "y", "width", "height", "Target"]
    assert classes[0] == ["patientId", "class"]
    # the class file repeats a patient once per box row, row for row
    assert [r[0] for r in labels[1:]] == [r[0] for r in classes[1:]]
    per_patient = {}
    for row in labels[1:]:
        per_patient.setdefault(row[0], []).append(row)
    assert len(per_patient) == PATIENTS == summary["train_images"]
    assert max(len(rows) for rows in per_patient.values()) >= 2, "no patient with several boxes"
    for rows in per_patient.values():
        if rows[0][5] == "0":
            assert rows == [[rows[0][0], "", "", "", "", "0"]]
        else:
            assert all(r[5] == "1" and all(r[1:5]) and r[1].endswith(".0") for r in rows)
    assert all(summary["classes"][c] > 0 for c in RSNA_CLASSES)
    opacity_share = summary["classes"]["Lung Opacity"] / PATIENTS
    assert 0.25 <= opacity_share <= 0.37
    with open(os.path.join(root, synth.SAMPLE_SUBMISSION)) as f:
        submission = list(csv.reader(f))
    assert submission[0] == ["patientId", "PredictionString"]
    assert sorted(r[0] + ".dcm" for r in submission[1:]) == sorted(os.listdir(os.path.join(root, synth.TEST_IMAGES)))


def test_dicom_headers_match_the_release(release):
    root, _ = release
    syntaxes = set()
    for study in synth.plan(PATIENTS, SEED):
        folder = synth.TEST_IMAGES if study.test else synth.TRAIN_IMAGES
        ds = pydicom.dcmread(os.path.join(root, folder, f"{study.patient_id}.dcm"))
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
        assert ds.PatientID == ds.PatientName == study.patient_id
        assert (ds.Modality, ds.BodyPartExamined, ds.ConversionType) == ("CR", "CHEST", "WSD")
        assert ds.ViewPosition in ("PA", "AP") and ds.SeriesDescription == f"view: {ds.ViewPosition}"
        assert ds.PatientSex in ("M", "F") and str(ds.PatientAge).isdigit()
        assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert len({ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID}) == 3
        assert ds.StudyDate == "19010101"
        assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.SamplesPerPixel) == (SIZE, SIZE, 8, 8, 1)
        assert float(ds.PixelSpacing[0]) == pytest.approx(study.spacing * 1024 / SIZE, rel=1e-4)
        assert ds.PhotometricInterpretation == study.photometric
        if ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit:
            assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_10918_1"
    assert syntaxes == {
        pydicom.uid.JPEGBaseline8Bit,
        pydicom.uid.ExplicitVRLittleEndian,
        pydicom.uid.ImplicitVRLittleEndian,
        pydicom.uid.RLELossless,
    }


def test_datalist_equals_what_was_written(prepared):
    root, summary, datalist = prepared
    assert datalist["labels"] == list(RSNA_TARGETS)
    assert datalist["classes"] == list(RSNA_CLASSES)
    assert datalist["box_classes"] == ["Lung Opacity"]
    items = _items(datalist)
    studies = synth.plan(PATIENTS, SEED)
    train = [s for s in studies if not s.test]
    assert sorted(items) == sorted(s.patient_id for s in train)
    for study in train:
        item = items[study.patient_id]
        boxes = synth.opacity_boxes(synth.render(study, SIZE, SEED)) if study.target else []
        assert item["label"] == study.target
        assert RSNA_CLASSES[item["class"]] == study.rsna_class
        assert item["box"] == boxes
        assert item["box_label"] == [0] * len(boxes)
        assert item["image"] == f"stage_2_train_images/{study.patient_id}.dcm"
        if study.target:  # boxes lie on the image, in [x_min, y_min, x_max, y_max] order
            for x0, y0, x1, y1 in item["box"]:
                assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
    assert summary["boxes"] == sum(len(i["box"]) for i in items.values())
    unlabelled = {i["patient"]: i["image"] for i in datalist["unlabelled"]}
    assert sorted(unlabelled) == sorted(s.patient_id for s in studies if s.test)
    assert all(path == f"stage_2_test_images/{pid}.dcm" for pid, path in unlabelled.items())
    assert summary["unlabelled"] == len(unlabelled)


def test_splits_are_patient_wise_and_follow_the_seed(prepared, tmp_path):
    root, summary, datalist = prepared
    check_patient_disjoint(datalist)
    assert sum(summary[s] for s in SPLITS) == PATIENTS
    assert all(summary[s] > 0 for s in SPLITS)
    other = prepare(root, out=tmp_path / "seed1.json", seed=1)
    with open(other["datalist"]) as f:
        moved = json.load(f)
    assert [[i["patient"] for i in moved[s]] for s in SPLITS] != [[i["patient"] for i in datalist[s]] for s in SPLITS]
    # paths are relative to the JSON, so a datalist written elsewhere still finds the images
    for item in load_datalist(other["datalist"], "training"):
        assert os.path.isfile(item["image"])


def test_images_read_back_as_drawn(prepared):
    root, _, datalist = prepared
    path = os.path.join(root, "datalist.json")
    items = {i["patient"]: i for s in SPLITS for i in load_datalist(path, s)}
    items.update({i["patient"]: i for i in load_datalist(path, "unlabelled")})
    for study in synth.plan(PATIENTS, SEED):
        expected = to_uint8(synth.render(study, SIZE, SEED).image).astype(np.float32) / 255.0
        image = read_image(items[study.patient_id]["image"])
        assert image.shape == (SIZE, SIZE) and image.dtype == np.float32
        error = np.abs(image - expected)
        if study.syntax == "jpeg":
            assert error.max() < JPEG_MAX_ERROR and error.mean() < JPEG_MEAN_ERROR, study
        else:  # lossless encodings come back exactly
            np.testing.assert_allclose(image, expected, atol=1e-6)


def test_monochrome1_is_stored_inverted_and_read_upright(release):
    root, _ = release
    study = next(s for s in synth.plan(PATIENTS, SEED) if s.photometric == "MONOCHROME1")
    path = os.path.join(root, synth.TRAIN_IMAGES, f"{study.patient_id}.dcm")
    drawn = to_uint8(synth.render(study, SIZE, SEED).image)
    stored = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(stored, 255 - drawn)
    np.testing.assert_allclose(read_image(path), drawn / 255.0, atol=1e-6)


def test_same_seed_same_bytes_other_seed_other_data(release, tmp_path):
    root, _ = release
    again = tmp_path / "again"
    synth.write(again, patients=PATIENTS, size=SIZE, seed=SEED)
    comparison = filecmp.dircmp(root, again, ignore=["datalist.json"])
    assert not comparison.left_only and not comparison.right_only
    for folder in ("", synth.TRAIN_IMAGES, synth.TEST_IMAGES):
        here = os.path.join(root, folder)
        names = sorted(f for f in os.listdir(here) if os.path.isfile(os.path.join(here, f)) and f != "datalist.json")
        _, mismatch, errors = filecmp.cmpfiles(os.path.join(root, folder), again / folder, names, shallow=False)
        assert not mismatch and not errors
    other = {s.patient_id for s in synth.plan(PATIENTS, SEED + 1)}
    assert not other & {s.patient_id for s in synth.plan(PATIENTS, SEED)}


def test_registry_runs_synth_and_prepare(tmp_path):
    summary = registry.synth("rsna", str(tmp_path), patients=6, size=32, seed=3)
    assert summary["train_images"] == 6
    prepared = registry.prepare("rsna", str(tmp_path))
    assert sum(prepared[s] for s in SPLITS) == 6


# --- the shared DICOM writing helpers (synth/dicom.py), beyond the 8-bit X-rays above ----------------------


@pytest.mark.parametrize("syntax", ["explicit", "implicit", "rle"])
def test_dicom_helpers_store_signed_16_bit_losslessly(tmp_path, syntax):
    hu = np.random.default_rng(0).normal(-500, 400, (24, 40)).astype(np.int16)
    ds = dicom.new_dataset(pydicom.uid.CTImageStorage, dicom.make_uid(5, "ct", syntax))
    ds.Modality, ds.RescaleIntercept, ds.RescaleSlope = "CT", 0, 1
    dicom.set_pixels(ds, hu, syntax=syntax)
    path = dicom.save(ds, tmp_path / "sub" / "slice.dcm")
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == dicom.SYNTAXES[syntax]
    assert (back.BitsAllocated, back.PixelRepresentation, back.StudyDate) == (16, 1, dicom.FIXED_DATE)
    np.testing.assert_array_equal(back.pixel_array, hu)
    np.testing.assert_array_equal(read_image(path, "ct"), hu.astype(np.float32))


def test_dicom_helpers_are_deterministic_and_strict(tmp_path):
    assert dicom.make_uid(1, "a", "b") == dicom.make_uid(1, "a", "b") != dicom.make_uid(2, "a", "b")
    ds = dicom.new_dataset(pydicom.uid.CTImageStorage, dicom.make_uid(1, "x"))
    with pytest.raises(ValueError, match="JPEG Baseline needs one 8-bit grey frame"):
        dicom.set_pixels(ds, np.zeros((4, 4), np.int16), syntax="jpeg")
    assert "PixelData" not in ds  # a refused frame leaves the dataset untouched
    with pytest.raises(ValueError, match="syntax must be one of"):
        dicom.set_pixels(ds, np.zeros((4, 4), np.uint8), syntax="jpeg2000")


# --- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_truncated_dicom_names_the_file(release, tmp_path):
    root, _ = release
    for study in [s for s in synth.plan(PATIENTS, SEED) if not s.test][:4]:  # explicit, RLE, MONOCHROME1, JPEG
        source = os.path.join(root, synth.TRAIN_IMAGES, f"{study.patient_id}.dcm")
        with open(source, "rb") as f:
            data = f.read()
        broken = tmp_path / f"{study.syntax}.dcm"
        broken.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(DataError, match=str(broken)):
            read_image(broken)


def test_unknown_class_names_file_and_row(release, tmp_path):
    root = _copy(release, tmp_path)
    _rewrite(root / synth.CLASS_INFO, lambda rows: rows[:3] + [[rows[3][0], "Pneumonia"]] + rows[4:])
    with pytest.raises(DataError, match=r"stage_2_detailed_class_info\.csv, row 5: unknown class 'Pneumonia'"):
        prepare(root)


def test_target_and_class_disagree(release, tmp_path):
    root = _copy(release, tmp_path)
    normal = next(s.patient_id for s in synth.plan(PATIENTS, SEED) if s.rsna_class == "Normal" and not s.test)

    def relabel(rows):
        return [[r[0], "Lung Opacity"] if r[0] == normal else r for r in rows]

    _rewrite(root / synth.CLASS_INFO, relabel)
    message = rf"detailed_class_info\.csv, row \d+: class 'Lung Opacity' of patient {normal} contradicts Target 0"
    with pytest.raises(DataError, match=message):
        prepare(root)


def test_positive_row_without_box(release, tmp_path):
    root = _copy(release, tmp_path)

    def drop_width(rows):
        first = next(i for i, r in enumerate(rows) if r[5] == "1")
        rows[first][3] = ""
        return rows

    _rewrite(root / synth.TRAIN_LABELS, drop_width)
    with pytest.raises(DataError, match=r"train_labels\.csv, row \d+: positive row \(Target 1\) with missing box"):
        prepare(root)


def test_missing_dicom_is_named(release, tmp_path):
    root = _copy(release, tmp_path)
    study = next(s for s in synth.plan(PATIENTS, SEED) if not s.test)
    missing = root / synth.TRAIN_IMAGES / f"{study.patient_id}.dcm"
    missing.unlink()
    with pytest.raises(DataError, match=rf"{missing}: DICOM file missing for patient {study.patient_id}"):
        prepare(root)


@pytest.mark.parametrize("name", [synth.TRAIN_LABELS, synth.CLASS_INFO])
def test_empty_csv(release, tmp_path, name):
    root = _copy(release, tmp_path)
    (root / name).write_text("")
    with pytest.raises(DataError, match=rf"{name}: file is empty"):
        prepare(root)
    header = "patientId,x,y,width,height,Target" if name == synth.TRAIN_LABELS else "patientId,class"
    (root / name).write_text(header + "\n")
    with pytest.raises(DataError, match=rf"{name}: has a header but no data rows"):
        prepare(root)


def test_missing_column(release, tmp_path):
    root = _copy(release, tmp_path)
    path = root / synth.TRAIN_LABELS
    lines = path.read_text().splitlines()
    path.write_text("\n".join([",".join(r.split(",")[:5]) for r in lines]) + "\n")  # drop Target
    with pytest.raises(DataError, match=r"stage_2_train_labels\.csv, row 1: missing column\(s\) \['Target'\]"):
        prepare(root)


def test_missing_release_is_explained(tmp_path):
    with pytest.raises(DataError, match="no RSNA Pneumonia release found"):
        prepare(tmp_path)
