"""``chestzoo compare``: the three RSNA pneumonia models side by side on the same test images.

"Pneumonia Detection from Chest Radiographs" compared three networks; chestzoo has each as a bundle:

| model | bundle | predicts |
|---|---|---|
| VGG16 | ``rsna_pneumonia_classification`` | P(Lung Opacity) per image |
| U-Net | ``cxr_lung_segmentation`` | the lung fields |
| Mask R-CNN | ``rsna_pneumonia_detection`` | opacity boxes (and masks) with scores |

Each model is rebuilt from its bundle's ``inference.json`` (network, preprocessing, post-processing) with its
trained ``model.pt`` and run on the test split of one RSNA datalist. The report gives, per model:

- **image-level pneumonia AUROC** against the RSNA Target: the classifier's probability of "Lung Opacity"; the
  detector's best box score after its NMS (0 without boxes). The U-Net is a lung segmenter and has no pneumonia
  output; any image score made from it (say, brightness inside the predicted lungs) would be a hand-made heuristic,
  not the model, so its AUROC cell stays empty;
- **localisation**, for the two that localise: the detector's RSNA challenge score and mAP@0.5 on these images,
  with the score threshold and NMS chosen on validation by its evaluation; the U-Net's lung Dice on the test split
  of a lung-mask datalist (RSNA has no lung masks), when one is given. On the RSNA images the report adds how much of
  the detector's kept box area lies inside the U-Net's lungs, a plausibility check of the two together;
- **inference time per image**: batch of one, preprocessing excluded, the forward pass and the bundle's own
  post-processing included, median over the images after one warm-up, on the given device and thread count.

The checkpoints come from ``bundles/<name>/models`` unless given; ``settings`` names the overrides the models were
trained with ("demo" and "test" take them from :data:`chestzoo.bundle_runs.BUNDLE_RUNS`), since a network must be
rebuilt with the same shape as the one that was trained.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .bundle_model import BUNDLES_DIR, SETTINGS, BundleModel, settings_overrides  # noqa: F401 - SETTINGS re-exported
from .data import DataError, load_datalist, read_mask
from .metrics.bootstrap import bootstrap_interval, format_interval, patient_ids

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # as in the report
    bundle: str
    kind: str  # "classifier", "segmenter" or "detector"
    output: str  # what the model predicts, for the report


MODELS = (
    ModelSpec("VGG16", "rsna_pneumonia_classification", "classifier", "P(Lung Opacity) per image"),
    ModelSpec("U-Net", "cxr_lung_segmentation", "segmenter", "lung fields"),
    ModelSpec("Mask R-CNN", "rsna_pneumonia_detection", "detector", "opacity boxes and masks with scores"),
)


class LoadedModel(BundleModel):
    """A bundle's network with its trained weights, preprocessing and post-processing (from ``inference.json``)."""

    def __init__(self, spec: ModelSpec, bundle_dir: Path, ckpt_dir: Path, overrides: Mapping, device: torch.device):
        super().__init__(bundle_dir, ckpt_dir, overrides, device)
        self.spec = spec
        parser = self.parser
        if spec.kind == "classifier":
            self.classes = list(parser.get_parsed_content("classes"))
            self.positive = self.classes.index(parser.get_parsed_content("positive_class"))
        if spec.kind == "detector":
            from .engines.rsna_detection import read_postprocessing

            self.settings = read_postprocessing(str(ckpt_dir / "postprocessing.json"),
                                                parser.get_parsed_content("score_threshold"), parser.get_parsed_content("nms_iou"))

    @torch.no_grad()
    def predict(self, item: dict):
        """The model's output for one preprocessed item, post-processed as its bundle does (timed by the caller)."""
        image = torch.as_tensor(item["image"]).float().to(self.device)
        if self.spec.kind == "detector":
            from .metrics.rsna import nms

            raw = self.network([image])[0]
            return nms({"boxes": raw["boxes"], "scores": raw["scores"]}, self.settings["nms_iou"])
        logits = self.network(image[None])
        if self.spec.kind == "classifier":
            if logits.shape[1] == 1:
                return float(torch.sigmoid(logits)[0, 0])
            return float(torch.softmax(logits, dim=1)[0, self.positive])
        pred = {"pred": logits[0]}
        if self.postprocessing is not None:
            pred = self.postprocessing(pred)
        return (torch.as_tensor(pred["pred"]) > 0.5).any(dim=0).cpu().numpy()  # the lungs, both channels merged


