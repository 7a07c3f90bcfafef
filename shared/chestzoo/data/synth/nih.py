"""A small synthetic NIH ChestX-ray14 in the official download layout, read by :mod:`chestzoo.data.nih` unchanged.

Written under OUT::

    Data_Entry_2017.csv          original columns, a trailing empty column on every line, a few impossible ages
    Data_Entry_2017_v2020.csv    the same images without the trailing column and with the ages corrected
    BBox_List_2017.csv           "Image Index,Finding Label,Bbox [x,y,w,h],,," with "Infiltrate"
    train_val_list.txt, test_list.txt   patient-wise; every boxed image is in the test list
    images_001/images/ ... images_0NN/images/   {patient:08d}_{follow-up:03d}.png (or images/ with flat=True)
    synthetic_truth.csv          not in the release: "Image Index,Finding Labels" with the exact findings

Patients have several follow-up films; chronic findings tend to persist between follow-ups, and findings travel
together at about the release's rates (``PAIR_COUNTS``, approximate: effusion with atelectasis, pneumonia with infiltration, ...).
Label prevalence follows the NIH release with a floor, and every label is made present in the training, validation
and test split that ``chestzoo prepare nih`` produces with its default seed and validation fraction. Sicker
patients are more often filmed AP.

Like the release's labels, which were mined from reports, the written ``Finding Labels`` are noisy: each true
finding is missed with probability ``missed_rate`` (default 0.10), and each label an image lacks is written with
probability ``false_rate * p / (1 - p)`` (``false_rate`` default 0.03, ``p`` the label's prevalence), i.e. about
``false_rate`` spurious positives per true one for every label. The images, and the boxes, are drawn from the exact
findings, which ``synthetic_truth.csv`` holds; the reader never opens it. ``--missed_rate 0 --false_rate 0`` writes
the exact labels. Each image is drawn by :func:`~chestzoo.data.synth.phantom.render_chest` with its exact findings
and the view of its row (:func:`render_image` redraws it), and the boxes are the phantom's own, in pixels of the
PNG. Most PNGs are 8-bit grey; a few are RGBA (as some real ones are) and a few 16-bit. Same seed, same bytes.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
from PIL import Image

from ...utils import as_bool
from ..labels import NIH_BOX_LABELS, NIH_BOX_SPELLING, NIH_LABELS, NIH_NO_FINDING, NIH_PREVALENCE
from ..nih import (
    BBOX_FILE,
    BBOX_HEADER,
    DEFAULT_SEED,
    DEFAULT_VAL_FRACTION,
    ENTRY_FILES,
    TEST_LIST,
    TRAIN_VAL_LIST,
)
from ..datalist import assign_splits
from .findings import DEFAULT_CONSPICUITY
from .phantom import ChestPhantom, render_chest, to_uint8, to_uint16

ENTRY_COLUMNS = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
PREVALENCE_FLOOR = 0.03  # so that rare labels (Hernia: 0.2 %) still reach a small synthetic set
FLOOR_MAX_FINDINGS = 3  # the label floor adds to films with fewer findings than this before touching normal ones
TEST_PATIENT_FRACTION = 0.25  # the official test list holds about a quarter of the images
CHRONIC = ("Cardiomegaly", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia", "Mass", "Nodule")
CHRONIC_PERSISTENCE = 0.7  # chance that a chronic finding is seen again on the next follow-up
NIH_IMAGES = 112120
# Approximate numbers of images that carry both labels in the ChestX-ray14 release (Wang et al. 2017), for the pairs
# that co-occur well above chance. They are rounded recollections of published pair counts, not yet counted from
# Data_Entry_2017.csv; they set how often one finding brings the other along.
PAIR_COUNTS = {
    ("Effusion", "Infiltration"): 4000,
    ("Atelectasis", "Effusion"): 3275,
    ("Atelectasis", "Infiltration"): 3264,
    ("Infiltration", "Nodule"): 1546,
    ("Consolidation", "Effusion"): 1287,
    ("Effusion", "Mass"): 1254,
    ("Atelectasis", "Consolidation"): 1223,
    ("Consolidation", "Infiltration"): 1221,
    ("Cardiomegaly", "Effusion"): 1063,
    ("Effusion", "Pneumothorax"): 996,
    ("Edema", "Infiltration"): 981,
    ("Mass", "Nodule"): 906,
    ("Effusion", "Pleural_Thickening"): 849,
    ("Emphysema", "Pneumothorax"): 747,
    ("Infiltration", "Pneumonia"): 605,
    ("Edema", "Effusion"): 593,
}
DEFAULT_MISSED_RATE = 0.10
DEFAULT_FALSE_RATE = 0.03
TRUTH_FILE = "synthetic_truth.csv"  # exact labels beside the official files; the reader does not open it
TRUTH_HEADER = "Image Index,Finding Labels"
PIXEL_SPACINGS = (0.139, 0.143, 0.168, 0.171)  # mm at the original ~2500 px; rescaled to the written size
SPECIAL_FRACTION = 0.04  # share of RGBA and of 16-bit PNGs
MAX_IMAGES_PER_FOLDER = 25
MAX_FOLDERS = 12
BOX_FILE_SPELLING = {ours: theirs for theirs, ours in NIH_BOX_SPELLING.items()}  # Infiltration -> "Infiltrate"
BAD_AGE_OFFSET = 400  # Data_Entry_2017.csv has a few ages over 100; v2020 corrects them


def image_name(patient: int, follow_up: int) -> str:
    return f"{patient:08d}_{follow_up:03d}.png"


def render_image(
    seed: int,
    patient: int,
    follow_up: int,
    findings,
    size: int,
    view: str = "PA",
    conspicuity: float = DEFAULT_CONSPICUITY,
) -> ChestPhantom:
    """The phantom drawn for one image; depends only on these arguments, so tests can redraw any written image."""
    rng = np.random.default_rng([int(seed), int(patient), int(follow_up)])
    return render_chest(rng, int(size), sorted(findings), view=view, conspicuity=conspicuity)


def prevalence(label: str) -> float:
    """The synthetic prevalence of a label before companions: the release's, with a floor."""
    return max(NIH_PREVALENCE[label], PREVALENCE_FLOOR)


