"""Inference output of a single-label classifier with one class of interest: probabilities, decision, Grad-CAM.

For each image: the softmax probability of every class, the decision "positive" when the probability of the
positive class reaches its threshold (the one evaluation chose on validation, from ``thresholds.json``, else
``default_threshold``), and a Grad-CAM overlay of the positive class on the image as stored. At the end,
``predictions.csv`` / ``predictions.json`` and a grid of the first overlays (``grid_name``) in ``output_dir``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..data.io import read_image
from ..metrics.report import read_thresholds, write_json
from .cam import ClassHeatmaps
from .explain import unique_stem
from .masks import _batch_items, example_grid
from .overlay import overlay

logger = logging.getLogger(__name__)


class ClassPredictionWriter:
    """Ignite handler for inference (reads the decollated ``image``, ``image_path`` and ``pred`` probabilities).

    Args:
        output_dir: where ``predictions.csv``, ``predictions.json``, ``overlays/`` and the grid go.
        classes: class names in the order of the network's outputs.
        positive_class: the class whose probability decides and whose Grad-CAM is drawn.
        network: the classifier (Grad-CAM hooks ``layer``).
        layer: Grad-CAM target layer name; ``None`` writes no overlays.
        thresholds_file: ``thresholds.json`` written by evaluation; missing -> ``default_threshold``.
        overlays: at most this many overlays (``None``: one per image).
        grid: how many of the overlays go into the grid picture (0: none).
    """

    def __init__(
        self,
        output_dir: str,
        classes: Sequence[str],
        positive_class: str,
        network: nn.Module,
        layer: str | None,
        thresholds_file: str | None = None,
        default_threshold: float = 0.5,
        overlays: int | None = None,
        grid: int = 8,
        grid_name: str = "04_gradcam_examples.png",
    ):
        self.output_dir = output_dir
        self.classes = list(classes)
        if positive_class not in self.classes:
            raise ValueError(f"positive class {positive_class!r} is not one of {self.classes}")
        self.positive = self.classes.index(positive_class)
        self.threshold = float(read_thresholds(thresholds_file, [positive_class], default_threshold)[0])
        self.heatmaps = ClassHeatmaps(network, layer=layer, methods=("gradcam",)) if layer else None
        self.overlays, self.grid, self.grid_name = overlays, int(grid), grid_name
        self.records: list[dict] = []
        self._pictures: list = []
        self._stems: set[str] = set()

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _: self._reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def _reset(self) -> None:
        self.records.clear()
        self._pictures.clear()
        self._stems.clear()

    def iteration_completed(self, engine) -> None:
        for item, out in _batch_items(engine):
            self.records.append(self.explain(item["image"], item["image_path"], out["pred"], engine.state.device))

    def explain(self, image, path: str, probabilities, device) -> dict:
        probs = torch.as_tensor(probabilities).detach().float().cpu().numpy().reshape(-1)
        if probs.size != len(self.classes):
            raise ValueError(f"{path}: network gives {probs.size} outputs for {len(self.classes)} classes")
        p = float(probs[self.positive])
        record = {
            "image": path,
            "probabilities": {name: float(v) for name, v in zip(self.classes, probs)},
            "most_probable": self.classes[int(np.argmax(probs))],
            "positive": p >= self.threshold,
        }
        if self.heatmaps is None or (self.overlays is not None and len(self.records) >= self.overlays):
            return record
        x = torch.as_tensor(image)[None].float().to(device)
        heat = self.heatmaps(x, self.positive)["gradcam"]
        original = read_image(path)
        big_heat = torch.nn.functional.interpolate(heat[None, None], size=original.shape, mode="bilinear", align_corners=False)[0, 0]
        verdict = "positive" if record["positive"] else "negative"
        picture = overlay(original, big_heat.numpy(), text=f"{p:.3f} {verdict}")
        name = os.path.join("overlays", f"{unique_stem(path, self._stems)}_gradcam.png")
        os.makedirs(os.path.join(self.output_dir, "overlays"), exist_ok=True)
        picture.save(os.path.join(self.output_dir, name))
        record["overlay"] = name
        if len(self._pictures) < self.grid:
            self._pictures.append(picture)
        return record

    def completed(self, engine) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        positive_name = self.classes[self.positive]
        write_json(
            os.path.join(self.output_dir, "predictions.json"),
            {"classes": self.classes, "positive_class": positive_name, "threshold": self.threshold, "images": self.records},
        )
        with open(os.path.join(self.output_dir, "predictions.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image"] + self.classes + [f"{positive_name} (threshold {self.threshold:.4f})"])
            for r in self.records:
                writer.writerow([r["image"]] + [f"{r['probabilities'][n]:.6f}" for n in self.classes] + [int(r["positive"])])
        if self._pictures:
            example_grid(self._pictures, os.path.join(self.output_dir, self.grid_name))
        logger.info("wrote predictions for %d images to %s", len(self.records), self.output_dir)
