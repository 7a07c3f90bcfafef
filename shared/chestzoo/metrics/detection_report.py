"""The evaluation report of a detection bundle: mAP with and without TTA, tuned thresholds, Wang-style localisation.

From the predictions an evaluator collected on the validation and test splits (with every TTA view kept), it
compares on the same images:

- ``plain``: the detector alone (the identity view);
- ``tta_nms`` / ``tta_wbf``: all views fused by NMS or by weighted boxes fusion.

For each variant: COCO-style AP@0.5 per class and their mean on validation and test; a score-threshold sweep on
validation (F1 at IoU 0.5) giving a global and a per-class threshold; precision, recall and F1 on test at either;
Wang et al. 2017 localisation accuracy at T(IoBB) on test with the thresholds inference uses. Plus the
time per image of the plain detector, of all TTA views, and of each fusion.

Written into ``output_dir``: ``metrics.json`` (with the short ``summary`` the demo reads), pictures
``01_test_detections.png``, ``02_average_precision.png``, ``03_threshold_sweep.png``; and the thresholds JSON that
inference reads.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence

import numpy as np

from .detection import (
    SWEEP_THRESHOLDS,
    WANG_IOBB_THRESHOLDS,
    detection_intervals,
    localization_report,
    match_detections,
    mean_average_precision,
    scores_at_threshold,
    sweep_thresholds,
)
from .bootstrap import bootstrap_interval
from .report import write_json

logger = logging.getLogger(__name__)

PLAIN = "plain"
VARIANT_TITLES = {"plain": "no TTA", "tta_nms": "TTA + NMS", "tta_wbf": "TTA + WBF"}
# Wang et al. 2017 (ChestX-ray8, arXiv:1705.02315v5), Table 4: weakly supervised localisation accuracy of their
# ResNet-50 heatmap boxes on the NIH boxes, per class, at T(IoBB) = 0.1, 0.25, 0.5, 0.75, 0.9.
WANG_2017_ACCURACY = {
    "Atelectasis": (0.7277, 0.5500, 0.2833, 0.1666, 0.1333),
    "Cardiomegaly": (0.9931, 0.9794, 0.8767, 0.7260, 0.6849),
    "Effusion": (0.7124, 0.5424, 0.3333, 0.2418, 0.2091),
    "Infiltration": (0.7886, 0.5772, 0.4227, 0.3252, 0.2520),
    "Mass": (0.4352, 0.2823, 0.1411, 0.1176, 0.0588),
    "Nodule": (0.1645, 0.0506, 0.0126, 0.0126, 0.0126),
    "Pneumonia": (0.7500, 0.5583, 0.3833, 0.2583, 0.2416),
    "Pneumothorax": (0.4591, 0.3469, 0.1836, 0.1020, 0.0816),
}


def variant_name(tta_enabled: bool, fusion: str) -> str:
    """The thresholds-file key of a setting: ``plain`` without TTA, else ``tta_<fusion>``."""
    return f"tta_{fusion}" if tta_enabled else PLAIN


def _variants(records: Sequence[dict], tta) -> tuple[dict[str, list], dict[str, float]]:
    """Per variant, the predictions of every record; and the seconds each fusion took over all records."""
    if tta is None or not records or records[0].get("views") is None:
        return {PLAIN: [r["pred"] for r in records]}, {}
    identity = next(i for i, view in enumerate(tta.views) if view.is_identity) if any(v.is_identity for v in tta.views) else None
    out: dict[str, list] = {}
    if identity is not None:
        out[PLAIN] = [r["views"][identity] for r in records]
    seconds = {}
    for fusion in ("nms", "wbf"):
        start = time.perf_counter()
        out[f"tta_{fusion}"] = [tta.fuse(r["views"], fusion) for r in records]
        seconds[fusion] = time.perf_counter() - start
    return out, seconds


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def chosen_thresholds(tuned: dict, class_names: Sequence[str], per_class: bool) -> list[float]:
    """One threshold per class from a sweep: the global best-F1 threshold, or each class's own."""
    return [tuned["per_class"][n] if per_class else tuned["threshold"] for n in class_names]


