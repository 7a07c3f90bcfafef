"""The MONAI Label app (apps/monailabel): label files to datalists here; then a real MONAI Label 0.8.5 server on
127.0.0.1, in the environment ``apps/monailabel/setup_env.sh`` makes, serving bundles trained with the tests'
settings: inference through the REST API with each served bundle on PNG and DICOM studies, labels saved, one-epoch
trainings, and the retrained checkpoint served.

The environment is made once in ``$CHESTZOO_MONAILABEL_VENV`` (default ``~/.cache/chestzoo/monailabel-venv``, several
minutes and a few GB the first time) and brought up to date on later runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from chestzoo.bundle_runs import BUNDLE_RUNS
from chestzoo.data import DataError, read_image
from chestzoo.data.labels import NIH_BOX_LABELS, NIH_LABELS
from chestzoo.labelling import SERVED, lung_label, read_annotation, training_datalist
from local_server import free_port, running

PROJECT_ROOT = Path(__file__).resolve().parents[1]
APP = PROJECT_ROOT / "apps" / "monailabel"
KNEE = "zz_knee"  # a study the app must refuse to infer on


# ---- label files -> datalists (no server) --------------------------------------------------------------------------


def _write_json(path: Path, payload) -> str:
    path.write_text(json.dumps(payload))
    return str(path)


def test_lung_label_marks_each_side_and_takes_the_image_size():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :, :2] = True  # left lung channel
    masks[1, :, 2:] = True
    label = lung_label(masks, (8, 6))
    assert label.shape == (8, 6) and label.dtype == np.uint8
    assert set(np.unique(label)) == {1, 2}
    assert (label[:, :3] == 1).all() and (label[:, 3:] == 2).all()


def test_json_labels_become_each_bundles_datalist(tmp_path):
    images = [str(tmp_path / f"img{i}.png") for i in range(3)]
    labels = [
        _write_json(tmp_path / "a.json", {"findings": ["Mass", "Effusion"], "boxes": [{"label": "Mass", "box": [1, 2, 10, 12]}]}),
        _write_json(tmp_path / "b.json", {"findings": ["No Finding"], "boxes": []}),
        _write_json(tmp_path / "c.json", {"boxes": [{"label": "Lung Opacity", "box": [3, 3, 9, 9]}]}),
    ]
    pairs = list(zip(images, labels))

    classification = json.loads(Path(training_datalist("cxr14_lse_classification", pairs, tmp_path / "cls")).read_text())
    items = {Path(i["image"]).name: i for i in classification["training"] + classification["validation"]}
    assert len(items) == 3 and classification["validation"] and classification["test"] == []
    assert items["img0.png"]["label"] == [int(n in ("Mass", "Effusion")) for n in NIH_LABELS]
    assert items["img1.png"]["label"] == [0] * len(NIH_LABELS)

    detection = json.loads(Path(training_datalist("cxr_pathology_detection", pairs, tmp_path / "det")).read_text())
    items = {Path(i["image"]).name: i for i in detection["training"] + detection["validation"]}
    assert items["img0.png"]["box"] == [[1, 2, 10, 12]] and items["img0.png"]["box_label"] == [NIH_BOX_LABELS.index("Mass")]
    assert items["img2.png"]["box"] == []  # an RSNA opacity is not an NIH box class

    rsna = json.loads(Path(training_datalist("rsna_pneumonia_detection", pairs, tmp_path / "rsna")).read_text())
    items = {Path(i["image"]).name: i for i in rsna["training"] + rsna["validation"]}
    assert (items["img2.png"]["label"], items["img2.png"]["class"], items["img2.png"]["box"]) == (1, 2, [[3, 3, 9, 9]])
    assert (items["img0.png"]["label"], items["img0.png"]["box"]) == (0, [])
    # paths are written relative to the datalist, as `chestzoo prepare` writes them
    assert not os.path.isabs(rsna["training"][0]["image"])


def test_lung_labels_become_left_and_right_masks(tmp_path):
    pairs = []
    for i in range(2):
        label = np.zeros((6, 8), dtype=np.uint8)
        label[1:5, 1:3], label[1:5, 5:7] = 1, 2
        Image.fromarray(label).save(tmp_path / f"lab{i}.png")
        pairs.append((str(tmp_path / f"img{i}.png"), str(tmp_path / f"lab{i}.png")))
    datalist = json.loads(Path(training_datalist("cxr_lung_segmentation", pairs, tmp_path / "seg")).read_text())
    item = datalist["training"][0]
    left, right = (np.asarray(Image.open(tmp_path / "seg" / m)) > 0 for m in item["mask"])
    assert left[1:5, 1:3].all() and left.sum() == 8 and right[1:5, 5:7].all() and right.sum() == 8
    assert datalist["mask_channels"] == ["left lung", "right lung"]


@pytest.mark.parametrize("payload, message", [
    ({"boxes": [{"label": "Mass", "box": [5, 5, 2, 9]}]}, "positive area"),
    ({"boxes": [{"label": "Tumour", "box": [1, 1, 2, 2]}]}, "unknown label 'Tumour'"),
    ({"findings": ["Pleural Thickening"]}, "unknown findings ['Pleural Thickening']"),
    (["Mass"], "must be an object"),
])
def test_bad_json_labels_are_named(tmp_path, payload, message):
    path = _write_json(tmp_path / "bad.json", payload)
    with pytest.raises(DataError, match=r"bad\.json") as error:
        read_annotation(path)
    assert message in str(error.value)


def test_training_needs_two_labelled_images(tmp_path):
    one = [(str(tmp_path / "a.png"), _write_json(tmp_path / "a.json", {"findings": []}))]
    with pytest.raises(DataError, match="at least two labelled images"):
        training_datalist("cxr14_lse_classification", one, tmp_path / "work")


# ---- a MONAI Label server ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def monailabel_env():
    """The MONAI Label virtual environment, made or updated by the app's own setup script."""
    venv = Path(os.environ.get("CHESTZOO_MONAILABEL_VENV", Path.home() / ".cache" / "chestzoo" / "monailabel-venv"))
    venv.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["bash", str(APP / "setup_env.sh"), str(venv)], capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, f"setup_env.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "MONAI Label 0.8.5" in result.stdout
    return venv


