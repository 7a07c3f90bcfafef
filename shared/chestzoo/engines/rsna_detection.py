"""Evaluation and inference outputs of the RSNA lung-opacity detector.

- :class:`DetectionRecords` (ignite handler) keeps, per evaluated image, its file, patientId, stored size, the
  detector's boxes and scores and the ground-truth boxes, all in pixels of the file as stored (the network may have
  seen a resized copy: ``original_size`` in the item says by how much);
- :func:`write_evaluation` chooses the score threshold and NMS IoU on validation with the challenge metric, saves
  them (``postprocessing.json``, read by inference) and reports on test: the RSNA score, mAP@0.5 and the image-level
  AUROC of the best box score, in ``metrics.json`` with pictures;
- :class:`DetectionWriter` (ignite handler, inference) applies the saved post-processing and writes
  ``predictions.json`` (boxes, scores, masks as COCO run-length encoding), one overlay PNG per image and the
  challenge's ``submission.csv``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics.bootstrap import bootstrap_interval
from ..metrics.classification import auroc
from ..metrics.detection import detection_intervals, match_detections, mean_average_precision
from ..metrics.rsna import NMS_IOUS, SCORE_THRESHOLDS, nms, postprocess, rsna_score, tune_postprocessing, write_submission

logger = logging.getLogger(__name__)

POSTPROCESSING_FILE = "postprocessing.json"
_SUFFIXES = (".nii.gz", ".dcm", ".dicom", ".png", ".jpg", ".jpeg")


def _numpy(value) -> np.ndarray:
    if hasattr(value, "as_tensor"):
        value = value.as_tensor()
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def patient_id(path: str) -> str:
    """The RSNA patientId of an image file: its name without the extension."""
    name = os.path.basename(os.fspath(path))
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def _items(batch) -> list[Mapping]:
    return [batch] if isinstance(batch, Mapping) else list(batch)


class DetectionRecords:
    """Ignite handler keeping every evaluated image's detections in pixels of its file, in order.

    Each record: ``image`` (path), ``patientId``, ``size`` ``[H, W]`` of the file, ``boxes`` ``(N, 4)``, ``scores``
    ``(N,)`` and, for items with boxes, ``truth`` ``(M, 4)``. With ``keep_masks`` the detector's mask probabilities
    (at the network's resolution) are kept as ``masks``. Boxes are scaled by file size / network input size, read from
    the item's ``size_key`` (the item's own image size when absent).
    """

    def __init__(self, keep_masks: bool = False, size_key: str = "original_size"):
        self.keep_masks, self.size_key = bool(keep_masks), size_key
        self.records: list[dict] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def reset(self, engine=None) -> None:
        self.records = []

    def __call__(self, engine) -> None:
        output = engine.state.output
        items = _items(engine.state.batch)
        targets = output.get("label") or [None] * len(items)
        for item, image, prediction, target in zip(items, output["image"], output["pred"], targets):
            self.records.append(self.record(item, image, prediction, target))

    def record(self, item: Mapping, image, prediction: Mapping, target: Mapping | None) -> dict:
        net_h, net_w = (int(s) for s in image.shape[-2:])
        size = item.get(self.size_key)
        height, width = (int(s) for s in _numpy(size).reshape(-1)[:2]) if size is not None else (net_h, net_w)
        scale = np.asarray([width / net_w, height / net_h] * 2)
        path = item.get("image_path", item.get("image"))
        path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path)
        out = {
            "image": path,
            "patientId": patient_id(path),
            "size": [height, width],
            "boxes": _numpy(prediction["boxes"]).astype(np.float64).reshape(-1, 4) * scale,
            "scores": _numpy(prediction["scores"]).astype(np.float64).reshape(-1),
        }
        if target is not None:
            out["truth"] = _numpy(target["boxes"]).astype(np.float64).reshape(-1, 4) * scale
        if self.keep_masks and "masks" in prediction:
            out["masks"] = torch.as_tensor(_numpy(prediction["masks"]), dtype=torch.float32)
        return out


def read_postprocessing(path: str | None, score_threshold: float = 0.5, nms_iou: float = 0.3) -> dict:
    """The settings evaluation saved (``score_threshold``, ``nms_iou``), or the given defaults with a warning."""
    if path and os.path.isfile(path):
        with open(path) as f:
            settings = json.load(f)
        return {"score_threshold": float(settings["score_threshold"]), "nms_iou": float(settings["nms_iou"]), "source": path}
    logger.warning("no %s found (run evaluate.json first); using score threshold %.2f and NMS IoU %.2f",
                   path or POSTPROCESSING_FILE, score_threshold, nms_iou)
    return {"score_threshold": float(score_threshold), "nms_iou": float(nms_iou), "source": None}


def _targets(records: Sequence[dict]) -> list[dict]:
    missing = [r["image"] for r in records if "truth" not in r]
    if missing:
        raise ValueError(f"{len(missing)} evaluated image(s) have no ground-truth boxes, e.g. {missing[0]}")
    return [{"boxes": r["truth"]} for r in records]


def _float(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def write_evaluation(
    validation: Sequence[dict],
    test: Sequence[dict],
    output_dir: str,
    settings_paths: Sequence[str] = (),
    class_names: Sequence[str] = ("Lung Opacity",),
    score_thresholds: Sequence[float] = SCORE_THRESHOLDS,
    nms_ious: Sequence[float] = NMS_IOUS,
    examples: int = 8,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Tune the post-processing on ``validation`` records, report on ``test`` records (see the module doc).

    Writes ``metrics.json`` (``summary``: "RSNA score", "mAP@0.5", "image AUROC"; ``summary_ci95`` and
    ``test.ci95``: their bootstrap 95% intervals), ``postprocessing.json`` into ``output_dir`` and every path of
    ``settings_paths``, and the pictures ``01_test_examples.png``, ``02_rsna_by_iou.png``,
    ``03_validation_tuning.png``. Returns the content of ``metrics.json``. The bootstrap resamples images: RSNA
    gives every radiograph its own patientId, with no link between films of one patient.
    """
    if not validation or not test:
        raise ValueError(f"need validation and test images, got {len(validation)} and {len(test)}")
    val_targets, test_targets = _targets(validation), _targets(test)
    tuned = tune_postprocessing(validation, val_targets, score_thresholds, nms_ious)
    settings = {
        "score_threshold": tuned["score_threshold"],
        "nms_iou": tuned["nms_iou"],
        "criterion": "RSNA challenge score on the validation split",
        "validation_score": tuned["score"],
    }
    kept = [postprocess(r, tuned["score_threshold"], tuned["nms_iou"]) for r in test]
    result = rsna_score(kept, test_targets)
    suppressed = [nms({"boxes": r["boxes"], "scores": r["scores"]}, tuned["nms_iou"]) for r in test]
    labelled = [{**p, "labels": np.zeros(len(p["boxes"]), dtype=np.int64)} for p in suppressed]
    truth = [{"boxes": t["boxes"], "labels": np.zeros(len(t["boxes"]), dtype=np.int64)} for t in test_targets]
    ap = mean_average_precision(labelled, truth, list(class_names)[:1], iou_threshold=0.5)
    image_scores = np.asarray([float(p["scores"].max()) if len(p["scores"]) else 0.0 for p in suppressed])
    has_opacity = np.asarray([1.0 if len(t["boxes"]) else 0.0 for t in test_targets])
    image_auroc = auroc(image_scores, has_opacity)
    per_image = np.asarray([np.nan if v is None else v for v in result["image_scores"]], dtype=np.float64)

    def score_and_auroc(scores, opacity, challenge):  # the challenge score leaves out images without truth or boxes
        counted = challenge[~np.isnan(challenge)]
        return {"RSNA score": float(counted.mean()) if counted.size else None, "image AUROC": auroc(scores, opacity)}

    ci = bootstrap_interval(score_and_auroc, image_scores, has_opacity, per_image, n_resamples=n_resamples, seed=seed)
    # the same seed and image count draw the same resamples as above
    ci["mAP@0.5"] = detection_intervals(match_detections(labelled, truth, 1), list(class_names)[:1],
                                        n_resamples=n_resamples, seed=seed)["mAP"]
    val_result = rsna_score([postprocess(r, tuned["score_threshold"], tuned["nms_iou"]) for r in validation], val_targets)
    metrics = {
        "summary": {"RSNA score": _float(result["score"]), "mAP@0.5": _float(ap["mAP"]), "image AUROC": _float(image_auroc)},
        "summary_ci95": {k: ci[k] for k in ("RSNA score", "mAP@0.5", "image AUROC")},
        "postprocessing": settings,
        "validation": {"images": len(validation), "rsna": _without_images(val_result), "tuning": tuned["table"]},
        "test": {
            "images": len(test),
            "with_opacity": int(has_opacity.sum()),
            "rsna": _without_images(result),
            "mAP@0.5": _float(ap["mAP"]),
            "image_auroc": _float(image_auroc),
            "image_score": "highest box score after NMS (0 without boxes)",
            "ci95": {"rsna_score": ci["RSNA score"], "mAP@0.5": ci["mAP@0.5"], "image_auroc": ci["image AUROC"]},
            "per_image": [
                {"patientId": r["patientId"], "score": s, "boxes": len(k["boxes"]), "truth": len(t["boxes"])}
                for r, s, k, t in zip(test, result["image_scores"], kept, test_targets)
            ],
        },
    }
    os.makedirs(output_dir, exist_ok=True)
    _write_json(os.path.join(output_dir, "metrics.json"), metrics)
    for path in dict.fromkeys([os.path.join(output_dir, POSTPROCESSING_FILE), *settings_paths]):
        _write_json(path, settings)
    _plot_examples(test, kept, os.path.join(output_dir, "01_test_examples.png"), class_names, examples)
    _plot_by_iou(result, os.path.join(output_dir, "02_rsna_by_iou.png"))
    _plot_tuning(tuned, os.path.join(output_dir, "03_validation_tuning.png"))
    logger.info("test RSNA score %.4f over %d images (%d left out), mAP@0.5 %.4f, image AUROC %s; score threshold %.2f, NMS IoU %.2f",
                result["score"], result["images"], result["left_out"], ap["mAP"], image_auroc, tuned["score_threshold"], tuned["nms_iou"])
    return metrics


