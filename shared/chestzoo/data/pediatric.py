"""Reader for the pediatric pneumonia chest X-rays of Kermany et al. (2018): class folders -> MONAI datalist.

Expected under ``root`` (``root`` may also be the ``chest_xray`` folder itself)::

    chest_xray/train/{NORMAL,PNEUMONIA}/*.jpeg
    chest_xray/test/{NORMAL,PNEUMONIA}/*.jpeg
    chest_xray/val/{NORMAL,PNEUMONIA}/*.jpeg     (only in the Kaggle copy: 16 images taken out of train)

The folder gives the label; the file name gives the patient:

    IM-0115-0001.jpeg, NORMAL2-IM-1427-0001.jpeg   -> IM-0115, NORMAL2-IM-1427   (last number: the patient's image)
    person1_bacteria_1.jpeg, person1_virus_6.jpeg  -> person1                    (last number: a running image count)
    NORMAL-1049278-0001.jpeg, BACTERIA-1135262-0001.jpeg, VIRUS-...  -> 1049278, 1135262  (Mendeley version 3 names)

The official test folder is kept as the test split. It is numbered on its own (train and test both start at
person1), so a number in test says nothing about train: test patients get the prefix ``test:`` to keep them
apart. The official val folder is far too small to select a model on; by default it is merged into train and a
patient-wise validation split, stratified by class, is drawn from the pool (:func:`validation_patients`).
``use_official_val=True`` keeps train and val as they are.
Items: ``{"image", "patient", "label": 0 (NORMAL) | 1 (PNEUMONIA)}``; top-level ``labels`` = PEDIATRIC_CLASSES.
"""

from __future__ import annotations

import os
import re

from .datalist import assign_splits, write_datalist
from .errors import DataError
from .labels import PEDIATRIC_CLASSES
from ..utils import as_bool

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
TEST_PREFIX = "test:"
# File-name patterns and how each names its patient.
_PATTERNS = (
    re.compile(r"^(?P<patient>(?:NORMAL2-)?IM-\d+)-\d+$"),
    re.compile(r"^(?P<patient>person\d+)_(?:bacteria|virus)_\d+$"),
    re.compile(r"^(?:NORMAL|BACTERIA|VIRUS)-(?P<patient>\d+)-\d+$"),
)
# Where the chest_xray folder may sit: the root itself, the Kaggle archive, the Mendeley version 3 archive.
_CANDIDATES = ("", "chest_xray", os.path.join("CellData", "chest_xray"), os.path.join("chest_xray", "chest_xray"))


def patient_of(path: str) -> str:
    """The patient id a file name encodes (see module doc); :class:`DataError` for an unrecognised name."""
    stem, _ = os.path.splitext(os.path.basename(path))
    for pattern in _PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group("patient")
    raise DataError(
        path,
        "unrecognised file name: expected IM-<n>-<k>, NORMAL2-IM-<n>-<k>, person<n>_bacteria_<k>, person<n>_virus_<k> "
        "or NORMAL|BACTERIA|VIRUS-<n>-<k> with a .jpeg suffix",
    )


def find_chest_xray(root: str) -> str:
    """The folder holding ``train/`` and ``test/``: ``root`` itself, ``root/chest_xray`` or an archive's nesting."""
    for candidate in _CANDIDATES:
        folder = os.path.join(root, candidate) if candidate else root
        if os.path.isdir(os.path.join(folder, "train")) and os.path.isdir(os.path.join(folder, "test")):
            return folder
    if not os.path.isdir(root):
        raise DataError(root, "folder not found")
    folder = os.path.join(root, "chest_xray") if os.path.isdir(os.path.join(root, "chest_xray")) else root
    missing = [name for name in ("train", "test") if not os.path.isdir(os.path.join(folder, name))]
    raise DataError(
        os.path.join(folder, missing[0]),
        "folder not found: expected chest_xray/{train,test}/{NORMAL,PNEUMONIA}/ (see datasets/pediatric/README.md)",
    )


def _images(folder: str) -> list[str]:
    """Image files of one class folder, sorted; hidden files (.DS_Store) and sub-folders are skipped."""
    if not os.path.isdir(folder):
        raise DataError(folder, "class folder not found")
    paths = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if not entry.name.lower().endswith(IMAGE_SUFFIXES):
            raise DataError(entry.path, f"not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
        paths.append(entry.path)
    if not paths:
        raise DataError(folder, "class folder is empty")
    return paths


def _items(chest_xray: str, official: str, namespace: str = "") -> list[dict]:
    items = []
    for label, name in enumerate(PEDIATRIC_CLASSES):
        for path in _images(os.path.join(chest_xray, official, name)):
            items.append({"image": path, "patient": namespace + patient_of(path), "label": label})
    return items


def validation_patients(items: list[dict], fraction: float, seed: int) -> set[str]:
    """Patients drawn into validation: ``fraction`` of the patients, stratified by class (no class left out).

    A patient counts as PNEUMONIA if any of their images is.
    """
    label_of: dict[str, int] = {}
    for item in items:
        label_of[item["patient"]] = max(label_of.get(item["patient"], 0), item["label"])
    split = assign_splits(label_of, (1.0 - fraction, fraction), seed, ("training", "validation"), strata=label_of)
    return {patient for patient, name in split.items() if name == "validation"}


def prepare(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    use_official_val: bool = False,
) -> dict:
    """Read the ``chest_xray`` folders under ``root`` and write their datalist (default ``root/datalist.json``).

    ``val_fraction`` is the share of train (+ official val) patients drawn into validation; ``seed`` picks them.
    Returns a summary: the datalist path and the number of items per split and class.
    """
    root = os.path.abspath(os.fspath(root))
    use_official_val = as_bool(use_official_val)
    val_fraction = float(val_fraction)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
    chest_xray = find_chest_xray(root)
    has_val = os.path.isdir(os.path.join(chest_xray, "val"))
    train = _items(chest_xray, "train")
    val = _items(chest_xray, "val") if has_val else []
    test = _items(chest_xray, "test", namespace=TEST_PREFIX)

    if use_official_val:
        if not has_val:
            raise DataError(os.path.join(chest_xray, "val"), "folder not found, so use_official_val cannot be honoured")
        shared = sorted({i["patient"] for i in train} & {i["patient"] for i in val})
        if shared:
            raise DataError(
                os.path.join(chest_xray, "val"),
                f"patients {shared[:5]} also have images in train; use the default use_official_val=False",
            )
        training, validation = train, val
    else:
        held_out = validation_patients(train + val, val_fraction, seed)
        training = [i for i in train + val if i["patient"] not in held_out]
        validation = [i for i in train + val if i["patient"] in held_out]

    datalist = {
        "training": sorted(training, key=lambda i: i["image"]),
        "validation": sorted(validation, key=lambda i: i["image"]),
        "test": sorted(test, key=lambda i: i["image"]),
        "name": "Pediatric pneumonia chest X-rays (Kermany et al. 2018)",
        "description": "label indexes labels; official test split; validation "
        + ("= official val folder" if use_official_val else f"= {val_fraction:g} of train+val patients (seed {seed})"),
        "labels": list(PEDIATRIC_CLASSES),
    }
    out = os.path.abspath(os.fspath(out)) if out is not None else os.path.join(root, "datalist.json")
    path = write_datalist(datalist, out)
    summary: dict = {"datalist": path}
    for split in ("training", "validation", "test"):
        labels = [i["label"] for i in datalist[split]]
        summary[split] = {name: labels.count(k) for k, name in enumerate(PEDIATRIC_CLASSES)}
    return summary
