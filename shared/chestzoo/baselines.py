"""No-learning baselines for a prepared dataset: the best score reachable without training a network.

Every bundle's number should stand beside what a constant, a single pixel or a mean image already reaches on the
same split: a bundle that barely beats the best pixel has learned little, and a real dataset on which one pixel
scores well has a shortcut (a marker, a text label, a scanner border) that a network will find too.

Each image is read once and shrunk at once to ``size`` x ``size`` (area averaging), so that the real datasets fit in
memory; everything is fitted on the training split, any setting is chosen on validation, and the test split is
scored with the bundles' own metric code, every number with a bootstrap 95% interval that resamples patients
(images where items name no patient).

- classification: training prevalence (AUROC 0.5, the reference), the best single pixel (pixel and sign chosen by
  training AUROC), the class-mean template (correlation with the mean positive minus the mean negative training
  image), their best per label on validation ("best no-learning"), and a logistic regression on ``thumbnail`` x
  ``thumbnail`` images (a learned linear model, C chosen on validation);
- lung segmentation: the mean training mask thresholded at 0.5, one mask for every image;
- detection: each class's mean training box on either side of the image (left / right half by box centre),
  scored by the class template or by the box region's mean intensity, times the share of the class's training
  boxes on that side; mAP@0.5, and for RSNA the challenge score at a score threshold chosen on validation.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata
from tqdm import tqdm

from .data.datalist import load_datalist
from .data.errors import DataError
from .data.io import read_image, read_mask
from .data.labels import NIH_LABELS, PEDIATRIC_CLASSES, RSNA_TARGETS
from .data.montgomery import LABELS as MONTGOMERY_LABELS
from .metrics.bootstrap import bootstrap_interval, format_interval, patient_ids
from .metrics.classification import multilabel_auroc
from .metrics.detection import mean_average_precision
from .metrics.report import write_json
from .metrics.rsna import rsna_score, tune_postprocessing
from .metrics.segmentation import BatchDiceMetric, HausdorffDistance95Metric

logger = logging.getLogger(__name__)

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)  # logistic regression's inverse regularisation, chosen on validation


@dataclass(frozen=True)
class Task:
    kind: str  # classification, segmentation or detection
    datalist: str  # file in the dataset folder
    labels: tuple[str, ...]  # the datalist's top-level "labels" that identify the dataset


TASKS = {
    "nih_classification": Task("classification", "datalist.json", NIH_LABELS),
    "rsna_classification": Task("classification", "datalist.json", RSNA_TARGETS),
    "pediatric_classification": Task("classification", "datalist.json", PEDIATRIC_CLASSES),
    "lung_segmentation": Task("segmentation", "datalist.json", MONTGOMERY_LABELS),
    "nih_detection": Task("detection", "datalist_boxes.json", NIH_LABELS),
    "rsna_detection": Task("detection", "datalist.json", RSNA_TARGETS),
}


def detect_tasks(dataset_dir: str) -> list[str]:
    """The tasks whose datalist is in ``dataset_dir``, recognised by the datalist's label names."""
    found = []
    for name, task in TASKS.items():
        path = os.path.join(dataset_dir, task.datalist)
        if os.path.isfile(path) and tuple(_header(path).get("labels", ())) == task.labels:
            found.append(name)
    return found


def _header(path: str) -> dict:
    with open(path) as f:
        return {k: v for k, v in json.load(f).items() if not isinstance(v, list) or k in ("labels", "box_classes")}


# --- reading ------------------------------------------------------------------------------------------------------


@dataclass
class Split:
    items: list[dict]
    images: np.ndarray  # (n, size, size) float32 in [0, 1]
    shapes: np.ndarray  # (n, 2) height and width of the images as read, for boxes in their pixels
    masks: np.ndarray | None = None  # (n, size, size) {0, 1}, lungs merged