def _without_images(result: dict) -> dict:
    return {k: (_float(v) if k == "score" else v) for k, v in result.items() if k != "image_scores"}


def _write_json(path: str, payload) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    return path


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_examples(records, kept, path: str, class_names, count: int) -> None:
    """Test images with ground truth (white) and the kept detections: opacity images first, then a few without."""
    from ..data.io import read_image
    from ..visualize.boxes import draw_detections, grid

    if count <= 0:
        return
    positives = [k for k, r in enumerate(records) if len(r["truth"])]
    negatives = [k for k, r in enumerate(records) if not len(r["truth"])]
    n_neg = min(len(negatives), max(1, count // 4)) if negatives else 0
    chosen = positives[: count - n_neg] + negatives[:n_neg]
    chosen += [k for k in range(len(records)) if k not in chosen][: count - len(chosen)]
    pictures = []
    for k in chosen:
        record, prediction = records[k], kept[k]
        pictures.append(draw_detections(
            read_image(record["image"]), prediction["boxes"], np.zeros(len(prediction["boxes"]), dtype=int), prediction["scores"],
            class_names=list(class_names), truth_boxes=record["truth"], truth_labels=np.zeros(len(record["truth"]), dtype=int),
            title=record["patientId"][:13], upscale_to=256,
        ))
    grid(pictures, columns=4).save(path)


def _plot_by_iou(result: dict, path: str) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.bar([f"{t:.2f}" for t in result["iou_thresholds"]], result["per_threshold"], color="tab:blue")
    ax.set(ylim=(0, 1), xlabel="IoU threshold", ylabel="mean TP / (TP + FP + FN)",
           title=f"test: RSNA score {result['score']:.3f} over {result['images']} images")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_tuning(tuned: dict, path: str) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for iou in sorted({r["nms_iou"] for r in tuned["table"]}):
        rows = [r for r in tuned["table"] if r["nms_iou"] == iou]
        ax.plot([r["score_threshold"] for r in rows], [r["score"] if r["score"] is not None else np.nan for r in rows],
                marker=".", label=f"NMS IoU {iou:g}")
    ax.axvline(tuned["score_threshold"], color="grey", ls="--", lw=1)
    ax.set(ylim=(0, 1), xlabel="score threshold", ylabel="RSNA score (validation)",
           title=f"chosen: score >= {tuned['score_threshold']:.2f}, NMS IoU {tuned['nms_iou']:g}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- inference ----------------------------------------------------------------------------------------------------


def encode_mask(mask: np.ndarray) -> dict:
    """COCO run-length encoding of a binary ``(H, W)`` mask, JSON-able (``counts`` as text)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: Mapping) -> np.ndarray:
    """The binary ``(H, W)`` mask of :func:`encode_mask`'s output."""
    import warnings

    from pycocotools import mask as mask_utils

    with warnings.catch_warnings():  # pycocotools' own array wrapper predates NumPy 2's copy keyword; the result is fine
        warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword", category=DeprecationWarning)
        return mask_utils.decode({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}).astype(bool)


def masks_to_file_size(masks, height: int, width: int, threshold: float = 0.5) -> np.ndarray:
    """``(N, H, W)`` bool masks from the detector's ``(N, 1, h, w)`` probabilities, resized to the file's size."""
    m = torch.as_tensor(masks, dtype=torch.float32)
    if m.ndim == 3:
        m = m[:, None]
    if m.shape[0] == 0:
        return np.zeros((0, height, width), dtype=bool)
    if tuple(m.shape[-2:]) != (height, width):
        m = F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)
    return (m[:, 0] >= threshold).numpy()


class DetectionWriter:
    """Ignite handler for inference: post-process (saved NMS and score threshold), then write the outputs.

    ``predictions.json`` lists per image the file, patientId, size, and the kept detections (``boxes`` as
    ``[x_min, y_min, x_max, y_max]`` pixels of the file, ``scores``, ``masks`` in COCO RLE, ``overlay``);
    ``submission.csv`` is the challenge's ``patientId,PredictionString`` file; overlays go to ``overlays/`` (the
    first ``overlays`` images, all when None), and the first ``grid`` of them into ``01_inference_overlays.png``.
    """

    def __init__(self, output_dir: str, settings_file: str | None = None, score_threshold: float = 0.5, nms_iou: float = 0.3,
                 class_names: Sequence[str] = ("Lung Opacity",), overlays: int | None = None, mask_threshold: float = 0.5,
                 grid: int = 8, size_key: str = "original_size"):
        self.output_dir = output_dir
        self.settings = read_postprocessing(settings_file, score_threshold, nms_iou)
        self.class_names = list(class_names)
        self.overlays = overlays
        self.mask_threshold = float(mask_threshold)
        self.grid = int(grid)
        self.recorder = DetectionRecords(keep_masks=True, size_key=size_key)
        self.images: list[dict] = []
        self._pictures: list = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine=None) -> None:
        self.images, self._pictures = [], []

    def iteration_completed(self, engine) -> None:
        output = engine.state.output
        for item, image, prediction in zip(_items(engine.state.batch), output["image"], output["pred"]):
            self.images.append(self.write(self.recorder.record(item, image, prediction, None)))

    def write(self, record: dict) -> dict:
        from ..data.io import read_image
        from ..visualize.boxes import draw_detections

        kept = postprocess(record, self.settings["score_threshold"], self.settings["nms_iou"])
        height, width = record["size"]
        masks = masks_to_file_size(kept["masks"], height, width, self.mask_threshold) if "masks" in kept else np.zeros((0, height, width), bool)
        out = {
            "image": record["image"],
            "patientId": record["patientId"],
            "size": [height, width],
            "boxes": [[round(float(v), 1) for v in box] for box in kept["boxes"]],
            "scores": [round(float(s), 4) for s in kept["scores"]],
            "masks": [encode_mask(m) for m in masks],
        }
        if self.overlays is None or len(self.images) < int(self.overlays):
            picture = draw_detections(read_image(record["image"]), kept["boxes"], np.zeros(len(kept["boxes"]), dtype=int), kept["scores"],
                                      class_names=self.class_names, upscale_to=256)
            picture = _tint(picture, masks)
            path = os.path.join(self.output_dir, "overlays", f"{record['patientId']}.png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            picture.save(path)
            out["overlay"] = os.path.relpath(path, self.output_dir)
            if len(self._pictures) < self.grid:
                self._pictures.append(picture)
        return out

    def completed(self, engine=None) -> None:
        from ..visualize.boxes import grid

        os.makedirs(self.output_dir, exist_ok=True)
        payload = {
            "classes": self.class_names,
            "score_threshold": self.settings["score_threshold"],
            "nms_iou": self.settings["nms_iou"],
            "postprocessing_file": self.settings["source"],
            "box_format": "[x_min, y_min, x_max, y_max] in pixels of the image file",
            "mask_format": "COCO run-length encoding (pycocotools), in pixels of the image file",
            "images": self.images,
        }
        _write_json(os.path.join(self.output_dir, "predictions.json"), payload)
        write_submission(os.path.join(self.output_dir, "submission.csv"),
                         [(r["patientId"], r["boxes"], r["scores"]) for r in self.images])
        if self._pictures:
            grid(self._pictures, columns=4).save(os.path.join(self.output_dir, "01_inference_overlays.png"))
        logger.info("wrote detections of %d images (%d with opacity) to %s", len(self.images),
                    sum(1 for r in self.images if r["boxes"]), self.output_dir)


def _tint(picture, masks: np.ndarray, colour=(255, 140, 0), alpha: float = 0.35):
    """Blend the union of ``masks`` (file pixels) into ``picture`` (possibly enlarged by an integer factor)."""
    from PIL import Image

    if not len(masks):
        return picture
    union = masks.any(axis=0)
    rgb = np.asarray(picture, dtype=np.float32)
    if union.shape != rgb.shape[:2]:
        union = np.asarray(Image.fromarray(union.astype(np.uint8) * 255).resize(picture.size, Image.NEAREST)) > 0
    rgb[union] = (1 - alpha) * rgb[union] + alpha * np.asarray(colour, dtype=np.float32)
    return Image.fromarray(rgb.astype(np.uint8))