def companions() -> tuple[tuple[str, str, float], ...]:
    """(finding, finding it brings along, probability), so that P(b | a) matches the release's pair counts."""
    out = []
    for (a, b), count in PAIR_COUNTS.items():
        for first, second in ((a, b), (b, a)):
            given = count / (NIH_PREVALENCE[first] * NIH_IMAGES)
            base = prevalence(second)
            out.append((first, second, max(0.0, (given - base) / (1 - base))))
    return tuple(out)


COMPANIONS = companions()


def _draw_findings(rng: np.random.Generator, previous: set[str]) -> set[str]:
    # sorted: a set of strings iterates in a hash order that changes from one process to the next
    findings = {f for f in sorted(previous) if f in CHRONIC and rng.random() < CHRONIC_PERSISTENCE}
    for name in NIH_LABELS:
        if rng.random() < prevalence(name):
            findings.add(name)
    for name, companion, probability in COMPANIONS:
        if name in findings and rng.random() < probability:
            findings.add(companion)
    return findings


def add_label_noise(rng: np.random.Generator, truth: set[str], missed_rate: float, false_rate: float) -> set[str]:
    """The labels a report-mining reader would write for an image whose exact findings are ``truth``.

    Each true label is dropped with probability ``missed_rate``. Each label the image lacks is written with
    probability ``false_rate * p / (1 - p)``, ``p`` its :func:`prevalence`: so every label gains about
    ``false_rate`` spurious positives per true one, and rare labels are not swamped.
    """
    written = set()
    for label in NIH_LABELS:
        if label in truth:
            if rng.random() >= missed_rate:
                written.add(label)
        elif rng.random() < false_rate * prevalence(label) / (1 - prevalence(label)):
            written.add(label)
    return written


def _keep_each_label(names: list[str], truth: dict[str, set[str]], written: dict[str, set[str]]) -> None:
    """Give back a label that noise removed from every image among ``names`` (a split), on its first true image."""
    for label in NIH_LABELS:
        if not any(label in written[n] for n in names):
            holders = [n for n in names if label in truth[n]]
            if holders:
                written[holders[0]].add(label)


def _apply_floor(rng: np.random.Generator, names: list[str], findings: dict[str, set[str]]) -> None:
    """Give every label at least one positive image among ``names``.

    The label goes to an abnormal film with few findings, so normal films stay normal while there is room.
    """
    for label in NIH_LABELS:
        if any(label in findings[n] for n in names):
            continue
        pool = [n for n in names if 0 < len(findings[n]) < FLOOR_MAX_FINDINGS] or names
        fewest = min(len(findings[n]) for n in pool)
        candidates = [n for n in pool if len(findings[n]) == fewest]
        findings[candidates[int(rng.integers(len(candidates)))]].add(label)


def _default_validation(train_val_patients: list[str]) -> dict[str, str]:
    """The training / validation assignment that ``chestzoo prepare nih`` makes with its default options."""
    fractions = (1 - DEFAULT_VAL_FRACTION, DEFAULT_VAL_FRACTION)
    return assign_splits(train_val_patients, fractions, DEFAULT_SEED, ("training", "validation"))


