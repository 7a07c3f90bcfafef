"""Lung-PET-CT-Dx (TCIA, Li et al. 2020): CT slices of lung-cancer patients with PASCAL-VOC tumour boxes.

The reader takes the layout of an NBIA Data Retriever download plus the separate annotation release::

    ROOT/manifest-<id>/metadata.csv
    ROOT/manifest-<id>/Lung-PET-CT-Dx/Lung_Dx-A0001/<study folder>/<series folder>/1-01.dcm ...
    ROOT/Lung-PET-CT-Dx-Annotations-XML-Files-rev12222020/Annotation/A0001/<SOPInstanceUID>.xml

``metadata.csv`` (one row per series) says where each series lies and which modality it is; without it the
folders are walked and each series' modality is read from its first DICOM header. Only axial CT series are kept
(PET, scouts and reformats are counted and left out). Slice order comes from ImagePositionPatient, never from
file names or instance numbers. An annotation XML is named after the SOPInstanceUID of the slice it boxes; its
folder (``A0001``) names the patient. The subject ID's letter is the histology: A adenocarcinoma, B small cell,
E large cell, G squamous cell carcinoma.

The datalist has one item per CT slice::

    {"image": ".../1-01.dcm", "patient": "Lung_Dx-A0001", "series": "<SeriesInstanceUID>", "slice": 12,
     "slice_position": 0.5217, "box": [[x_min, y_min, x_max, y_max]], "box_label": [0], "label": 0}

``slice`` counts from the head end of the series, ``slice_position`` is ``slice / (n - 1)``; boxes are the XML's
pixel edges (the tumour covers ``image[y_min:y_max, x_min:x_max]``); ``box_label`` and ``label`` index the
top-level ``box_classes`` / ``labels`` (the histology names). Read slices with ``read_image(path, "ct")`` (HU
through the modality LUT) and map them through the top-level ``window`` (level, width) = the lung window.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pydicom

from ..utils import as_bool
from .datalist import SPLITS, assign_splits, write_datalist
from .errors import DataError
from .io import LUNG_WINDOW
from .labels import LUNG_CT_CLASSES

log = logging.getLogger(__name__)

NAME = "Lung-PET-CT-Dx"
DOI = "10.7937/TCIA.2020.NNC2-0461"
CLASS_LETTERS = tuple(LUNG_CT_CLASSES)  # ("A", "B", "E", "G"): the order of "labels" and "box_classes"
CLASS_NAMES = tuple(LUNG_CT_CLASSES[letter] for letter in CLASS_LETTERS)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
REQUIRED_COLUMNS = ("Series UID", "Subject ID", "Modality", "File Location")
SUBJECT = re.compile(r"Lung_Dx-([A-Z])\d+")
_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "Modality",
    "ImageType",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "Rows",
    "Columns",
]


@dataclass
class SeriesRef:
    """One series to read: where it is and where that was said (metadata.csv row or the folder walk)."""

    subject: str
    series_uid: str
    folder: str
    expected_images: int | None
    source: str
    row: int | None = None


@dataclass
class SliceHeader:
    path: str
    sop_uid: str
    position: float  # along the head-to-foot axis, larger = nearer the head
    instance: int
    rows: int
    columns: int


def _first_header(path: str, tags=None):
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
    except Exception as exc:  # pydicom raises many types for damaged files; each becomes a DataError naming the file
        raise DataError(path, f"cannot read DICOM header ({type(exc).__name__}: {exc})") from exc


def _dicom_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(".dcm"))


def _histology(subject: str, where: str, row: int | None = None) -> int:
    match = SUBJECT.fullmatch(subject)
    if not match:
        raise DataError(where, f"subject ID {subject!r} does not look like Lung_Dx-<letter><number>", row)
    letter = match.group(1)
    if letter not in CLASS_LETTERS:
        known = ", ".join(CLASS_LETTERS)
        raise DataError(where, f"subject ID {subject!r}: histology letter {letter!r} is not one of {known}", row)
    return CLASS_LETTERS.index(letter)


# --- finding the series ----------------------------------------------------------------------------------------


def find_metadata(root: str, depth: int = 2) -> list[str]:
    """metadata.csv files at ``root`` or up to ``depth`` folders below it (one per NBIA manifest download)."""
    found = []
    base = root.rstrip(os.sep).count(os.sep)
    for folder, dirs, files in os.walk(root):
        if "metadata.csv" in files:
            found.append(os.path.join(folder, "metadata.csv"))
        if folder.count(os.sep) - base >= depth:
            dirs[:] = []
        else:
            dirs[:] = sorted(d for d in dirs if d != NAME and d != "Annotation")  # never descend into the images
    return sorted(found)


def series_from_metadata(path: str, skipped: Counter) -> list[SeriesRef]:
    """The CT series listed in one NBIA metadata.csv (rows are numbered as lines, the header being line 1)."""
    if os.path.getsize(path) == 0:
        raise DataError(path, "metadata.csv is empty")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise DataError(path, "metadata.csv is empty")
        missing = [c for c in REQUIRED_COLUMNS if c not in reader.fieldnames]
        if missing:
            raise DataError(path, f"not an NBIA metadata.csv: missing columns {missing} (found {reader.fieldnames})")
        rows = list(reader)
    if not rows:
        raise DataError(path, "metadata.csv lists no series")
    base = os.path.dirname(path)
    series = []
    for line, row in enumerate(rows, start=2):
        modality = (row.get("Modality") or "").strip()
        sop_class = (row.get("SOP Class UID") or "").strip()
        if modality != "CT" or (sop_class and sop_class != CT_IMAGE_STORAGE):
            skipped[f"{modality or 'unknown'} series"] += 1
            continue
        location = (row.get("File Location") or "").strip().replace("\\", "/")
        subject = (row.get("Subject ID") or "").strip()
        if not location or not subject:
            raise DataError(path, "row has no File Location or Subject ID", line)
        folder = os.path.normpath(os.path.join(base, location))
        if not os.path.isdir(folder):
            raise DataError(path, f"series folder {folder} named in File Location does not exist", line)
        count = (row.get("Number of Images") or "").strip()
        try:
            expected = int(count) if count else None
        except ValueError as exc:
            raise DataError(path, f"Number of Images {count!r} is not a number", line) from exc
        series.append(SeriesRef(subject, row["Series UID"].strip(), folder, expected, path, line))
    return series


def series_from_folders(root: str, skipped: Counter) -> list[SeriesRef]:
    """CT series found by walking ``root`` when there is no metadata.csv: every folder holding .dcm files."""
    series = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if not any(n.lower().endswith(".dcm") for n in files):
            continue
        first = _first_header(_dicom_files(folder)[0], ["Modality", "SOPClassUID", "SeriesInstanceUID", "PatientID"])
        if str(first.get("Modality", "")) != "CT" or str(first.get("SOPClassUID", "")) != CT_IMAGE_STORAGE:
            skipped[f"{first.get('Modality', 'unknown')} series"] += 1
            continue
        subject = next((p for p in reversed(folder.split(os.sep)) if SUBJECT.fullmatch(p)), str(first.get("PatientID", "")))
        series.append(SeriesRef(subject, str(first.get("SeriesInstanceUID", "")), folder, None, folder))
    if not series and not skipped:
        raise DataError(root, "no metadata.csv and no DICOM (.dcm) files found: is this an NBIA download of Lung-PET-CT-Dx?")
    return series


def read_series(ref: SeriesRef, skipped: Counter) -> list[SliceHeader]:
    """Headers of the series' axial CT slices, ordered from head to foot (empty when the series is not axial)."""
    files = _dicom_files(ref.folder)
    if not files:
        raise DataError(ref.folder, "series folder holds no DICOM (.dcm) files", None)
    if ref.expected_images is not None and len(files) < ref.expected_images:
        problem = f"series {ref.folder} has {len(files)} DICOM files but metadata.csv lists {ref.expected_images}"
        raise DataError(ref.source, problem + ": files are missing", ref.row)
    headers, orientations = [], []
    for path in files:
        ds = _first_header(path, _HEADER_TAGS)
        if str(ds.get("SOPClassUID", "")) != CT_IMAGE_STORAGE:
            skipped["non-CT images in CT series"] += 1
            continue
        image_type = ds.get("ImageType", [])
        image_type = [image_type] if isinstance(image_type, str) else list(image_type)
        if "LOCALIZER" in [str(v).upper() for v in image_type]:
            skipped["localizer images"] += 1
            continue
        if ref.series_uid and str(ds.get("SeriesInstanceUID", ref.series_uid)) != ref.series_uid:
            raise DataError(path, f"belongs to series {ds.SeriesInstanceUID}, not to {ref.series_uid} whose folder holds it")
        for keyword in ("SOPInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns"):
            if keyword not in ds:
                raise DataError(path, f"CT slice has no {keyword}")
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        orientations.append(orientation)
        normal = np.cross(orientation[:3], orientation[3:])
        position = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        headers.append((path, ds, normal, position))
    if not headers:
        skipped["series without axial CT slices"] += 1
        return []
    if np.ptp(np.stack(orientations), axis=0).max() > 1e-3:
        raise DataError(ref.folder, "slices of this series have different ImageOrientationPatient")
    normal = headers[0][2]
    if abs(normal[2]) < 0.8:  # coronal or sagittal reformat
        skipped["non-axial CT series"] += 1
        return []
    slices = [
        SliceHeader(
            path, str(ds.SOPInstanceUID), float(position[2]), int(ds.get("InstanceNumber", 0) or 0), int(ds.Rows), int(ds.Columns)
        )
        for path, ds, _, position in headers
    ]
    slices.sort(key=lambda s: (-s.position, s.instance, s.path))  # patient +z is superior: head end first
    return slices


