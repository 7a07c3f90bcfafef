"""Metrics shared by the bundles: multi-label AUROC, thresholds and P/R/F1, weakly supervised localisation."""

from .classification import (
    MeanAUROC,
    MeanAUROCMetric,
    auroc,
    choose_thresholds,
    mean_auroc,
    multilabel_auroc,
    precision_recall_f1,
)
from .localization import IOBB_THRESHOLDS, boxes_from_heatmap, iobb, iou, localization_accuracy, normalize_heatmap, scale_boxes
from .report import read_thresholds, write_json, write_multilabel_report

__all__ = [
    "IOBB_THRESHOLDS",
    "MeanAUROC",
    "MeanAUROCMetric",
    "auroc",
    "boxes_from_heatmap",
    "choose_thresholds",
    "iobb",
    "iou",
    "localization_accuracy",
    "mean_auroc",
    "multilabel_auroc",
    "normalize_heatmap",
    "precision_recall_f1",
    "read_thresholds",
    "scale_boxes",
    "write_json",
    "write_multilabel_report",
]