def _timed(model: LoadedModel, item: dict):
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.predict(item)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def _scale_boxes(boxes, item: dict) -> np.ndarray:
    """Boxes from the network's pixels to the file's (the detector's preprocessing stores ``original_size``)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if "original_size" not in item:
        return b
    h, w = (int(s) for s in np.asarray(item["original_size"]).reshape(-1)[:2])
    nh, nw = (int(s) for s in item["image"].shape[-2:])
    return b * np.asarray([w / nw, h / nh] * 2)


def _resize_nearest(mask: np.ndarray, shape) -> np.ndarray:
    from .data.box_masks import resize_mask

    return resize_mask(mask.astype(np.float32), int(shape[0]), int(shape[1]))[0] > 0.5


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2.0 * (pred & truth).sum() / total)


def lung_dice(model: LoadedModel, lung_datalist: str, max_images: int | None = None) -> dict:
    """Mean Dice of the U-Net's lungs (channels merged) against the merged lung masks of a datalist's test split."""
    items = load_datalist(lung_datalist, "test", file_keys=["image", "mask"])[:max_images]
    if not items:
        raise DataError(lung_datalist, "test split is empty")
    scores = []
    for item in items:
        truth = read_mask(item["mask"], merge=True)[0] > 0.5
        pred = model.predict(model.prepare(item["image"]))
        scores.append(_dice(_resize_nearest(pred, truth.shape), truth))
    interval = bootstrap_interval(np.mean, np.asarray(scores), groups=patient_ids(items))
    return {"dice": float(np.mean(scores)), "ci95": interval, "images": len(scores), "datalist": lung_datalist}


def run_compare(
    dataset_dir: str,
    out: str = "comparison",
    ckpt_dirs: Mapping[str, str] | None = None,
    settings: str = "none",
    overrides: Mapping[str, Mapping] | None = None,
    lung_dataset_dir: str | None = None,
    device: str | None = None,
    max_images: int | None = None,
    threads: int | None = None,
    bundles_dir: str | Path = BUNDLES_DIR,
) -> Path:
    """Compare the three models on the test split of ``dataset_dir/datalist.json``; returns the Markdown report's path.

    ``ckpt_dirs`` maps bundle names to checkpoint folders (default ``<bundles_dir>/<name>/models``); ``overrides``
    maps bundle names to extra config overrides; ``lung_dataset_dir`` holds a lung-mask datalist (e.g. the
    Montgomery set prepared by ``chestzoo prepare montgomery``) for the U-Net's Dice. ``threads`` fixes torch's CPU
    thread count for the run (on a CPU shared with other jobs, one thread gives steadier timings than several).
    """
    if threads is not None:
        previous = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        try:
            return run_compare(dataset_dir, out, ckpt_dirs, settings, overrides, lung_dataset_dir, device, max_images, None, bundles_dir)
        finally:
            torch.set_num_threads(previous)
    from .metrics.classification import auroc
    from .metrics.detection import mean_average_precision
    from .metrics.rsna import postprocess, rsna_score

    bundles_dir, out_dir = Path(bundles_dir), Path(out)
    datalist = os.path.join(dataset_dir, "datalist.json")
    items = load_datalist(datalist, "test")[:max_images]
    if not items:
        raise DataError(datalist, "test split is empty")
    torch_device = torch.device(device or ("cuda:0" if torch.cuda.is_available() else "cpu"))
    ckpt_dirs = dict(ckpt_dirs or {})
    unknown = sorted(set(ckpt_dirs) - {m.bundle for m in MODELS})
    if unknown:
        raise ValueError(f"ckpt_dirs names unknown bundles {unknown}; the models are {[m.bundle for m in MODELS]}")
    models = {}
    for spec in MODELS:
        ckpt = Path(ckpt_dirs.get(spec.bundle, bundles_dir / spec.bundle / "models"))
        logger.info("%s: %s with checkpoint %s", spec.name, spec.bundle, ckpt)
        models[spec.bundle] = LoadedModel(spec, bundles_dir / spec.bundle, ckpt, settings_overrides(spec.bundle, settings, overrides), torch_device)

    labels = np.asarray([int(item["label"]) for item in items], dtype=np.float64)
    truth_boxes = [np.asarray(item.get("box", []), dtype=np.float64).reshape(-1, 4) for item in items]
    outputs: dict[str, list] = {name: [] for name in models}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    prepared: dict[str, list[dict]] = {name: [] for name in models}
    for name, model in models.items():
        first = model.prepare(items[0]["image"])
        _timed(model, first)  # warm-up: first-call allocations do not count
        for item in items:
            sample = model.prepare(item["image"])
            result, elapsed = _timed(model, sample)
            outputs[name].append(result)
            seconds[name].append(elapsed)
            prepared[name].append({"original_size": sample.get("original_size"), "shape": tuple(sample["image"].shape)})

    vgg, unet, det = "rsna_pneumonia_classification", "cxr_lung_segmentation", "rsna_pneumonia_detection"
    detector = models[det]
    boxes = [_scale_boxes(p["boxes"], {"original_size": meta["original_size"], "image": np.zeros(meta["shape"])})
             for p, meta in zip(outputs[det], prepared[det])]
    raw = [{"boxes": b, "scores": np.asarray(p["scores"], dtype=np.float64)} for b, p in zip(boxes, outputs[det])]
    kept = [postprocess(r, detector.settings["score_threshold"], 1.0) for r in raw]
    image_scores = {
        vgg: np.asarray(outputs[vgg], dtype=np.float64),
        det: np.asarray([float(r["scores"].max()) if len(r["scores"]) else 0.0 for r in raw]),
    }
    rsna = rsna_score(kept, [{"boxes": t} for t in truth_boxes])
    zeros = lambda n: np.zeros(n, dtype=np.int64)  # noqa: E731 - one class

    def map50(predictions, truths):
        return mean_average_precision([{**r, "labels": zeros(len(r["boxes"]))} for r in predictions],
                                      [{"boxes": t, "labels": zeros(len(t))} for t in truths], ["Lung Opacity"], 0.5)["mAP"]

    ap = {"mAP": map50(raw, truth_boxes)}
    # resampled by the datalist's patients (RSNA's patientId names one image each), else by image
    groups = patient_ids(items)
    intervals = {
        "AUROC": {name: bootstrap_interval(auroc, image_scores[name], labels, groups=groups) for name in image_scores},
        "RSNA score": bootstrap_interval(lambda k, t: rsna_score(k, [{"boxes": b} for b in t])["score"], kept, truth_boxes,
                                         groups=groups),
        "mAP@0.5": bootstrap_interval(map50, raw, truth_boxes, groups=groups),
    }
    inside = _box_area_in_lungs(kept, outputs[unet], items)
    lungs = lung_dice(models[unet], os.path.join(lung_dataset_dir, "datalist.json"), max_images) if lung_dataset_dir else None

    def aur(name):
        value = auroc(image_scores[name], labels)
        return None if math.isnan(value) else value

    rows = {
        vgg: {"auroc": aur(vgg), "localisation": None, "ci95": {"auroc": intervals["AUROC"][vgg]}},
        unet: {"auroc": None, "localisation": {"lung Dice": None if lungs is None else lungs["dice"]},
               "ci95": {"lung Dice": None if lungs is None else lungs["ci95"]}},
        det: {"auroc": aur(det), "localisation": {"RSNA score": _finite(rsna["score"]), "mAP@0.5": _finite(ap["mAP"])},
              "ci95": {"auroc": intervals["AUROC"][det], "RSNA score": intervals["RSNA score"], "mAP@0.5": intervals["mAP@0.5"]}},
    }
    for name in models:
        rows[name]["ms_per_image"] = 1000.0 * float(np.median(seconds[name]))
    result = {
        "dataset": os.path.abspath(dataset_dir),
        "images": len(items),
        "with_opacity": int(labels.sum()),
        "device": str(torch_device),
        "threads": torch.get_num_threads(),
        "settings": settings,
        "detector_postprocessing": {k: detector.settings[k] for k in ("score_threshold", "nms_iou")},
        "models": {spec.bundle: {"name": spec.name, "kind": spec.kind, "output": spec.output, **rows[spec.bundle]} for spec in MODELS},
        "lung_dice": lungs,
        "detector_box_area_in_unet_lungs": inside,
        "rsna": {k: v for k, v in rsna.items() if k != "image_scores"},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "comparison.json", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    _plot_roc(image_scores, labels, {vgg: "VGG16", det: "Mask R-CNN (best box score)"}, out_dir / "01_roc.png")
    _plot_times(result, out_dir / "02_inference_time.png")
    _plot_examples(items, truth_boxes, kept, outputs[unet], image_scores[vgg], out_dir / "03_examples.png")
    report = write_report(result, out_dir / "comparison.md")
    logger.info("comparison of %d test images written to %s", len(items), report)
    return report


def _finite(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _box_area_in_lungs(kept: Sequence[dict], lungs: Sequence[np.ndarray], items: Sequence[dict]) -> float | None:
    """Share of the detector's kept box area (file pixels) inside the U-Net's lungs, over all images."""
    from .data.box_masks import box_masks
    from .data.io import read_image

    inside = total = 0
    for prediction, lung, item in zip(kept, lungs, items):
        if not len(prediction["boxes"]):
            continue
        height, width = read_image(item["image"]).shape
        union = box_masks(prediction["boxes"], height, width).any(axis=0)
        lung = _resize_nearest(lung, (height, width))
        inside += int((union & lung).sum())
        total += int(union.sum())
    return None if total == 0 else inside / total


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cell(row: Mapping, key: str, value) -> str:
    """The value with its 95% interval where the result holds one (older comparison.json files do not)."""
    interval = row.get("ci95", {}).get(key)
    return _fmt(value) if value is None or interval is None else format_interval(interval)


def write_report(result: Mapping, path: Path) -> Path:
    """The Markdown report of :func:`run_compare`'s result."""
    models = result["models"]
    lines = [
        "# Pneumonia detection: three models on the same test images",
        "",
        f"RSNA test split of `{result['dataset']}`: {result['images']} images, {result['with_opacity']} with lung opacity. "
        f"Device {result['device']}, {result['threads']} thread(s); model settings: {result['settings']}.",
        "",
        "| model | bundle | predicts | pneumonia AUROC | localisation | inference (ms / image) |",
        "|---|---|---|---|---|---|",
    ]
    for bundle, row in models.items():
        if row["kind"] == "segmenter":
            auroc_cell = "- (not a pneumonia model)"
            dice = row["localisation"]["lung Dice"]
            local = f"lung Dice {_cell(row, 'lung Dice', dice)}" if dice is not None else "- (no lung masks given)"
        elif row["kind"] == "classifier":
            auroc_cell, local = _cell(row, "auroc", row["auroc"]), "- (image level only)"
        else:
            auroc_cell = f"{_cell(row, 'auroc', row['auroc'])} (best box score)"
            loc = row["localisation"]
            local = (f"RSNA score {_cell(row, 'RSNA score', loc['RSNA score'])}, "
                     f"mAP@0.5 {_cell(row, 'mAP@0.5', loc['mAP@0.5'])}")
        lines.append(f"| {row['name']} | `{bundle}` | {row['output']} | {auroc_cell} | {local} | {row['ms_per_image']:.1f} |")
    post = result["detector_postprocessing"]
    lines += [
        "",
        "Notes:",
        "",
        "- Brackets: bootstrap 95% intervals (1,000 seeded resamples of the test images, or of the patients where the "
        "datalist names them; `ci95` in comparison.json).",
        "- AUROC: image-level, against the RSNA Target (lung opacity present). The VGG16's score is its probability of "
        "\"Lung Opacity\"; the Mask R-CNN's is its highest box score after NMS (0 without boxes).",
        "- The U-Net segments the lung fields and has no pneumonia output, so it gets no AUROC; an image score built "
        "from its masks would be a hand-made heuristic rather than the model.",
        f"- Mask R-CNN localisation uses the score threshold ({post['score_threshold']:.2f}) and NMS IoU "
        f"({post['nms_iou']:.2f}) its evaluation chose on the validation split. RSNA score: the challenge metric "
        "(mean over IoU 0.40-0.75 of TP / (TP + FP + FN), images without boxes and predictions left out).",
    ]
    if result.get("lung_dice"):
        lines.append(f"- Lung Dice: test split of `{result['lung_dice']['datalist']}` ({result['lung_dice']['images']} images; "
                     "RSNA has no lung masks).")
    if result.get("detector_box_area_in_unet_lungs") is not None:
        lines.append(f"- {100 * result['detector_box_area_in_unet_lungs']:.0f}% of the Mask R-CNN's kept box area lies inside "
                     "the U-Net's lung fields on these images.")
    lines += [
        "- Inference time: one image at a time, preprocessing excluded, forward pass and the bundle's post-processing "
        "included; median over the images after a warm-up.",
        "",
        "![ROC curves](01_roc.png)",
        "",
        "![inference time](02_inference_time.png)",
        "",
        "![examples](03_examples.png)",
        "",
    ]
    path.write_text("\n".join(lines))
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_roc(scores: Mapping[str, np.ndarray], labels: np.ndarray, names: Mapping[str, str], path: Path) -> None:
    from .visualize.roc import plot_roc_curves

    keys = list(names)
    matrix = np.stack([scores[k] for k in keys], axis=1)
    plot_roc_curves(matrix, np.repeat(labels[:, None], len(keys), axis=1), [names[k] for k in keys], str(path),
                    title="image-level pneumonia ROC (RSNA test split)")


