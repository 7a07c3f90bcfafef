"""A synthetic RSNA Pneumonia Detection Challenge download, in the layout and formats of the stage 2 release.

Layout written under ``out``::

    stage_2_train_labels.csv          patientId,x,y,width,height,Target  (one row per box; one empty row for negatives)
    stage_2_detailed_class_info.csv   patientId,class  (one row per labels row, so repeated for several boxes)
    stage_2_sample_submission.csv     patientId,PredictionString  (the test patients)
    stage_2_train_images/<patientId>.dcm
    stage_2_test_images/<patientId>.dcm

The DICOM files carry the header of the real release (CR, CHEST, PA/AP view, sex, age as a bare number, Secondary
Capture SOP class, 8-bit MONOCHROME2) and are JPEG Baseline compressed like the real stage 2 files. A few training
files use other encodings so that every decoding path is exercised: explicit VR little endian, RLE Lossless, and
implicit VR little endian stored as MONOCHROME1 (inverted grey scale).

The class mix follows the release (about 31.6% "Lung Opacity", 29.3% "Normal", the rest "No Lung Opacity / Not
Normal"). Opacity patients are drawn with the phantom's "Lung Opacity" finding and their boxes are that finding's
boxes; "Not Normal" patients get one non-opacity finding; "Normal" patients none.
"""

from __future__ import annotations

import csv
import hashlib
import os
import uuid
from dataclasses import dataclass

import numpy as np
from pydicom.uid import SecondaryCaptureImageStorage

from ..labels import RSNA_CLASSES
from . import dicom
from .findings import DEFAULT_CONSPICUITY
from .phantom import OPACITY, ChestPhantom, render_chest, to_uint8

TRAIN_LABELS = "stage_2_train_labels.csv"
CLASS_INFO = "stage_2_detailed_class_info.csv"
SAMPLE_SUBMISSION = "stage_2_sample_submission.csv"
TRAIN_IMAGES = "stage_2_train_images"
TEST_IMAGES = "stage_2_test_images"

NORMAL, NOT_NORMAL, LUNG_OPACITY = RSNA_CLASSES
CLASS_SHARE = {LUNG_OPACITY: 0.316, NORMAL: 0.293}  # the rest is NOT_NORMAL
# Findings that make a radiograph abnormal without looking like a pneumonic opacity.
NOT_NORMAL_FINDINGS = ("Nodule", "Mass", "Cardiomegaly", "Effusion", "Pleural_Thickening", "Pneumothorax")
# The real files: 1024 x 1024 pixels of about 0.14-0.17 mm; spacing is scaled so the field of view stays the same.
REAL_SIZE = 1024
REAL_SPACINGS = (0.139, 0.143, 0.150, 0.168, 0.171)
# Training files stored other than as JPEG Baseline, by position in the list of training patients (cyclic).
OTHER_ENCODINGS = {0: ("explicit", "MONOCHROME2"), 1: ("rle", "MONOCHROME2"), 2: ("implicit", "MONOCHROME1")}
ENCODING_CYCLE = 20
SAMPLE_PREDICTION = "0.5 0 0 100 100"


@dataclass(frozen=True)
class RsnaStudy:
    """One synthetic radiograph: who, what, and how it is stored."""

    index: int  # position in the plan; selects the random stream that draws the image
    patient_id: str
    rsna_class: str
    findings: tuple[str, ...]
    view: str  # "PA" or "AP"
    sex: str
    age: int
    spacing: float  # mm at REAL_SIZE pixels
    syntax: str  # key of dicom.SYNTAXES
    photometric: str
    test: bool  # in stage_2_test_images (no labels published)

    @property
    def target(self) -> int:
        return int(self.rsna_class == LUNG_OPACITY)


