"""Patient-wise splits and datalist files (chestzoo.data.datalist)."""

import json
from collections import Counter

import pytest

from chestzoo.data import (
    DataError,
    assign_splits,
    check_patient_disjoint,
    load_datalist,
    parse_fractions,
    split_of,
    write_datalist,
)


def test_split_is_stable_and_proportional():
    patients = [f"p{i}" for i in range(4000)]
    splits = [split_of(p, (0.7, 0.1, 0.2), seed=3) for p in patients]
    counts = Counter(splits)
    assert abs(counts["training"] / 4000 - 0.7) < 0.03 and abs(counts["test"] / 4000 - 0.2) < 0.03
    assert splits == [split_of(p, (0.7, 0.1, 0.2), seed=3) for p in patients]  # order and membership independent
    assert splits != [split_of(p, (0.7, 0.1, 0.2), seed=4) for p in patients]  # the seed matters


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError):
        split_of("p", (0.5, 0.1, 0.1))


def test_write_is_relative_and_load_is_absolute(tmp_path):
    image = tmp_path / "images" / "a.png"
    datalist = {"labels": ["x"], "training": [{"image": str(image), "mask": [str(image), str(image)], "patient": "1"}]}
    out = write_datalist(datalist, tmp_path / "datalist.json", file_keys=("image", "mask"))
    stored = json.loads(open(out).read())
    assert stored["training"][0]["image"] == "images/a.png" and stored["labels"] == ["x"]
    loaded = load_datalist(out, "training", file_keys=("image", "mask"))
    assert loaded[0]["image"] == str(image) and loaded[0]["mask"] == [str(image)] * 2


def test_patient_in_two_splits_is_refused(tmp_path):
    datalist = {"training": [{"image": "a", "patient": "7"}], "test": [{"image": "b", "patient": "7"}]}
    with pytest.raises(ValueError, match="patient 7"):
        check_patient_disjoint(datalist)
    with pytest.raises(ValueError):
        write_datalist(datalist, tmp_path / "d.json")


def test_missing_datalist_says_how_to_make_one(tmp_path):
    with pytest.raises(DataError, match="chestzoo prepare"):
        load_datalist(tmp_path / "none.json", "training")


def test_assign_splits_leaves_no_split_empty_within_each_class():
    patients = [f"p{i}" for i in range(12)]
    label = {p: i % 2 for i, p in enumerate(patients)}
    for seed in range(20):
        split = assign_splits(patients, (0.7, 0.1, 0.2), seed, strata=label)
        for cls in (0, 1):
            assert {split[p] for p in patients if label[p] == cls} == {"training", "validation", "test"}


def test_assign_splits_keeps_hash_answer_for_large_sets():
    patients = [f"p{i}" for i in range(2000)]
    split = assign_splits(patients, "0.7,0.1,0.2", seed=1)
    assert all(split[p] == split_of(p, (0.7, 0.1, 0.2), 1) for p in patients)


def test_parse_fractions_from_command_line():
    assert parse_fractions("(0.6, 0.2, 0.2)") == (0.6, 0.2, 0.2)
    with pytest.raises(ValueError):
        parse_fractions("0.6,0.2")
