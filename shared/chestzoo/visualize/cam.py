"""Class heatmaps of a classifier: Grad-CAM on a named layer, and the LSE classifier's own weighted activation map."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.visualize import GradCAM
from torch import nn

HEATMAP_METHODS = ("lse", "gradcam")


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module inside DataParallel / DistributedDataParallel."""
    return network.module if hasattr(network, "module") and isinstance(network.module, nn.Module) else network


class ClassHeatmaps:
    """Per-class heatmaps at input resolution for a multi-label classifier.

    ``methods``: ``"gradcam"`` (Selvaraju et al. 2017, on ``layer``; any network) and ``"lse"`` (transition
    activations weighted by the classifier weights, Wang et al. 2017; networks with ``class_activation_map``).
    Create one per network and reuse it: Grad-CAM keeps hooks on ``layer``.
    """

    def __init__(self, network: nn.Module, layer: str = "transition", methods: Sequence[str] = HEATMAP_METHODS):
        unknown = set(methods) - set(HEATMAP_METHODS)
        if unknown:
            raise ValueError(f"unknown heatmap methods {sorted(unknown)}; choose from {HEATMAP_METHODS}")
        self.network = unwrap(network)
        if "lse" in methods and not hasattr(self.network, "class_activation_map"):
            raise ValueError(f"{type(self.network).__name__} has no class_activation_map: use methods=('gradcam',)")
        if "gradcam" in methods and layer not in dict(self.network.named_modules()):
            raise ValueError(f"no layer {layer!r} in {type(self.network).__name__} for Grad-CAM")
        self.methods = tuple(methods)
        self.gradcam = GradCAM(nn_module=self.network, target_layers=layer) if "gradcam" in methods else None

    def __call__(self, image: torch.Tensor, class_idx: int) -> dict[str, torch.Tensor]:
        """Heatmaps ``{method: (H, W)}`` of class ``class_idx`` for one image ``(1, C, H, W)``, on the CPU."""
        if image.ndim != 4 or image.shape[0] != 1:
            raise ValueError(f"expected one image (1, C, H, W), got {tuple(image.shape)}")
        size = image.shape[2:]
        maps = {}
        was_training = self.network.training
        self.network.eval()
        try:
            if "lse" in self.methods:
                with torch.no_grad():
                    maps["lse"] = self.network.class_activation_map(image)[:, class_idx : class_idx + 1].float()
            if self.gradcam is not None:
                with torch.enable_grad():
                    maps["gradcam"] = self.gradcam.compute_map(image, class_idx=class_idx).detach().float()
        finally:
            self.network.train(was_training)
        return {k: F.interpolate(v, size=size, mode="bilinear", align_corners=False)[0, 0].cpu() for k, v in maps.items()}
