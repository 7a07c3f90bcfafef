"""A synthetic pediatric pneumonia set (Kermany et al. 2018) in the layout of the Kaggle "chest-xray-pneumonia" copy.

Layout written under ``out``::

    chest_xray/{train,val,test}/NORMAL/IM-0115-0001.jpeg, NORMAL2-IM-0427-0001.jpeg, ...
    chest_xray/{train,val,test}/PNEUMONIA/person1_bacteria_1.jpeg, person3_virus_6.jpeg, ...

As in the release: several images per patient (the last number counts a patient's images for NORMAL names, and
runs across all patients of one kind for PNEUMONIA names), images of varied size and aspect, most of them grey JPEGs
and a few RGB ones, about 73% pneumonia, and a tiny ``val`` folder whose patients continue the training numbering.
The ``test`` folder is numbered on its own, so its patient numbers repeat those of ``train``.
Pneumonia images are drawn with the phantom's "Lung Opacity" finding, normal ones with no finding; all are AP films.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..labels import PEDIATRIC_CLASSES
from .findings import DEFAULT_CONSPICUITY
from .phantom import OPACITY, ChestPhantom, render_chest, to_uint8

NORMAL, PNEUMONIA = PEDIATRIC_CLASSES
FOLDERS = ("train", "val", "test")
PNEUMONIA_PATIENT_SHARE = 0.67  # with more images per pneumonia patient, about 73% of images are pneumonia
BACTERIAL_SHARE = 0.65  # 2,780 bacterial vs 1,493 viral images in the release
RGB_EVERY = 12  # every 12th image is saved as a 3-channel JPEG
JPEG_QUALITY = 92
VIEW = "AP"  # young children are filmed lying or held, front to back


@dataclass(frozen=True)
class PediatricImage:
    """One synthetic radiograph and where it goes."""

    index: int  # position in the plan; selects the random stream that draws the image
    folder: str  # train / val / test
    label: str  # NORMAL / PNEUMONIA
    name: str  # file name, e.g. "person3_virus_7.jpeg"
    patient: str  # patient id as the file name gives it, e.g. "person3" or "NORMAL2-IM-0427"
    height: int
    width: int
    rgb: bool

    @property
    def path(self) -> str:
        return os.path.join("chest_xray", self.folder, self.label, self.name)

    @property
    def findings(self) -> tuple[str, ...]:
        return (OPACITY,) if self.label == PNEUMONIA else ()


class _Numbering:
    """The running numbers of one numbering pool (train+val share one, test has its own)."""

    def __init__(self, rng: np.random.Generator, first_im: int):
        self.rng = rng
        self.next = {"IM": first_im, "NORMAL2-IM": 1 + int(rng.integers(0, 20)), "person": 1}
        self.counters = {"bacteria": 0, "virus": 0}

    def patient(self, kind: str) -> int:
        number = self.next[kind]
        self.next[kind] += int(self.rng.integers(1, 4))  # the release skips numbers
        return number

    def image(self, kind: str) -> int:
        self.counters[kind] += 1 + int(self.rng.integers(0, 2))
        return self.counters[kind]


def _patient_images(
    label: str, numbering: _Numbering, rng: np.random.Generator, max_images: int
) -> list[tuple[str, str]]:
    """``(patient id, file name)`` for every image of one new patient."""
    count = 1 + int(rng.integers(0, max_images))
    if label == NORMAL:
        kind = "NORMAL2-IM" if rng.random() < 0.4 else "IM"
        patient = f"{kind}-{numbering.patient(kind):04d}"
        return [(patient, f"{patient}-{k:04d}.jpeg") for k in range(1, count + 1)]
    patient = f"person{numbering.patient('person')}"
    kind = "bacteria" if rng.random() < BACTERIAL_SHARE else "virus"
    names = []
    for k in range(count):
        # a few children have both bacterial and viral images
        image_kind = kind if k == 0 or rng.random() < 0.85 else ("virus" if kind == "bacteria" else "bacteria")
        names.append((patient, f"{patient}_{image_kind}_{numbering.image(image_kind)}.jpeg"))
    return names


def _labels(n: int, rng: np.random.Generator) -> list[str]:
    pneumonia = min(n - 1, max(1, round(n * PNEUMONIA_PATIENT_SHARE)))
    labels = [NORMAL] * (n - pneumonia) + [PNEUMONIA] * pneumonia
    rng.shuffle(labels)
    return labels


def plan(patients: int = 60, size: int = 256, seed: int = 0) -> list[PediatricImage]:
    """The images :func:`write` draws for ``patients`` patients (about 15% in test, a few in val)."""
    if patients < 8:
        raise ValueError(f"need at least 8 patients (both classes in train, val and test), not {patients}")
    rng = np.random.default_rng([seed, 0])
    n_val = 4 if patients >= 30 else 2
    n_test = max(2, round(patients * 0.15))
    n_train = patients - n_val - n_test
    trainval = _Numbering(rng, first_im=115)
    test = _Numbering(rng, first_im=1)
    entries: list[tuple[str, str, str, str]] = []  # folder, label, patient, name
    for label in _labels(n_train, rng):
        most = 2 if label == NORMAL else 3
        entries += [("train", label, p, n) for p, n in _patient_images(label, trainval, rng, most)]
    # The release's val patients carry the numbers that follow the training ones, one or two images each.
    for label in [NORMAL] * (n_val // 2) + [PNEUMONIA] * (n_val - n_val // 2):
        entries += [("val", label, p, n) for p, n in _patient_images(label, trainval, rng, 1 if label == NORMAL else 2)]
    for label in _labels(n_test, rng):
        entries += [("test", label, p, n) for p, n in _patient_images(label, test, rng, 2 if label == NORMAL else 3)]
    images = []
    for index, (folder, label, patient, name) in enumerate(entries):
        # Real radiographs vary in size and are mostly wider than tall.
        height = int(round(size * rng.uniform(0.85, 1.15)))
        width = int(round(height * rng.uniform(1.05, 1.45)))
        rgb = index % RGB_EVERY == RGB_EVERY - 1
        images.append(PediatricImage(index, folder, label, name, patient, height, width, rgb))
    return images


def render(image: PediatricImage, seed: int, conspicuity: float = DEFAULT_CONSPICUITY) -> ChestPhantom:
    """The phantom behind ``image``'s pixels (its own random stream, so any image can be redrawn alone)."""
    rng = np.random.default_rng([seed, 1, image.index])
    return render_chest(rng, image.height, image.findings, width=image.width, view=VIEW, conspicuity=conspicuity)


def write(
    out: str | os.PathLike, patients: int = 60, size: int = 256, seed: int = 0, conspicuity: float = DEFAULT_CONSPICUITY
) -> dict:
    """Write the synthetic ``chest_xray`` folders under ``out`` (same arguments, same bytes) and return a summary.

    ``conspicuity`` scales the opacities' contrast (:func:`~chestzoo.data.synth.phantom.render_chest`)."""
    out = os.fspath(out)
    counts = {f"{folder}/{label}": 0 for folder in FOLDERS for label in PEDIATRIC_CLASSES}
    for image in plan(patients, size, seed):
        pixels = to_uint8(render(image, seed, float(conspicuity)).image)
        picture = Image.fromarray(pixels)
        if image.rgb:
            picture = picture.convert("RGB")
        path = os.path.join(out, image.path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        picture.save(path, format="JPEG", quality=JPEG_QUALITY, optimize=False)
        counts[f"{image.folder}/{image.label}"] += 1
    return {"dataset": "pediatric", "root": os.path.abspath(os.path.join(out, "chest_xray")), "images": counts}
