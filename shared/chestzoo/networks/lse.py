"""Log-sum-exp pooling and the ChestX-ray8 classifier built around it (Wang et al. 2017).

The classifier is an ImageNet ResNet with its global pooling and fully connected layer removed, a 1x1 "transition"
convolution to 1024 channels, log-sum-exp (LSE) pooling over the spatial grid and one linear layer to the labels.
``forward`` returns logits (apply a sigmoid for the per-label probabilities).

Grey input: the network takes ``(B, 1, H, W)`` images in [0, 1]. It repeats the grey channel to three and applies
the ImageNet mean/std inside ``forward``, so the ImageNet weights see exactly the kind of input they were trained on
(summing conv1's weights over RGB would be equivalent for the repeat but not for the per-channel normalisation).
"""

from __future__ import annotations

import torch
from torch import nn

from .weights import resnet_backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LSEPooling(nn.Module):
    """Log-sum-exp pooling over the spatial dimensions: ``(B, C, *spatial) -> (B, C)``.

    ``x_p = x* + (1/r) log(mean(exp(r (x - x*))))`` with ``x*`` the spatial maximum (Wang et al. 2017, eq. 1).
    Subtracting the maximum keeps ``exp`` from overflowing for large ``r``; writing the log-mean as
    ``log1p(mean(expm1(.)))`` keeps it accurate for small ``r``, where ``exp(.)`` rounds to 1. ``r`` is clamped to at
    least ``eps`` so that ``1/r`` stays finite. The result tends to max pooling as ``r`` grows and to average pooling
    as ``r`` goes to 0.
    """

    def __init__(self, r: float = 10.0, eps: float = 1e-6):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LSE pooling needs r > 0, got r={r}")
        self.r = float(r)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        x_max = flat.amax(dim=2, keepdim=True)
        r = max(self.r, self.eps)
        log_mean = torch.log1p(torch.expm1(r * (flat - x_max)).mean(dim=2))
        return x_max.squeeze(2) + log_mean / r

    def extra_repr(self) -> str:
        return f"r={self.r}, eps={self.eps}"


class LSEClassifier(nn.Module):
    """ResNet backbone + transition layer + LSE pooling + linear layer (Wang et al. 2017).

    Args:
        num_classes: number of labels (14 for ChestX-ray14, 8 for its box classes).
        backbone: a torchvision ResNet name (``resnet18`` ... ``resnet152``); ``resnet50`` as in the paper.
        pretrained: start from torchvision's ImageNet weights (they must be in the torch hub cache or downloadable).
        transition_channels: output channels of the 1x1 transition convolution (1024 in the paper).
        r, eps: LSE pooling sharpness and the floor on ``r``.
        in_channels: 1 for grey radiographs (repeated to RGB inside), 3 for RGB input.
    """

    def __init__(
        self,
        num_classes: int = 14,
        backbone: str = "resnet50",
        pretrained: bool = True,
        transition_channels: int = 1024,
        r: float = 10.0,
        eps: float = 1e-6,
        in_channels: int = 1,
    ):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}")
        self.in_channels = in_channels
        self.backbone, features = resnet_backbone(backbone, pretrained)
        self.transition = nn.Conv2d(features, transition_channels, kernel_size=1)
        self.pool = LSEPooling(r=r, eps=eps)
        self.classifier = nn.Linear(transition_channels, num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Transition-layer activations ``(B, transition_channels, h, w)``, the map that LSE pooling reduces."""
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        return self.transition(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.feature_map(x)))

    def class_activation_map(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's heatmap: transition activations weighted by the classifier weights, ``(B, num_classes, h, w)``."""
        return torch.einsum("kc,bchw->bkhw", self.classifier.weight, self.feature_map(x))
