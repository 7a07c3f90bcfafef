"""Screening a datalist's files before a run: one clear error, or skip and report."""

import json

import pytest
from PIL import Image

from chestzoo.data import UnreadableFiles, screen_items
from test_io import RAMP, _dicom


@pytest.fixture
def items(tmp_path):
    Image.fromarray(RAMP).save(tmp_path / "good.png")
    png = (tmp_path / "good.png").read_bytes()
    (tmp_path / "corrupt.png").write_bytes(png[:40] + b"\xff" * 20 + png[60:])
    dcm = _dicom(tmp_path / "trunc.dcm", RAMP)
    dcm.write_bytes(dcm.read_bytes()[:-200])
    _dicom(tmp_path / "good.dcm", RAMP)
    names = ["good.png", "missing.png", "corrupt.png", "trunc.dcm", "good.dcm"]
    return [{"image": str(tmp_path / n), "label": i} for i, n in enumerate(names)]


def test_one_error_lists_every_bad_file(items):
    with pytest.raises(UnreadableFiles) as info:
        screen_items(items)
    message = str(info.value)
    for name in ("missing.png", "corrupt.png", "trunc.dcm"):
        assert name in message
    assert "good.png" not in message and "skip_bad=True" in message
    assert "truncated" in info.value.problems[items[3]["image"]]


def test_skip_keeps_the_rest_and_reports(items, tmp_path):
    report = tmp_path / "out" / "skipped.json"
    kept = screen_items(items, skip_bad="true", report=str(report))
    assert [item["label"] for item in kept] == [0, 4]
    written = json.loads(report.read_text())
    assert written["checked"] == 5 and written["kept"] == 2 and len(written["skipped"]) == 3


def test_lists_of_files_are_checked(items):
    merged = [{"mask": [items[0]["image"], items[1]["image"]]}]
    assert screen_items(merged, keys=("mask",), skip_bad=True) == []
    assert len(screen_items([{"mask": [items[0]["image"]]}], keys=("mask",))) == 1
