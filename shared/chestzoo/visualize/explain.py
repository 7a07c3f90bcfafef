"""Explaining a multi-label classifier: localisation accuracy against ground-truth boxes, and inference outputs.

Both work at the network's input resolution and map boxes back to the pixels of the image as stored, so they agree
with the datalists' ``box`` coordinates.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.data import decollate_batch
from torch import nn

from ..data.errors import DataError
from ..data.io import PIL_SUFFIXES, read_image
from ..metrics.localization import IOBB_THRESHOLDS, boxes_from_heatmap, localization_accuracy, scale_boxes
from ..metrics.report import read_thresholds, write_json
from .cam import HEATMAP_METHODS, ClassHeatmaps
from .overlay import write_overlay

logger = logging.getLogger(__name__)


INFERENCE_SUFFIXES = tuple(sorted(set(PIL_SUFFIXES) | {".dcm", ".dicom"}))


def list_images(source) -> list[str]:
    """The images to run inference on: a folder (searched recursively for PNG, JPEG, TIFF, BMP and DICOM files by
    suffix), one image file, or a list of image files. Raises a :class:`DataError` naming the source when empty."""
    if isinstance(source, (list, tuple)):
        files = [os.fspath(f) for f in source]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise DataError(missing[0], "image file not found")
    elif os.path.isdir(source):
        files = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(source)
            for name in names
            if name.lower().endswith(INFERENCE_SUFFIXES)
        )
    elif os.path.isfile(source):
        files = [os.fspath(source)]
    else:
        raise DataError(source, "no such folder or image file")
    if not files:
        raise DataError(os.fspath(source) if not isinstance(source, (list, tuple)) else "<list>", f"no images found (looked for {', '.join(INFERENCE_SUFFIXES)})")
    return files


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".nii.gz", ".png", ".jpg", ".jpeg", ".dcm", ".dicom"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0] or name


def unique_stem(path: str, taken: set[str]) -> str:
    """The file's stem, numbered (``_2``, ``_3``...) when an earlier file of the run took it, and recorded in ``taken``:
    two inputs named alike in different folders must not overwrite each other's pictures."""
    stem = candidate = _stem(path)
    n = 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}_{n}"
    taken.add(candidate)
    return candidate


