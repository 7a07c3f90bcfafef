"""torchvision R-CNN detectors (Faster R-CNN, Mask R-CNN) wrapped for chest radiographs.

:class:`TorchvisionDetector` takes what the chestzoo datalists give: grey ``(1, H, W)`` images in [0, 1] and
targets whose ``labels`` are 0-based indices into the dataset's box classes. torchvision reserves label 0 for the
background, so the wrapper shifts labels by one on the way in and back on the way out; grey images are repeated to
the three channels that COCO weights expect.

Input size: torchvision normally rescales every image so that its short side is ``min_size`` (800). The wrapper
never does that; it resizes by a fixed ``image_scale`` instead (1.0, the default, leaves the image as stored, e.g. a
1024 x 1024 NIH radiograph is seen at 1024 x 1024). A fixed factor keeps test-time scale augmentation meaningful: a
view enlarged by 1.1 reaches the backbone enlarged by 1.1 instead of being resized back. Predicted boxes are always
returned in pixels of the image that was passed in.

Backbones: ``resnet50_fpn_v2`` is torchvision's improved ResNet-50 FPN (Li et al. 2021 recipe, BatchNorm in the
heads) with optional COCO weights; ``resnet18_fpn``, ``resnet34_fpn`` and ``mobilenet_v3_large_fpn`` are small
variants trained from scratch (BatchNorm, all layers trainable), with a slimmer box head and anchors that can be
sized to small images. ``architecture="maskrcnn"`` adds the mask head (targets then also carry ``masks``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Optional
from urllib.error import URLError

import torch
from torch import Tensor, nn
from torchvision.models import detection as tvd
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN, mobilenet_backbone
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform, _resize_image_and_masks, resize_boxes

from .weights import PretrainedWeightsUnavailable

ARCHITECTURES = ("fasterrcnn", "maskrcnn")
BACKBONES = ("resnet50_fpn_v2", "resnet18_fpn", "resnet34_fpn", "mobilenet_v3_large_fpn")
# ImageNet statistics: the COCO detectors were trained on images normalised with them.
IMAGE_MEAN = [0.485, 0.456, 0.406]
IMAGE_STD = [0.229, 0.224, 0.225]
ASPECT_RATIOS = (0.5, 1.0, 2.0)


class ScaledRCNNTransform(GeneralizedRCNNTransform):
    """torchvision's R-CNN input transform, resizing by a fixed factor instead of to a fixed short side."""

    def __init__(self, image_scale: float = 1.0, image_mean=IMAGE_MEAN, image_std=IMAGE_STD, size_divisible: int = 32):
        # min_size / max_size are unused by the overridden resize; torchvision's constructor wants them.
        super().__init__(min_size=800, max_size=1333, image_mean=list(image_mean), image_std=list(image_std), size_divisible=size_divisible)
        if not image_scale > 0:
            raise ValueError(f"image_scale must be positive, not {image_scale}")
        self.image_scale = float(image_scale)

    def resize(self, image: Tensor, target: Optional[dict[str, Tensor]] = None) -> tuple[Tensor, Optional[dict[str, Tensor]]]:
        if self.image_scale == 1.0:
            return image, target
        h, w = image.shape[-2:]
        size = (max(1, int(round(w * self.image_scale))), max(1, int(round(h * self.image_scale))))  # (W, H) as torchvision wants
        image, target = _resize_image_and_masks(image, 0, 0, target, size)
        if target is None:
            return image, target
        target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        return image, target


def coco_state_dict(weights, weights_path: str | None = None) -> dict:
    """State dict of torchvision COCO ``weights`` from ``weights_path``, the torch hub cache, or a download into it."""
    if weights_path:
        if not os.path.isfile(weights_path):
            raise PretrainedWeightsUnavailable(f"COCO weights file {weights_path} not found")
        return torch.load(weights_path, map_location="cpu", weights_only=True)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    try:
        return weights.get_state_dict(progress=False, check_hash=False)
    except (URLError, OSError) as exc:
        raise PretrainedWeightsUnavailable(
            f"COCO weights {os.path.basename(weights.url)} are not available ({type(exc).__name__}: {exc}); "
            f"run with `--pretrained False`, or put the file (from {weights.url}) at {cached}"
        ) from None


