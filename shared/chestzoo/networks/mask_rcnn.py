"""Mask R-CNN for lung-opacity localisation, on :class:`chestzoo.networks.detection.TorchvisionDetector`.

:class:`MaskRCNNDetector` is the shared torchvision detector wrapper (grey images in [0, 1], 0-based labels,
fixed-factor input scaling, boxes in pixels of the input, a packed tensor output for a batch tensor and in
TorchScript) with the mask head always on and its size configurable:

- ``backbone="resnet50_fpn_v2"``: torchvision's ``maskrcnn_resnet50_fpn_v2`` with optional COCO weights (one clear
  line when they cannot be had offline) and torchvision's mask head (four 3x3 convolutions of 256 channels);
- the small backbones (``resnet18_fpn``, ``resnet34_fpn``) train from scratch with ``fpn_channels`` /
  ``fpn_stages`` as in the wrapper, and here also ``mask_head_channels`` x ``mask_head_layers``. torchvision's
  mask head on small images costs as much as the rest of a compact detector; two layers of 64 channels keep a
  64-pixel Mask R-CNN trainable on a CPU in minutes.

In eval mode a list of images gives, per image, ``boxes``, ``labels``, ``scores`` and ``masks`` ``(N, 1, H, W)``
(probabilities in pixels of the input); a ``(B, C, H, W)`` batch gives the wrapper's packed ``(B, 6, K)`` tensor.
"""

from __future__ import annotations

from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from .detection import TorchvisionDetector

TORCHVISION_MASK_HEAD = (256, 4)  # channels, layers


class MaskRCNNDetector(TorchvisionDetector):
    """Mask R-CNN (see the module doc). ``box_nms_thresh`` is the detector's own NMS IoU; the RSNA bundle keeps it
    loose and tunes the final NMS and score threshold on validation data
    (:func:`chestzoo.metrics.rsna.tune_postprocessing`)."""

    def __init__(
        self,
        num_classes: int = 1,
        backbone: str = "resnet50_fpn_v2",
        fpn_channels: int = 256,
        mask_head_channels: int = TORCHVISION_MASK_HEAD[0],
        mask_head_layers: int = TORCHVISION_MASK_HEAD[1],
        box_nms_thresh: float = 0.5,
        **kwargs,
    ):
        """The other arguments (weights, scaling, anchors, FPN stages, detection limits) are
        :class:`TorchvisionDetector`'s."""
        head = (int(mask_head_channels), int(mask_head_layers))
        if head[0] < 1 or head[1] < 1:
            raise ValueError(f"the mask head needs at least one layer of at least one channel, not {head[1]} x {head[0]}")
        if head != TORCHVISION_MASK_HEAD:
            if backbone == "resnet50_fpn_v2":
                raise ValueError("resnet50_fpn_v2 keeps torchvision's mask head (its COCO weights fit it): "
                                 "mask_head_channels and mask_head_layers apply to the small backbones")
            channels = (head[0],) * head[1]
            kwargs["mask_head"] = MaskRCNNHeads(int(fpn_channels), channels, 1)
            kwargs["mask_predictor"] = MaskRCNNPredictor(head[0], head[0], int(num_classes) + 1)
        super().__init__(num_classes, architecture="maskrcnn", backbone=backbone, fpn_channels=fpn_channels,
                         box_nms_thresh=box_nms_thresh, **kwargs)
