"""NIH ChestX-ray14: the synthetic writer's official layout and the reader (chestzoo.data.nih) that prepares it.

The truth is re-derived here independently of the reader: the CSVs are split by hand, and every image is redrawn
from its labels with the phantom and compared pixel for pixel with what the reader's datalist points at.
"""

import hashlib
import json
import os
import shutil

import fire
import numpy as np
import pytest
from PIL import Image

from chestzoo.cli import ChestZoo
from chestzoo.data import DataError, load_datalist, read_image
from chestzoo.data.labels import NIH_BOX_LABELS, NIH_LABELS
from chestzoo.data.nih import prepare
from chestzoo.data.synth import nih as synth
from chestzoo.data.synth.phantom import render_chest, to_uint8, to_uint16

SEED, SIZE, PATIENTS = 3, 64, 30
SPLITS = ("training", "validation", "test")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("nih_archive")
    written = synth.write(root, patients=PATIENTS, size=SIZE, seed=SEED)
    summary = prepare(root)
    return root, written, summary


def _small(tmp_path, **kwargs):
    """A tiny set for the bad-input tests."""
    root = tmp_path / "nih"
    synth.write(root, patients=kwargs.pop("patients", 6), size=32, seed=kwargs.pop("seed", 0), **kwargs)
    return root


def _entries(path):
    """Data-entry CSV split by hand: {image: (labels, patient, follow_up, age, sex, view)}."""
    lines = open(path).read().splitlines()
    out = {}
    for line in lines[1:]:
        v = line.split(",")
        out[v[0]] = (set(v[1].split("|")) - {"No Finding"}, v[3], int(v[2]), int(v[4]), v[5], v[6])
    return out


def _boxes(path):
    """Box CSV split by hand: {image: [(label, [x0, y0, x1, y1]), ...]}."""
    out = {}
    for line in open(path).read().splitlines()[1:]:
        v = line.split(",")
        x, y, w, h = map(float, v[2:6])
        out.setdefault(v[0], []).append((v[1], [x, y, x + w, y + h]))
    return out


def _truth(path):
    """synthetic_truth.csv split by hand: {image: exact findings}."""
    rows = [line.split(",") for line in open(path).read().splitlines()[1:]]
    return {name: set(labels.split("|")) - {"No Finding"} for name, labels in rows}


def _ours(box_file_label):
    """The box file spells Infiltration 'Infiltrate'."""
    return "Infiltration" if box_file_label == "Infiltrate" else box_file_label


def _tree_hash(root):
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode())
            digest.update(open(path, "rb").read())
    return digest.hexdigest()


def _redraw(findings, patient, follow_up, view):
    """The phantom drawn straight from the exact findings, with the per-image seed the writer documents."""
    return render_chest(np.random.default_rng([SEED, int(patient), follow_up]), SIZE, sorted(findings), view=view)


def _expected_pixels(path, findings, patient, follow_up, view):
    """The redrawn phantom quantised as the PNG's own bit depth."""
    image = _redraw(findings, patient, follow_up, view).image
    if Image.open(path).mode == "I;16":
        return to_uint16(image) / 65535.0
    return to_uint8(image) / 255.0


