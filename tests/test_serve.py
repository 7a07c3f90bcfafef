"""``chestzoo serve``: upload checks and untrained bundles through Flask's test client, then the page itself in a real
headless Chromium against a server started with ``chestzoo serve`` on models trained here with the tests' settings.

Screenshots of the browser run go to pytest's temporary folder (the path is printed; ``-s`` shows it).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chestzoo.bundle_runs import BUNDLE_RUNS
from chestzoo.serve import ROLES, ServedModels, create_app
from local_server import free_port, running

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = PROJECT_ROOT / "bundles"


def _png(shape=(64, 64), mode="L") -> bytes:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, size=shape if mode == "L" else (*shape, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", **tags) -> bytes:
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    from chestzoo.data.synth.dicom import new_dataset

    ds = new_dataset(SecondaryCaptureImageStorage, generate_uid())
    ds.Modality = "DX"
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.set_pixel_data(pixels, photometric, 8, generate_instance_uid=False)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# ---- the application without trained models (fast) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def untrained_client(tmp_path_factory):
    models = ServedModels(models_dir=tmp_path_factory.mktemp("no_models"), device="cpu")
    app = create_app(models, max_upload_mb=1)
    return app.test_client()


def _upload(client, data: bytes, name: str):
    return client.post("/api/analyse", data={"file": (io.BytesIO(data), name)}, content_type="multipart/form-data")


def test_untrained_bundles_say_how_to_train(untrained_client):
    status = untrained_client.get("/api/status").get_json()
    assert set(status["bundles"]) == set(ROLES)
    for name, info in status["bundles"].items():
        assert not info["ready"]
        assert "not trained yet" in info["message"]
        assert f"bundles/{name}/configs/train.json" in info["command"].replace(os.sep, "/")
        assert info["command"].startswith("python -m monai.bundle run")
    answer = untrained_client.post("/api/generate/dcgan", json={"count": 4})
    assert answer.status_code == 409
    assert "lung_ct_dcgan is not trained yet" in answer.get_json()["error"]
    assert "lung_ct_dcgan/configs/train.json" in answer.get_json()["command"].replace(os.sep, "/")


GRADIENT = np.tile(np.linspace(20, 230, 50).astype(np.uint8), (40, 1))  # grey, not blank: the input gate lets it in


def test_valid_upload_without_models_shows_the_image(untrained_client):
    answer = _upload(untrained_client, _dicom(GRADIENT), "chest.dcm")
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["results"]["input_check"].startswith("accepted")
    body = answer.get_json()
    assert body["picture"].startswith("data:image/png;base64,")
    assert body["results"]["image"] == {"height": 40, "width": 50}
    assert set(body["results"]["models"].values()) == {"not available"}
    assert "findings" not in body["results"]


@pytest.mark.parametrize(
    "name, data, status, message",
    [
        ("notes.png", b"just some text, not pixels", 400, "not a PNG, JPEG or DICOM image"),
        ("empty.png", b"", 400, "the file is empty"),
        ("truncated.png", _png()[:60], 400, "damaged PNG"),
        ("broken.dcm", b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 20, 400, "malformed DICOM"),
        ("colour.dcm", _dicom(np.zeros((32, 32, 3), np.uint8), "RGB"), 400, "the DICOM has 3 channels"),
        ("tiny.png", _png((8, 8)), 400, "too small"),
        ("huge.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (2 * 1024 * 1024), 413, "larger than 1 MB"),
    ],
    ids=lambda value: value if isinstance(value, str) and value.count(".") == 1 else "",
)
def test_bad_uploads_get_clear_messages(untrained_client, name, data, status, message):
    answer = _upload(untrained_client, data, name)
    assert answer.status_code == status
    error = answer.get_json()["error"]
    assert message in error
    assert "chestzoo_serve_" not in error, "messages must not show the server's temporary paths"


def test_what_is_not_a_frontal_chest_radiograph_is_refused_with_the_reason(untrained_client, tmp_path):
    knee = _dicom(GRADIENT, BodyPartExamined="EXTREMITY")
    answer = _upload(untrained_client, knee, "knee.dcm")
    assert answer.status_code == 400
    assert answer.get_json()["error"] == ("knee.dcm: not analysed, since it is not a frontal chest radiograph: BodyPartExamined "
                                          "is EXTREMITY, not the chest (serve with --accept_any_image True to analyse it anyway)")
    assert "a blank image" in _upload(untrained_client, _dicom(np.full((40, 50), 128, np.uint8)), "blank.dcm").get_json()["error"]
    anything = create_app(ServedModels(models_dir=tmp_path, device="cpu"), max_upload_mb=1, accept_any_image=True).test_client()
    answer = _upload(anything, knee, "knee.dcm")
    assert answer.status_code == 200 and "accepted because any image is accepted" in answer.get_json()["results"]["input_check"]


def test_no_request_path_reaches_the_file_system(untrained_client, tmp_path, monkeypatch):
    import tempfile

    assert untrained_client.get("/static/app.js").status_code == 200
    for path in ("/static/..%2fapp.py", "/static/../app.py", "/static/index.html", "/static/%2e%2e%2f__init__.py"):
        assert untrained_client.get(path).status_code == 404, path
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the upload's temporary folder goes
    assert _upload(untrained_client, _png(), "../../evil.png").status_code == 200
    answer = _upload(untrained_client, b"text", "../../evil.png")
    assert answer.get_json()["error"].startswith("evil.png: ")
    assert list(tmp_path.iterdir()) == [], "the upload's temporary folder was not removed"
    assert not list(tmp_path.parent.rglob("evil.png"))


def test_request_checks(untrained_client):
    assert untrained_client.post("/api/analyse", data={}).status_code == 400
    assert untrained_client.get("/api/heatmap?token=x&finding=Mass&method=lse").status_code == 409


# ---- the page in a real browser, on trained models --------------------------------------------------------------------


def _browser_binaries():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("the browser test needs chromium and chromedriver on PATH (Debian: apt-get install -y chromium chromium-driver)")
    return chromium, driver


@pytest.fixture()
def server(trained_bundles, tmp_path):
    """``chestzoo serve`` in a subprocess on a free port of 127.0.0.1, its temporary files in a folder of its own."""
    port = free_port()
    server_tmp = tmp_path / "server_tmp"
    server_tmp.mkdir()
    # the untrained-model thresholds would hide every box of a one-epoch detector: show them all
    overrides = {"cxr_pathology_detection": {"default_threshold": 0.0}, "rsna_pneumonia_detection": {"score_threshold": 0.0}}
    command = [sys.executable, "-m", "chestzoo.cli", "serve", "--port", str(port), "--models", str(trained_bundles),
               "--settings", "test", "--device", "cpu", "--max_upload_mb", "4", "--overrides", json.dumps(overrides)]
    url = f"http://127.0.0.1:{port}/"
    with running(command, tmp_path / "server.log", url + "api/status", "chestzoo serve", cwd=str(tmp_path),
                 env={**os.environ, "TMPDIR": str(server_tmp)}) as status:
        yield {"url": url, "status": status, "tmp": server_tmp, "log": tmp_path / "server.log"}


@pytest.fixture()
def browser(tmp_path):
    chromium, driver_path = _browser_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, what: str, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d), message=f"waiting for {what}")


def test_page_in_headless_chromium(server, browser, synthetic_data, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    artefacts = tmp_path / "screenshots"
    artefacts.mkdir()
    print(f"\nscreenshots: {artefacts}")
    assert all(info["ready"] for info in server["status"]["bundles"].values()), server["status"]
    find = browser.find_element

    browser.get(server["url"])
    _wait(browser, lambda d: "settings test" in find(By.ID, "server-status").text, "the status line")
    assert find(By.ID, "bundle-messages").text == "", "every bundle is trained, so no 'not trained' message"
    browser.save_screenshot(str(artefacts / "01_start.png"))

    # upload a synthetic RSNA DICOM: findings, heatmap, boxes and lungs appear
    rsna = Path(synthetic_data("rsna", **BUNDLE_RUNS["rsna_pneumonia_detection"].test_data))
    dicom = sorted(rsna.rglob("*.dcm"))[0]
    find(By.ID, "file-input").send_keys(str(dicom))
    _wait(browser, lambda d: find(By.ID, "result").is_displayed(), "the analysis")
    rows = browser.find_elements(By.CSS_SELECTOR, "#findings tbody tr")
    assert len(rows) == 14
    probabilities = [float(r.find_elements(By.TAG_NAME, "td")[2].text) for r in rows]
    assert probabilities == sorted(probabilities, reverse=True)
    for layer in ("heatmap-img", "lungs-img"):
        element = find(By.ID, layer)
        assert element.is_displayed() and element.get_attribute("src").startswith("data:image/png;base64,"), layer
    pathology = browser.find_elements(By.CSS_SELECTOR, "#pathology-boxes rect")
    opacity = browser.find_elements(By.CSS_SELECTOR, "#opacity-boxes rect")
    assert pathology and opacity, "with a score threshold of 0 both detectors draw boxes"
    assert find(By.ID, "pathology-boxes").is_displayed()
    browser.save_screenshot(str(artefacts / "02_analysis.png"))

    # toggle layers off and on
    find(By.ID, "layer-lungs").click()
    _wait(browser, lambda d: not find(By.ID, "lungs-img").is_displayed(), "the lungs layer to hide")
    find(By.ID, "layer-pathology").click()
    _wait(browser, lambda d: find(By.ID, "pathology-boxes").value_of_css_property("display") == "none", "the boxes to hide")
    assert find(By.ID, "heatmap-img").is_displayed()
    browser.save_screenshot(str(artefacts / "03_layers_toggled.png"))
    find(By.ID, "layer-lungs").click()
    _wait(browser, lambda d: find(By.ID, "lungs-img").is_displayed(), "the lungs layer to come back")

    # the heatmap of another finding, by the other method
    before = find(By.ID, "heatmap-img").get_attribute("src")
    last = rows[-1].find_elements(By.TAG_NAME, "td")[0].text
    Select(find(By.ID, "heatmap-finding")).select_by_value(last)
    _wait(browser, lambda d: find(By.ID, "heatmap-img").get_attribute("src") != before, "the new heatmap")

    # results as JSON
    find(By.ID, "download-json").click()
    _wait(browser, lambda d: [p for p in browser.downloads.glob("*.json")], "the JSON download", timeout=20)
    results = json.loads(next(browser.downloads.glob("*.json")).read_text())
    assert results["file"] == dicom.name and len(results["findings"]) == 14
    assert len(results["pathology_boxes"]) == len(pathology) and len(results["opacity_boxes"]) == len(opacity)

    # generation panel: GMVAE for the two findings checked by default, then the DCGAN
    checked = browser.find_elements(By.CSS_SELECTOR, "#gmvae-findings input:checked")
    assert len(checked) == 2
    find(By.ID, "generate-gmvae").click()
    _wait(browser, lambda d: find(By.ID, "gmvae-result").is_displayed(), "GMVAE samples")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gmvae-rows li")) == 2
    assert find(By.ID, "gmvae-download").get_attribute("href").startswith("data:image/png;base64,")
    find(By.ID, "generate-dcgan").click()
    _wait(browser, lambda d: find(By.ID, "dcgan-result").is_displayed(), "DCGAN samples")
    grid = find(By.ID, "dcgan-grid")
    assert browser.execute_script("return arguments[0].naturalWidth", grid) > 0
    browser.execute_script("document.getElementById('generation-panel').scrollIntoView()")
    browser.save_screenshot(str(artefacts / "04_generated.png"))

    # a bad file: a clear message, the previous result cleared
    bad = tmp_path / "not_an_xray.dcm"
    bad.write_text("this is a text file")
    browser.execute_script("window.scrollTo(0, 0)")
    find(By.ID, "file-input").send_keys(str(bad))
    _wait(browser, lambda d: find(By.ID, "error").is_displayed(), "the error message")
    assert "not_an_xray.dcm: not a PNG, JPEG or DICOM image" in find(By.ID, "error").text
    assert not find(By.ID, "result").is_displayed()
    browser.save_screenshot(str(artefacts / "05_bad_upload.png"))

    assert sorted(p.name for p in artefacts.iterdir()) == ["01_start.png", "02_analysis.png", "03_layers_toggled.png",
                                                          "04_generated.png", "05_bad_upload.png"]
    assert list(server["tmp"].iterdir()) == [], "the server left files in its temporary folder"
