"""Synthetic Montgomery County chest X-ray set in the layout of NLM's release.

What :func:`write` produces under ``out``::

    MontgomerySet/CXR_png/MCUCXR_0001_0.png              one PA radiograph per patient (_0 normal, _1 tuberculosis)
    MontgomerySet/ManualMask/leftMask/MCUCXR_0001_0.png   the patient's left lung (the image's right), 0/255
    MontgomerySet/ManualMask/rightMask/MCUCXR_0001_0.png  the patient's right lung (the image's left), 0/255
    MontgomerySet/ClinicalReadings/MCUCXR_0001_0.txt      sex, age and the radiologist's reading

The real radiographs are 4020 x 4892 pixels (portrait, width x height); the synthetic ones keep that aspect:
``size`` pixels wide and ``round(size * 4892 / 4020)`` high. Images come from :func:`phantom.render_chest`;
tuberculosis cases add the pattern that sets TB apart on a chest film: patchy fibro-nodular opacities in an upper
zone, often around a lucent cavity, sometimes with a phantom finding (nodule, fibrosis, effusion, infiltration)
on top. Masks are the phantom's lung fields, so they are exact. The same seed writes the same bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from .phantom import ChestPhantom, render_chest, to_uint8

ASPECT = 4892 / 4020  # height / width of the real radiographs
TB_FRACTION = 58 / 138  # 58 of the 138 real radiographs show tuberculosis
_EXTRA_FINDINGS = ("Nodule", "Fibrosis", "Effusion", "Infiltration")


def image_name(index: int, tuberculosis: bool) -> str:
    return f"MCUCXR_{index + 1:04d}_{int(tuberculosis)}"


def _upper_zone_tb(rng: np.random.Generator, image: np.ndarray, lung: np.ndarray) -> tuple[np.ndarray, bool]:
    """Add fibro-nodular upper-zone opacities (and perhaps a cavity) inside ``lung``; returns (image, cavity)."""
    ys, xs = np.nonzero(lung)
    top, bottom = ys.min(), ys.max()
    zone = lung & (np.arange(lung.shape[0])[:, None] < top + 0.4 * (bottom - top))  # upper 40% of the lung field
    h, w = lung.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    zy, zx = np.nonzero(zone)
    centre = int(rng.integers(len(zy)))
    cy, cx = float(zy[centre]), float(zx[centre])
    radius = 0.06 * w * float(rng.uniform(0.8, 1.3))
    blotches = np.zeros_like(image)
    for _ in range(int(rng.integers(5, 9))):
        by, bx = cy + rng.normal(0, radius * 0.6), cx + rng.normal(0, radius * 0.6)
        r = radius * float(rng.uniform(0.25, 0.5))
        blotches += np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * r * r))
    blotches = np.clip(blotches, 0, 1) * gaussian_filter(zone.astype(np.float32), 1.5)
    mottle = 0.6 + 0.4 * gaussian_filter(rng.random(image.shape).astype(np.float32), 1.0)
    image = image + 0.32 * blotches * mottle
    cavity = bool(rng.random() < 0.5)
    if cavity:  # a lucent hole with a bright wall
        r = radius * 0.35
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        image = image + 0.25 * np.exp(-((d - r) ** 2) / (2 * (0.25 * r) ** 2)) * lung - 0.3 * (d < 0.8 * r) * lung
    return np.clip(image, 0.0, 1.0), cavity


def _reading(rng: np.random.Generator, tuberculosis: bool, side: str, cavity: bool, extras: list[str]) -> str:
    if not tuberculosis:
        return "normal"
    words = [f"{side} upper lobe infiltrate" + (" with cavitation" if cavity else "")]
    words += [e.lower() for e in extras]
    return ", ".join(words) + (" c/w active TB" if rng.random() < 0.5 else " c/w TB")


@dataclass
class MontgomeryCase:
    """One synthetic patient: file stem, diagnosis, the rendered chest (image and true lung masks), the reading."""

    name: str
    tuberculosis: bool
    chest: ChestPhantom
    sex: str
    age: int
    reading: str


def render_patient(index: int, size: int = 256, seed: int = 0) -> MontgomeryCase:
    """Patient ``index`` exactly as :func:`write` draws it (deterministic in the arguments)."""
    rng = np.random.default_rng([seed, index, 11])
    tuberculosis = bool(rng.random() < TB_FRACTION)
    extras = []
    if tuberculosis:
        extras = sorted(rng.choice(_EXTRA_FINDINGS, size=int(rng.integers(0, 2)), replace=False).tolist())
    chest = render_chest(rng, int(round(size * ASPECT)), extras, width=size, view="PA")
    side, cavity = "", False
    if tuberculosis:
        side = "right" if rng.random() < 0.5 else "left"
        chest.image, cavity = _upper_zone_tb(rng, chest.image, chest.right_lung if side == "right" else chest.left_lung)
    sex = "M" if rng.random() < 0.5 else "F"
    age = int(rng.integers(18, 80))
    reading = _reading(rng, tuberculosis, side, cavity, extras)
    return MontgomeryCase(image_name(index, tuberculosis), tuberculosis, chest, sex, age, reading)


def write(out: str | os.PathLike, patients: int = 40, size: int = 256, seed: int = 0) -> dict:
    """Write ``patients`` synthetic radiographs (one per patient) in the MontgomerySet layout under ``out``."""
    if patients < 1 or size < 32:
        raise ValueError(f"need patients >= 1 and size >= 32 (got {patients}, {size})")
    base = os.path.join(os.fspath(out), "MontgomerySet")
    folders = {
        "image": os.path.join(base, "CXR_png"),
        "left": os.path.join(base, "ManualMask", "leftMask"),
        "right": os.path.join(base, "ManualMask", "rightMask"),
        "reading": os.path.join(base, "ClinicalReadings"),
    }
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    tb_count = 0
    for i in range(patients):
        case = render_patient(i, size, seed)
        tb_count += case.tuberculosis
        Image.fromarray(to_uint8(case.chest.image)).save(os.path.join(folders["image"], f"{case.name}.png"))
        # leftMask holds the patient's left lung, which a PA film shows on the image's right
        for key, lung in (("left", case.chest.left_lung), ("right", case.chest.right_lung)):
            Image.fromarray(np.where(lung, 255, 0).astype(np.uint8)).save(os.path.join(folders[key], f"{case.name}.png"))
        with open(os.path.join(folders["reading"], f"{case.name}.txt"), "w") as f:
            f.write(f"Patient's Sex: {case.sex}\nPatient's Age: {case.age:03d}Y\n{case.reading}\n")
    height = int(round(size * ASPECT))
    return {
        "root": base,
        "patients": patients,
        "tuberculosis": tb_count,
        "normal": patients - tb_count,
        "width": size,
        "height": height,
    }
