"""Test-time augmentation for box detectors: augmented views, boxes mapped back, fused by NMS or WBF.

A view is a rescaling, an optional horizontal flip and a brightness factor. Every view of a batch goes through the
detector once; its boxes are mapped back to the original image (MONAI's ``flip_boxes`` / ``resize_boxes``), and
the views' boxes are fused per class, either by non-maximum suppression (the DLIA 2025 seed: NMS at IoU 0.3 over
the pooled boxes) or by weighted boxes fusion (Solovyev et al. 2021, "Weighted boxes fusion: ensembling boxes from
different object detection models", Image Vis. Comput. 107: clusters of overlapping boxes averaged with their
scores as weights, the cluster score scaled by the share of views that found it).

The detector is any callable taking a list of ``(C, H, W)`` tensors and returning, per image, a dict with
``boxes`` ``[x_min, y_min, x_max, y_max]`` pixels, ``labels`` and ``scores`` (torchvision's convention), e.g.
:class:`chestzoo.networks.detection.TorchvisionDetector` in eval mode. Scaling helps only if the detector keeps
the scale it is given (that detector does: it resizes by a fixed factor, not to a fixed size).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.apps.detection.transforms.box_ops import flip_boxes, resize_boxes
from torchvision.ops import batched_nms

from .metrics.detection import box_iou

FUSIONS = ("nms", "wbf")


@dataclass(frozen=True)
class View:
    """One test-time augmentation: resize by ``scale``, mirror left-right if ``flip``, multiply intensities by ``brightness``."""

    scale: float = 1.0
    flip: bool = False
    brightness: float = 1.0

    @property
    def name(self) -> str:
        return f"scale{self.scale:g}" + ("_flip" if self.flip else "") + (f"_bright{self.brightness:g}" if self.brightness != 1.0 else "")

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and not self.flip and self.brightness == 1.0

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """The augmented ``(C, H, W)`` image (intensities kept in [0, 1])."""
        out = image
        if self.brightness != 1.0:
            out = (out * self.brightness).clamp(0.0, 1.0)
        if self.scale != 1.0:
            h, w = image.shape[-2:]
            size = (max(1, round(h * self.scale)), max(1, round(w * self.scale)))
            out = F.interpolate(out[None], size=size, mode="bilinear", align_corners=False, antialias=self.scale < 1.0)[0]
        if self.flip:
            out = torch.flip(out, dims=[-1])
        return out

    def boxes_back(self, boxes: torch.Tensor, original_hw: Sequence[int], view_hw: Sequence[int]) -> torch.Tensor:
        """Map boxes found on the augmented image back to the original image's pixels."""
        if len(boxes) == 0:
            return boxes
        h, w = view_hw
        # the box coordinates run x then y, so the spatial sizes are given as (W, H)
        if self.flip:
            boxes = flip_boxes(boxes, spatial_size=(w, h), flip_axes=0)
        if self.scale != 1.0:
            boxes = resize_boxes(boxes, src_spatial_size=(w, h), dst_spatial_size=(original_hw[1], original_hw[0]))
        return boxes


def make_views(scales: Sequence[float] = (0.9, 1.0, 1.1), flip: bool = True, brightness: Sequence[float] = (0.9, 1.1)) -> list[View]:
    """Every scale with and without a flip, plus brightness jitter on the unscaled image; the identity comes first."""
    from .utils import as_bool

    flips = (False, True) if as_bool(flip) else (False,)
    views = [View(float(s), f) for s in scales for f in flips]
    views += [View(1.0, False, float(b)) for b in brightness if float(b) != 1.0]
    views = list(dict.fromkeys(views))
    views.sort(key=lambda v: not v.is_identity)
    return views


def _empty(device=None) -> dict[str, torch.Tensor]:
    return {"boxes": torch.zeros((0, 4), device=device), "labels": torch.zeros(0, dtype=torch.long, device=device), "scores": torch.zeros(0, device=device)}


