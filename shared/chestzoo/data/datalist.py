"""MONAI datalists: patient-wise splits, writing, reading and checks shared by every dataset reader."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence

from .errors import DataError

SPLITS = ("training", "validation", "test")


def split_of(patient: str, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0, names: Sequence[str] = SPLITS) -> str:
    """Assign a patient to a split by a hash of (seed, patient id).

    The answer depends on nothing but the patient and the seed: adding or removing other patients never moves a
    patient to another split, and all images of one patient share a split.
    """
    if len(fractions) != len(names) or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions {tuple(fractions)} must be {len(names)} non-negative numbers adding up to 1")
    digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name, fraction in zip(names, fractions):
        edge += fraction
        if u < edge:
            return name
    return names[-1]


def parse_fractions(value, count: int = 3) -> tuple[float, ...]:
    """Split shares from a sequence or from the command line's ``'0.7,0.1,0.2'``, checked to add up to 1."""
    if isinstance(value, str):
        value = [v for v in value.strip("()[] ").split(",") if v.strip()]
    fractions = tuple(float(v) for v in value)
    if len(fractions) != count or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"expected {count} non-negative split fractions adding up to 1, got {fractions}")
    return fractions


def assign_splits(
    patients: Iterable[str],
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    names: Sequence[str] = SPLITS,
    strata: Mapping[str, Hashable] | None = None,
) -> dict[str, str]:
    """Patient -> split, by :func:`split_of`, with no split left empty that should have patients.

    A hash split of a handful of patients can leave a split empty; then one patient (chosen by hash) moves there
    from the largest split. With ``strata`` (patient -> class, e.g. the label) this holds within every class, so
    small sets keep positives and negatives in each split. With enough patients nothing moves and every patient
    keeps ``split_of``'s answer.
    """
    fractions = parse_fractions(fractions, len(names))
    patients = sorted(set(patients))
    groups: dict[Hashable, list[str]] = {}
    for patient in patients:
        groups.setdefault(strata[patient] if strata is not None else None, []).append(patient)
    assignment = {p: split_of(p, fractions, seed, names) for p in patients}
    for members in groups.values():
        for name, fraction in zip(names, fractions):
            by_split = {n: [p for p in members if assignment[p] == n] for n in names}
            if fraction <= 0 or by_split[name]:
                continue
            donor = max(names, key=lambda n: len(by_split[n]))
            if len(by_split[donor]) < 2:
                continue
            moved = min(by_split[donor], key=lambda p: hashlib.sha256(f"{seed}:{name}:{p}".encode()).digest())
            assignment[moved] = name
    return assignment


def relative_paths(item: dict, keys: Iterable[str], base: str) -> dict:
    """Copy of ``item`` with the file paths under ``keys`` (strings or lists of strings) made relative to ``base``."""
    out = dict(item)
    for key in keys:
        if key in out:
            value = out[key]
            out[key] = [os.path.relpath(v, base) for v in value] if isinstance(value, list) else os.path.relpath(value, base)
    return out


def check_patient_disjoint(datalist: dict, patient_key: str = "patient", splits: Sequence[str] = SPLITS) -> None:
    """Raise if one patient appears in two splits."""
    seen: dict[str, str] = {}
    for split in splits:
        for item in datalist.get(split, []):
            patient = str(item[patient_key])
            if seen.setdefault(patient, split) != split:
                raise ValueError(f"patient {patient} is in both {seen[patient]} and {split}")


def write_datalist(datalist: dict, out: str | os.PathLike, file_keys: Iterable[str] = ("image",)) -> str:
    """Write a datalist JSON whose file paths are relative to the JSON's own folder (MONAI's default ``base_dir``)."""
    out = os.path.abspath(os.fspath(out))
    base = os.path.dirname(out)
    os.makedirs(base, exist_ok=True)
    file_keys = tuple(file_keys)
    payload = {
        key: [relative_paths(item, file_keys, base) for item in value] if key in SPLITS else value
        for key, value in datalist.items()
    }
    check_patient_disjoint(payload)
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(tmp, out)
    return out


def load_datalist(path: str | os.PathLike, split: str, file_keys: Iterable[str] = ("image",)) -> list[dict]:
    """Read one split of a datalist with absolute file paths (relative ones are resolved against the JSON's folder)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, "datalist not found: run `chestzoo prepare <dataset> --root <dir>` first")
    with open(path) as f:
        try:
            datalist = json.load(f)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"not valid JSON ({exc})") from exc
    if split not in datalist:
        raise DataError(path, f"no '{split}' list (found {sorted(datalist)})")
    base = os.path.dirname(os.path.abspath(path))

    def absolute(value):
        if isinstance(value, list):
            return [absolute(v) for v in value]
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))

    return [{k: absolute(v) if k in file_keys else v for k, v in item.items()} for item in datalist[split]]
