"""Annotation files as an annotation server (MONAI Label, apps/monailabel) keeps them: written from the served bundles'
predictions, and read back into the bundles' own datalists so that the bundles train on what annotators saved.

One label file per image:

- ``cxr_lung_segmentation``: a PNG of the image's size, 0 background, 1 left lung, 2 right lung (a model trained with
  merged masks, the bundle's default, predicts 1 for both lungs; training merges the sides again);
- the classifier and the detectors: a JSON file ``{"findings": [NIH names], "boxes": [{"label": name, "box": [x_min,
  y_min, x_max, y_max]}]}`` in the image's pixels ("Lung Opacity" is the RSNA detector's box label).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .data import DataError, read_image
from .data.labels import NIH_BOX_LABELS, NIH_LABELS, NIH_NO_FINDING, RSNA_CLASSES, RSNA_TARGETS
from .data.montgomery import MASK_CHANNELS
from .data.rsna import BOX_CLASSES, OPACITY_CLASS

# served bundle -> MONAI Label task type
SERVED = {
    "cxr14_lse_classification": "classification",
    "cxr_pathology_detection": "detection",
    "rsna_pneumonia_detection": "detection",
    "cxr_lung_segmentation": "segmentation",
}
RSNA_BOX_LABEL = BOX_CLASSES[0]  # "Lung Opacity"
LABEL_NAMES = {
    "cxr14_lse_classification": list(NIH_LABELS),
    "cxr_pathology_detection": list(NIH_BOX_LABELS),
    "rsna_pneumonia_detection": [RSNA_BOX_LABEL],
    "cxr_lung_segmentation": list(MASK_CHANNELS),
}


def lung_label(masks: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Masks (C, h, w) at the network's size -> one uint8 label (H, W) at the image's size: channel c is value c + 1."""
    label = np.zeros(masks.shape[1:], dtype=np.uint8)
    for channel, mask in enumerate(np.asarray(masks, dtype=bool)):
        label[mask] = channel + 1
    return np.asarray(Image.fromarray(label).resize((int(shape[1]), int(shape[0])), Image.NEAREST))


def predict(models, name: str, path: str) -> tuple[dict, np.ndarray | None]:
    """Bundle ``name``'s answer for the image file ``path``, through ``models`` (a
    :class:`chestzoo.serve.ServedModels` holding it): the label JSON, plus the lung label image for the segmentation."""
    import torch

    with models.lock, torch.no_grad():
        return _predict(models, name, path)


def _predict(models, name: str, path: str) -> tuple[dict, np.ndarray | None]:
    if name == "cxr_lung_segmentation":
        masks = models.lung_masks(path)
        label = lung_label(masks, read_image(path).shape[-2:])  # the label file has the image's size
        values = {str(c + 1): side for c, side in enumerate(MASK_CHANNELS if len(masks) == 2 else ["lungs"])}
        return {"label_values": values, "area_fraction": round(float((label > 0).mean()), 4)}, label
    if name == "cxr14_lse_classification":
        findings, _ = models.findings(path)
        return {"findings": [f["label"] for f in findings if f["positive"]], "probabilities": findings, "boxes": []}, None
    boxes = models.pathology_boxes(path) if name == "cxr_pathology_detection" else models.opacity_boxes(path)
    boxes = [{key: box[key] for key in ("label", "box", "score")} for box in boxes]
    return {"findings": sorted({box["label"] for box in boxes}), "boxes": boxes}, None


def read_annotation(path: str) -> dict:
    """A JSON label file, checked: known finding names and boxes of four numbers with positive area."""
    try:
        with open(path) as f:
            annotation = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(path, f"not a readable JSON label ({exc})") from exc
    if not isinstance(annotation, dict):
        raise DataError(path, "a JSON label must be an object with 'findings' and/or 'boxes'")
    findings = [name for name in annotation.get("findings", []) if name != NIH_NO_FINDING]
    known = set(NIH_LABELS) | {RSNA_BOX_LABEL}
    boxes = annotation.get("boxes", [])
    for i, box in enumerate(boxes):
        values = box.get("box") if isinstance(box, dict) else None
        if not (isinstance(values, list) and len(values) == 4 and values[2] > values[0] and values[3] > values[1]):
            raise DataError(path, f"box {i} is not {{'label': name, 'box': [x_min, y_min, x_max, y_max]}} with positive area")
        if box.get("label") not in known:
            raise DataError(path, f"box {i} has unknown label {box.get('label')!r}")
    unknown = sorted(set(findings) - known)
    if unknown:
        raise DataError(path, f"unknown findings {unknown} (NIH spelling, e.g. 'Pleural_Thickening')")
    return {"findings": findings, "boxes": boxes}