# --- annotations -------------------------------------------------------------------------------------------------


def find_annotations(root: str, depth: int = 3) -> str | None:
    """The ``Annotation`` folder of the XML release under ``root`` (None when there is none)."""
    base = root.rstrip(os.sep).count(os.sep)
    for folder, dirs, _ in os.walk(root):
        dirs.sort()
        if os.path.basename(folder) == "Annotation":
            return folder
        if folder.count(os.sep) - base >= depth:
            dirs[:] = []
        else:
            dirs[:] = [d for d in dirs if d != NAME]
    return None


def _number(node, tag: str, path: str) -> float:
    child = node.find(tag)
    if child is None or child.text is None:
        raise DataError(path, f"annotation has no <{tag}>")
    try:
        return float(child.text.strip())
    except ValueError as exc:
        raise DataError(path, f"<{tag}> is not a number: {child.text!r}") from exc


def read_voc(path: str) -> tuple[tuple[int, int] | None, list[tuple[str, list[float]]]]:
    """One PASCAL-VOC XML: ((width, height) or None, [(class name, [xmin, ymin, xmax, ymax]), ...])."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(path, f"malformed annotation XML ({exc})") from exc
    if root.tag != "annotation":
        raise DataError(path, f"not a PASCAL-VOC annotation (root element <{root.tag}>)")
    size = root.find("size")
    shape = None
    if size is not None and size.find("width") is not None:
        shape = (int(_number(size, "width", path)), int(_number(size, "height", path)))
    objects = []
    for obj in root.findall("object"):
        name = obj.find("name")
        if name is None or not (name.text or "").strip():
            raise DataError(path, "annotation <object> has no <name>")
        box_node = obj.find("bndbox")
        if box_node is None:
            raise DataError(path, "annotation <object> has no <bndbox>")
        box = [_number(box_node, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax")]
        objects.append((name.text.strip(), box))
    return shape, objects


def _clean(value: float):
    return int(value) if float(value).is_integer() else float(value)


def _boxes_for(path: str, shape: tuple[int, int] | None, objects, rows: int, columns: int) -> tuple[list, list]:
    if shape is not None and shape != (columns, rows):
        raise DataError(path, f"annotation size {shape[0]}x{shape[1]} differs from the slice's {columns}x{rows}")
    boxes, labels = [], []
    for name, (x0, y0, x1, y1) in objects:
        letter = name.upper()
        if letter not in CLASS_LETTERS:
            raise DataError(path, f"class {name!r} is not one of {', '.join(CLASS_LETTERS)}")
        if not (0 <= x0 < x1 <= columns and 0 <= y0 < y1 <= rows):
            raise DataError(path, f"box {[x0, y0, x1, y1]} is empty or outside the {columns}x{rows} slice")
        boxes.append([_clean(v) for v in (x0, y0, x1, y1)])
        labels.append(CLASS_LETTERS.index(letter))
    return boxes, labels


# --- the datalist ------------------------------------------------------------------------------------------------


def prepare(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    annotations: str | os.PathLike | None = None,
    fractions=(0.7, 0.1, 0.2),
    strict: bool = True,
) -> dict:
    """Write the Lung-PET-CT-Dx datalist (default ``ROOT/datalist.json``) and return a summary.

    ``annotations`` is the XML release's ``Annotation`` folder (or the folder holding it); by default one is looked
    for under ``root``. Patients are split by a hash of their ID (no split left empty) (``fractions`` for training, validation, test).
    With ``strict`` (the default) an XML naming a SOPInstanceUID that matches no CT slice of its patient is an
    error; ``strict=False`` leaves such XMLs out and counts them in the summary.
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise DataError(root, "dataset folder not found")
    out = os.path.join(root, "datalist.json") if out is None else os.fspath(out)
    strict = as_bool(strict)  # `--strict false` on the command line arrives as a string
    skipped: Counter = Counter()

    metadata = find_metadata(root)
    refs: list[SeriesRef] = []
    for path in metadata:
        refs += series_from_metadata(path, skipped)
    if not metadata:
        refs = series_from_folders(root, skipped)

    by_patient: dict[str, list[dict]] = {}
    slices_by_uid: dict[str, tuple[dict, SliceHeader]] = {}
    for ref in sorted(refs, key=lambda r: (r.subject, r.folder)):
        label = _histology(ref.subject, ref.source, ref.row)
        headers = read_series(ref, skipped)
        for k, header in enumerate(headers):
            item = {
                "image": header.path,
                "patient": ref.subject,
                "series": ref.series_uid,
                "slice": k,
                "slice_position": round(k / max(len(headers) - 1, 1), 4),
                "box": [],
                "box_label": [],
                "label": label,
            }
            by_patient.setdefault(ref.subject, []).append(item)
            slices_by_uid[header.sop_uid] = (item, header)
    if not by_patient:
        raise DataError(root, f"no axial CT slices found (left out: {dict(skipped)})")

    annotation_dir = _annotation_dir(root, annotations)
    counts = Counter()
    if annotation_dir is not None:
        _attach_annotations(annotation_dir, by_patient, slices_by_uid, strict, counts)

    datalist = {
        "name": NAME,
        "description": "Lung-PET-CT-Dx (TCIA, doi:" + DOI + "): axial CT slices in HU, PASCAL-VOC tumour boxes, histology",
        "labels": list(CLASS_NAMES),
        "box_classes": list(CLASS_NAMES),
        "window": list(LUNG_WINDOW),
        **{split: [] for split in SPLITS},
    }
    split_of_patient = assign_splits(by_patient, fractions, seed)
    for patient in sorted(by_patient):
        datalist[split_of_patient[patient]].extend(by_patient[patient])
    path = write_datalist(datalist, out, file_keys=("image",))
    summary = {
        "datalist": path,
        "patients": len(by_patient),
        "series": len({item["series"] for items in by_patient.values() for item in items}),
        "slices": len(slices_by_uid),
        "annotated_slices": counts["annotated slices"],
        "boxes": counts["boxes"],
        "annotations": annotation_dir,
        "left_out": dict(sorted(skipped.items())) | _left_out(counts),
        **{split: len(datalist[split]) for split in SPLITS},
    }
    log.info("Lung-PET-CT-Dx: %s", summary)
    return summary