def patient_uuid(seed: int, index: int) -> str:
    """A UUID-shaped patientId like the release's, derived from the seed and index."""
    digest = hashlib.sha256(f"chestzoo-rsna:{seed}:{index}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _class_list(n: int, rng: np.random.Generator) -> list[str]:
    """Exactly the release's class shares (rounded), shuffled, so even a small set holds all three classes."""
    opacity = max(1, round(n * CLASS_SHARE[LUNG_OPACITY])) if n >= 3 else 0
    normal = max(1, round(n * CLASS_SHARE[NORMAL])) if n >= 3 else 0
    classes = [LUNG_OPACITY] * opacity + [NORMAL] * normal + [NOT_NORMAL] * (n - opacity - normal)
    rng.shuffle(classes)
    return classes


def n_test_images(patients: int) -> int:
    """Stage 2 has 3,000 test images next to 26,684 training ones (about 11%)."""
    return max(2, round(patients * 0.11))


def plan(patients: int = 60, seed: int = 0) -> list[RsnaStudy]:
    """The studies :func:`write` draws: ``patients`` training studies, then the test studies."""
    if patients < 3:
        raise ValueError(f"need at least 3 patients (one per RSNA class), not {patients}")
    rng = np.random.default_rng([seed, 0])
    n_test = n_test_images(patients)
    classes = _class_list(patients, rng) + _class_list(n_test, rng)
    studies = []
    for index, rsna_class in enumerate(classes):
        test = index >= patients
        if rsna_class == LUNG_OPACITY:
            findings = (OPACITY,)
        elif rsna_class == NOT_NORMAL:
            findings = (str(rng.choice(NOT_NORMAL_FINDINGS)),)
        else:
            findings = ()
        # In the release, AP views are far more common among opacity patients than among the others.
        view = "AP" if rng.random() < (0.7 if rsna_class == LUNG_OPACITY else 0.4) else "PA"
        sex = "M" if rng.random() < 0.57 else "F"
        age = int(np.clip(round(rng.normal(47, 16)), 1, 92))
        spacing = float(rng.choice(REAL_SPACINGS))
        syntax, photometric = ("jpeg", "MONOCHROME2")
        if not test:
            syntax, photometric = OTHER_ENCODINGS.get(index % ENCODING_CYCLE, (syntax, photometric))
        pid = patient_uuid(seed, index)
        studies.append(RsnaStudy(index, pid, rsna_class, findings, view, sex, age, spacing, syntax, photometric, test))
    return studies


def render(study: RsnaStudy, size: int, seed: int, conspicuity: float = DEFAULT_CONSPICUITY) -> ChestPhantom:
    """The phantom behind ``study``'s pixels (its own random stream, so any study can be redrawn alone)."""
    rng = np.random.default_rng([seed, 1, study.index])
    return render_chest(rng, size, study.findings, view=study.view, conspicuity=conspicuity)


def opacity_boxes(phantom: ChestPhantom) -> list[list[float]]:
    """The "Lung Opacity" boxes, ``[x_min, y_min, x_max, y_max]`` in pixels, one per opacity region.

    The phantom may put two consolidations in the same lung; where their boxes overlap, a reader would draw one
    box around both, so overlapping boxes are merged into their union.
    """
    boxes = [list(box) for name, box in phantom.boxes if name == OPACITY]
    merged: list[list[float]] = []
    for box in boxes:
        for other in merged:
            if box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]:
                other[:] = [min(box[0], other[0]), min(box[1], other[1]), max(box[2], other[2]), max(box[3], other[3])]
                break
        else:
            merged.append(box)
    return merged


def _dicom(study: RsnaStudy, pixels: np.ndarray, size: int, seed: int):
    ds = dicom.new_dataset(SecondaryCaptureImageStorage, dicom.make_uid(seed, "rsna", study.patient_id, "image"))
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"view: {study.view}"
    ds.PatientName = study.patient_id
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = study.sex
    dicom.set_verbatim(ds, "PatientAge", str(study.age))  # a bare number in the release, not '051Y'
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = study.view
    ds.StudyInstanceUID = dicom.make_uid(seed, "rsna", study.patient_id, "study")
    ds.SeriesInstanceUID = dicom.make_uid(seed, "rsna", study.patient_id, "series")
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    spacing = f"{study.spacing * REAL_SIZE / size:.6g}"
    ds.PixelSpacing = [spacing, spacing]
    if study.photometric == "MONOCHROME1":
        pixels = 255 - pixels
    dicom.set_pixels(ds, pixels, syntax=study.syntax, photometric=study.photometric, jpeg_quality=95)
    return ds


def _number(value: float) -> str:
    return f"{value:.1f}"  # the release writes "264.0"


def write(
    out: str | os.PathLike, patients: int = 60, size: int = 256, seed: int = 0, conspicuity: float = DEFAULT_CONSPICUITY
) -> dict:
    """Write a synthetic stage 2 release under ``out`` (same arguments, same bytes) and return a summary.

    ``conspicuity`` scales the opacities' contrast (:func:`~chestzoo.data.synth.phantom.render_chest`)."""
    out = os.fspath(out)
    for folder in (TRAIN_IMAGES, TEST_IMAGES):
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    label_rows, class_rows, submission_rows = [], [], []
    boxes_written = 0
    studies = plan(patients, seed)
    for study in studies:
        phantom = render(study, size, seed, float(conspicuity))
        folder = TEST_IMAGES if study.test else TRAIN_IMAGES
        ds = _dicom(study, to_uint8(phantom.image), size, seed)
        dicom.save(ds, os.path.join(out, folder, f"{study.patient_id}.dcm"))
        if study.test:
            submission_rows.append([study.patient_id, SAMPLE_PREDICTION])
            continue
        boxes = opacity_boxes(phantom) if study.target else []
        if study.target and not boxes:
            raise RuntimeError(f"phantom drew no opacity box for study {study.index} (seed {seed})")
        for x0, y0, x1, y1 in boxes:
            label_rows.append([study.patient_id, _number(x0), _number(y0), _number(x1 - x0), _number(y1 - y0), "1"])
            class_rows.append([study.patient_id, study.rsna_class])
        if not boxes:
            label_rows.append([study.patient_id, "", "", "", "", "0"])
            class_rows.append([study.patient_id, study.rsna_class])
        boxes_written += len(boxes)
    files = {
        TRAIN_LABELS: (["patientId", "x", "y", "width", "height", "Target"], label_rows),
        CLASS_INFO: (["patientId", "class"], class_rows),
        SAMPLE_SUBMISSION: (["patientId", "PredictionString"], submission_rows),
    }
    for name, (header, rows) in files.items():
        with open(os.path.join(out, name), "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
    return {
        "dataset": "rsna",
        "root": os.path.abspath(out),
        "train_images": patients,
        "test_images": len(submission_rows),
        "boxes": boxes_written,
        "classes": {c: sum(1 for s in studies if not s.test and s.rsna_class == c) for c in RSNA_CLASSES},
    }
