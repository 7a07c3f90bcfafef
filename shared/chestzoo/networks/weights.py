"""torchvision backbones with ImageNet weights from the local torch hub cache, failing in one clear line offline."""

from __future__ import annotations

import os
from urllib.error import URLError

import torch
from torch import nn
from torchvision.models import get_model, get_model_weights


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights are neither in the torch hub cache nor downloadable."""


def imagenet_weights_file(name: str) -> tuple[str, str]:
    """Where torchvision keeps ``name``'s default ImageNet weights: (URL, local file in the torch hub cache)."""
    url = get_model_weights(name).DEFAULT.url
    return url, os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def imagenet_state_dict(name: str) -> dict:
    """The ImageNet state dict of torchvision model ``name``, from the hub cache or downloaded into it."""
    url, path = imagenet_weights_file(name)
    weights = get_model_weights(name).DEFAULT
    try:
        return weights.get_state_dict(progress=False, check_hash=False)
    except (URLError, OSError) as exc:
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights for {name} are not available ({type(exc).__name__}: {exc}); "
            f"run with `--pretrained False`, or put {os.path.basename(url)} (from {url}) at {path}"
        ) from None


def resnet_backbone(name: str = "resnet50", pretrained: bool = True) -> tuple[nn.Sequential, int]:
    """A torchvision ResNet without its global pooling and fully connected layer, and its output channel count."""
    if not name.startswith(("resnet", "resnext", "wide_resnet")):
        raise ValueError(f"backbone must be a torchvision ResNet (resnet18 ... resnet152), got {name!r}")
    model = get_model(name, weights=None)
    if pretrained:
        model.load_state_dict(imagenet_state_dict(name))
    features = model.fc.in_features
    layers = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3, model.layer4)
    return layers, features
