"""A MONAI Label app serving chestzoo's classification, detection and lung segmentation bundles from this repository
(no zoo and no model download) on 2-D chest X-rays (PNG, JPEG, DICOM), and training them on the labels annotators save.

Run it in the environment made by ``apps/monailabel/setup_env.sh`` (see apps/monailabel/README.md):

    monailabel start_server --app apps/monailabel --studies <folder of chest X-rays> \\
        --conf models <folder holding <bundle>/models/model.pt> --conf settings demo

Options (``--conf key value``):

- ``models``: where the checkpoints are, as ``<models>/<bundle>/models/model.pt`` (default: the repository's
  ``bundles/`` folder, where ``python -m monai.bundle run`` puts them); training from MONAI Label writes there too;
- ``settings``: ``none`` (the bundles' real-data configs), ``demo`` or ``test`` (what ``chestzoo demo`` and the tests
  train with), so that each network is rebuilt with the shape its checkpoint has;
- ``bundles``: a comma-separated subset of the served bundles;
- ``label_tag``: the label tag training reads (default ``final``, what 3D Slicer and OHIF save);
- ``device``: ``cpu`` or ``cuda:0`` (default: CUDA when present).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

from chestzoo.bundle_model import BUNDLES_DIR, settings_overrides
from chestzoo.data import DataError
from chestzoo.data.input_gate import check_file
from chestzoo.demo import bundle_command
from chestzoo.labelling import LABEL_NAMES, SERVED, predict, training_datalist
from chestzoo.serve import ServedModels
from chestzoo.utils import as_bool
from fastapi import HTTPException
from monailabel.config import settings as server_settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

logger = logging.getLogger(__name__)

STUDY_FILES = ["*.png", "*.jpg", "*.jpeg", "*.dcm"]
LOG_TAIL = 3000  # characters of a failed training's log put into the error


def single_image(path: str) -> str:
    """The image file of a request: a DICOMweb datastore hands over a series folder, which for a radiograph holds one file."""
    if not os.path.isdir(path):
        return path
    files = sorted(f for f in Path(path).iterdir() if f.is_file())
    if len(files) != 1:
        raise HTTPException(status_code=422, detail=f"a chest X-ray series holds one image; {path} holds {len(files)} files")
    return str(files[0])


class BundleInfer(InferTask):
    """One served bundle; its checkpoint is (re)loaded when it appears or changes, e.g. after a training run."""

    def __init__(self, name: str, models_dir: Path, settings: str, device: str | None, accept_any_image: bool = False):
        super().__init__(type=SERVED[name], labels=LABEL_NAMES[name], dimension=2,
                         description=f"chestzoo {name} ({SERVED[name]} of chest X-rays)")
        self.name, self.models_dir, self.settings, self.device = name, models_dir, settings, device
        self.accept_any_image = accept_any_image
        self.checkpoint = models_dir / name / "models" / "model.pt"
        self._served: ServedModels | None = None
        self._stamp: tuple | None = None
        self._lock = threading.Lock()

    def is_valid(self) -> bool:
        return True  # an untrained bundle is listed (it can be trained from here) and answers with how to train it

    def served(self) -> ServedModels:
        stat = self.checkpoint.stat() if self.checkpoint.is_file() else None
        stamp = (stat.st_ino, stat.st_mtime_ns) if stat else None
        with self._lock:
            if self._served is None or stamp != self._stamp:
                self._served = ServedModels(self.models_dir, settings=self.settings, device=self.device, bundles=[self.name])
                self._stamp = stamp
            served = self._served
        if self.name in served.problems:
            problem = served.problems[self.name]
            raise HTTPException(status_code=409, detail=f"{problem['message']} {problem['command']} -- or save labels here and "
                                                        f"train it from MONAI Label (POST /train/{self.name}).")
        return served

    def __call__(self, request) -> tuple[str | None, dict]:
        path = single_image(request["image"])
        verdict = check_file(path, accept_any=self.accept_any_image)
        if not verdict.accepted:
            raise HTTPException(status_code=422, detail=f"not a frontal chest radiograph: {verdict.reason} (start the app "
                                                        "with --conf accept_any_image true to infer anyway)")
        try:
            result, label = predict(self.served(), self.name, path)
        except DataError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        suffix = ".png" if label is not None else ".json"
        handle, out = tempfile.mkstemp(prefix=f"{self.name}_", suffix=suffix)
        os.close(handle)
        if label is not None:
            Image.fromarray(label).save(out)
        else:  # the JSON label an annotator corrects and saves; the probabilities stay in the answer only
            Path(out).write_text(json.dumps({k: v for k, v in result.items() if k != "probabilities"}, indent=2))
        return out, {"model": self.name, "input_check": str(verdict), **result}


class BundleTrain(TrainTask):
    """Trains bundle ``name`` with its own train.json (``python -m monai.bundle run``) on the images whose label has
    tag ``label_tag``, then serves the new checkpoint; the previous one is kept in ``<models>/<name>/previous``.

    Each run trains ``max_epochs`` (default: the settings' value) on every labelled image so far, starting from the
    served checkpoint (the bundle's ``init_ckpt``) when there is one and the request does not say ``fine_tune: false``.
    """

    def __init__(self, name: str, models_dir: Path, settings: str, label_tag: str):
        super().__init__(f"Train chestzoo {name} on the labelled chest X-rays")
        self.name, self.models_dir, self.settings, self.label_tag = name, models_dir, settings, label_tag
        self.overrides = settings_overrides(name, settings)
        config = json.loads((BUNDLES_DIR / name / "configs" / "train.json").read_text())
        self.max_epochs = int(self.overrides.get("max_epochs", config["max_epochs"]))
        self.label_suffix = ".png" if SERVED[name] == "segmentation" else ".json"

    def config(self):
        return {"max_epochs": self.max_epochs, "validation_fraction": 0.2, "fine_tune": True}

    def stats(self):
        path = self.models_dir / self.name / "models" / "monailabel_train.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def __call__(self, request, datastore: Datastore):
        labelled = []
        for image_id in datastore.get_labeled_images(self.label_tag):
            label = datastore.get_label_uri(image_id, self.label_tag)
            if label.endswith(self.label_suffix):  # the other bundles' labels (a mask beside findings JSON) are skipped
                labelled.append((datastore.get_image_uri(image_id), label))
        run_dir = self.models_dir / self.name / "monailabel_runs" / time.strftime("%Y%m%d-%H%M%S")
        try:
            datalist = training_datalist(self.name, labelled, run_dir, float(request.get("validation_fraction", 0.2)))
        except DataError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        epochs = int(request.get("max_epochs", self.max_epochs))
        served = self.models_dir / self.name / "models" / "model.pt"
        start = served if as_bool(request.get("fine_tune", True)) and served.is_file() else None
        overrides = {**self.overrides, "dataset_dir": str(run_dir), "datalist": datalist, "ckpt_dir": str(run_dir / "models"),
                     "output_dir": str(run_dir / "eval"), "max_epochs": epochs, **({"init_ckpt": str(start)} if start else {})}
        command = bundle_command(BUNDLES_DIR, self.name, "train", overrides)
        logger.info("training %s on %d labelled images: %s", self.name, len(labelled), " ".join(command))
        started = time.monotonic()
        with open(run_dir / "train.log", "w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=run_dir).returncode
        if code != 0 or not (run_dir / "models" / "model.pt").is_file():
            tail = (run_dir / "train.log").read_text()[-LOG_TAIL:]
            raise HTTPException(status_code=500, detail=f"training {self.name} failed (exit {code}); log {run_dir / 'train.log'} ends:\n{tail}")
        with open(datalist) as f:
            splits = json.load(f)
        stats = {"bundle": self.name, "images": {"training": len(splits["training"]), "validation": len(splits["validation"])},
                 "max_epochs": epochs, "started_from": str(start) if start else "initialisation",
                 "seconds": round(time.monotonic() - started, 1), "log": str(run_dir / "train.log"),
                 "command": command}
        (run_dir / "models" / "monailabel_train.json").write_text(json.dumps(stats, indent=2))
        self._publish(run_dir / "models")
        return stats

    def _publish(self, new: Path) -> None:
        """The new checkpoint folder becomes the served one; the served one becomes ``previous``."""
        served, previous = self.models_dir / self.name / "models", self.models_dir / self.name / "previous"
        if served.exists():
            shutil.rmtree(previous, ignore_errors=True)
            served.rename(previous)
        new.rename(served)


class ChestZooApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.models_dir = Path(conf.get("models", BUNDLES_DIR)).resolve()
        self.settings = conf.get("settings", "none")
        self.device = conf.get("device")
        self.label_tag = conf.get("label_tag", "final")
        self.accept_any_image = as_bool(conf.get("accept_any_image", False))
        names = [n.strip() for n in conf.get("bundles", ",".join(SERVED)).split(",") if n.strip()]
        unknown = sorted(set(names) - set(SERVED))
        if unknown:
            raise ValueError(f"--conf bundles names unknown bundles {unknown}; served bundles are {sorted(SERVED)}")
        self.names = names
        for name in names:
            settings_overrides(name, self.settings)  # an unknown settings value fails here, before the server starts
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="chestzoo",
                         description="chestzoo bundles for chest X-rays: NIH findings, pathology and opacity boxes, lungs",
                         version="0.1.0")

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):  # DICOMweb (e.g. Orthanc behind OHIF)
            return super().init_datastore()
        return LocalDatastore(self.studies, extensions=STUDY_FILES, auto_reload=server_settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                              read_only=server_settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def init_infers(self):
        return {name: BundleInfer(name, self.models_dir, self.settings, self.device, self.accept_any_image) for name in self.names}

    def init_trainers(self):
        return {name: BundleTrain(name, self.models_dir, self.settings, self.label_tag) for name in self.names}