def shrink(array: np.ndarray, size: int) -> np.ndarray:
    """``(H, W)`` -> ``(size, size)`` by area averaging (every pixel of the film counts, nothing aliases)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(tensor, size=(size, size), mode="area")[0, 0].numpy()


def read_split(path: str, split: str, size: int, masks: bool = False, max_images: int | None = None, seed: int = 0) -> Split:
    """One split of a datalist, every image read once and shrunk at once (``max_images``: a seeded random subset)."""
    items = load_datalist(path, split, file_keys=("image", "mask"))
    if max_images is not None and len(items) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(items), int(max_images), replace=False))
        items = [items[i] for i in keep]
    images = np.zeros((len(items), size, size), np.float32)
    shapes = np.zeros((len(items), 2), np.int64)
    lungs = np.zeros((len(items), size, size), np.float32) if masks else None
    for i, item in enumerate(tqdm(items, desc=f"reading {os.path.basename(path)} {split}", unit="image", mininterval=2)):
        image = read_image(item["image"])
        images[i], shapes[i] = shrink(image, size), image.shape
        if masks:
            lungs[i] = shrink(read_mask(item["mask"])[0], size) >= 0.5
    return Split(items, images, shapes, lungs)


def flat(split: Split) -> np.ndarray:
    return split.images.reshape(len(split.images), -1).astype(np.float64)


# --- classification ------------------------------------------------------------------------------------------------


def label_matrix(items: Sequence[dict], labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """``(n, classes)`` 0/1 targets and their names: NIH's multi-hot lists as they are, a 0/1 label as its class 1."""
    if items and isinstance(items[0]["label"], list):
        return np.asarray([item["label"] for item in items], np.float64).reshape(len(items), len(labels)), list(labels)
    return np.asarray([[float(item["label"] == 1)] for item in items]).reshape(len(items), 1), [labels[1]]


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a / b`` with NaN where ``b`` is 0 (a class without examples)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def pixel_aurocs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUROC of every pixel (column of ``x``) for every class (column of ``y``), ``(classes, pixels)``.

    The Mann-Whitney form of ``metrics.classification.auroc`` (ties count one half) from one ranking per pixel that
    all classes share; NaN for a class with one value only.
    """
    ranks = rankdata(x, axis=0)
    positives = y.sum(axis=0)
    negatives = len(y) - positives
    return _divide(y.T @ ranks - (positives * (positives + 1) / 2)[:, None], (positives * negatives)[:, None])


def templates(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(pixels, classes)``: the mean positive minus the mean negative image of each class (0 where one is missing)."""
    positive = _divide(y.T @ x, y.sum(axis=0)[:, None])
    negative = _divide((1 - y).T @ x, (1 - y).sum(axis=0)[:, None])
    return np.nan_to_num(positive - negative).T