def _request(url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None, timeout: float = 600):
    """(status, body bytes) of one HTTP request; error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _put_label(url: str, image_id: str, path: Path, tag: str = "final"):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"label\"; filename=\"{path.name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return _request(f"{url}datastore/label?image={image_id}&tag={tag}", "PUT", body,
                    {"Content-Type": f"multipart/form-data; boundary={boundary}"})


@pytest.fixture(scope="module")
def studies(synthetic_data, tmp_path_factory):
    """Four NIH PNGs and four RSNA DICOMs of the tests' synthetic sets, as a MONAI Label studies folder."""
    folder = tmp_path_factory.mktemp("studies")
    nih = Path(synthetic_data("nih", **BUNDLE_RUNS["cxr14_lse_classification"].test_data))
    rsna = Path(synthetic_data("rsna", **BUNDLE_RUNS["rsna_pneumonia_detection"].test_data))
    dicoms = sorted((rsna / "stage_2_train_images").glob("*.dcm"))
    for path in sorted(nih.glob("images_*/images/*.png"))[:4] + dicoms[:4]:
        shutil.copy(path, folder / path.name)
    knee = pydicom.dcmread(dicoms[4])
    knee.BodyPartExamined = "EXTREMITY"  # a radiograph of another body part: the input gate refuses it
    knee.save_as(folder / f"{KNEE}.dcm")
    return folder


@pytest.fixture(scope="module")
def label_server(monailabel_env, trained_bundles, studies, tmp_path_factory):
    """``monailabel start_server`` with a copy of the app (the server writes logs and folders into its app folder)."""
    work = tmp_path_factory.mktemp("monailabel")
    shutil.copytree(APP, work / "app", ignore=shutil.ignore_patterns("model", "lib", "logs", "bin", "__pycache__"))
    port = free_port()
    env = {**os.environ, "PATH": f"{monailabel_env / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(monailabel_env),
           "HOME": str(work)}  # MONAI Label keeps its sessions under ~/.cache
    env.pop("PYTHONPATH", None)
    command = ["monailabel", "start_server", "--app", str(work / "app"), "--studies", str(studies), "--host", "127.0.0.1",
               "--port", str(port), "--conf", "models", str(trained_bundles), "--conf", "settings", "test"]
    url = f"http://127.0.0.1:{port}/"
    with running(command, work / "server.log", url + "info/", "MONAI Label", timeout=300, cwd=str(work), env=env) as info:
        yield {"url": url, "info": info, "log": work / "server.log", "models": trained_bundles}