def localization_report(
    network: nn.Module,
    items: Sequence[dict],
    preprocessing: Callable,
    labels: Sequence[str],
    box_classes: Sequence[str],
    device,
    output_dir: str,
    methods: Sequence[str] = HEATMAP_METHODS,
    layer: str = "transition",
    threshold: float = 0.5,
    iobb_thresholds: Sequence[float] = IOBB_THRESHOLDS,
    overlays: int = 8,
) -> dict:
    """IoBB localisation accuracy of each heatmap method on the ``items`` that have ground-truth boxes.

    For every boxed (image, class) pair whose class the network predicts, the class heatmap is thresholded at
    ``threshold`` (of its min-max range) and every connected region gives a predicted box. Writes
    ``localization.json`` and ``localization.csv`` into ``output_dir``, plus up to ``overlays`` example PNGs under
    ``output_dir/localization/``; returns ``{method: localization_accuracy(...)}`` (empty when no item has boxes).
    """
    labels = list(labels)
    heatmaps = ClassHeatmaps(network, layer=layer, methods=methods)
    cases: dict[str, list[dict]] = defaultdict(list)
    drawn = 0  # (image, class) pairs drawn so far
    boxed = [item for item in items if item.get("box")]
    for item in boxed:
        truth_by_class: dict[str, list] = defaultdict(list)
        for box, index in zip(item["box"], item["box_label"]):
            truth_by_class[box_classes[int(index)]].append([float(v) for v in box])
        data = preprocessing(dict(item))
        image = torch.as_tensor(data["image"])[None].float().to(device)
        original = read_image(item["image"]).shape
        for name, truth in truth_by_class.items():
            if name not in labels:
                continue
            maps = heatmaps(image, labels.index(name))
            draw = drawn < overlays
            drawn += draw
            for method, heat in maps.items():
                heat_np = heat.numpy()
                predicted = scale_boxes(boxes_from_heatmap(heat_np, threshold), heat_np.shape, original)
                cases[method].append({"label": name, "truth": truth, "predicted": predicted})
                if draw:
                    stem = _stem(item["image"])
                    write_overlay(
                        os.path.join(output_dir, "localization", f"{stem}_{name}_{method}.png"),
                        image[0, 0].cpu().numpy(),
                        heat_np,
                        boxes=scale_boxes(predicted, original, heat_np.shape),
                        truth=scale_boxes(truth, original, heat_np.shape),
                        text=f"{name} ({method})",
                    )
    report = {method: localization_accuracy(c, iobb_thresholds) for method, c in cases.items()}
    payload = {"images": len(boxed), "heatmap_threshold": threshold, "methods": report}
    write_json(os.path.join(output_dir, "localization.json"), payload)
    with open(os.path.join(output_dir, "localization.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "label", "boxes"] + [f"acc@{t:g}" for t in iobb_thresholds] + [f"afp@{t:g}" for t in iobb_thresholds])
        for method, result in report.items():
            for name, row in list(result["per_class"].items()) + [("all", result["overall"])]:
                writer.writerow([method, name, row["n"]] + [f"{a:.4f}" for a in row["accuracy"]] + [f"{a:.4f}" for a in row["afp"]])
    logger.info("localisation on %d boxed test images: %s", len(boxed), {m: r["overall"]["accuracy"] for m, r in report.items()})
    return report


class FindingsWriter:
    """Ignite handler for inference: per-image probabilities (CSV and JSON) and heatmap overlays of the findings.

    After every iteration it reads the decollated ``image``, ``image_path`` and ``pred`` (probabilities) of the
    batch; each label at or above its threshold (``thresholds_file`` from evaluation if it exists, else
    ``default_threshold``) gets one overlay PNG per heatmap method with the boxes drawn from that heatmap.
    When the run completes it writes ``predictions.csv`` and ``predictions.json`` into ``output_dir``.
    """

    def __init__(
        self,
        output_dir: str,
        labels: Sequence[str],
        network: nn.Module,
        thresholds_file: str | None = None,
        default_threshold: float = 0.5,
        methods: Sequence[str] = HEATMAP_METHODS,
        layer: str = "transition",
        heatmap_threshold: float = 0.5,
    ):
        self.output_dir = output_dir
        self.labels = list(labels)
        self.thresholds = read_thresholds(thresholds_file, self.labels, default_threshold)
        self.heatmaps = ClassHeatmaps(network, layer=layer, methods=methods) if methods else None
        self.heatmap_threshold = heatmap_threshold
        self.records: list[dict] = []
        self._stems: set[str] = set()

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine) -> None:
        self.records.clear()
        self._stems.clear()

    def iteration_completed(self, engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        batch = decollate_batch(batch) if isinstance(batch, dict) else batch
        output = decollate_batch(output) if isinstance(output, dict) else output
        for item, out in zip(batch, output):
            self.records.append(self.explain(item["image"], item["image_path"], out["pred"], engine.state.device))

    def explain(self, image: torch.Tensor, path: str, probabilities: torch.Tensor, device) -> dict:
        probs = torch.as_tensor(probabilities).detach().float().cpu().numpy().reshape(-1)
        if probs.size != len(self.labels):
            raise ValueError(f"{path}: network gives {probs.size} outputs for {len(self.labels)} labels")
        record = {"image": path, "probabilities": {n: float(p) for n, p in zip(self.labels, probs)}, "findings": []}
        found = [i for i in np.argsort(-probs) if probs[i] >= self.thresholds[i]]
        if not found:
            return record
        stem = unique_stem(path, self._stems)
        x = torch.as_tensor(image)[None].float().to(device)
        original = read_image(path)
        for i in found:
            finding = {"label": self.labels[i], "probability": float(probs[i]), "threshold": float(self.thresholds[i]), "boxes": {}, "overlays": {}}
            for method, heat in (self.heatmaps(x, int(i)) if self.heatmaps else {}).items():
                heat_np = heat.numpy()
                boxes = scale_boxes(boxes_from_heatmap(heat_np, self.heatmap_threshold, max_boxes=1), heat_np.shape, original.shape)
                big_heat = torch.nn.functional.interpolate(heat[None, None], size=original.shape, mode="bilinear", align_corners=False)[0, 0]
                name = f"{stem}_{self.labels[i]}_{method}.png"
                write_overlay(
                    os.path.join(self.output_dir, "overlays", name),
                    original,
                    big_heat.numpy(),
                    boxes=boxes,
                    text=f"{self.labels[i]} {probs[i]:.2f} ({method})",
                )
                finding["boxes"][method] = boxes[0] if boxes else None
                finding["overlays"][method] = os.path.join("overlays", name)
            record["findings"].append(finding)
        return record

    def completed(self, engine) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        write_json(os.path.join(self.output_dir, "predictions.json"), {"labels": self.labels, "thresholds": [float(t) for t in self.thresholds], "images": self.records})
        with open(os.path.join(self.output_dir, "predictions.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image"] + self.labels + ["findings"])
            for r in self.records:
                writer.writerow([r["image"]] + [f"{r['probabilities'][n]:.6f}" for n in self.labels] + [";".join(x["label"] for x in r["findings"])])
        logger.info("wrote predictions for %d images to %s", len(self.records), self.output_dir)