def _left_out(counts: Counter) -> dict:
    return {k: v for k, v in counts.items() if k not in ("annotated slices", "boxes")}


def _annotation_dir(root: str, annotations) -> str | None:
    if annotations is None:
        return find_annotations(root)
    annotations = os.path.abspath(os.fspath(annotations))
    if not os.path.isdir(annotations):
        raise DataError(annotations, "annotation folder not found")
    inner = os.path.join(annotations, "Annotation")
    return inner if os.path.isdir(inner) else annotations


def _attach_annotations(annotation_dir: str, by_patient: dict, slices_by_uid: dict, strict: bool, counts: Counter) -> None:
    for folder, dirs, files in os.walk(annotation_dir):
        dirs.sort()
        xmls = sorted(n for n in files if n.lower().endswith(".xml"))
        if not xmls:
            continue
        subject = f"Lung_Dx-{os.path.basename(folder)}"
        if subject not in by_patient:
            counts["annotations of patients not downloaded"] += len(xmls)
            continue
        for name in xmls:
            path = os.path.join(folder, name)
            uid = name[: -len(".xml")]
            shape, objects = read_voc(path)  # malformed XML is an error even when its slice is absent
            match = slices_by_uid.get(uid)
            if match is None or match[0]["patient"] != subject:
                if strict:
                    other = f" (it is a slice of {match[0]['patient']})" if match else ""
                    problem = f"SOPInstanceUID {uid} matches no CT slice of {subject}{other}"
                    raise DataError(path, problem + "; strict=False leaves such files out")
                counts["annotations matching no CT slice"] += 1
                continue
            item, header = match
            boxes, labels = _boxes_for(path, shape, objects, header.rows, header.columns)
            item["box"], item["box_label"] = boxes, labels
            counts["annotated slices"] += 1 if boxes else 0
            counts["boxes"] += len(boxes)
