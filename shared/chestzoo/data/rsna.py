"""Reader for the RSNA Pneumonia Detection Challenge (2018) download: CSV labels and DICOM images -> MONAI datalist.

Expected under ``root`` (the stage 2 release from Kaggle; the stage 1 names are accepted too)::

    stage_2_train_labels.csv          patientId,x,y,width,height,Target
    stage_2_detailed_class_info.csv   patientId,class
    stage_2_train_images/<patientId>.dcm
    stage_2_test_images/<patientId>.dcm         (optional: no labels were published for these)

One patientId is one radiograph. A patient with opacities has one labels row per box (x, y = top-left corner,
width, height, in pixels of the 1024 x 1024 image) and Target 1; any other patient has a single row with empty box
columns and Target 0. The class file repeats the class once per labels row. The datalist merges the rows of each
patient into one item::

    {"image": "stage_2_train_images/<id>.dcm", "patient": "<id>", "label": 0|1, "class": 0|1|2,
     "box": [[x_min, y_min, x_max, y_max], ...], "box_label": [0, ...]}

``label`` indexes the top-level ``labels`` (RSNA_TARGETS), ``class`` indexes ``classes`` (RSNA_CLASSES) and
``box_label`` indexes ``box_classes`` (["Lung Opacity"]). Splits are by ``patientId`` (:func:`assign_splits`, stratified
by class), which makes them image-wise, not patient-wise: the images come from NIH ChestX-ray14, where many patients
have several films, but the RSNA release gives each image its own ``patientId`` and no mapping to the NIH patient, so
two films of one patient can fall into different splits. The test images are listed under ``unlabelled``, which is
not a split.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from .datalist import SPLITS, assign_splits, parse_fractions, relative_paths, write_datalist
from .errors import DataError
from .labels import RSNA_CLASSES, RSNA_TARGETS

LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
CLASS_COLUMNS = ("patientId", "class")
BOX_COLUMNS = ("x", "y", "width", "height")
BOX_CLASSES = ("Lung Opacity",)
OPACITY_CLASS = RSNA_CLASSES.index("Lung Opacity")
STAGES = ("stage_2", "stage_1")  # newest first


@dataclass
class _Patient:
    target: int
    target_row: int  # first labels row of the patient
    boxes: list[list[float]] = field(default_factory=list)
    rsna_class: str | None = None
    class_row: int | None = None


def read_csv(path: str, columns: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV file as ``(row, {column: text})``; ``row`` is the line number (the header is row 1).

    Raises :class:`DataError` for a missing or empty file, missing columns and rows with the wrong number of fields.
    """
    if not os.path.isfile(path):
        raise DataError(path, "file not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise DataError(path, "file is empty (expected a header row with columns " + ", ".join(columns) + ")")
            header = [h.strip() for h in header]
            missing = [c for c in columns if c not in header]
            if missing:
                raise DataError(path, f"missing column(s) {missing}; found {header}", row=1)
            position = {c: header.index(c) for c in columns}
            rows = []
            for values in reader:
                row = reader.line_num
                if not values or not any(v.strip() for v in values):
                    continue  # blank line
                if len(values) != len(header):
                    raise DataError(path, f"expected {len(header)} fields, found {len(values)}: {values}", row=row)
                rows.append((row, {c: values[i].strip() for c, i in position.items()}))
        except csv.Error as exc:
            raise DataError(path, f"malformed CSV ({exc})", row=reader.line_num) from exc
    if not rows:
        raise DataError(path, "has a header but no data rows")
    return rows


def _box(path: str, row: int, values: dict[str, str]) -> list[float]:
    """``x, y, width, height`` -> ``[x_min, y_min, x_max, y_max]``, checked."""
    try:
        x, y, w, h = (float(values[c]) for c in BOX_COLUMNS)
    except ValueError as exc:
        given = [values[c] for c in BOX_COLUMNS]
        raise DataError(path, f"box of a positive row must be numbers, got {given}", row=row) from exc
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise DataError(path, f"box needs finite x, y and positive width, height; got {x}, {y}, {w}, {h}", row=row)
    return [x, y, x + w, y + h]


def read_labels(path: str) -> dict[str, _Patient]:
    """Merge the rows of ``stage_2_train_labels.csv`` per patient (insertion order = file order)."""
    patients: dict[str, _Patient] = {}
    for row, values in read_csv(path, LABEL_COLUMNS):
        pid = values["patientId"]
        if not pid:
            raise DataError(path, "empty patientId", row=row)
        if values["Target"] not in ("0", "1"):
            raise DataError(path, f"Target must be 0 or 1, not {values['Target']!r}", row=row)
        target = int(values["Target"])
        given = [values[c] for c in BOX_COLUMNS]
        if target == 1 and not all(given):
            raise DataError(path, f"positive row (Target 1) with missing box values {given} for patient {pid}", row=row)
        if target == 0 and any(given):
            raise DataError(path, f"negative row (Target 0) with box values {given} for patient {pid}", row=row)
        patient = patients.setdefault(pid, _Patient(target, row))
        if patient.target != target:
            problem = f"patient {pid} has Target {target} here but Target {patient.target} in row {patient.target_row}"
            raise DataError(path, problem, row=row)
        if target == 1:
            patient.boxes.append(_box(path, row, values))
    return patients


def read_classes(path: str, patients: dict[str, _Patient], labels_path: str) -> None:
    """Attach the detailed class to each patient and check that it agrees with Target."""
    for row, values in read_csv(path, CLASS_COLUMNS):
        pid, name = values["patientId"], values["class"]
        if name not in RSNA_CLASSES:
            raise DataError(path, f"unknown class {name!r} (expected one of {list(RSNA_CLASSES)})", row=row)
        patient = patients.get(pid)
        if patient is None:
            raise DataError(path, f"patient {pid} is not in {os.path.basename(labels_path)}", row=row)
        if patient.rsna_class is not None and patient.rsna_class != name:
            problem = f"patient {pid} is {name!r} here but {patient.rsna_class!r} in row {patient.class_row}"
            raise DataError(path, problem, row=row)
        if (name == RSNA_CLASSES[OPACITY_CLASS]) != (patient.target == 1):
            raise DataError(
                path,
                f"class {name!r} of patient {pid} contradicts Target {patient.target} "
                f"in {os.path.basename(labels_path)} row {patient.target_row}",
                row=row,
            )
        if patient.rsna_class is None:
            patient.rsna_class, patient.class_row = name, row
    unclassed = [pid for pid, p in patients.items() if p.rsna_class is None]
    if unclassed:
        first = patients[unclassed[0]]
        raise DataError(
            path,
            f"{len(unclassed)} patient(s) of {os.path.basename(labels_path)} have no class here, "
            f"e.g. {unclassed[0]} (labels row {first.target_row})",
        )


def find_release(root: str) -> str:
    """The file-name prefix of the newest stage whose labels file is under ``root`` ("stage_2" or "stage_1")."""
    for stage in STAGES:
        if os.path.isfile(os.path.join(root, f"{stage}_train_labels.csv")):
            return stage
    raise DataError(
        root,
        "no RSNA Pneumonia release found: expected stage_2_train_labels.csv, stage_2_detailed_class_info.csv and "
        "stage_2_train_images/ (see datasets/rsna/README.md)",
    )


def _dicom_names(folder: str) -> set[str]:
    if not os.path.isdir(folder):
        raise DataError(folder, "image folder not found")
    return {e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(".dcm")}


def prepare(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
) -> dict:
    """Read an RSNA Pneumonia download under ``root`` and write its datalist (default ``root/datalist.json``).

    ``fractions`` are the (training, validation, test) shares of images (one per ``patientId``, so image-wise; see the
    module docstring); ``seed`` picks the split. Returns a
    summary: the datalist path and the number of items per split.
    """
    root = os.path.abspath(os.fspath(root))
    fractions = parse_fractions(fractions)
    stage = find_release(root)
    labels_path = os.path.join(root, f"{stage}_train_labels.csv")
    classes_path = os.path.join(root, f"{stage}_detailed_class_info.csv")
    train_dir = os.path.join(root, f"{stage}_train_images")
    test_dir = os.path.join(root, f"{stage}_test_images")

    patients = read_labels(labels_path)
    read_classes(classes_path, patients, labels_path)
    present = _dicom_names(train_dir)
    datalist: dict = {split: [] for split in SPLITS}
    # stratified by class, so that even a small set has each RSNA class in every split
    split_of_patient = assign_splits(patients, fractions, seed, strata={p: v.rsna_class for p, v in patients.items()})
    for pid, patient in patients.items():
        image = os.path.join(train_dir, f"{pid}.dcm")
        if f"{pid}.dcm" not in present:
            where = f"{os.path.basename(labels_path)} row {patient.target_row}"
            raise DataError(image, f"DICOM file missing for patient {pid} ({where})")
        item = {
            "image": image,
            "patient": pid,
            "label": patient.target,
            "class": RSNA_CLASSES.index(patient.rsna_class),
            "box": patient.boxes,
            "box_label": [0] * len(patient.boxes),
        }
        datalist[split_of_patient[pid]].append(item)
    for split in SPLITS:
        datalist[split].sort(key=lambda item: item["patient"])

    out = os.path.abspath(os.fspath(out)) if out is not None else os.path.join(root, "datalist.json")
    unlabelled = []
    if os.path.isdir(test_dir):
        for name in sorted(_dicom_names(test_dir)):
            pid = os.path.splitext(name)[0]
            if pid in patients:
                problem = f"patient {pid} is also in {os.path.basename(labels_path)}"
                raise DataError(os.path.join(test_dir, name), problem)
            item = {"image": os.path.join(test_dir, name), "patient": pid}
            unlabelled.append(relative_paths(item, ["image"], os.path.dirname(out)))
    datalist.update(
        {
            "name": "RSNA Pneumonia Detection Challenge",
            "description": f"{stage} release; label = Target, class = detailed class, boxes = opacity boxes in pixels",
            "labels": list(RSNA_TARGETS),
            "classes": list(RSNA_CLASSES),
            "box_classes": list(BOX_CLASSES),
            "seed": seed,
            "fractions": list(fractions),
            "unlabelled": unlabelled,
        }
    )
    path = write_datalist(datalist, out)
    unused = len(present) - len(patients)
    return {
        "datalist": path,
        **{split: len(datalist[split]) for split in SPLITS},
        "unlabelled": len(unlabelled),
        "positive": sum(p.target for p in patients.values()),
        "boxes": sum(len(p.boxes) for p in patients.values()),
        "unlisted_train_images": unused,
    }