def _freeze_early_stages(body: nn.Module, trainable_layers: int) -> None:
    """Freeze all but the last ``trainable_layers`` of conv1, layer1 ... layer4 (torchvision's rule for pretrained
    backbones; applied here because the COCO weights are loaded after the model is built)."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_backbone_layers must be in 0..5, not {trainable_layers}")
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        train.append("bn1")
    for name, parameter in body.named_parameters():
        if not any(name.startswith(layer) for layer in train):
            parameter.requires_grad_(False)


def _small_backbone(name: str, fpn_channels: int, fpn_stages: Sequence[int] | None) -> nn.Module:
    """A randomly initialised backbone with BatchNorm (frozen statistics would never be learned) and an FPN."""
    if name == "mobilenet_v3_large_fpn":
        if fpn_stages is not None or fpn_channels != 256:
            raise ValueError("mobilenet_v3_large_fpn has torchvision's fixed FPN: leave fpn_channels and fpn_stages at their defaults")
        return mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None, fpn=True, trainable_layers=6, norm_layer=nn.BatchNorm2d)
    stages = list(fpn_stages or (1, 2, 3, 4))
    if not stages or any(s not in (1, 2, 3, 4) for s in stages) or stages != sorted(set(stages)):
        raise ValueError(f"fpn_stages must be increasing ResNet stages among 1, 2, 3, 4, not {stages}")
    body = resnet.__dict__[name.replace("_fpn", "")](weights=None, norm_layer=nn.BatchNorm2d)
    stage1_channels = body.inplanes // 8  # 64 for ResNet-18/34: stage k has 64 * 2 ** (k - 1) channels
    return BackboneWithFPN(
        body,
        return_layers={f"layer{s}": str(k) for k, s in enumerate(stages)},
        in_channels_list=[stage1_channels * 2 ** (s - 1) for s in stages],
        out_channels=int(fpn_channels),
        extra_blocks=LastLevelMaxPool(),
    )


def _feature_levels(backbone: str, fpn_stages: Sequence[int] | None) -> int:
    if backbone == "mobilenet_v3_large_fpn":
        return 3
    return len(fpn_stages or (1, 2, 3, 4)) + 1  # one level per stage plus the max-pooled one


def build_rcnn(
    num_classes: int,
    architecture: str = "fasterrcnn",
    backbone: str = "resnet50_fpn_v2",
    pretrained: bool = False,
    weights_path: str | None = None,
    trainable_backbone_layers: int = 5,
    anchor_sizes: Sequence[int] | None = None,
    representation_size: int = 1024,
    fpn_channels: int = 256,
    fpn_stages: Sequence[int] | None = None,
    **kwargs,
) -> tvd.GeneralizedRCNN:
    """A torchvision Faster or Mask R-CNN with ``num_classes`` foreground classes (plus torchvision's background).

    ``pretrained`` loads COCO weights (``resnet50_fpn_v2`` only) and replaces the class-specific predictors.
    ``anchor_sizes`` gives one anchor size per feature level (torchvision: 32, 64, 128, 256, 512).
    The small ResNet backbones take ``fpn_channels`` (torchvision: 256) and ``fpn_stages``, the ResNet stages
    that feed the FPN (torchvision: 1, 2, 3, 4 at strides 4 to 32; a max-pooled level is added on top), and
    ``representation_size``, the width of the two-layer box head; the cost of a small detector is mostly the FPN
    and RPN convolutions at stride 4, so (2, 3, 4) with 64 channels is several times cheaper.
    Other keywords go to torchvision's ``FasterRCNN`` / ``MaskRCNN`` (box_nms_thresh, box_score_thresh, ...).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, not {architecture!r}")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, not {backbone!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, not {num_classes}")
    if pretrained and backbone != "resnet50_fpn_v2":
        raise ValueError(f"COCO weights exist only for resnet50_fpn_v2; use --pretrained False with {backbone}")
    mask = architecture == "maskrcnn"
    if backbone == "resnet50_fpn_v2" and (fpn_stages is not None or fpn_channels != 256):
        raise ValueError("resnet50_fpn_v2 keeps torchvision's FPN: fpn_channels and fpn_stages apply to the small backbones")
    anchors = None
    if anchor_sizes is not None:
        levels = _feature_levels(backbone, fpn_stages)
        if len(anchor_sizes) != levels:
            raise ValueError(f"{backbone} has {levels} feature levels: give {levels} anchor sizes, not {list(anchor_sizes)}")
        # one size and three aspect ratios per level: three anchors per location, as the RPN heads expect
        anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), (ASPECT_RATIOS,) * levels)

    if backbone == "resnet50_fpn_v2":
        builder = tvd.maskrcnn_resnet50_fpn_v2 if mask else tvd.fasterrcnn_resnet50_fpn_v2
        weights_enum = tvd.MaskRCNN_ResNet50_FPN_V2_Weights if mask else tvd.FasterRCNN_ResNet50_FPN_V2_Weights
        model = builder(weights=None, weights_backbone=None, num_classes=91 if pretrained else num_classes + 1,
                        trainable_backbone_layers=None, **kwargs)
        if pretrained:
            model.load_state_dict(coco_state_dict(weights_enum.COCO_V1, weights_path))
            _freeze_early_stages(model.backbone.body, trainable_backbone_layers)
            model.roi_heads.box_predictor = FastRCNNPredictor(model.roi_heads.box_predictor.cls_score.in_features, num_classes + 1)
            if mask:
                model.roi_heads.mask_predictor = MaskRCNNPredictor(256, 256, num_classes + 1)
        if anchors is not None:
            model.rpn.anchor_generator = anchors
        return model

    body = _small_backbone(backbone, fpn_channels, fpn_stages)
    if anchors is None:
        levels = _feature_levels(backbone, fpn_stages)
        anchors = AnchorGenerator(tuple((32 * 2**k,) for k in range(levels)), (ASPECT_RATIOS,) * levels)
    if anchors is not None:
        kwargs["rpn_anchor_generator"] = anchors
    box_head = TwoMLPHead(body.out_channels * 7 * 7, representation_size)
    box_predictor = FastRCNNPredictor(representation_size, num_classes + 1)
    cls = tvd.MaskRCNN if mask else tvd.FasterRCNN
    return cls(body, num_classes=None, box_head=box_head, box_predictor=box_predictor, **_for_mask(mask, num_classes, kwargs))


