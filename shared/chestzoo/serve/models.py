"""The trained bundles behind ``chestzoo serve``: findings, heatmaps, boxes and lungs for one radiograph, and samples
from the two generators.

Every model is rebuilt from its bundle's ``inference.json`` and checkpoint by :class:`chestzoo.bundle_model.BundleModel`
and run with the bundle's own preprocessing and post-processing. A bundle without a checkpoint is reported (with the
command that trains it) instead of stopping the server.
"""

from __future__ import annotations

import base64
import io
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..bundle_model import BUNDLES_DIR, BundleModel, UntrainedBundleError, settings_overrides, train_command

logger = logging.getLogger(__name__)

# bundle -> what it contributes to the page
ROLES = {
    "cxr14_lse_classification": "14 findings and their heatmaps",
    "cxr_pathology_detection": "NIH pathology boxes",
    "rsna_pneumonia_detection": "RSNA opacity boxes",
    "cxr_lung_segmentation": "lung mask",
    "cxr14_gmvae": "GMVAE samples for chosen findings",
    "lung_ct_dcgan": "DCGAN lung-CT samples",
}
DISPLAY_MAX = 1024  # longest side of the picture sent to the browser; boxes stay in the file's pixels
CACHE_IMAGES = 16  # analysed images whose classifier input is kept for heatmaps requested later
MAX_SAMPLES = 16  # per finding (GMVAE) and 4x that for the DCGAN grid


class RequestError(ValueError):
    """A request the models cannot answer (unknown finding, number out of range); the message is for the user."""


class ExpiredImage(LookupError):
    """The analysed image a heatmap was asked for is no longer cached."""


