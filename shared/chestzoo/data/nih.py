"""NIH ChestX-ray14: the official download layout read into MONAI datalists.

Expected under ROOT, as the NIH Clinical Center publishes it (see ``datasets/nih/README.md``)::

    Data_Entry_2017_v2020.csv   (or the original Data_Entry_2017.csv)
    BBox_List_2017.csv
    train_val_list.txt, test_list.txt
    images_001/images/*.png ... images_012/images/*.png     (or all PNGs in images/)

Quirks of the published files that the reader handles:

- the headers ``OriginalImage[Width,Height]`` and ``OriginalImagePixelSpacing[x,y]`` are not quoted, so each splits
  into two columns (``OriginalImage[Width`` / ``Height]``);
- every line of ``Data_Entry_2017.csv`` ends with a comma (an empty twelfth column); the v2020 file has none;
- ``Data_Entry_2017.csv`` has a few impossible ages (over 100) that the v2020 file corrects; such ages are kept as
  unknown (``None``). Some copies write ages as ``058Y`` / ``006M`` / ``020D``, which is read too;
- ``BBox_List_2017.csv`` has the header ``Image Index,Finding Label,Bbox [x,y,w,h],,,``: x, y, w, h are columns 3-6
  followed by three empty columns, in pixels of the 1024 x 1024 PNG, and it spells Infiltration ``Infiltrate``.

Two datalists are written. ``datalist.json`` (classification): the official ``test_list.txt`` is the test split,
and a patient-wise validation split is carved out of ``train_val_list.txt``. ``datalist_boxes.json`` (detection):
the images with boxes (all in the official test list) split patient-wise into training / validation / test, plus
"No Finding" images of the test list as negatives (empty box lists).

In error messages, "row N" is line N of the file (the header is line 1).
"""

from __future__ import annotations

import csv as csvlib
import glob
import hashlib
import logging
import math
import os
import re
from collections.abc import Sequence

from ..utils import as_bool
from .datalist import assign_splits, parse_fractions, write_datalist
from .errors import DataError
from .labels import NIH_BOX_LABELS, NIH_BOX_SPELLING, NIH_LABELS, NIH_NO_FINDING

logger = logging.getLogger(__name__)

ENTRY_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")  # preferred first
BBOX_FILE = "BBox_List_2017.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"

# Column names as they come out of the unquoted published header.
IMAGE, FINDINGS, FOLLOW_UP, PATIENT, AGE, VIEW = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "View Position",
)
SEX_COLUMNS = ("Patient Gender", "Patient Sex")  # the published name first; some re-distributions rename it
WIDTH, HEIGHT = "OriginalImage[Width", "Height]"
REQUIRED_COLUMNS = (IMAGE, FINDINGS, FOLLOW_UP, PATIENT, AGE, VIEW)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"

# Defaults of prepare(); the synthetic writer uses them to make sure every split has every label.
DEFAULT_SEED = 0
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_BOX_FRACTIONS = (0.6, 0.2, 0.2)
MAX_PLAUSIBLE_AGE = 110

_LABEL_INDEX = {name: i for i, name in enumerate(NIH_LABELS)}
_BOX_INDEX = {name: i for i, name in enumerate(NIH_BOX_LABELS)}
_AGE_WITH_UNIT = re.compile(r"^(\d{1,3})([YMD])$")


# ----------------------------------------------------------------------------------------------------------------------
# Data_Entry_2017(_v2020).csv


def parse_finding_labels(text: str, path: str, row: int) -> list[int]:
    """``'Effusion|Mass'`` -> 14-long multi-hot over NIH_LABELS; ``'No Finding'`` -> all zeros."""
    names = [name.strip() for name in text.split("|")]
    if names == [NIH_NO_FINDING]:
        return [0] * len(NIH_LABELS)
    if not text.strip():
        raise DataError(path, "empty 'Finding Labels' (expected 'No Finding' or '|'-separated findings)", row)
    label = [0] * len(NIH_LABELS)
    for name in names:
        if name == NIH_NO_FINDING:
            raise DataError(path, f"'No Finding' together with findings in 'Finding Labels' {text!r}", row)
        if name not in _LABEL_INDEX:
            raise DataError(path, f"unknown label {name!r} in 'Finding Labels' (known: {', '.join(NIH_LABELS)})", row)
        label[_LABEL_INDEX[name]] = 1
    return label


