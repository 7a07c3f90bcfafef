"""Montgomery County chest X-ray set (NLM; Jaeger et al. 2014): PA radiographs with left and right lung masks.

The reader takes NLM's layout (the ``MontgomerySet`` folder may be ROOT itself or lie up to two levels below)::

    MontgomerySet/CXR_png/MCUCXR_0001_0.png               _0 normal, _1 manifestations of tuberculosis
    MontgomerySet/ManualMask/leftMask/MCUCXR_0001_0.png    the patient's left lung
    MontgomerySet/ManualMask/rightMask/MCUCXR_0001_0.png   the patient's right lung
    MontgomerySet/ClinicalReadings/MCUCXR_0001_0.txt       (not needed here)

Each image is one patient; there is no official split, so patients are split by a hash of their ID. Items::

    {"image": ".../CXR_png/MCUCXR_0001_0.png", "patient": "MCUCXR_0001",
     "mask": [".../leftMask/MCUCXR_0001_0.png", ".../rightMask/MCUCXR_0001_0.png"], "label": 0}

``mask`` follows the top-level ``mask_channels`` (left lung, right lung); ``read_mask(item["mask"])`` gives both
lungs as one channel, ``merge=False`` one channel per lung. ``label`` indexes ``labels`` (normal, tuberculosis).
Image and mask sizes are checked from the PNG headers, without decoding the (large) images.
"""

from __future__ import annotations

import logging
import os
import re

from PIL import Image

from .datalist import SPLITS, assign_splits, write_datalist
from .errors import DataError

log = logging.getLogger(__name__)

NAME = "Montgomery County chest X-ray set"
LABELS = ("normal", "tuberculosis")
MASK_CHANNELS = ("left lung", "right lung")
IMAGE_NAME = re.compile(r"(MCUCXR_\d{4})_([01])\.png")
SET_FOLDER = "MontgomerySet"


def find_set(root: str, depth: int = 2) -> str:
    """The folder holding ``CXR_png`` and ``ManualMask``: ROOT, or a ``MontgomerySet`` up to ``depth`` levels down."""
    if os.path.isdir(os.path.join(root, "CXR_png")):
        return root
    base = root.rstrip(os.sep).count(os.sep)
    for folder, dirs, _ in os.walk(root):
        dirs.sort()
        if os.path.basename(folder) == SET_FOLDER and os.path.isdir(os.path.join(folder, "CXR_png")):
            return folder
        if folder.count(os.sep) - base >= depth:
            dirs[:] = []
    raise DataError(root, f"no {SET_FOLDER}/CXR_png folder found: is this NLM's Montgomery County set?")


def png_size(path: str) -> tuple[int, int]:
    """(width, height) from the file header; a missing or damaged file is a DataError naming it."""
    if not os.path.isfile(path):
        raise DataError(path, "file not found")
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as exc:  # PIL raises several types for truncated or foreign files
        raise DataError(path, f"cannot read PNG header ({type(exc).__name__}: {exc})") from exc


def prepare(root: str | os.PathLike, out: str | os.PathLike | None = None, seed: int = 0, fractions=(0.7, 0.1, 0.2)) -> dict:
    """Write the Montgomery datalist (default ``ROOT/datalist.json``) and return a summary."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise DataError(root, "dataset folder not found")
    out = os.path.join(root, "datalist.json") if out is None else os.fspath(out)
    base = find_set(root)
    image_dir = os.path.join(base, "CXR_png")
    mask_dirs = (os.path.join(base, "ManualMask", "leftMask"), os.path.join(base, "ManualMask", "rightMask"))
    names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(".png"))
    if not names:
        raise DataError(image_dir, "holds no PNG images")

    datalist = {
        "name": NAME,
        "description": "Montgomery County TB screening PA chest X-rays (NLM) with manual left and right lung masks",
        "labels": list(LABELS),
        "mask_channels": list(MASK_CHANNELS),
        **{split: [] for split in SPLITS},
    }
    seen: dict[str, str] = {}
    items = []
    for name in names:
        image = os.path.join(image_dir, name)
        match = IMAGE_NAME.fullmatch(name)
        if not match:
            raise DataError(image, "file name does not follow MCUCXR_<4 digits>_<0 normal | 1 TB>.png")
        patient, label = match.group(1), int(match.group(2))
        if patient in seen:
            raise DataError(image, f"patient {patient} has a second image ({seen[patient]}); the set has one per patient")
        seen[patient] = name
        masks = [os.path.join(folder, name) for folder in mask_dirs]
        size = png_size(image)
        for mask, channel in zip(masks, MASK_CHANNELS):
            if not os.path.isfile(mask):
                raise DataError(mask, f"{channel} mask of {name} is missing")
            mask_size = png_size(mask)
            if mask_size != size:
                sizes = f"{mask_size[0]}x{mask_size[1]} but its image {name} is {size[0]}x{size[1]}"
                raise DataError(mask, f"{channel} mask is {sizes}")
        items.append({"image": image, "patient": patient, "mask": masks, "label": label})
    # stratified by label, so that small sets keep normal and TB films in every split
    split_of_patient = assign_splits(seen, fractions, seed, strata={i["patient"]: i["label"] for i in items})
    for item in items:
        datalist[split_of_patient[item["patient"]]].append(item)
    path = write_datalist(datalist, out, file_keys=("image", "mask"))
    summary = {
        "datalist": path,
        "root": base,
        "patients": len(seen),
        **{label: sum(item["label"] == i for s in SPLITS for item in datalist[s]) for i, label in enumerate(LABELS)},
        **{split: len(datalist[split]) for split in SPLITS},
    }
    log.info("Montgomery: %s", summary)
    return summary