def png_data_url(array_or_picture) -> str:
    picture = array_or_picture if isinstance(array_or_picture, Image.Image) else Image.fromarray(array_or_picture)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def display_size(shape: Sequence[int]) -> tuple[int, int]:
    """(height, width) of the picture shown for an image of ``shape``, at most DISPLAY_MAX on the longest side."""
    h, w = int(shape[0]), int(shape[1])
    factor = min(1.0, DISPLAY_MAX / max(h, w))
    return max(1, round(h * factor)), max(1, round(w * factor))


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (h, w) float map to ``size`` (height, width)."""
    tensor = torch.as_tensor(np.asarray(array, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def heatmap_picture(heat: np.ndarray, size: tuple[int, int]) -> str:
    """A jet-coloured RGBA PNG of a heatmap (min-max scaled), transparent where it is cold."""
    from matplotlib import colormaps

    from ..metrics.localization import normalize_heatmap

    values = normalize_heatmap(_resize(heat, size))
    rgba = (colormaps["jet"](values) * 255.0).astype(np.uint8)
    rgba[..., 3] = np.round(255.0 * np.clip(values, 0.0, 1.0) * 0.6).astype(np.uint8)  # cold regions see-through
    return png_data_url(rgba)


def mask_picture(mask: np.ndarray, size: tuple[int, int], colour=(70, 150, 255)) -> str:
    """A translucent RGBA PNG of a binary mask, enlarged smoothly to ``size``."""
    inside = _resize(mask.astype(np.float32), size) >= 0.5
    rgba = np.zeros((*size, 4), dtype=np.uint8)
    rgba[inside] = (*colour, 110)
    return png_data_url(rgba)


class ServedModels:
    """The bundles of :data:`ROLES` (or the subset ``bundles``), loaded from ``models_dir/<name>/models`` (or
    ``ckpt_dirs[name]``).

    ``settings`` (none, demo, test) and ``overrides`` are the config overrides the models were trained with, as in
    ``chestzoo compare``. Model calls are serialised by a lock: Grad-CAM keeps hooks on the network.
    """

    def __init__(self, models_dir: str | Path = BUNDLES_DIR, ckpt_dirs: Mapping[str, str] | None = None, settings: str = "none",
                 overrides: Mapping[str, Mapping] | None = None, device: str | None = None, bundles_dir: str | Path = BUNDLES_DIR,
                 bundles: Sequence[str] | None = None):
        self.roles = {name: ROLES[name] for name in ROLES if bundles is None or name in bundles}
        unknown = sorted((set(ckpt_dirs or {}) | set(bundles or ())) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown bundles {unknown}; served bundles are {sorted(ROLES)}")
        self.device = torch.device(device or ("cuda:0" if torch.cuda.is_available() else "cpu"))
        self.settings = settings
        self.models: dict[str, BundleModel] = {}
        self.problems: dict[str, dict] = {}
        self.extras: dict[str, dict] = {}  # config items each loaded bundle needs per request
        self.lock = threading.Lock()
        self.cache: OrderedDict[str, dict] = OrderedDict()
        bundles_dir = Path(bundles_dir)
        for name in self.roles:
            ckpt = Path((ckpt_dirs or {}).get(name, Path(models_dir) / name / "models"))
            try:
                model = BundleModel(bundles_dir / name, ckpt, settings_overrides(name, settings, overrides), self.device)
                self.extras[name] = self._extras(name, model)
                self.models[name] = model
            except UntrainedBundleError as exc:
                self.problems[name] = {"message": f"{name} is not trained yet (no {ckpt / 'model.pt'}); train it on a prepared "
                                                  "dataset with the command below, or train every bundle on synthetic data with "
                                                  "`chestzoo demo` and start `chestzoo serve --models demo_output --settings demo`.",
                                       "command": exc.command}
            except (RuntimeError, ValueError, KeyError) as exc:  # mostly a checkpoint of another shape than the config's
                self.problems[name] = {
                    "message": f"{name}: the checkpoint in {ckpt} does not load with settings '{settings}' "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). Start the server with the "
                               "settings it was trained with (--settings demo or test), or retrain it with:",
                    "command": train_command(bundles_dir / name, ckpt),
                }
            if name in self.problems:
                logger.warning("%s %s", self.problems[name]["message"], self.problems[name]["command"])
            else:
                logger.info("%s: loaded %s", name, ckpt / "model.pt")
        self._classifier_setup()

    @staticmethod
    def _extras(name: str, model: BundleModel) -> dict:
        """Config items read once at start, so that a bad thresholds or settings file shows up before any request."""
        if name == "cxr_pathology_detection":
            return {"labels": list(model.get("labels")), "thresholds": list(model.get("thresholds"))}
        if name == "rsna_pneumonia_detection":
            from ..engines.rsna_detection import read_postprocessing

            settings = read_postprocessing(str(model.get("settings_file")), model.get("score_threshold"), model.get("nms_iou"))
            return {"labels": list(model.get("labels")), "settings": settings}
        if name in ("cxr14_lse_classification", "cxr14_gmvae"):
            return {"labels": list(model.get("labels"))}
        return {}

    def _classifier_setup(self) -> None:
        from ..metrics.report import read_thresholds
        from ..visualize.cam import ClassHeatmaps

        model = self.models.get("cxr14_lse_classification")
        if model is None:
            return
        self.labels = self.extras["cxr14_lse_classification"]["labels"]
        self.heatmap_methods = list(model.get("heatmap_methods", ["gradcam"]))
        self.heatmaps = ClassHeatmaps(model.network, layer="transition", methods=self.heatmap_methods)
        # evaluation writes thresholds.json beside the checkpoints' folder (demo) or into the config's output_dir
        candidates = [model.ckpt_dir / "thresholds.json", model.ckpt_dir.parent / "thresholds.json", Path(model.get("thresholds_file"))]
        found = next((p for p in candidates if p.is_file()), None)
        self.thresholds = read_thresholds(str(found) if found else None, self.labels, 0.5)
        self.thresholds_source = "evaluation" if found else "default 0.5"

    def status(self) -> dict:
        from ..data.labels import NIH_LABELS

        gmvae = self.models.get("cxr14_gmvae")
        return {
            "device": str(self.device),
            "settings": self.settings,
            "bundles": {name: {"role": role, "ready": name in self.models, **self.problems.get(name, {})} for name, role in self.roles.items()},
            "labels": list(getattr(self, "labels", NIH_LABELS)),
            "heatmap_methods": list(getattr(self, "heatmap_methods", [])),
            "thresholds": getattr(self, "thresholds_source", None),
            "gmvae_findings": ["No Finding", *self.extras["cxr14_gmvae"]["labels"]] if gmvae is not None else [],
            "gmvae_conditional": bool(gmvae.network.conditional) if gmvae is not None else None,
        }

    # ---- one radiograph ------------------------------------------------------------------------------------------

    def analyse(self, path: str, image: np.ndarray) -> dict:
        """Everything the page shows for the image file ``path`` (already read as ``image`` (H, W) in [0, 1])."""
        h, w = image.shape
        size = display_size(image.shape)
        picture = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).resize(size[::-1], Image.BILINEAR)
        token = secrets.token_urlsafe(12)
        results: dict = {"image": {"height": h, "width": w}, "box_format": "[x_min, y_min, x_max, y_max] in pixels of the image"}
        layers: dict = {}
        with self.lock, torch.no_grad():
            if "cxr14_lse_classification" in self.models:
                results["findings"], cached = self.findings(path)
                self._remember(token, {**cached, "size": size})
                layers["heatmap_finding"] = results["findings"][0]["label"]
            if "cxr_pathology_detection" in self.models:
                results["pathology_boxes"] = self.pathology_boxes(path)
            if "rsna_pneumonia_detection" in self.models:
                results["opacity_boxes"] = self.opacity_boxes(path)
            if "cxr_lung_segmentation" in self.models:
                lungs = self.lung_masks(path).any(axis=0)  # left and right lung merged
                results["lungs"] = {"area_fraction": round(float(lungs.mean()), 4)}
                layers["lungs"] = mask_picture(lungs, size)
        if "heatmap_finding" in layers:
            layers["heatmap"] = self.heatmap(token, layers["heatmap_finding"], self.heatmap_methods[0])
        results["models"] = {name: ("used" if name in self.models else "not available") for name, role in self.roles.items() if "samples" not in role}
        return {"token": token, "picture": png_data_url(picture), "display": {"height": size[0], "width": size[1]},
                "results": results, "layers": layers}

    def _remember(self, token: str, entry: dict) -> None:
        self.cache[token] = entry
        while len(self.cache) > CACHE_IMAGES:
            self.cache.popitem(last=False)

    def findings(self, path: str) -> tuple[list[dict], dict]:
        """The 14 findings of the image file ``path``, most probable first, and the classifier input (for heatmaps)."""
        model = self.models["cxr14_lse_classification"]
        x = torch.as_tensor(model.prepare(path)["image"]).float()[None].to(self.device)
        logits = model.network(x)[0]
        probs = torch.as_tensor(model.postprocessing({"pred": logits})["pred"]).float().cpu().numpy().reshape(-1)
        order = np.argsort(-probs, kind="stable")
        findings = [{"label": self.labels[i], "probability": round(float(probs[i]), 4), "threshold": round(float(self.thresholds[i]), 4),
                     "positive": bool(probs[i] >= self.thresholds[i])} for i in order]
        return findings, {"x": x}

    def heatmap(self, token: str, finding: str, method: str) -> str:
        """The heatmap of ``finding`` by ``method`` for an analysed image, as an RGBA PNG data URL."""
        if token not in self.cache:
            raise ExpiredImage("this image is no longer in the server's memory; upload it again")
        if finding not in getattr(self, "labels", []):
            raise RequestError(f"unknown finding {finding!r}")
        if method not in self.heatmap_methods:
            raise RequestError(f"unknown heatmap method {method!r}; this classifier offers {self.heatmap_methods}")
        entry = self.cache[token]
        with self.lock:
            heat = self.heatmaps(entry["x"], self.labels.index(finding))[method].numpy()
        return heatmap_picture(heat, entry["size"])

    def pathology_boxes(self, path: str) -> list[dict]:
        """NIH pathology boxes above their tuned thresholds, in the file's pixels, best first."""
        from ..visualize.boxes import class_colour

        model = self.models["cxr_pathology_detection"]
        labels, thresholds = self.extras["cxr_pathology_detection"]["labels"], self.extras["cxr_pathology_detection"]["thresholds"]
        image = torch.as_tensor(model.prepare(path)["image"]).float().to(self.device)
        tta = model.get("tta_augmentation")  # None when the config disables TTA
        detections = tta(model.network, [image])[0] if tta is not None else model.network([image])[0]
        boxes = []
        for box, label, score in zip(detections["boxes"].tolist(), detections["labels"].tolist(), detections["scores"].tolist()):
            if score >= thresholds[int(label)]:
                boxes.append({"label": labels[int(label)], "score": round(float(score), 4), "box": [round(v, 1) for v in box],
                              "colour": "rgb({},{},{})".format(*class_colour(int(label)))})
        return sorted(boxes, key=lambda b: -b["score"])

    def opacity_boxes(self, path: str) -> list[dict]:
        """RSNA opacity boxes after the tuned score threshold and NMS, in the file's pixels."""
        from ..engines.rsna_detection import DetectionRecords
        from ..metrics.rsna import postprocess

        model = self.models["rsna_pneumonia_detection"]
        settings = self.extras["rsna_pneumonia_detection"]["settings"]
        item = model.prepare(path)
        image = torch.as_tensor(item["image"]).float().to(self.device)
        record = DetectionRecords().record(item, image, model.network([image])[0], None)
        kept = postprocess(record, settings["score_threshold"], settings["nms_iou"])
        name = self.extras["rsna_pneumonia_detection"]["labels"][0]
        return [{"label": name, "score": round(float(s), 4), "box": [round(float(v), 1) for v in b], "colour": "rgb(255,140,0)"}
                for b, s in zip(kept["boxes"], kept["scores"])]

    def lung_masks(self, path: str) -> np.ndarray:
        """The lung masks (C, H, W) at the network's size: left and right lung, or one merged channel."""
        model = self.models["cxr_lung_segmentation"]
        x = torch.as_tensor(model.prepare(path)["image"]).float()[None].to(self.device)
        pred = model.postprocessing({"pred": model.network(x)[0]})["pred"]
        return (torch.as_tensor(pred) > 0.5).cpu().numpy()

    # ---- generators ----------------------------------------------------------------------------------------------

    def gmvae_samples(self, findings: Sequence[str], per_finding: int = 4, seed: int = 0) -> dict:
        """``per_finding`` GMVAE samples for each finding in ``findings`` ("No Finding" included), one row each."""
        from ..networks.gmvae import LatentSamples, finding_requests
        from ..visualize.gmvae import mosaic

        model = self.models["cxr14_gmvae"]
        per_finding = int(per_finding)
        if not 1 <= per_finding <= MAX_SAMPLES:
            raise RequestError(f"samples per finding must be between 1 and {MAX_SAMPLES}")
        labels = self.extras["cxr14_gmvae"]["labels"]
        unknown = [f for f in findings if f != "No Finding" and f not in labels]
        if unknown:
            raise RequestError(f"unknown findings {unknown}")
        if len(findings) > len(labels) + 1:
            raise RequestError(f"at most {len(labels) + 1} findings at a time")
        requests = finding_requests(labels, list(dict.fromkeys(findings)) or ["No Finding"])
        network = model.network
        rows = [("finding", name, y, None, per_finding) for name, y in requests.items()]
        latents = LatentSamples(network, rows, seed=int(seed))
        items = [latents[i] for i in range(len(latents))]
        with self.lock, torch.no_grad():
            z = torch.stack([it["image"] for it in items]).to(self.device)
            y = torch.stack([it["label"] for it in items]).to(self.device)
            images = network(z, y if network.conditional else None).float().cpu()
        grid = mosaic([images[k * per_finding:(k + 1) * per_finding] for k in range(len(rows))])
        return {"rows": list(requests), "conditional": bool(network.conditional),
                "grid": png_data_url(np.round(grid * 255).astype(np.uint8)), "tile": int(images.shape[-1])}

    def dcgan_samples(self, count: int = 16, seed: int = 0) -> dict:
        """``count`` DCGAN samples (lung-window CT slices) in one grid."""
        from ..metrics.gan_evaluation import latent_items
        from ..visualize.gan import image_grid

        model = self.models["lung_ct_dcgan"]
        count = int(count)
        if not 1 <= count <= 4 * MAX_SAMPLES:
            raise RequestError(f"the number of samples must be between 1 and {4 * MAX_SAMPLES}")
        z = torch.stack([it["image"] for it in latent_items(count, model.network.latent_size, int(seed))])
        with self.lock, torch.no_grad():
            images = model.network(z.to(self.device)).float().cpu()
        return {"grid": png_data_url(image_grid(images, (-1.0, 1.0))), "count": count, "tile": int(images.shape[-1])}