def evaluate_variant(val_preds, val_targets, test_preds, test_targets, class_names, iobb_thresholds=WANG_IOBB_THRESHOLDS,
                     sweep=SWEEP_THRESHOLDS, per_class_thresholds: bool = False, groups=None, n_resamples: int = 1000,
                     seed: int = 0) -> dict:
    """All numbers of one variant (see the module doc); localisation uses the thresholds inference would use.

    ``test_ci95`` holds bootstrap 95% intervals of the test mAP, APs and F1s (``groups``: one patient id per test
    image, else images are resampled), with the thresholds fixed as chosen on validation.
    """
    names = list(class_names)
    tuned = sweep_thresholds(val_preds, val_targets, names, thresholds=sweep)
    per_class = [tuned["per_class"][n] for n in names]
    matches = match_detections(test_preds, test_targets, len(names))
    at_global = scores_at_threshold(matches, [tuned["threshold"]] * len(names))
    at_class = scores_at_threshold(matches, per_class)
    for result in (at_global, at_class):
        result["per_class"] = dict(zip(names, result["per_class"]))
    ci = detection_intervals(matches, names, {"f1": [tuned["threshold"]] * len(names), "f1_class_thresholds": per_class},
                             groups=groups, n_resamples=n_resamples, seed=seed)
    return {
        "validation": mean_average_precision(val_preds, val_targets, names),
        "test": mean_average_precision(test_preds, test_targets, names),
        "thresholds": tuned,
        "test_at_threshold": at_global,
        "test_at_class_thresholds": at_class,
        "localization": localization_report(test_preds, test_targets, names, chosen_thresholds(tuned, names, per_class_thresholds), iobb_thresholds),
        "test_ci95": ci,
    }


