"""Networks shared by the bundles."""

from .checkpoint import latest_checkpoint
from .lse import LSEClassifier, LSEPooling
from .weights import PretrainedWeightsUnavailable, imagenet_state_dict, imagenet_weights_file, resnet_backbone

__all__ = [
    "LSEClassifier",
    "LSEPooling",
    "PretrainedWeightsUnavailable",
    "imagenet_state_dict",
    "imagenet_weights_file",
    "latest_checkpoint",
    "resnet_backbone",
]