def _parse_age(text: str, path: str, row: int) -> int | None:
    text = text.strip()
    match = _AGE_WITH_UNIT.match(text)
    if match:  # e.g. "058Y"; months and days count as age 0
        years = int(match.group(1)) if match.group(2) == "Y" else 0
    else:
        try:
            years = int(float(text))
        except ValueError:
            raise DataError(path, f"'Patient Age' {text!r} is not a number", row) from None
    return years if 0 <= years <= MAX_PLAUSIBLE_AGE else None


def _parse_int(text: str, column: str, path: str, row: int) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise DataError(path, f"{column!r} {text!r} is not an integer", row) from None


def read_data_entry(path: str) -> dict[str, dict]:
    """Parse the data-entry CSV into ``{image name: entry}``; each entry keeps its line number as ``row``."""
    if not os.path.isfile(path):
        raise DataError(path, "file not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csvlib.reader(f)
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise DataError(path, "empty CSV (no header)")
        names = [h.strip() for h in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        sex_column = next((c for c in SEX_COLUMNS if c in names), None)
        if sex_column is None:
            missing.append(SEX_COLUMNS[0])
        if missing:
            raise DataError(path, f"missing columns {missing} (found {names})", 1)
        col = {name: names.index(name) for name in (*REQUIRED_COLUMNS, sex_column)}
        width_col = names.index(WIDTH) if WIDTH in names else None
        height_col = names.index(HEIGHT) if HEIGHT in names else None
        needed = max(col.values()) + 1
        entries: dict[str, dict] = {}
        for fields in reader:
            row = reader.line_num
            if not any(field.strip() for field in fields):
                continue
            if len(fields) < needed:
                raise DataError(path, f"malformed row: {len(fields)} values, expected at least {needed}", row)
            name = fields[col[IMAGE]].strip()
            if not name:
                raise DataError(path, "empty 'Image Index'", row)
            if name in entries:
                raise DataError(path, f"image {name!r} listed twice (first at row {entries[name]['row']})", row)
            sex = fields[col[sex_column]].strip().upper()
            if sex not in ("M", "F"):
                raise DataError(path, f"{sex_column!r} {fields[col[sex_column]]!r} is not M or F", row)
            entries[name] = {
                "row": row,
                "label": parse_finding_labels(fields[col[FINDINGS]], path, row),
                "patient": str(_parse_int(fields[col[PATIENT]], PATIENT, path, row)),
                "follow_up": _parse_int(fields[col[FOLLOW_UP]], FOLLOW_UP, path, row),
                "age": _parse_age(fields[col[AGE]], path, row),
                "sex": sex,
                "view": fields[col[VIEW]].strip(),
                "size": _original_size(fields, width_col, height_col),
            }
    if not entries:
        raise DataError(path, "empty CSV (a header but no image rows)")
    return entries


def _original_size(fields: Sequence[str], width_col: int | None, height_col: int | None) -> list[int] | None:
    """[width, height] of the original image when both columns are present and numeric (informational only)."""
    if width_col is None or height_col is None or max(width_col, height_col) >= len(fields):
        return None
    try:
        return [int(fields[width_col]), int(fields[height_col])]
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------------------------------------
# BBox_List_2017.csv


def read_bbox_list(path: str, entries: dict[str, dict], entry_file: str) -> dict[str, dict]:
    """Parse the box list into ``{image name: {"box": [[x0, y0, x1, y1], ...], "box_label": [...], "row": first}}``."""
    boxes: dict[str, dict] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csvlib.reader(f)
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise DataError(path, "empty CSV (no header)")
        names = [h.strip() for h in header]
        if len(names) < 6 or names[0] != "Image Index" or names[1] != "Finding Label" or not names[2].startswith("Bbox"):
            raise DataError(path, f"missing columns: header {','.join(header)!r}, expected {BBOX_HEADER!r}", 1)
        for fields in reader:
            row = reader.line_num
            if not any(field.strip() for field in fields):
                continue
            if len(fields) < 6:
                raise DataError(path, f"malformed box row {','.join(fields)!r}: expected image, label, x, y, w, h", row)
            if any(field.strip() for field in fields[6:]):
                raise DataError(path, f"malformed box row {','.join(fields)!r}: values after x, y, w, h", row)
            name, label = fields[0].strip(), fields[1].strip()
            label = NIH_BOX_SPELLING.get(label, label)
            if label not in _BOX_INDEX:
                raise DataError(path, f"unknown box label {fields[1].strip()!r} (known: {', '.join(NIH_BOX_LABELS)})", row)
            try:
                x, y, w, h = (float(v) for v in fields[2:6])
            except ValueError:
                raise DataError(path, f"malformed box row {','.join(fields)!r}: x, y, w, h must be numbers", row) from None
            if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0 or x < 0 or y < 0:
                raise DataError(path, f"malformed box [x={x}, y={y}, w={w}, h={h}]: needs x, y >= 0 and w, h > 0", row)
            if name not in entries:
                raise DataError(path, f"image {name!r} has a box but is not in {entry_file}", row)
            item = boxes.setdefault(name, {"box": [], "box_label": [], "row": row})
            item["box"].append([x, y, x + w, y + h])
            item["box_label"].append(_BOX_INDEX[label])
    return boxes


# ----------------------------------------------------------------------------------------------------------------------
# images, official split lists, patient-wise splits


def find_images(root: str) -> dict[str, str]:
    """``{file name: path}`` for every PNG in ``images/`` and ``images_*/images/`` (the extracted archives)."""
    folders = [os.path.join(root, "images")] if os.path.isdir(os.path.join(root, "images")) else []
    folders += sorted(p for p in glob.glob(os.path.join(root, "images_*", "images")) if os.path.isdir(p))
    if not folders:
        raise DataError(root, "no image folder: expected images_001/images/ ... images_012/images/ or images/")
    found: dict[str, str] = {}
    for folder in folders:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.lower().endswith(".png") and entry.is_file():
                if entry.name in found:
                    raise DataError(entry.path, f"same image name also at {found[entry.name]}: keep one copy")
                found[entry.name] = entry.path
    return found


def read_split_list(path: str, entries: dict[str, dict], entry_file: str) -> dict[str, int]:
    """``{image name: line}`` of an official split list; every name must be in the data-entry CSV."""
    if not os.path.isfile(path):
        raise DataError(path, "official split list not found (it comes with the NIH release)")
    names: dict[str, int] = {}
    with open(path, encoding="utf-8-sig") as f:
        for line_number, line in enumerate(f, start=1):
            name = line.strip()
            if not name:
                continue
            if name in names:
                raise DataError(path, f"image {name!r} listed twice (first at row {names[name]})", line_number)
            if name not in entries:
                raise DataError(path, f"image {name!r} is listed but not in {entry_file}", line_number)
            names[name] = line_number
    return names


def _rank(seed: int, tag: str, key: str) -> bytes:
    return hashlib.sha256(f"{seed}:{tag}:{key}".encode()).digest()


def _boxes_path(out: str) -> str:
    stem, ext = os.path.splitext(out)
    return f"{stem}_boxes{ext or '.json'}"


# ----------------------------------------------------------------------------------------------------------------------
# prepare


def prepare(
    root: str,
    out: str | None = None,
    seed: int = DEFAULT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    csv: str | None = None,
    box_fractions: Sequence[float] | str = DEFAULT_BOX_FRACTIONS,
    negatives: float = 1.0,
    skip_missing: bool = False,
) -> dict:
    """Read the NIH release under ``root``; write ``datalist.json`` and ``datalist_boxes.json``; return counts.

    ``csv`` picks the data-entry file (default: ``Data_Entry_2017_v2020.csv``, else ``Data_Entry_2017.csv``).
    ``val_fraction`` of the train_val patients form the validation split. ``box_fractions`` splits the boxed
    patients for detection; ``negatives`` is the number of "No Finding" images added per boxed image.
    ``skip_missing`` drops listed images whose PNG is absent (a partial download) instead of failing.
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise DataError(root, "dataset folder not found")
    val_fraction = float(val_fraction)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
    seed = int(seed)
    box_fractions = parse_fractions(box_fractions)
    skip_missing = as_bool(skip_missing)

    entry_path = _entry_csv(root, csv)
    entry_file = os.path.basename(entry_path)
    entries = read_data_entry(entry_path)
    train_val = read_split_list(os.path.join(root, TRAIN_VAL_LIST), entries, entry_file)
    test = read_split_list(os.path.join(root, TEST_LIST), entries, entry_file)
    for name, line in test.items():
        if name in train_val:
            raise DataError(os.path.join(root, TEST_LIST), f"image {name!r} is also in {TRAIN_VAL_LIST}", line)
    _check_patients_apart(root, entries, train_val, test)

    images = find_images(root)
    skipped = []
    for name in sorted({**train_val, **test}, key=lambda n: entries[n]["row"]):
        if name not in images:
            if not skip_missing:
                problem = f"image file {name!r} not found under images/ or images_*/images/"
                raise DataError(entry_path, problem, entries[name]["row"])
            skipped.append(name)
    skipped_set = set(skipped)
    if skipped:
        logger.warning("skipped %d listed images whose PNG is missing (first: %s)", len(skipped), skipped[0])
    unlisted = len(entries) - len(train_val) - len(test)

    bbox_path = os.path.join(root, BBOX_FILE)
    boxes = read_bbox_list(bbox_path, entries, entry_file) if os.path.isfile(bbox_path) else {}

    def item(name: str) -> dict:
        entry = entries[name]
        record = {
            "image": images[name],
            "patient": entry["patient"],
            "label": entry["label"],
            "view": entry["view"],
            "age": entry["age"],
            "sex": entry["sex"],
            "follow_up": entry["follow_up"],
        }
        if name in boxes:
            record["box"] = [list(b) for b in boxes[name]["box"]]
            record["box_label"] = list(boxes[name]["box_label"])
        return record

    train_val_names = sorted(n for n in train_val if n not in skipped_set)
    test_names = sorted(n for n in test if n not in skipped_set)
    train_val_patients = (entries[n]["patient"] for n in train_val_names)
    val_of = assign_splits(train_val_patients, (1.0 - val_fraction, val_fraction), seed, ("training", "validation"))
    datalist = {
        "name": "NIH ChestX-ray14",
        "description": (
            f"NIH ChestX-ray14 read from {entry_file}: 14-label multi-hot 'label' over 'labels'; the official "
            f"{TEST_LIST} is 'test'; 'validation' holds {val_fraction:g} of the {TRAIN_VAL_LIST} patients "
            f"(seed {seed}); boxes from {BBOX_FILE} as [x_min, y_min, x_max, y_max] pixels, 'box_label' over 'box_classes'"
        ),
        "labels": list(NIH_LABELS),
        "box_classes": list(NIH_BOX_LABELS),
        "training": [item(n) for n in train_val_names if val_of[entries[n]["patient"]] == "training"],
        "validation": [item(n) for n in train_val_names if val_of[entries[n]["patient"]] == "validation"],
        "test": [item(n) for n in test_names],
    }
    out = os.path.abspath(os.fspath(out)) if out else os.path.join(root, "datalist.json")
    written = write_datalist(datalist, out)

    summary = {
        "datalist": written,
        "csv": entry_file,
        "images": {split: len(datalist[split]) for split in ("training", "validation", "test")},
        "patients": {split: len({i["patient"] for i in datalist[split]}) for split in ("training", "validation", "test")},
        "boxed_images": sum(1 for n in boxes if n not in skipped_set),
        "boxes": sum(len(b["box"]) for n, b in boxes.items() if n not in skipped_set),
        "unknown_ages": sum(1 for n in (*train_val_names, *test_names) if entries[n]["age"] is None),
        "skipped_missing": len(skipped),
        "unlisted": unlisted,
    }
    if boxes:
        usable = {n: b for n, b in boxes.items() if n in images and n not in skipped_set}
        box_datalist = _box_datalist(entries, usable, test_names, item, box_fractions, float(negatives), seed)
        summary["boxes_datalist"] = write_datalist(box_datalist, _boxes_path(written))
        summary["box_images"] = {s: len(box_datalist[s]) for s in ("training", "validation", "test")}
    else:
        summary["boxes_datalist"] = None
        logger.warning("no boxes in %s: no detection datalist written", bbox_path)
    return summary


def _entry_csv(root: str, csv: str | None) -> str:
    if csv:
        path = csv if os.path.isabs(csv) else os.path.join(root, csv)
        if not os.path.isfile(path):
            raise DataError(path, "data-entry CSV not found")
        return path
    for name in ENTRY_FILES:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    raise DataError(root, f"no data-entry CSV: expected {ENTRY_FILES[0]} or {ENTRY_FILES[1]}")


def _check_patients_apart(root: str, entries: dict, train_val: dict, test: dict) -> None:
    """The official split is patient-wise; a patient on both lists would leak into the test set."""
    train_val_patients = {entries[n]["patient"]: n for n in train_val}
    for name, line in test.items():
        patient = entries[name]["patient"]
        if patient in train_val_patients:
            raise DataError(
                os.path.join(root, TEST_LIST),
                f"patient {patient} of {name!r} also has {train_val_patients[patient]!r} in {TRAIN_VAL_LIST}",
                line,
            )


def _box_datalist(entries, boxes, test_names, item, fractions, negatives, seed) -> dict:
    """Boxed images split patient-wise, plus "No Finding" images as negatives, each patient in one split."""
    boxed = sorted(boxes)
    boxed_patients = {entries[n]["patient"] for n in boxed}
    # Negatives come first from the boxed patients' own normal films, then from other test-list patients.
    candidates = [n for n in test_names if n not in boxes and not any(entries[n]["label"])]
    candidates.sort(key=lambda n: (entries[n]["patient"] not in boxed_patients, _rank(seed, "negative", n)))
    chosen = sorted(candidates[: int(round(negatives * len(boxed)))])
    patients = {entries[n]["patient"] for n in (*boxed, *chosen)}
    names = ("training", "validation", "test")
    split_of_patient = assign_splits(patients, fractions, seed, names)
    datalist = {
        "name": "NIH ChestX-ray14 boxes",
        "description": (
            f"images of {BBOX_FILE} with 'box' [x_min, y_min, x_max, y_max] pixels and 'box_label' over 'box_classes', "
            f"split patient-wise {tuple(fractions)} (seed {seed}), plus 'No Finding' images with empty boxes as negatives"
        ),
        "labels": list(NIH_LABELS),
        "box_classes": list(NIH_BOX_LABELS),
    }
    for split in names:
        records = []
        for name in sorted((*boxed, *chosen)):
            if split_of_patient[entries[name]["patient"]] != split:
                continue
            record = item(name)
            record.setdefault("box", [])
            record.setdefault("box_label", [])
            records.append(record)
        datalist[split] = records
    return datalist