def _item(name: str, image: str, label: str, work_dir: Path) -> dict:
    patient = Path(image).name.split(".")[0]
    if name == "cxr_lung_segmentation":
        values = np.asarray(Image.open(label))
        if values.ndim != 2 or values.max(initial=0) > len(MASK_CHANNELS):
            raise DataError(label, f"a lung label is one grey PNG with values 0-{len(MASK_CHANNELS)} (0 background, 1 left, 2 right)")
        masks = []
        for channel, side in enumerate(("left", "right")):
            out = work_dir / "masks" / side / f"{patient}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((values == channel + 1).astype(np.uint8) * 255).save(out)
            masks.append(str(out))
        return {"image": image, "patient": patient, "mask": masks}
    annotation = read_annotation(label)
    if name == "cxr14_lse_classification":
        return {"image": image, "patient": patient, "label": [int(n in annotation["findings"]) for n in NIH_LABELS]}
    if name == "cxr_pathology_detection":
        boxes = [b for b in annotation["boxes"] if b["label"] in NIH_BOX_LABELS]
        findings = set(annotation["findings"]) | {b["label"] for b in boxes}
        return {"image": image, "patient": patient, "label": [int(n in findings) for n in NIH_LABELS],
                "box": [b["box"] for b in boxes], "box_label": [NIH_BOX_LABELS.index(b["label"]) for b in boxes]}
    boxes = [b for b in annotation["boxes"] if b["label"] == RSNA_BOX_LABEL]
    return {"image": image, "patient": patient, "label": int(bool(boxes)), "class": OPACITY_CLASS if boxes else 0,
            "box": [b["box"] for b in boxes], "box_label": [0] * len(boxes)}


def _in_validation(image: str, fraction: float) -> bool:
    """A stable split by file name, so that an image keeps its side as more labels arrive."""
    digest = hashlib.sha256(Path(image).name.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def training_datalist(name: str, labelled: Sequence[tuple[str, str]], work_dir: str | os.PathLike,
                      validation_fraction: float = 0.2) -> str:
    """Write bundle ``name``'s datalist JSON into ``work_dir`` from (image file, label file) pairs; returns its path.

    Images go to validation by a hash of their name (at least one each side); the test list stays empty.
    """
    from .data.datalist import write_datalist

    if name not in SERVED:
        raise ValueError(f"{name} is not served for annotation; served bundles are {sorted(SERVED)}")
    if len(labelled) < 2:
        raise DataError(str(work_dir), f"{name} needs at least two labelled images to train (one for validation); found {len(labelled)}")
    work_dir = Path(work_dir)
    items = [_item(name, os.path.abspath(image), os.path.abspath(label), work_dir) for image, label in sorted(labelled)]
    validation = [_in_validation(item["image"], validation_fraction) for item in items]
    if all(validation) or not any(validation):  # few images: the hash may put them all on one side
        validation = [i == len(items) - 1 for i in range(len(items))]
    datalist = {
        "description": f"{len(items)} images labelled in an annotation server, for {name}",
        "training": [item for item, v in zip(items, validation) if not v],
        "validation": [item for item, v in zip(items, validation) if v],
        "test": [],
    }
    if name == "cxr_lung_segmentation":
        datalist["mask_channels"] = list(MASK_CHANNELS)
    elif name == "rsna_pneumonia_detection":
        datalist.update(labels=list(RSNA_TARGETS), classes=list(RSNA_CLASSES), box_classes=list(BOX_CLASSES))
    else:
        datalist.update(labels=list(NIH_LABELS), box_classes=list(NIH_BOX_LABELS))
    return write_datalist(datalist, work_dir / "datalist.json", file_keys=("image", "mask"))