def _plot_times(result: Mapping, path: Path) -> None:
    plt = _plt()
    rows = list(result["models"].values())
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.barh([r["name"] for r in rows], [r["ms_per_image"] for r in rows], color=["tab:blue", "tab:green", "tab:orange"])
    ax.set(xlabel="ms per image", title=f"inference time ({result['device']}, {result['threads']} thread(s))")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_examples(items, truth_boxes, kept, lungs, probabilities, path: Path, count: int = 4) -> None:
    """A few test images (opacity first): U-Net lungs filled, truth boxes white, Mask R-CNN boxes orange, VGG16 P."""
    from PIL import ImageDraw

    from .data.io import read_image
    from .visualize.boxes import grid
    from .visualize.masks import overlay_masks

    order = [k for k in range(len(items)) if len(truth_boxes[k])][: count - count // 4]
    order += [k for k in range(len(items)) if k not in order][: count - len(order)]
    pictures = []
    for k in order:
        image = read_image(items[k]["image"])
        lung = _resize_nearest(lungs[k], image.shape)
        picture = overlay_masks(image, lung[None], alpha=0.2)
        size = 256
        factor = size / max(image.shape)
        picture = picture.resize((round(image.shape[1] * factor), round(image.shape[0] * factor)))
        draw = ImageDraw.Draw(picture)
        for box in truth_boxes[k]:
            draw.rectangle([v * factor for v in box], outline=(255, 255, 255), width=2)
        for box, score in zip(kept[k]["boxes"], kept[k]["scores"]):
            draw.rectangle([v * factor for v in box], outline=(255, 140, 0), width=2)
            draw.text((box[0] * factor + 2, max(0, box[1] * factor - 11)), f"{score:.2f}", fill=(255, 140, 0))
        draw.text((3, 3), f"VGG16 P={probabilities[k]:.2f}", fill=(255, 255, 0))
        pictures.append(picture)
    if pictures:
        grid(pictures, columns=4).save(path)
