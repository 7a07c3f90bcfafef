"""Heatmaps (Grad-CAM, LSE), overlays, ROC plots and classifier explanations shared by the bundles."""

from .cam import HEATMAP_METHODS, ClassHeatmaps, unwrap
from .explain import FindingsWriter, list_images, localization_report
from .overlay import overlay, write_overlay
from .roc import plot_roc_curves

__all__ = [
    "HEATMAP_METHODS",
    "ClassHeatmaps",
    "FindingsWriter",
    "list_images",
    "localization_report",
    "overlay",
    "plot_roc_curves",
    "unwrap",
    "write_overlay",
]
