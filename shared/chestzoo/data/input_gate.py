"""Whether a user's file is what a chestzoo model was trained on, before any model sees it.

A classifier answers for any picture it is given: a knee radiograph, a CT slice or a photograph would get confident
chest findings. The gate reads what the file says of itself and refuses, with the reason, what is plainly not a
frontal chest radiograph (or, for the CT bundle, not a CT):

- DICOM header: ``Modality`` (CR or DX for radiographs, CT for CT), ``BodyPartExamined`` (a chest term or absent)
  and ``ViewPosition`` (PA or AP, or absent; a lateral is refused);
- pixels: a blank image (one value, or almost: an all-black export) and a colour picture (a radiograph is grey, and
  a colour photograph is not one) are refused.

It does not yet judge what the pixels show: a grey, untagged image of another body part passes. ``accept_any``
lets a researcher override the gate; the verdict then says so. ``chestzoo check-image``, ``chestzoo serve``, the MONAI
Label app and the X-ray bundles' ``inference.json`` (:func:`admit`, config key ``accept_any_image``) all ask it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import DataError

XRAY_MODALITIES = ("CR", "DX")
CT_MODALITIES = ("CT",)
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "LUNGS")  # DICOM PS3.16 CID 4031 terms for the chest, as found in PACS
FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LL", "RL", "LATERAL", "LAT")
MIN_SPREAD = 0.02  # intensity range (1st to 99th percentile, image in [0, 1]) below which an image is blank
MAX_COLOUR = 0.04  # mean absolute difference between colour channels (in [0, 1]) above which a picture is colour
KINDS = ("xray", "ct")


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str  # why it was refused, or what was checked when accepted

    def __str__(self) -> str:
        return f"{'accepted' if self.accepted else 'refused'}: {self.reason}"


def check_header(ds, kind: str = "xray") -> str | None:
    """Why a DICOM dataset's header is refused, or None; ``kind`` "xray" (frontal chest radiograph) or "ct"."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    allowed = XRAY_MODALITIES if kind == "xray" else CT_MODALITIES
    if modality and modality not in allowed:
        return f"Modality is {modality}, not {' or '.join(allowed)}"
    body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if body_part and body_part not in CHEST_BODY_PARTS:
        return f"BodyPartExamined is {body_part}, not the chest"
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if kind == "xray" and view and view not in FRONTAL_VIEWS:
        what = "lateral" if view in LATERAL_VIEWS else "not frontal (PA or AP)"
        return f"ViewPosition {view}: {what}"
    return None


def check_pixels(pixels: np.ndarray, full_range: float | None = None) -> str | None:
    """Why an image's pixels are refused, or None: blank or colour.

    ``pixels``: (H, W) or (H, W, C); ``full_range``: the largest value the file could hold (default: the integer
    type's maximum, e.g. 255 for 8-bit; 2**BitsStored - 1 for DICOM), against which "almost blank" is judged.
    """
    if full_range is None:
        full_range = float(np.iinfo(pixels.dtype).max) if np.issubdtype(pixels.dtype, np.integer) else None
    array = np.asarray(pixels, dtype=np.float64)
    if array.ndim == 3 and array.shape[-1] >= 3:
        rgb = array[..., :3]
        colour = float(np.mean(np.abs(rgb - rgb.mean(axis=-1, keepdims=True))))
        if colour > MAX_COLOUR * (full_range or max(float(rgb.max() - rgb.min()), 1e-12)):
            return "a colour picture, not a grey radiograph"
        array = rgb.mean(axis=-1)
    if float(array.max() - array.min()) == 0:
        return "a blank image (every pixel the same)"
    low, high = np.percentile(array, [1, 99])
    if full_range and (high - low) / full_range < MIN_SPREAD:
        return "an almost blank image (nearly every pixel the same)"
    return None


def check_file(path: str | os.PathLike, kind: str = "xray", accept_any: bool = False) -> Verdict:
    """The gate's verdict on one PNG, JPEG or DICOM file."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, "file not found")
    reason, checked = None, "pixels"
    with open(path, "rb") as f:
        head = f.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        import pydicom

        ds = pydicom.dcmread(path)
        reason = check_header(ds, kind)
        checked = "DICOM header (Modality, BodyPartExamined, ViewPosition) and pixels"
        if reason is None and kind == "xray":
            reason = check_pixels(ds.pixel_array, float(2 ** int(ds.get("BitsStored", 16)) - 1))
    else:
        from PIL import Image

        with Image.open(path) as picture:
            full_range = 65535.0 if picture.mode.startswith("I") else None if picture.mode == "F" else 255.0
            picture = picture.convert("RGB") if picture.mode in ("P", "RGBA", "CMYK") else picture
            reason = check_pixels(np.asarray(picture), full_range)
    if reason is None:
        return Verdict(True, f"{checked} as expected for a {'frontal chest radiograph' if kind == 'xray' else 'CT'}")
    if accept_any:
        return Verdict(True, f"would be refused ({reason}), accepted because any image is accepted")
    return Verdict(False, reason)


def admit(paths, output_dir: str | None = None, kind: str = "xray", accept_any: bool = False) -> list[str]:
    """The files of ``paths`` the gate accepts, in order, for a bundle's inference (its ``images``).

    The refused ones are logged and listed with their reasons in ``<output_dir>/refused_inputs.json``. A file the
    gate cannot read is passed on: the bundle's reader reports it under its own ``skip_bad`` rule. When every file
    is refused, the run stops with the first reason.
    """
    import json
    import logging

    from ..utils import as_bool

    accepted, refused = [], []
    for path in paths:
        try:
            verdict = check_file(path, kind, as_bool(accept_any))
        except Exception:  # unreadable: not the gate's to judge; the reader names the problem
            accepted.append(path)
            continue
        if verdict.accepted:
            accepted.append(path)
        else:
            refused.append({"image": os.fspath(path), "reason": verdict.reason})
            logging.getLogger(__name__).warning("%s refused: %s", path, verdict.reason)
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "refused_inputs.json"), "w") as f:
            json.dump({"accepted": len(accepted), "refused": refused}, f, indent=2)
    if refused and not accepted:
        raise DataError(refused[0]["image"], f"every input was refused by the input gate, this one as {refused[0]['reason']} "
                                             "(accept_any_image True infers anyway)")
    return accepted