@pytest.mark.slow
def test_monailabel_serves_and_trains_the_bundles(label_server, studies):
    url, info = label_server["url"], label_server["info"]
    assert {name: info["models"][name]["type"] for name in SERVED} == SERVED
    assert set(info["trainers"]) == set(SERVED)
    assert len(info["models"]["cxr14_lse_classification"]["labels"]) == 14

    status, body = _request(url + "datastore/?output=all")
    assert status == 200
    images = sorted(json.loads(body)["objects"])
    pngs = [i for i in images if (studies / f"{i}.png").exists()]
    dicoms = [i for i in images if (studies / f"{i}.dcm").exists() and i != KNEE]
    assert len(pngs) == 4 and len(dicoms) == 4 and KNEE in images
    status, body = _request(f"{url}infer/cxr14_lse_classification?image={KNEE}&output=json", "POST")
    assert status == 422 and b"not a frontal chest radiograph: BodyPartExamined is EXTREMITY" in body, (status, body[:300])

    def infer(model: str, image: str, output: str):
        status, body = _request(f"{url}infer/{model}?image={image}&output={output}", "POST")
        assert status == 200, f"{model} on {image}: {status} {body[:500]!r}"
        return body

    for image, suffix in ((pngs[0], ".png"), (dicoms[0], ".dcm")):
        height, width = read_image(studies / f"{image}{suffix}").shape[-2:]
        findings = json.loads(infer("cxr14_lse_classification", image, "json"))
        assert findings["input_check"].startswith("accepted"), findings["input_check"]
        probabilities = [f["probability"] for f in findings["probabilities"]]
        assert sorted(f["label"] for f in findings["probabilities"]) == sorted(NIH_LABELS)
        assert probabilities == sorted(probabilities, reverse=True) and all(0 <= p <= 1 for p in probabilities)
        assert findings["findings"] == [f["label"] for f in findings["probabilities"] if f["positive"]]
        for model, names in (("cxr_pathology_detection", NIH_BOX_LABELS), ("rsna_pneumonia_detection", ("Lung Opacity",))):
            answer = json.loads(infer(model, image, "json"))
            for box in answer["boxes"]:
                x0, y0, x1, y1 = box["box"]
                assert box["label"] in names and 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height and 0 <= box["score"] <= 1
        mask = studies.parent / f"{image}_lungs.png"
        mask.write_bytes(infer("cxr_lung_segmentation", image, "image"))
        values = np.asarray(Image.open(mask))
        assert values.shape == (height, width) and set(np.unique(values)) <= {0, 1, 2}

    # an annotator saves lung labels (the predicted masks, corrected) and opacity boxes
    for image in dicoms[:3]:
        mask = studies.parent / f"{image}_saved.png"
        mask.write_bytes(infer("cxr_lung_segmentation", image, "image"))
        labels = np.asarray(Image.open(mask)).copy()
        labels[16:48, 8:28] = 1  # a drawn left lung
        Image.fromarray(labels).save(mask)
        assert _put_label(url, image, mask)[0] == 200
    for i, image in enumerate(pngs[:3]):
        path = studies.parent / f"{image}.json"
        path.write_text(json.dumps({"findings": ["Pneumonia"] if i else [],
                                    "boxes": [{"label": "Lung Opacity", "box": [10, 12, 30, 40]}] if i else []}))
        assert _put_label(url, image, path)[0] == 200
    status, body = _request(url + "datastore/?output=all")
    saved = json.loads(body)["objects"]
    assert all("final" in saved[image]["labels"] for image in dicoms[:3] + pngs[:3])

    # one-epoch trainings from MONAI Label: each bundle trains on its own kind of label
    served = label_server["models"] / "cxr_lung_segmentation" / "models" / "model.pt"
    before = served.stat().st_mtime_ns
    for model, count in (("cxr_lung_segmentation", 3), ("rsna_pneumonia_detection", 3)):
        status, body = _request(f"{url}train/{model}?run_sync=true", "POST", json.dumps({"max_epochs": 1}).encode(),
                                {"Content-Type": "application/json"})
        assert status == 200, f"training {model}: {status} {body[-3000:]!r}"
        stats = json.loads(body)
        assert stats["bundle"] == model and stats["max_epochs"] == 1
        assert stats["started_from"] == str(label_server["models"] / model / "models" / "model.pt")  # fine-tuned
        assert "--init_ckpt" in stats["command"]
        assert stats["images"]["training"] + stats["images"]["validation"] == count and stats["images"]["validation"] >= 1
        assert (label_server["models"] / model / "previous" / "model.pt").is_file()  # the replaced checkpoint is kept
    assert served.stat().st_mtime_ns != before
    assert json.loads(infer("cxr_lung_segmentation", dicoms[0], "json"))["model"] == "cxr_lung_segmentation"
    assert label_server["log"].read_text().count("cxr_lung_segmentation: loaded") >= 2  # the new checkpoint was reloaded
