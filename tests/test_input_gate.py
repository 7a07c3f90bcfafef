"""The input gate: frontal chest radiographs in, knees, laterals, CT slices, photographs and blank images out."""

from __future__ import annotations

import glob
import json
import os

import fire
import numpy as np
import pydicom
import pytest
from PIL import Image

from chestzoo.cli import ChestZoo
from chestzoo.data.input_gate import check_file

CT_SMALL = pydicom.data.get_testdata_file("CT_small.dcm")


@pytest.fixture(scope="module")
def rsna_dicoms(synthetic_data):
    """Synthetic RSNA DICOMs by photometric interpretation (the release's CR, CHEST, PA/AP headers)."""
    files = sorted(glob.glob(os.path.join(synthetic_data("rsna"), "stage_2_train_images", "*.dcm")))
    by_kind = {}
    for path in files:
        by_kind.setdefault(str(pydicom.dcmread(path, stop_before_pixels=True).PhotometricInterpretation), path)
    assert set(by_kind) == {"MONOCHROME1", "MONOCHROME2"}
    return by_kind


def _retagged(source: str, out, **tags) -> str:
    ds = pydicom.dcmread(source)
    for name, value in tags.items():
        setattr(ds, name, value)
    path = str(out / f"{'_'.join(f'{k}{v}' for k, v in tags.items())}.dcm")
    ds.save_as(path)
    return path


def _png(out, name: str, array: np.ndarray) -> str:
    path = str(out / name)
    Image.fromarray(array).save(path)
    return path


def test_frontal_chests_are_accepted(synthetic_data, rsna_dicoms):
    nih_png = sorted(glob.glob(os.path.join(synthetic_data("nih"), "images_*", "images", "*.png")))[0]
    for path in (nih_png, *rsna_dicoms.values()):
        verdict = check_file(path)
        assert verdict.accepted, (path, verdict)


@pytest.mark.parametrize("tags, reason", [
    ({"BodyPartExamined": "EXTREMITY"}, "BodyPartExamined is EXTREMITY"),
    ({"BodyPartExamined": "KNEE"}, "BodyPartExamined is KNEE"),
    ({"ViewPosition": "LL"}, "ViewPosition LL: lateral"),
    ({"Modality": "CT"}, "Modality is CT"),
    ({"Modality": "MR"}, "Modality is MR"),
])
def test_other_headers_are_refused_naming_the_tag(rsna_dicoms, tmp_path, tags, reason):
    verdict = check_file(_retagged(rsna_dicoms["MONOCHROME2"], tmp_path, **tags))
    assert not verdict.accepted and verdict.reason.startswith(reason), verdict


def test_a_ct_slice_is_refused_as_a_radiograph_and_accepted_as_ct():
    assert str(check_file(CT_SMALL)) == "refused: Modality is CT, not CR or DX"
    assert check_file(CT_SMALL, kind="ct").accepted


def test_photographs_and_blank_images_are_refused(tmp_path):
    from skimage import data

    rng = np.random.default_rng(0)
    cases = {
        _png(tmp_path, "astronaut.png", data.astronaut()): "a colour picture",
        _png(tmp_path, "coffee.png", data.coffee()): "a colour picture",
        _png(tmp_path, "black.png", np.zeros((256, 256), np.uint8)): "a blank image",
        _png(tmp_path, "grey.png", np.full((256, 256), 128, np.uint8)): "a blank image",
        _png(tmp_path, "dark_noise.png", rng.integers(0, 3, (256, 256)).astype(np.uint8)): "an almost blank image",
    }
    for path, reason in cases.items():
        verdict = check_file(path)
        assert not verdict.accepted and verdict.reason.startswith(reason), (path, verdict)


def test_accept_any_image_overrides_and_says_so(rsna_dicoms, tmp_path):
    knee = _retagged(rsna_dicoms["MONOCHROME1"], tmp_path, BodyPartExamined="EXTREMITY")
    verdict = check_file(knee, accept_any=True)
    assert verdict.accepted and "BodyPartExamined is EXTREMITY" in verdict.reason and "any image" in verdict.reason


def test_check_image_command_prints_each_verdict_and_fails_on_any_refusal(rsna_dicoms, tmp_path, capsys):
    chest, lateral = rsna_dicoms["MONOCHROME2"], _retagged(rsna_dicoms["MONOCHROME2"], tmp_path, ViewPosition="LL")
    missing = str(tmp_path / "missing.png")

    def run(*args) -> tuple[int, str]:
        code = 0
        try:
            fire.Fire(ChestZoo, command=["check-image", *args], name="chestzoo")
        except SystemExit as exc:
            code = exc.code
        return code, capsys.readouterr().out

    code, out = run(chest)
    assert code == 0 and out.strip() == f"{chest}: accepted: DICOM header (Modality, BodyPartExamined, ViewPosition) and pixels as expected for a frontal chest radiograph"
    code, out = run(chest, lateral, missing)
    lines = out.strip().splitlines()
    assert code == 1 and len(lines) == 3
    assert lines[1] == f"{lateral}: refused: ViewPosition LL: lateral"
    assert lines[2].startswith(f"{missing}: refused: cannot read it")
    code, out = run(lateral, "--accept_any_image", "True")
    assert code == 0 and "accepted" in out


def test_admit_keeps_the_accepted_files_in_order_and_lists_the_refused(rsna_dicoms, tmp_path):
    from chestzoo.data import DataError
    from chestzoo.data.input_gate import admit

    chest = rsna_dicoms["MONOCHROME2"]
    lateral = _retagged(chest, tmp_path, ViewPosition="LL")
    unreadable = str(tmp_path / "damaged.png")
    with open(unreadable, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    assert admit([lateral, chest, unreadable], str(out)) == [chest, unreadable]  # the reader reports the damaged file
    report = json.loads((out / "refused_inputs.json").read_text())
    assert report == {"accepted": 2, "refused": [{"image": lateral, "reason": "ViewPosition LL: lateral"}]}
    assert admit([lateral], None, accept_any=True) == [lateral]
    with pytest.raises(DataError, match="every input was refused by the input gate, this one as ViewPosition LL: lateral"):
        admit([lateral], str(out))
