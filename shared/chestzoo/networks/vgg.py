"""VGG16 for grey radiographs: torchvision's VGG16 (optionally ImageNet-initialised) taking one channel in [0, 1].

Transfer learning in the usual way: the 13 convolution layers come from ImageNet and only the top of the network is
fine-tuned (or, without ImageNet weights, everything trains from scratch). ``trainable_blocks`` says how many of the five convolution blocks (counted from the top) train along
with the classifier head; the blocks below stay frozen, batch-norm statistics included.

One input channel: ImageNet VGG16 expects RGB normalised with the ImageNet mean and standard deviation. A grey image
copied into three channels and normalised that way gives the first convolution the response
``sum_c w_c (x - m_c) / s_c``, so the three kernels fold exactly into one kernel ``sum_c w_c / s_c`` and a bias
shift ``-sum_c w_c m_c / s_c`` (exact except at the one-pixel border, where zero padding differs). The network
therefore takes the [0, 1] images of :mod:`chestzoo.data.io` directly.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from .weights import imagenet_state_dict


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEADS = ("gap", "imagenet")
BLOCKS = 5
VGG16_LAYERS = cfgs["D"]  # 13 convolutions in five blocks, each block ending with max pooling


def _init(module: nn.Module) -> None:
    """torchvision's VGG initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def _part(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def fold_rgb_normalisation(conv: nn.Conv2d, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> nn.Conv2d:
    """A one-channel convolution equal to ``conv`` applied to a grey image copied to RGB and ImageNet-normalised."""
    if conv.in_channels != 3:
        raise ValueError(f"expected a 3-channel convolution, got {conv.in_channels} input channels")
    mean_t = torch.tensor(mean, dtype=conv.weight.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=conv.weight.dtype).view(1, 3, 1, 1)
    grey = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=True)
    with torch.no_grad():
        scaled = conv.weight / std_t
        grey.weight.copy_(scaled.sum(dim=1, keepdim=True))
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
        grey.bias.copy_(bias - (scaled * mean_t).sum(dim=(1, 2, 3)))
    return grey


def _block_slices(features: nn.Sequential) -> list[slice]:
    """Index ranges of the five convolution blocks in ``features`` (each ends with its max pooling)."""
    slices, start = [], 0
    for i, layer in enumerate(features):
        if isinstance(layer, nn.MaxPool2d):
            slices.append(slice(start, i + 1))
            start = i + 1
    if len(slices) != BLOCKS:
        raise RuntimeError(f"expected {BLOCKS} VGG blocks, found {len(slices)}")
    return slices


class VGG16Classifier(nn.Module):
    """VGG16 classifier for one-channel images in [0, 1].

    Args:
        num_classes: outputs (logits) of the last layer.
        pretrained: start from torchvision's ImageNet weights (from the torch hub cache, downloaded when possible;
            offline without the file it stops with one line naming the file and ``--pretrained False``).
        trainable_blocks: how many of the five convolution blocks, from the top, train (0: head only, 5: all).
            ``None`` means 1 (block 5 and the head: fine-tuning the top layers) when pretrained and 5 when not,
            since frozen random filters are of no use.
        head: ``"gap"`` (global average pooling, dropout, a hidden layer, dropout, output; new layers on top of the
            ImageNet features) or ``"imagenet"`` (VGG16's own 7x7 pooling and 4096-4096 fully connected layers, with
            their ImageNet weights when pretrained; only the last layer is new).
        hidden: width of the ``"gap"`` head's hidden layer.
        dropout: dropout probability in the head.
        batch_norm: VGG16 with batch normalisation (torchvision ``vgg16_bn``).
    """

    def __init__(
        self,
        num_classes: int = 2,
        pretrained: bool = True,
        trainable_blocks: int | None = None,
        head: str = "gap",
        hidden: int = 256,
        dropout: float = 0.5,
        batch_norm: bool = False,
    ):
        super().__init__()
        from ..utils import as_bool

        pretrained, batch_norm = as_bool(pretrained), as_bool(batch_norm)
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if trainable_blocks is None:
            trainable_blocks = 1 if pretrained else BLOCKS
        trainable_blocks = int(trainable_blocks)
        if not 0 <= trainable_blocks <= BLOCKS:
            raise ValueError(f"trainable_blocks must be between 0 and {BLOCKS}, got {trainable_blocks}")
        # torchvision's layer layout, so that the ImageNet state dict loads by name
        features = make_layers(VGG16_LAYERS, batch_norm=batch_norm)
        _init(features)
        state = imagenet_state_dict("vgg16_bn" if batch_norm else "vgg16") if pretrained else None
        if state is not None:
            features.load_state_dict(_part(state, "features."))
            features[0] = fold_rgb_normalisation(features[0])
        else:
            features[0] = nn.Conv2d(1, 64, kernel_size=3, padding=1)
            _init(features[0])
        self.features = features
        self.num_classes = int(num_classes)
        self.trainable_blocks = trainable_blocks
        self.head_type = head
        if head == "gap":
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Sequential(
                nn.Flatten(),
                nn.Dropout(dropout),
                nn.Linear(512, hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden, self.num_classes),
            )
            _init(self.head)
        else:
            # VGG16's own classifier (torchvision indices 0, 3, 6 become 1, 4, 7 after the Flatten)
            self.pool = nn.AdaptiveAvgPool2d((7, 7))
            self.head = nn.Sequential(
                nn.Flatten(),
                nn.Linear(512 * 7 * 7, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(4096, self.num_classes),
            )
            if state is not None:
                for ours, theirs in ((1, 0), (4, 3)):
                    self.head[ours].load_state_dict(_part(state, f"classifier.{theirs}."))
            _init(self.head[-1] if state is not None else self.head)
        self._frozen = [self.features[s] for s in _block_slices(self.features)[: BLOCKS - trainable_blocks]]
        for block in self._frozen:
            for p in block.parameters():
                p.requires_grad_(False)

    def gradcam_layer(self, image_size: int | None = None, min_size: int = 7) -> str:
        """Name of the Grad-CAM target layer: the last ReLU of the deepest block whose maps stay at least
        ``min_size`` pixels wide for ``image_size`` input (block 5, 14 x 14, at 224; block 3 at 32); without
        ``image_size``, block 5."""
        relus = [i for i, layer in enumerate(self.features) if isinstance(layer, nn.ReLU)]
        ends = [max(i for i in relus if i < s.stop) for s in _block_slices(self.features)]
        block = BLOCKS
        if image_size is not None:
            while block > 1 and int(image_size) // 2 ** (block - 1) < min_size:
                block -= 1
        return f"features.{ends[block - 1]}"

    def train(self, mode: bool = True):
        super().train(mode)
        # frozen blocks keep their ImageNet batch-norm statistics
        for block in self._frozen:
            block.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))