def test_layout_matches_the_release(archive):
    root, written, _ = archive
    v2017 = (root / "Data_Entry_2017.csv").read_text().splitlines()
    v2020 = (root / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    header = (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    )
    assert v2020[0] == header and v2017[0] == header + ","
    assert all(line.endswith(",") for line in v2017) and not any(line.endswith(",") for line in v2020)
    assert (root / "BBox_List_2017.csv").read_text().splitlines()[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    assert all(line.endswith(",,,") for line in (root / "BBox_List_2017.csv").read_text().splitlines())
    folders = sorted(p.name for p in root.glob("images_*"))
    assert len(folders) == written["image_folders"] >= 2 and folders[0] == "images_001"
    names = sorted(p.name for p in root.glob("images_*/images/*.png"))
    assert len(names) == written["images"] == len(v2020) - 1
    for name in names:
        assert Image.open(next(root.glob(f"images_*/images/{name}"))).size == (SIZE, SIZE)
    entries = _entries(root / "Data_Entry_2017_v2020.csv")
    assert all(f"{int(patient):08d}_{follow_up:03d}.png" == name for name, (_, patient, follow_up, *_r) in entries.items())
    assert max(sum(1 for e in entries.values() if e[1] == p) for p in {e[1] for e in entries.values()}) > 1  # follow-ups
    assert any(len(e[0]) > 1 for e in entries.values()) and any(not e[0] for e in entries.values())
    # the 2017 file carries a few impossible ages that v2020 corrects
    old = _entries(root / "Data_Entry_2017.csv")
    assert any(old[n][3] > 100 for n in old) and all(e[3] <= 100 for e in entries.values())
    modes = {Image.open(p).mode for p in root.glob("images_*/images/*.png")}
    assert modes == {"L", "RGBA", "I;16"}


def test_datalist_images_labels_and_boxes_equal_what_was_written(archive):
    root, _, summary = archive
    entries = _entries(root / "Data_Entry_2017_v2020.csv")
    exact = _truth(root / "synthetic_truth.csv")
    boxes = _boxes(root / "BBox_List_2017.csv")
    datalist = json.loads((root / "datalist.json").read_text())
    assert datalist["labels"] == list(NIH_LABELS) and datalist["box_classes"] == list(NIH_BOX_LABELS)
    seen = set()
    for split in SPLITS:
        items = load_datalist(root / "datalist.json", split)
        assert len(items) == summary["images"][split] > 0
        for item in items:
            name = os.path.basename(item["image"])
            labels, patient, follow_up, age, sex, view = entries[name]
            seen.add(name)
            assert {NIH_LABELS[i] for i, v in enumerate(item["label"]) if v} == labels
            meta = (item["patient"], item["follow_up"], item["age"], item["sex"], item["view"])
            assert meta == (patient, follow_up, age, sex, view)
            expected = _expected_pixels(item["image"], exact[name], patient, follow_up, view).astype(np.float32)
            np.testing.assert_array_equal(read_image(item["image"]), expected)
            truth = [(NIH_BOX_LABELS.index(_ours(label)), box) for label, box in boxes.get(name, [])]
            assert list(zip(item.get("box_label", []), item.get("box", []))) == truth
            if truth:  # the boxes are the phantom's own for the exact findings, in pixels of the stored image
                phantom = _redraw(exact[name], patient, follow_up, view)
                drawn = [(NIH_BOX_LABELS.index(f), b) for f, b in phantom.boxes if f in NIH_BOX_LABELS]
                assert truth == drawn
    assert seen == set(entries)
    assert any("Infiltrate" == label for v in boxes.values() for label, _ in v)
    assert {_ours(label) for v in boxes.values() for label, _ in v} == set(NIH_BOX_LABELS)


def test_exact_labels_beside_the_noisy_ones(archive):
    root, written, _ = archive
    entries = _entries(root / "Data_Entry_2017_v2020.csv")
    exact = _truth(root / "synthetic_truth.csv")
    assert (root / "synthetic_truth.csv").read_text().splitlines()[0] == "Image Index,Finding Labels"
    assert set(exact) == set(entries)
    missed = sum(len(exact[n] - entries[n][0]) for n in exact)
    false = sum(len(entries[n][0] - exact[n]) for n in exact)
    assert (missed, false) == (written["missed_labels"], written["false_labels"])
    assert missed > 0  # the default rates make some noise even on a small set


def test_label_noise_rates_are_as_set():
    rng = np.random.default_rng(0)
    truth = [set(rng.choice(NIH_LABELS, size=int(rng.integers(0, 3)), replace=False)) for _ in range(20000)]
    written = [synth.add_label_noise(rng, t, missed_rate=0.2, false_rate=0.1) for t in truth]
    positives = sum(len(t) for t in truth)
    assert sum(len(t - w) for t, w in zip(truth, written)) / positives == pytest.approx(0.2, abs=0.01)
    for label in ("Infiltration", "Hernia"):  # about false_rate spurious positives per true one, common or rare
        spurious = sum(label in w and label not in t for t, w in zip(truth, written))
        true = sum(label in t for t in truth)
        expected = 0.1 * synth.prevalence(label) / (1 - synth.prevalence(label)) * (len(truth) - true)
        assert spurious == pytest.approx(expected, rel=0.25)
    exact = [synth.add_label_noise(rng, t, missed_rate=0.0, false_rate=0.0) for t in truth[:500]]
    assert exact == truth[:500]


def test_cli_writes_exact_labels_when_noise_is_off(tmp_path):
    out = str(tmp_path / "exact")
    command = ["synth", "nih", out, "--patients", "6", "--size", "32", "--missed_rate", "0", "--false_rate", "0"]
    fire.Fire(ChestZoo, command=command, name="chestzoo")
    entries = _entries(os.path.join(out, "Data_Entry_2017_v2020.csv"))
    assert {n: e[0] for n, e in entries.items()} == _truth(os.path.join(out, "synthetic_truth.csv"))


def test_splits_are_patient_wise_and_honour_the_official_lists(archive):
    root, _, _ = archive
    datalist = json.loads((root / "datalist.json").read_text())
    patients = {split: {item["patient"] for item in datalist[split]} for split in SPLITS}
    assert not patients["training"] & patients["validation"]
    assert not (patients["training"] | patients["validation"]) & patients["test"]
    names = {split: {os.path.basename(item["image"]) for item in datalist[split]} for split in SPLITS}
    assert names["test"] == set((root / "test_list.txt").read_text().split())
    assert names["training"] | names["validation"] == set((root / "train_val_list.txt").read_text().split())
    boxed = set(_boxes(root / "BBox_List_2017.csv"))
    assert boxed and boxed <= names["test"]
    for split in SPLITS:  # the label floor: every label has positives in every split
        assert all(sum(item["label"][i] for item in datalist[split]) > 0 for i in range(len(NIH_LABELS))), split


def test_box_datalist(archive):
    root, _, summary = archive
    boxes = _boxes(root / "BBox_List_2017.csv")
    data = json.loads((root / "datalist_boxes.json").read_text())
    assert data["box_classes"] == list(NIH_BOX_LABELS)
    items = [item for split in SPLITS for item in data[split]]
    boxed = [os.path.basename(i["image"]) for i in items if i["box"]]
    assert sorted(boxed) == sorted(boxes)
    negatives = [i for i in items if not i["box"]]
    assert negatives and all(i["box_label"] == [] and not any(i["label"]) for i in negatives)
    test_list = set((root / "test_list.txt").read_text().split())
    assert all(os.path.basename(i["image"]) in test_list for i in items)
    patients = [{i["patient"] for i in data[split]} for split in SPLITS]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert all(len(data[split]) for split in SPLITS) and summary["box_images"]["training"] >= summary["box_images"]["test"]


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    """Also across processes: each gets its own string-hash seed, so nothing may depend on the order of a set."""
    import subprocess
    import sys

    for name, seed, hash_seed in (("a", 5, "1"), ("b", 5, "2"), ("c", 6, "1")):
        code = f"from chestzoo.data.synth import nih; nih.write({str(tmp_path / name)!r}, patients=30, size=32, seed={seed})"
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONHASHSEED": hash_seed})
    assert _tree_hash(tmp_path / "a") == _tree_hash(tmp_path / "b") != _tree_hash(tmp_path / "c")


def test_flat_and_archive_layouts_read_alike(tmp_path):
    synth.write(tmp_path / "flat", patients=8, size=32, seed=1, flat=True)
    synth.write(tmp_path / "archive", patients=8, size=32, seed=1)
    assert not list((tmp_path / "flat").glob("images_*")) and list((tmp_path / "flat" / "images").glob("*.png"))
    lists = []
    for layout in ("flat", "archive"):
        prepare(tmp_path / layout)
        items = {s: load_datalist(tmp_path / layout / "datalist.json", s) for s in SPLITS}
        for item in items["training"][:3]:
            assert os.path.isfile(item["image"])
        lists.append({s: [{**i, "image": open(i["image"], "rb").read()} for i in items[s]] for s in SPLITS})
    assert lists[0] == lists[1]


def test_2017_csv_and_its_impossible_ages(tmp_path):
    root = _small(tmp_path, patients=40)
    v2020 = prepare(root)
    assert v2020["csv"] == "Data_Entry_2017_v2020.csv" and v2020["unknown_ages"] == 0
    new = json.loads((root / "datalist.json").read_text())
    old_summary = prepare(root, out=str(tmp_path / "old.json"), csv="Data_Entry_2017.csv")
    old = json.loads((tmp_path / "old.json").read_text())
    assert old_summary["unknown_ages"] > 0
    for split in SPLITS:
        assert [i["label"] for i in old[split]] == [i["label"] for i in new[split]]
        assert sum(i["age"] is None for i in old[split]) == sum(a["age"] != b["age"] for a, b in zip(old[split], new[split]))
    (root / "Data_Entry_2017_v2020.csv").unlink()
    assert prepare(root)["csv"] == "Data_Entry_2017.csv"


def test_cli_synth_and_prepare(tmp_path, capsys):
    out = str(tmp_path / "cli")
    synth_command = ["synth", "nih", "--out", out, "--patients", "5", "--size", "32", "--flat", "True"]
    fire.Fire(ChestZoo, command=synth_command, name="chestzoo")
    fire.Fire(ChestZoo, command=["prepare", "nih", "--root", out, "--box_fractions", "0.5,0.25,0.25"], name="chestzoo")
    printed = capsys.readouterr().out
    assert '"layout": "flat"' in printed and '"boxes_datalist"' in printed
    assert os.path.isfile(os.path.join(out, "datalist.json")) and os.path.isfile(os.path.join(out, "datalist_boxes.json"))


# ------------------------------------------------------------------------------------------------ bad input


def _line_of(path, text):
    return next(i for i, line in enumerate(open(path).read().splitlines(), start=1) if text in line)


def _edit(path, old, new):
    content = path.read_text()
    assert old in content
    path.write_text(content.replace(old, new, 1))


def test_missing_image_names_csv_row_or_is_skipped(tmp_path):
    root = _small(tmp_path)
    victim = sorted(root.glob("images_*/images/*.png"))[3]
    victim.unlink()
    row = _line_of(root / "Data_Entry_2017_v2020.csv", victim.name)
    with pytest.raises(DataError, match=rf"Data_Entry_2017_v2020.csv, row {row}: image file '{victim.name}' not found"):
        prepare(root)
    summary = prepare(root, skip_missing="true")
    assert summary["skipped_missing"] == 1
    assert victim.name not in (root / "datalist.json").read_text()


def test_corrupt_png_gives_data_error_naming_the_file(tmp_path):
    root = _small(tmp_path)
    victim = sorted(root.glob("images_*/images/*.png"))[0]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    prepare(root)  # preparing reads no pixels
    item = next(i for s in SPLITS for i in load_datalist(root / "datalist.json", s) if i["image"].endswith(victim.name))
    with pytest.raises(DataError, match=victim.name):
        read_image(item["image"])


def test_unknown_label_names_csv_row(tmp_path):
    root = _small(tmp_path)
    csv = root / "Data_Entry_2017_v2020.csv"
    name = csv.read_text().splitlines()[2].split(",")[0]
    line = csv.read_text().splitlines()[2]
    _edit(csv, line, line.replace(line.split(",")[1], "Effusion|Pneumonitis"))
    with pytest.raises(DataError, match=r"Data_Entry_2017_v2020.csv, row 3: unknown label 'Pneumonitis'"):
        prepare(root)
    assert name  # the row edited is a real image row


@pytest.mark.parametrize("content, problem", [("", "empty CSV"), (None, "no image rows")])
def test_empty_csv(tmp_path, content, problem):
    root = _small(tmp_path)
    csv = root / "Data_Entry_2017_v2020.csv"
    csv.write_text(csv.read_text().splitlines()[0] + "\n" if content is None else content)
    with pytest.raises(DataError, match=rf"Data_Entry_2017_v2020.csv.*{problem}"):
        prepare(root)


def test_missing_column(tmp_path):
    root = _small(tmp_path)
    _edit(root / "Data_Entry_2017_v2020.csv", "Patient ID", "Patient")
    with pytest.raises(DataError, match=r"Data_Entry_2017_v2020.csv, row 1: missing columns \['Patient ID'\]"):
        prepare(root)


@pytest.mark.parametrize(
    "mangle, problem",
    [
        (lambda v: v[:2] + ["abc"] + v[3:], "must be numbers"),
        (lambda v: v[:5], "expected image, label, x, y, w, h"),
        (lambda v: v[:4] + ["-3.0"] + v[5:], "w, h > 0"),
        (lambda v: v[:1] + ["Fracture"] + v[2:], "unknown box label 'Fracture'"),
        (lambda v: ["99999999_000.png"] + v[1:], "not in Data_Entry_2017_v2020.csv"),
    ],
)
def test_malformed_box_row(tmp_path, mangle, problem):
    root = _small(tmp_path, patients=12)
    path = root / "BBox_List_2017.csv"
    lines = path.read_text().splitlines()
    assert len(lines) > 2
    lines[2] = ",".join(mangle(lines[2].split(",")))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"BBox_List_2017.csv, row 3: .*{problem}"):
        prepare(root)


def test_split_list_errors(tmp_path):
    root = _small(tmp_path)
    test_list = root / "test_list.txt"
    original = test_list.read_text()
    test_list.write_text(original + "99999999_000.png\n")
    row = len(original.splitlines()) + 1
    with pytest.raises(DataError, match=rf"test_list.txt, row {row}: image '99999999_000.png' is listed but not in"):
        prepare(root)
    train_val = root / "train_val_list.txt"
    train_val_names = train_val.read_text().split()
    test_list.write_text(original + train_val_names[0] + "\n")
    with pytest.raises(DataError, match=rf"test_list.txt, row {row}: image '{train_val_names[0]}' is also in train_val_"):
        prepare(root)
    # one film of a train_val patient moved to the test list breaks the patient-wise official split
    moved = next(n for n in train_val_names if n[:8] + "_001.png" in train_val_names and n.endswith("_001.png"))
    train_val.write_text("".join(f"{n}\n" for n in train_val_names if n != moved))
    test_list.write_text(original + moved + "\n")
    with pytest.raises(DataError, match=rf"test_list.txt, row {row}: patient {int(moved[:8])} of '{moved}' also has"):
        prepare(root)
    test_list.write_text(original)
    train_val.write_text("".join(f"{n}\n" for n in train_val_names))
    prepare(root)
    shutil.move(root / "train_val_list.txt", root / "moved.txt")
    with pytest.raises(DataError, match=r"train_val_list.txt: official split list not found"):
        prepare(root)


def test_no_images_folder(tmp_path):
    root = _small(tmp_path)
    for folder in root.glob("images_*"):
        shutil.rmtree(folder)
    with pytest.raises(DataError, match="no image folder"):
        prepare(root)