def write_detection_report(
    validation: Sequence[dict],
    test: Sequence[dict],
    class_names: Sequence[str],
    output_dir: str,
    thresholds_file: str,
    tta=None,
    default_variant: str = "tta_nms",
    overlays: int = 4,
    iobb_thresholds: Sequence[float] = WANG_IOBB_THRESHOLDS,
    per_class_thresholds: bool = False,
    groups=None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Compare the variants on the collected records and write the report; returns the content of metrics.json.

    ``validation`` / ``test``: records of :class:`chestzoo.engines.detection.DetectionCollector` (``image``,
    ``size``, ``pred``, ``target``, ``views``). ``default_variant`` names the setting inference uses (its numbers
    make the summary's F1 and localisation); it falls back to ``plain`` when evaluation ran without TTA.
    ``per_class_thresholds`` says whether inference keeps each class's own threshold or the global one (the seed's).
    ``groups`` (one patient id per test record), ``n_resamples`` and ``seed`` set the bootstrap 95% intervals:
    ``test_ci95`` in each variant, ``summary_ci95`` beside the summary.
    """
    from ..utils import as_bool

    per_class_thresholds = as_bool(per_class_thresholds)
    names = list(class_names)
    if not test or any(r["target"] is None for r in (*validation, *test)):
        raise ValueError("evaluation needs ground-truth boxes on every validation and test image")
    val_targets = [r["target"] for r in validation]
    test_targets = [r["target"] for r in test]
    val_variants, _ = _variants(validation, tta)
    test_variants, fusion_seconds = _variants(test, tta)
    variants = {}
    for name in test_variants:
        variants[name] = evaluate_variant(val_variants[name], val_targets, test_variants[name], test_targets, names, iobb_thresholds,
                                          per_class_thresholds=per_class_thresholds, groups=groups, n_resamples=n_resamples, seed=seed)
        logger.info("%s: validation mAP@0.5 %.4f, test mAP@0.5 %.4f", VARIANT_TITLES.get(name, name),
                    variants[name]["validation"]["mAP"], variants[name]["test"]["mAP"])
    default = default_variant if default_variant in variants else PLAIN
    timing = None
    if tta is not None:
        n_images = len(validation) + len(test)
        identity = [v.name for v in tta.views if v.is_identity]
        plain_s = sum(tta.seconds[n] for n in identity) / n_images
        views_s = sum(tta.seconds.values()) / n_images
        timing = {
            "views": [v.name for v in tta.views],
            "images": n_images,
            "seconds_per_image": {
                "plain": plain_s,
                "tta_views": views_s,
                "tta_nms": views_s + fusion_seconds.get("nms", 0.0) / max(len(test), 1),
                "tta_wbf": views_s + fusion_seconds.get("wbf", 0.0) / max(len(test), 1),
            },
            "slowdown": views_s / plain_s if plain_s > 0 else None,
        }
    chosen = variants[default]
    k = list(iobb_thresholds).index(0.5) if 0.5 in iobb_thresholds else len(iobb_thresholds) // 2
    summary = {f"mAP@0.5 ({VARIANT_TITLES.get(n, n)})": v["test"]["mAP"] for n, v in variants.items()}
    summary_ci = {f"mAP@0.5 ({VARIANT_TITLES.get(n, n)})": v["test_ci95"]["mAP"] for n, v in variants.items()}
    at_chosen = chosen["test_at_class_thresholds" if per_class_thresholds else "test_at_threshold"]
    f1_name = "F1 (tuned, " + VARIANT_TITLES.get(default, default) + ")"
    summary[f1_name] = at_chosen["f1"]
    summary_ci[f1_name] = chosen["test_ci95"]["f1_class_thresholds" if per_class_thresholds else "f1"]
    wang = f"Wang Acc@IoBB{iobb_thresholds[k]:g}"
    summary[wang] = chosen["localization"]["overall"]["accuracy"][k]
    kept = chosen_thresholds(chosen["thresholds"], names, per_class_thresholds)
    summary_ci[wang] = bootstrap_interval(
        lambda p, t: localization_report(p, t, names, kept, iobb_thresholds)["overall"]["accuracy"][k],
        test_variants[default], test_targets, groups=groups, n_resamples=n_resamples, seed=seed)
    # TTA's cost (its "slowdown") stays under "tta": a run time, not a score on the test images, so not a headline
    report = {
        "summary": _nan_to_none(summary),
        "summary_ci95": summary_ci,
        "classes": names,
        "default_variant": default,
        "per_class_thresholds": per_class_thresholds,
        "images": {"validation": len(validation), "test": len(test)},
        "variants": _nan_to_none(variants),
        "tta": timing,
        "wang_2017": {"source": "Wang et al. 2017, ChestX-ray8, arXiv:1705.02315v5, Table 4 (heatmap boxes, weak supervision)",
                      "thresholds": list(WANG_IOBB_THRESHOLDS), "accuracy": {n: list(a) for n, a in WANG_2017_ACCURACY.items()}},
    }
    os.makedirs(output_dir, exist_ok=True)
    write_json(os.path.join(output_dir, "metrics.json"), report)
    write_json(thresholds_file, {
        "classes": names,
        "criterion": chosen["thresholds"]["criterion"],
        "default_variant": default,
        "variants": {n: {"threshold": v["thresholds"]["threshold"], "per_class": v["thresholds"]["per_class"]} for n, v in variants.items()},
    })
    _plots(report, variants, test, test_variants[default], names, output_dir, overlays, per_class_thresholds)
    return report


def _plots(report, variants, test, predictions, names, output_dir, overlays, per_class_thresholds) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.io import read_image
    from ..visualize.boxes import draw_detections, grid
    from .detection import filter_by_score

    # 01: test images with the most ground truth, predictions kept by the tuned thresholds
    if overlays:
        thresholds = chosen_thresholds(variants[report["default_variant"]]["thresholds"], names, per_class_thresholds)
        order = sorted(range(len(test)), key=lambda i: (-len(test[i]["target"]["boxes"]), i))[:overlays]
        pictures = []
        for i in order:
            kept = filter_by_score(predictions[i], thresholds)
            pictures.append(draw_detections(read_image(test[i]["image"]), kept["boxes"], kept["labels"], kept["scores"], names,
                                            test[i]["target"]["boxes"], test[i]["target"]["labels"],
                                            title=os.path.basename(test[i]["image"]), upscale_to=384))
        if pictures:
            grid(pictures, columns=2).save(os.path.join(output_dir, "01_test_detections.png"))

    # 02: AP per class on test, one bar per variant
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(len(variants), 1)
    for j, (name, result) in enumerate(variants.items()):
        values = [result["test"]["AP"][n] if result["test"]["AP"][n] is not None else 0.0 for n in names]
        ax.bar(np.arange(len(names)) + j * width, values, width, label=f"{VARIANT_TITLES.get(name, name)} (mAP {result['test']['mAP']:.3f})")
    ax.set_xticks(np.arange(len(names)) + width * (len(variants) - 1) / 2, names, rotation=30, ha="right")
    ax.set_ylabel("AP@0.5 (test)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "02_average_precision.png"), dpi=100)
    plt.close(fig)

    # 03: the validation sweep of the default variant
    sweep = variants[report["default_variant"]]["thresholds"]["sweep"]
    fig, ax = plt.subplots(figsize=(6, 4))
    t = [row["threshold"] for row in sweep]
    for key in ("precision", "recall", "f1"):
        ax.plot(t, [row[key] for row in sweep], marker="o", label=key)
    ax.axvline(variants[report["default_variant"]]["thresholds"]["threshold"], color="grey", linestyle="--", label="chosen")
    ax.set_xlabel("score threshold")
    ax.set_title(f"validation sweep ({VARIANT_TITLES.get(report['default_variant'], report['default_variant'])})")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "03_threshold_sweep.png"), dpi=100)
    plt.close(fig)