def _for_mask(mask: bool, num_classes: int, kwargs: dict) -> dict:
    if mask:
        kwargs = dict(kwargs)
        kwargs.setdefault("mask_predictor", MaskRCNNPredictor(256, 256, num_classes + 1))
    return kwargs


class TorchvisionDetector(nn.Module):
    """A torchvision R-CNN that speaks chestzoo: grey images, 0-based class labels, fixed-factor input scaling.

    ``forward(images, targets=None)``:

    - training mode: ``images`` a list of ``(C, H, W)`` tensors (C = 1 or 3) or a batch tensor, ``targets`` dicts
      with ``boxes`` ``(N, 4)`` as ``[x_min, y_min, x_max, y_max]`` pixels, ``labels`` ``(N,)`` 0-based (and
      ``masks`` for Mask R-CNN): returns torchvision's dict of losses;
    - eval mode, a list of images: a list of dicts with ``boxes``, ``labels`` (0-based), ``scores`` (and ``masks``);
    - eval mode, a batch tensor ``(B, C, H, W)`` (and always in TorchScript): the packed tensor of :meth:`pack`,
      ``(B, 6, max_detections)`` with rows x_min, y_min, x_max, y_max, score, label, padded with label -1.

    Defaults follow the DLIA 2025 seed: NMS at IoU 0.3 between a class's boxes, all five backbone stages
    trainable, images as stored (``image_scale`` 1). ``trainable_backbone_layers`` matters only with COCO weights;
    the small backbones train every layer.
    """

    FIELDS = ("x_min", "y_min", "x_max", "y_max", "score", "label")

    def __init__(
        self,
        num_classes: int,
        architecture: str = "fasterrcnn",
        backbone: str = "resnet50_fpn_v2",
        pretrained: bool = False,
        weights_path: str | None = None,
        trainable_backbone_layers: int = 5,
        image_scale: float = 1.0,
        anchor_sizes: Sequence[int] | None = None,
        representation_size: int = 1024,
        fpn_channels: int = 256,
        fpn_stages: Sequence[int] | None = None,
        box_nms_thresh: float = 0.3,
        box_score_thresh: float = 0.01,
        box_detections_per_img: int = 100,
        **kwargs,
    ):
        super().__init__()
        from ..utils import as_bool

        self.num_classes = int(num_classes)
        self.max_detections = int(box_detections_per_img)
        self.model = build_rcnn(
            self.num_classes,
            architecture=architecture,
            backbone=backbone,
            pretrained=as_bool(pretrained),
            weights_path=weights_path,
            trainable_backbone_layers=int(trainable_backbone_layers),
            anchor_sizes=anchor_sizes,
            representation_size=int(representation_size),
            fpn_channels=int(fpn_channels),
            fpn_stages=fpn_stages,
            box_nms_thresh=float(box_nms_thresh),
            box_score_thresh=float(box_score_thresh),
            box_detections_per_img=self.max_detections,
            **kwargs,
        )
        self.model.transform = ScaledRCNNTransform(image_scale)

    @property
    def image_scale(self) -> float:
        return self.model.transform.image_scale

    def _to_rgb(self, image: Tensor) -> Tensor:
        if image.dim() != 3:
            raise ValueError(f"expected (C, H, W) images, got shape {list(image.shape)}")
        if image.shape[0] == 1:
            return image.expand(3, image.shape[1], image.shape[2])
        return image

    def _shift_labels(self, item: dict[str, Tensor], offset: int) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key, value in item.items():
            out[key] = value + offset if key == "labels" else value
        return out

    def forward(self, images: Tensor, targets: Optional[list[dict[str, Tensor]]] = None) -> Tensor:
        if torch.jit.is_scripting():
            return self.pack(self.detect([images[i] for i in range(images.shape[0])]))
        return self._eager_forward(images, targets)

    @torch.jit.unused
    def _eager_forward(self, images, targets=None):
        if self.training:
            if targets is None:
                raise ValueError("in training mode the detector needs targets (boxes and labels for every image)")
            return self.model([self._to_rgb(image) for image in images], [self._shift_labels(t, 1) for t in targets])
        if isinstance(images, Tensor) and images.dim() == 4:
            return self.pack(self.detect(list(images)))
        return self.detect(list(images))

    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections for a list of images (the network must be in eval mode)."""
        rgb = [self._to_rgb(image) for image in images]
        if torch.jit.is_scripting():
            _, detections = self.model(rgb, None)
        else:
            detections = self._eager_detect(rgb)
        return [self._shift_labels(d, -1) for d in detections]

    @torch.jit.unused
    def _eager_detect(self, rgb: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.model(rgb)

    def pack(self, detections: list[dict[str, Tensor]]) -> Tensor:
        """Detections as one tensor ``(B, 6, max_detections)``: x_min, y_min, x_max, y_max, score, label (-1 = none)."""
        packed = torch.zeros((len(detections), 6, self.max_detections))
        packed[:, 5] = -1.0
        for i, d in enumerate(detections):
            n = min(self.max_detections, int(d["boxes"].shape[0]))
            packed[i, 0:4, :n] = d["boxes"][:n].t().float().cpu()
            packed[i, 4, :n] = d["scores"][:n].float().cpu()
            packed[i, 5, :n] = d["labels"][:n].float().cpu()
        return packed


def unpack(packed: Tensor) -> list[dict[str, Tensor]]:
    """The inverse of :meth:`TorchvisionDetector.pack`: per image, the boxes, scores and labels of the filled rows."""
    out = []
    for rows in packed:
        keep = rows[5] >= 0
        out.append({"boxes": rows[0:4, keep].t(), "scores": rows[4, keep], "labels": rows[5, keep].long()})
    return out