def _clear_previous(out: str) -> None:
    """Remove what an earlier run wrote here (only this layout's own names), so stale files cannot linger."""
    for name in (*ENTRY_FILES, BBOX_FILE, TRAIN_VAL_LIST, TEST_LIST, TRUTH_FILE, "datalist.json", "datalist_boxes.json"):
        path = os.path.join(out, name)
        if os.path.isfile(path):
            os.remove(path)
    for name in os.listdir(out):
        if name == "images" or (name.startswith("images_") and name[7:].isdigit()):
            shutil.rmtree(os.path.join(out, name))


def write(
    out: str,
    patients: int = 60,
    size: int = 256,
    seed: int = 0,
    flat: bool = False,
    test_fraction: float = TEST_PATIENT_FRACTION,
    missed_rate: float = DEFAULT_MISSED_RATE,
    false_rate: float = DEFAULT_FALSE_RATE,
    conspicuity: float = DEFAULT_CONSPICUITY,
) -> dict:
    """Write the synthetic set under ``out`` and return a summary of what was written.

    ``flat`` puts every PNG in ``images/`` instead of ``images_NNN/images/``; ``test_fraction`` is the share of
    patients on the official test list (the boxed images, hence the detection data, come from them).
    ``missed_rate`` and ``false_rate`` set the noise of the written labels (:func:`add_label_noise`; 0 and 0 write
    the exact labels); the exact ones go to ``synthetic_truth.csv`` either way. ``conspicuity`` scales every
    finding's contrast (:func:`~chestzoo.data.synth.phantom.render_chest`).
    """
    patients, size, seed, flat, test_fraction = int(patients), int(size), int(seed), as_bool(flat), float(test_fraction)
    missed_rate, false_rate = float(missed_rate), float(false_rate)
    if not (0.0 <= missed_rate <= 1.0 and 0.0 <= false_rate <= 1.0):
        raise ValueError(f"missed_rate and false_rate must be between 0 and 1, not {missed_rate} and {false_rate}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, not {test_fraction}")
    if patients < 3:
        raise ValueError(f"need at least 3 patients (training, validation and test), not {patients}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, not {size}")
    out = os.path.abspath(os.fspath(out))
    os.makedirs(out, exist_ok=True)
    _clear_previous(out)
    rng = np.random.default_rng(seed)

    # Patients, their follow-up films and demographics.
    ids = list(range(1, patients + 1))
    films = {p: 1 + min(int(rng.geometric(0.4)) - 1, 7) for p in ids}
    sex = {p: "M" if rng.random() < 0.56 else "F" for p in ids}
    first_age = {p: int(np.clip(round(rng.normal(47, 16)), 2, 90)) for p in ids}
    # The splits that `chestzoo prepare nih` will make with its defaults, so every split gets every label. Test
    # patients are drawn among those its validation hash leaves in training, so validation is not starved.
    n_test = min(max(1, round(test_fraction * patients)), patients - 2)
    hashed = _default_validation([str(p) for p in ids])
    pool = [p for p in ids if hashed[str(p)] == "training"]
    pool = pool if len(pool) >= n_test + 1 else ids
    test_patients = {int(p) for p in rng.choice(pool, size=n_test, replace=False)}
    train_val_patients = [str(p) for p in ids if p not in test_patients]
    val_of = _default_validation(train_val_patients)
    split = {p: "test" if p in test_patients else val_of[str(p)] for p in ids}

    records: dict[str, dict] = {}
    findings: dict[str, set[str]] = {}
    for p in ids:
        previous: set[str] = set()
        age = first_age[p]
        for follow_up in range(films[p]):
            name = image_name(p, follow_up)
            age += int(rng.integers(0, 2))
            findings[name] = previous = _draw_findings(rng, previous)
            records[name] = {
                "patient": p,
                "follow_up": follow_up,
                "age": min(age, 95),
                "sex": sex[p],
                # sicker patients are more often filmed AP, at the bedside
                "view": "AP" if rng.random() < 0.3 + 0.1 * min(len(findings[name]), 3) else "PA",
                "spacing": PIXEL_SPACINGS[int(rng.integers(len(PIXEL_SPACINGS)))] * 2500 / size,
                "split": split[p],
            }
    names = sorted(records)
    for split_name in ("training", "validation", "test"):
        _apply_floor(rng, [n for n in names if records[n]["split"] == split_name], findings)
    # The written labels: the exact findings through a noisy reader, on a random stream of their own.
    noise_rng = np.random.default_rng([seed, 2])
    labels = {n: add_label_noise(noise_rng, findings[n], missed_rate, false_rate) for n in names}
    for split_name in ("training", "validation", "test"):
        _keep_each_label([n for n in names if records[n]["split"] == split_name], findings, labels)

    # A few RGBA and 16-bit PNGs, and a few impossible ages for the 2017 file.
    n_special = max(1, round(SPECIAL_FRACTION * len(names)))
    special = [names[i] for i in rng.permutation(len(names))[: 2 * n_special]]
    kinds = {n: "RGBA" for n in special[:n_special]} | {n: "I;16" for n in special[n_special:]}
    bad_ages = {names[int(i)] for i in rng.choice(len(names), size=max(1, len(names) // 40), replace=False)}

    # Images, spread over archive folders in name order like images_001 ... images_012.
    if flat:
        folders = {n: "images" for n in names}
    else:
        n_folders = min(MAX_FOLDERS, max(2, -(-len(names) // MAX_IMAGES_PER_FOLDER)))
        chunks = np.array_split(np.array(names), n_folders)
        folders = {str(n): f"images_{k + 1:03d}/images" for k, chunk in enumerate(chunks) for n in chunk}
    bbox_lines = []
    n_boxes = 0
    for name in names:
        record = records[name]
        phantom = render_image(seed, record["patient"], record["follow_up"], findings[name], size, record["view"],
                               float(conspicuity))
        folder = os.path.join(out, folders[name])
        os.makedirs(folder, exist_ok=True)
        _save_png(os.path.join(folder, name), phantom.image, kinds.get(name, "L"))
        if record["split"] != "test":
            continue
        for finding, (x0, y0, x1, y1) in phantom.boxes:
            if finding in NIH_BOX_LABELS and finding in findings[name]:
                label = BOX_FILE_SPELLING.get(finding, finding)
                bbox_lines.append(f"{name},{label},{float(x0)!r},{float(y0)!r},{float(x1 - x0)!r},{float(y1 - y0)!r},,,")
                n_boxes += 1

    # CSV files and split lists.
    def entry_line(name: str, v2020: bool) -> str:
        r = records[name]
        age = r["age"] + BAD_AGE_OFFSET if (name in bad_ages and not v2020) else r["age"]
        spacing = r["spacing"]
        values = (name, label_text(labels[name]), r["follow_up"], r["patient"], age, r["sex"], r["view"], size, size, spacing, spacing)
        line = ",".join(repr(v) if isinstance(v, float) else str(v) for v in values)
        return line if v2020 else line + ","

    _write_lines(os.path.join(out, "Data_Entry_2017_v2020.csv"), [ENTRY_COLUMNS, *(entry_line(n, True) for n in names)])
    _write_lines(os.path.join(out, "Data_Entry_2017.csv"), [ENTRY_COLUMNS + ",", *(entry_line(n, False) for n in names)])
    _write_lines(os.path.join(out, BBOX_FILE), [BBOX_HEADER, *bbox_lines])
    _write_lines(os.path.join(out, TRUTH_FILE), [TRUTH_HEADER, *(f"{n},{label_text(findings[n])}" for n in names)])
    _write_lines(os.path.join(out, TRAIN_VAL_LIST), [n for n in names if records[n]["split"] != "test"])
    _write_lines(os.path.join(out, TEST_LIST), [n for n in names if records[n]["split"] == "test"])

    return {
        "root": out,
        "layout": "flat" if flat else "archive",
        "patients": patients,
        "images": len(names),
        "image_folders": len(set(folders.values())),
        "train_val_images": sum(1 for n in names if records[n]["split"] != "test"),
        "test_images": sum(1 for n in names if records[n]["split"] == "test"),
        "no_finding_images": sum(1 for n in names if not labels[n]),
        "missed_labels": sum(len(findings[n] - labels[n]) for n in names),
        "false_labels": sum(len(labels[n] - findings[n]) for n in names),
        "boxed_images": len({line.split(",", 1)[0] for line in bbox_lines}),
        "boxes": n_boxes,
        "rgba_images": n_special,
        "uint16_images": n_special,
        "size": size,
        "seed": seed,
    }


def label_text(labels: set[str]) -> str:
    return "|".join(sorted(labels)) or NIH_NO_FINDING


def _save_png(path: str, image: np.ndarray, kind: str) -> None:
    if kind == "I;16":
        Image.fromarray(to_uint16(image)).save(path)
        return
    grey = to_uint8(image)
    if kind == "RGBA":
        Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)])).save(path)
    else:
        Image.fromarray(grey).save(path)


def _write_lines(path: str, lines) -> None:
    with open(path, "w", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")