def fuse_nms(views: Sequence[dict], iou_threshold: float = 0.3, max_detections: int = 100) -> dict[str, torch.Tensor]:
    """Pool the views' boxes and keep, per class, those that no higher-scoring box overlaps by more than the IoU."""
    views = [v for v in views if len(v["boxes"])]
    if not views:
        return _empty()
    boxes = torch.cat([v["boxes"].float() for v in views])
    labels = torch.cat([v["labels"].long() for v in views])
    scores = torch.cat([v["scores"].float() for v in views])
    keep = batched_nms(boxes, scores, labels, float(iou_threshold))[:max_detections]
    return {"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]}


def fuse_wbf(views: Sequence[dict], n_views: int | None = None, iou_threshold: float = 0.55, max_detections: int = 100) -> dict[str, torch.Tensor]:
    """Weighted boxes fusion of the views' boxes, class by class (all views weighted equally).

    Boxes are visited in descending score; each joins the fused box it overlaps most, if by more than
    ``iou_threshold`` (else it starts a new one). A fused box is the score-weighted mean of its members, its score
    the mean member score times min(members, views) / views, so a box found by one view of eight loses 7/8 of it.
    """
    n_views = int(n_views or len(views))
    found = [v for v in views if len(v["boxes"])]
    if not found:
        return _empty()
    boxes = torch.cat([v["boxes"].float() for v in found]).cpu().numpy().astype(np.float64)
    labels = torch.cat([v["labels"].long() for v in found]).cpu().numpy()
    scores = torch.cat([v["scores"].float() for v in found]).cpu().numpy().astype(np.float64)
    out_boxes, out_labels, out_scores = [], [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        fused: list[np.ndarray] = []  # current fused box of each cluster
        weight: list[float] = []  # summed member scores
        weighted: list[np.ndarray] = []  # summed score * coordinates
        count: list[int] = []
        for i in idx:
            k = -1
            if fused:
                overlap = box_iou(boxes[i : i + 1], np.stack(fused))[0]
                if overlap.max() > iou_threshold:
                    k = int(np.argmax(overlap))
            if k >= 0:
                weight[k] += scores[i]
                weighted[k] = weighted[k] + scores[i] * boxes[i]
                count[k] += 1
                fused[k] = weighted[k] / weight[k]
            else:
                fused.append(boxes[i].copy())
                weight.append(scores[i])
                weighted.append(scores[i] * boxes[i])
                count.append(1)
        for k in range(len(fused)):
            out_boxes.append(fused[k])
            out_labels.append(label)
            out_scores.append(weight[k] / count[k] * min(count[k], n_views) / n_views)
    order = np.argsort(-np.asarray(out_scores), kind="stable")[:max_detections]
    return {
        "boxes": torch.as_tensor(np.asarray(out_boxes)[order], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(np.asarray(out_labels)[order], dtype=torch.long),
        "scores": torch.as_tensor(np.asarray(out_scores)[order], dtype=torch.float32),
    }


class TestTimeAugmentation:
    """Run a detector on augmented views of each image and fuse the boxes.

    ``scales``, ``flip`` and ``brightness`` define the views (:func:`make_views`); ``fusion`` is "nms" (at
    ``iou_threshold``, the seed's 0.3) or "wbf" (at ``wbf_iou_threshold``, 0.55 as in Solovyev et al.).
    ``seconds`` accumulates the detector's time per view over all calls, so the cost of TTA can be reported.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        scales: Sequence[float] = (0.9, 1.0, 1.1),
        flip: bool = True,
        brightness: Sequence[float] = (0.9, 1.1),
        fusion: str = "nms",
        iou_threshold: float = 0.3,
        wbf_iou_threshold: float = 0.55,
        max_detections: int = 100,
    ):
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, not {fusion!r}")
        self.views = make_views(scales, flip, brightness)
        self.fusion = fusion
        self.iou_threshold = float(iou_threshold)
        self.wbf_iou_threshold = float(wbf_iou_threshold)
        self.max_detections = int(max_detections)
        self.seconds = {v.name: 0.0 for v in self.views}

    def predict_views(self, detector: Callable, images: Sequence[torch.Tensor]) -> list[list[dict[str, torch.Tensor]]]:
        """Per image, per view: the detector's boxes (mapped back to the image), labels and scores, on the CPU."""
        results: list[list[dict]] = [[] for _ in images]
        for view in self.views:
            batch = [view.apply(image) for image in images]
            start = time.perf_counter()
            outputs = detector(batch)
            if batch and batch[0].is_cuda:
                torch.cuda.synchronize()
            self.seconds[view.name] += time.perf_counter() - start
            for k, (image, augmented, output) in enumerate(zip(images, batch, outputs)):
                boxes = view.boxes_back(output["boxes"].detach().float(), image.shape[-2:], augmented.shape[-2:])
                results[k].append({"boxes": boxes.cpu(), "labels": output["labels"].detach().cpu(), "scores": output["scores"].detach().float().cpu()})
        return results

    def fuse(self, views: Sequence[dict], fusion: str | None = None) -> dict[str, torch.Tensor]:
        fusion = fusion or self.fusion
        if fusion == "nms":
            return fuse_nms(views, self.iou_threshold, self.max_detections)
        if fusion == "wbf":
            return fuse_wbf(views, len(self.views), self.wbf_iou_threshold, self.max_detections)
        raise ValueError(f"fusion must be one of {FUSIONS}, not {fusion!r}")

    def __call__(self, detector: Callable, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [self.fuse(views) for views in self.predict_views(detector, images)]