def correlation(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(images, templates)``: Pearson correlation of every row of ``x`` with every column of ``t``."""
    xc = x - x.mean(axis=1, keepdims=True)
    tc = t - t.mean(axis=0, keepdims=True)
    xc /= np.maximum(np.linalg.norm(xc, axis=1, keepdims=True), 1e-12)
    tc /= np.maximum(np.linalg.norm(tc, axis=0, keepdims=True), 1e-12)
    return xc @ tc


def prevalence_baseline(x_train, y_train, x_test, names) -> tuple[np.ndarray, dict]:
    prevalence = y_train.mean(axis=0)
    return np.tile(prevalence, (len(x_test), 1)), {n: {"prevalence": float(p)} for n, p in zip(names, prevalence)}


def pixel_baseline(x_train, y_train, x_test, names) -> tuple[np.ndarray, dict]:
    aurocs = pixel_aurocs(x_train, y_train)
    best = np.nan_to_num(np.abs(aurocs - 0.5), nan=-1.0).argmax(axis=1)
    chosen = aurocs[np.arange(len(best)), best]
    sign = np.where(chosen < 0.5, -1.0, 1.0)  # a darker pixel can be the sign as well
    width = int(round(np.sqrt(x_train.shape[1])))
    settings = {n: {"row": int(p // width), "column": int(p % width), "sign": int(s), "training_auroc": _number(a)}
                for n, p, s, a in zip(names, best, sign, chosen)}
    return x_test[:, best] * sign, settings


def template_baseline(x_train, y_train, x_test, names) -> tuple[np.ndarray, dict]:
    return correlation(x_test, templates(x_train, y_train)), {}


NO_LEARNING = {
    "prevalence": ("training prevalence, one score for every image (AUROC 0.5: the reference)", prevalence_baseline),
    "pixel": ("the best single pixel, pixel and sign by training AUROC", pixel_baseline),
    "template": ("correlation with the mean positive minus mean negative training image", template_baseline),
}


def logistic_baseline(x_train, y_train, x_val, y_val, x_test, names) -> tuple[np.ndarray, dict]:
    """Per class an L2 logistic regression on standardised thumbnails, C by validation AUROC (a learned model)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    x_train, x_val, x_test = scaler.transform(x_train), scaler.transform(x_val), scaler.transform(x_test)
    scores, settings = np.zeros((len(x_test), len(names))), {}
    for k, name in enumerate(names):
        if len(np.unique(y_train[:, k])) < 2:
            settings[name] = None  # nothing to fit: the scores stay constant
            continue
        fits = {c: LogisticRegression(C=c, max_iter=1000).fit(x_train, y_train[:, k]) for c in C_GRID}
        on_val = {c: multilabel_auroc(m.decision_function(x_val)[:, None], y_val[:, k:k + 1])["mean_auroc"] for c, m in fits.items()}
        chosen = max(C_GRID, key=lambda c: -1.0 if on_val[c] is None else on_val[c])  # none defined: the smallest C
        scores[:, k] = fits[chosen].decision_function(x_test)
        settings[name] = {"C": chosen, "validation_auroc": on_val[chosen]}
    return scores, settings


def classification(splits: dict[str, Split], labels: Sequence[str], thumbnail: int, resample: Callable) -> dict:
    y = {s: label_matrix(split.items, labels)[0] for s, split in splits.items()}
    names = label_matrix(splits["test"].items, labels)[1]
    x = {s: flat(split) for s, split in splits.items()}

    def score(scores: np.ndarray) -> dict:
        def metric(s, t):
            result = multilabel_auroc(s, t, names)
            return {"AUROC": result["mean_auroc"], **(result["per_class"] if len(names) > 1 else {})}

        return resample(metric, scores, y["test"])

    rows, test_scores = {}, {}
    for key, (description, fit) in NO_LEARNING.items():
        test_scores[key], settings = fit(x["training"], y["training"], x["test"], names)
        rows[key] = _row(description, score(test_scores[key]), settings)
    # per class the no-learning baseline with the highest validation AUROC, taken as one predictor for the interval
    on_validation = {key: multilabel_auroc(fit(x["training"], y["training"], x["validation"], names)[0], y["validation"], names)["per_class"]
                     for key, (_, fit) in NO_LEARNING.items()}
    best = [max(NO_LEARNING, key=lambda b: -1.0 if on_validation[b][name] is None else on_validation[b][name]) for name in names]
    composite = np.stack([test_scores[b][:, k] for k, b in enumerate(best)], axis=1)
    description = "per class the best of prevalence, pixel and template, picked on validation"
    rows["best_no_learning"] = _row(description, score(composite), dict(zip(names, best)))
    thumbs = {s: np.stack([shrink(i, thumbnail) for i in split.images]).reshape(len(split.images), -1) for s, split in splits.items()}
    scores, settings = logistic_baseline(thumbs["training"], y["training"], thumbs["validation"], y["validation"], thumbs["test"], names)
    rows["logistic_regression"] = _row(f"logistic regression on {thumbnail}x{thumbnail} thumbnails, C on validation (a learned "
                                       "linear model, not a no-learning baseline)", score(scores), settings, learned=True)
    return {"metrics": ["AUROC"], "classes": names, "baselines": rows, "headline": _headline(rows, "best_no_learning", "AUROC")}


# --- segmentation --------------------------------------------------------------------------------------------------


def segmentation(splits: dict[str, Split], resample: Callable) -> dict:
    """The mean training lung mask thresholded at 0.5, scored on every test image with the bundle's Dice and HD95."""
    constant = splits["training"].masks.mean(axis=0) >= 0.5
    truth = torch.from_numpy(splits["test"].masks)[:, None]
    predicted = torch.from_numpy(np.broadcast_to(constant, truth.shape[1:]).astype(np.float32)).expand_as(truth)
    dice = BatchDiceMetric(include_background=True)(predicted, truth)[:, 0].numpy()
    hd95 = HausdorffDistance95Metric()(predicted, truth)[:, 0].numpy()
    metric = lambda d, h: {"Dice": np.nanmean(d), "HD95 (px)": np.nanmean(h)}  # noqa: E731 - per-image values, computed once
    description = f"the mean training mask thresholded at 0.5 for every image; HD95 in pixels of the {len(constant)}-pixel-wide masks"
    rows = {"mean_mask": _row(description, resample(metric, dice, hd95), {"mask_pixels": int(constant.sum())})}
    return {"metrics": ["Dice", "HD95 (px)"], "classes": ["lungs"], "baselines": rows, "headline": _headline(rows, "mean_mask", "Dice")}


# --- detection -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prior:
    label: int
    side: str  # half of the image (not of the patient) holding the box centres
    box: tuple[float, float, float, float]  # mean box, as fractions of the image width and height
    share: float  # of the class's training boxes on this side


def targets(split: Split) -> list[dict]:
    return [{"boxes": item.get("box", []), "labels": item.get("box_label", [])} for item in split.items]


def presence(split: Split, n_classes: int) -> np.ndarray:
    """``(images, classes)``: 1 where the image has a box of the class."""
    out = np.zeros((len(split.items), n_classes))
    for i, target in enumerate(targets(split)):
        out[i, np.asarray(target["labels"], dtype=np.int64)] = 1.0
    return out


def fit_priors(train: Split, n_classes: int) -> list[Prior]:
    """Each class's mean training box on each side where its boxes lie (a finding can be in either lung)."""
    boxes, labels = [], []
    for (height, width), target in zip(train.shapes, targets(train)):
        boxes += [np.asarray(b, np.float64) / [width, height, width, height] for b in target["boxes"]]
        labels += list(target["labels"])
    boxes, labels = np.asarray(boxes).reshape(-1, 4), np.asarray(labels, np.int64)
    left = (boxes[:, 0] + boxes[:, 2]) / 2 < 0.5
    priors = []
    for c in range(n_classes):
        for side, on_side in (("left", left), ("right", ~left)):
            chosen = boxes[(labels == c) & on_side]
            if len(chosen):
                priors.append(Prior(c, side, tuple(float(v) for v in chosen.mean(axis=0)), len(chosen) / int((labels == c).sum())))
    return priors


def region_means(split: Split, priors: Sequence[Prior]) -> np.ndarray:
    """``(images, priors)``: mean intensity of each prior box's region at the working size (at least one pixel)."""
    size = split.images.shape[-1]
    out = np.zeros((len(split.images), len(priors)))
    for j, p in enumerate(priors):
        x0, y0 = (min(int(v * size), size - 1) for v in p.box[:2])
        x1, y1 = max(int(np.ceil(p.box[2] * size)), x0 + 1), max(int(np.ceil(p.box[3] * size)), y0 + 1)
        out[:, j] = split.images[:, y0:y1, x0:x1].mean(axis=(1, 2))
    return out


def template_box_scores(train: Split, evaluated: Split, priors: Sequence[Prior], n_classes: int) -> np.ndarray:
    """``(images, priors)`` in [0, 1]: the image's correlation with its class template, (1 + r) / 2."""
    r = correlation(flat(evaluated), templates(flat(train), presence(train, n_classes)))
    return (1 + r[:, [p.label for p in priors]]) / 2


def intensity_box_scores(train: Split, evaluated: Split, priors: Sequence[Prior], n_classes: int) -> np.ndarray:
    """``(images, priors)`` in [0, 1]: the box region's mean intensity, inverted where darker meant the finding in training."""
    aurocs = pixel_aurocs(region_means(train, priors), presence(train, n_classes))
    darker = np.array([aurocs[p.label, j] < 0.5 for j, p in enumerate(priors)], dtype=bool)
    means = region_means(evaluated, priors)
    return np.where(darker, 1 - means, means)


BOX_SCORES = {
    "mean_box_template": ("each class's mean training box per image side, scored by the class template", template_box_scores),
    "mean_box_intensity": ("each class's mean training box per image side, scored by the box region's mean intensity "
                           "(sign by training AUROC)", intensity_box_scores),
}


def predict(split: Split, priors: Sequence[Prior], scores: np.ndarray) -> list[dict]:
    """Every prior box on every image, in the image's pixels, scored by ``scores`` times the side's share."""
    boxes, shares = np.asarray([p.box for p in priors]).reshape(-1, 4), np.asarray([p.share for p in priors])
    return [{"boxes": boxes * [w, h, w, h], "labels": np.asarray([p.label for p in priors], np.int64), "scores": s * shares}
            for (h, w), s in zip(split.shapes, scores)]


def box_metric(classes: Sequence[str]) -> Callable:
    """mAP@0.5 (and AP per class when there are several); with per-image challenge scores, the RSNA score too."""

    def metric(predictions, truth, image_scores=None) -> dict:
        result = mean_average_precision(predictions, truth, classes)
        out = {"mAP@0.5": result["mAP"], **(result["AP"] if len(classes) > 1 else {})}
        if image_scores is not None:
            out["RSNA score"] = np.nanmean(image_scores) if np.isfinite(image_scores).any() else None
        return out

    return metric


def detection(splits: dict[str, Split], classes: Sequence[str], challenge: bool, resample: Callable) -> dict:
    """Fixed boxes per class and side; mAP@0.5, and with ``challenge`` the RSNA score at a validation-chosen threshold."""
    n = len(classes)
    priors = fit_priors(splits["training"], n)
    if not priors:
        raise ValueError("the training split has no boxes to average")
    metrics = ["mAP@0.5", "RSNA score"] if challenge else ["mAP@0.5"]
    test_targets, validation_targets = targets(splits["test"]), targets(splits["validation"])
    rows, on_validation = {}, {}
    for key, (description, scorer) in BOX_SCORES.items():
        settings: dict = {"boxes": [{"class": classes[p.label], "side": p.side, "box_fraction": list(p.box), "share": p.share}
                                    for p in priors]}
        test = predict(splits["test"], priors, scorer(splits["training"], splits["test"], priors, n))
        validation = predict(splits["validation"], priors, scorer(splits["training"], splits["validation"], priors, n))
        arrays, validation_arrays = [test, test_targets], [validation, validation_targets]
        if challenge:
            # candidate thresholds at quantiles of the validation scores, whatever their scale
            candidates = np.unique(np.quantile(np.concatenate([p["scores"] for p in validation]), np.linspace(0.05, 0.95, 19)))
            tuned = tune_postprocessing(validation, validation_targets, candidates, [1.0])
            settings["score_threshold"] = tuned["score_threshold"]
            # the challenge score is the mean of the counted images' scores: resampling images with their score is exact
            for pair in (arrays, validation_arrays):
                per_image = rsna_score(*pair, score_threshold=tuned["score_threshold"])["image_scores"]
                pair.append(np.asarray([np.nan if s is None else s for s in per_image]))
        value = box_metric(classes)(*validation_arrays)[metrics[-1]]
        on_validation[key] = None if value is None else _number(value)
        settings["validation"] = on_validation[key]
        rows[key] = _row(description, resample(box_metric(classes), *arrays), settings)
    best = max(rows, key=lambda k: -1.0 if on_validation[k] is None else on_validation[k])  # chosen on validation
    return {"metrics": metrics, "classes": list(classes), "baselines": rows, "headline": _headline(rows, best, metrics[-1])}


# --- results -------------------------------------------------------------------------------------------------------

HEADLINE_KEYS = ("AUROC", "Dice", "HD95 (px)", "mAP@0.5", "RSNA score")  # the rest of a metric's results are per class


def _row(description: str, intervals: dict, settings: dict, learned: bool = False) -> dict:
    row = {"description": description, "learned": learned,
           "metrics": {k: v for k, v in intervals.items() if k in HEADLINE_KEYS}}
    per_class = {k: v for k, v in intervals.items() if k not in HEADLINE_KEYS}
    if per_class:
        row["per_class"] = per_class
    row["settings"] = settings
    return row


def _headline(rows: dict, baseline: str, metric: str) -> dict:
    return {"baseline": baseline, "metric": metric, **rows[baseline]["metrics"][metric]}


def _number(value) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


def markdown(report: dict) -> str:
    """One section per task: the headline, a table of baselines by metric, and one of classes by baseline."""
    lines = [f"# No-learning baselines: {report['dataset_dir']}", ""]
    for name, task in report["tasks"].items():
        h = task["headline"]
        lines += [f"## {name}", "",
                  f"{task['datalist']}, test split: {task['images']['test']} images, {task['units']} {task['unit']}s; "
                  f"images at {report['size']}x{report['size']}; {int(100 * report['level'])}% intervals: {task['unit']} "
                  f"bootstrap, {report['n_resamples']} resamples.{' ' + task['note'] if task.get('note') else ''}", "",
                  f"Best no-learning {h['metric']}: **{format_interval(h)}**, {h['baseline']}: "
                  f"{task['baselines'][h['baseline']]['description']}", "",
                  "| baseline | " + " | ".join(task["metrics"]) + " |", "| --- |" + " --- |" * len(task["metrics"])]
        for key, row in task["baselines"].items():
            label = f"{key} (learned)" if row["learned"] else key
            lines.append(f"| {label} | " + " | ".join(format_interval(row["metrics"].get(m)) for m in task["metrics"]) + " |")
        with_classes = [k for k, row in task["baselines"].items() if "per_class" in row]
        if with_classes:
            metric = "AP@0.5" if task["kind"] == "detection" else "AUROC"
            lines += ["", f"{metric} per class:", "", "| class | " + " | ".join(with_classes) + " |",
                      "| --- |" + " --- |" * len(with_classes)]
            for c in task["classes"]:
                lines.append(f"| {c} | " + " | ".join(format_interval(task["baselines"][k]["per_class"].get(c)) for k in with_classes) + " |")
        lines.append("")
    return "\n".join(lines)


def run_baselines(dataset_dir: str, out: str | None = None, task: str | Sequence[str] | None = None, size: int = 32,
                  thumbnail: int = 16, seed: int = 0, max_images: int | None = None, n_resamples: int = 1000,
                  level: float = 0.95, datalist: str | None = None) -> dict:
    """Fit and score the baselines of each task in ``dataset_dir`` (default: every task whose datalist is there).

    Writes ``baselines.json`` and ``baselines.md`` into ``out`` (default ``dataset_dir/baselines``) and returns the
    JSON's content. ``size``: working size of the images; ``thumbnail``: the logistic regression's input size
    (shrunk from the working size); ``max_images``: at most this many images per split (a seeded random subset);
    ``datalist``: the datalist of a single ``task``, where it is not the task's usual file in ``dataset_dir``.

    The report: the options, and per task ``{"kind", "datalist", "images": {split: count}, "units", "unit" (what the
    bootstrap resampled: patient or image), "note", "metrics": [column names], "classes", "headline": {"baseline",
    "metric", interval}, "baselines": {name: {"description", "learned", "metrics": {metric: interval}, "per_class":
    {class: interval} (several classes only), "settings"}}}``, each interval as
    :func:`chestzoo.metrics.bootstrap.bootstrap_interval` returns it.
    """
    tasks = [task] if isinstance(task, str) else list(task or detect_tasks(dataset_dir))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    if not tasks:
        raise DataError(dataset_dir, "no datalist of a known task here: run `chestzoo prepare <dataset> <dir>` first")
    if datalist is not None and len(tasks) != 1:
        raise ValueError(f"a datalist names the data of one task, not of {tasks}")
    read: dict = {}  # (datalist, split) -> Split, so that tasks on one datalist read its images once

    def split(path: str, name: str, masks: bool) -> Split:
        if (path, name) not in read:
            read[path, name] = read_split(path, name, size, masks=masks, max_images=max_images, seed=seed)
        return read[path, name]

    report = {"dataset_dir": os.path.abspath(dataset_dir), "size": size, "thumbnail": thumbnail, "seed": seed,
              "max_images": max_images, "n_resamples": n_resamples, "level": level, "tasks": {}}
    for name in tasks:
        spec = TASKS[name]
        path = datalist or os.path.join(dataset_dir, spec.datalist)
        splits = {s: split(path, s, spec.kind == "segmentation") for s in ("training", "validation", "test")}
        images = {s: len(v.items) for s, v in splits.items()}
        note = ""
        if not splits["validation"].items:
            splits["validation"] = splits["training"]
            note = "The datalist has no validation images: settings were chosen on training."
        if not splits["training"].items or not splits["test"].items:
            raise DataError(path, f"{name} needs training and test images")
        groups = patient_ids(splits["test"].items)  # None: the items name no patient, images are resampled
        unit = "image" if groups is None else "patient"

        def resample(metric, *arrays):
            return bootstrap_interval(metric, *arrays, groups=groups, n_resamples=n_resamples, seed=seed, level=level, unit=unit)

        if spec.kind == "classification":
            result = classification(splits, spec.labels, thumbnail, resample)
        elif spec.kind == "segmentation":
            result = segmentation(splits, resample)
        else:
            result = detection(splits, _header(path)["box_classes"], name == "rsna_detection", resample)
        report["tasks"][name] = {"kind": spec.kind, "datalist": os.path.basename(path),
                                 "images": images,
                                 "units": len(set(groups or range(images["test"]))), "unit": unit, "note": note, **result}
    out = out or os.path.join(dataset_dir, "baselines")
    write_json(os.path.join(out, "baselines.json"), report)
    with open(os.path.join(out, "baselines.md"), "w") as f:
        f.write(markdown(report))
    return report


def add_to_evaluation(output_dir: str, datalist: str, task: str, max_images: int | None = None) -> dict:
    """Score ``task``'s baselines on the splits of ``datalist`` beside a bundle's evaluation in ``output_dir``.

    Called last by the bundles' ``evaluate.json`` (config key ``baselines``): the report goes to
    ``<output_dir>/baselines/`` and under ``"baselines"`` into ``<output_dir>/metrics.json``, so that the evaluation
    shows the best score reached without learning next to the bundle's own. ``max_images`` caps each split (a seeded
    subset) where reading a whole real dataset again would take long.
    """
    report = run_baselines(os.path.dirname(os.path.abspath(datalist)), out=os.path.join(output_dir, "baselines"),
                           task=task, max_images=max_images, datalist=datalist)
    path = os.path.join(output_dir, "metrics.json")
    with open(path) as f:
        metrics = json.load(f)
    metrics["baselines"] = report
    write_json(path, metrics)
    headline = report["tasks"][task]["headline"]
    logger.info("best no-learning baseline (%s): %s %s (%s); details in %s", task, headline["metric"],
                format_interval(headline), headline["baseline"], os.path.join(output_dir, "baselines", "baselines.md"))
    return report
