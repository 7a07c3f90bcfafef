"""DCGAN generator and discriminator (Radford et al. 2016) for square grey images of any power-of-two size.

The layout follows the DCGAN paper: the generator projects a latent vector to a 4x4 map with a transposed
convolution and doubles the resolution with stride-2 transposed convolutions (batch norm and ReLU after each,
tanh at the end, so images come out in [-1, 1]); the discriminator mirrors it with stride-2 convolutions and
leaky ReLUs down to 4x4 and one 4x4 convolution to a single logit. The number of stages follows ``image_size``
(4 doublings for 64x64, 5 for 128x128), so one class serves both.

Weights are drawn from N(0, 0.02) (norm-layer scales from N(1, 0.02), biases zero), as the paper prescribes,
inside ``__init__``: the initialisation cannot be forgotten by the caller. ``dcgan_init`` is public so that a test
or a config can re-apply it.

The discriminator returns logits (no sigmoid) so that losses can use the numerically stable
``binary_cross_entropy_with_logits``; a WGAN-GP critic is the same network with ``norm="layer"`` (the gradient
penalty is per sample, which batch norm would break).
"""

from __future__ import annotations

import math

import torch
from torch import nn

NORMS = ("batch", "layer", "instance", "none")
_NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)


def dcgan_init(module: nn.Module, std: float = 0.02) -> None:
    """DCGAN initialisation of one module (use with ``model.apply``): conv weights N(0, std), norm scales N(1, std)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, _NORM_TYPES) and getattr(module, "weight", None) is not None:
        nn.init.normal_(module.weight, 1.0, std)
        nn.init.zeros_(module.bias)


def _stages(image_size: int) -> int:
    """Number of resolution doublings between 4x4 and ``image_size``."""
    stages = math.log2(image_size) - 2 if image_size > 0 else -1
    if stages < 1 or not float(stages).is_integer():
        raise ValueError(f"image_size must be a power of two of at least 8 (64, 128, ...), got {image_size}")
    return int(stages)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":  # one group = normalise over (C, H, W) of each sample: layer norm for conv maps
        return nn.GroupNorm(1, channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class DCGANGenerator(nn.Module):
    """Latent vector ``(B, latent_size)`` (or ``(B, latent_size, 1, 1)``) to image ``(B, out_channels, S, S)`` in [-1, 1].

    ``ngf`` is the width of the last hidden stage; each earlier stage doubles it (64x64: 8, 4, 2, 1 x ngf).
    """

    def __init__(self, latent_size: int = 100, ngf: int = 64, image_size: int = 64, out_channels: int = 1,
                 init_std: float = 0.02):
        super().__init__()
        stages = _stages(image_size)
        self.latent_size, self.image_size, self.out_channels = int(latent_size), int(image_size), int(out_channels)
        width = ngf * 2 ** (stages - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_size, width, 4, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, out_channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(lambda m: dcgan_init(m, init_std))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        elif z.dim() != 4 or z.shape[2] != 1 or z.shape[3] != 1:
            raise ValueError(f"expected latent vectors of shape (B, {self.latent_size}) or (B, {self.latent_size}, 1, 1), got {list(z.shape)}")
        if z.shape[1] != self.latent_size:
            raise ValueError(f"expected latent size {self.latent_size}, got {z.shape[1]}")
        return self.net(z)


class DCGANDiscriminator(nn.Module):
    """Image ``(B, in_channels, S, S)`` to one real-vs-fake logit per image, shape ``(B,)``.

    ``ndf`` is the width of the first stage; each later stage doubles it (64x64: 1, 2, 4, 8 x ndf). The first
    stage has no normalisation (as in the DCGAN paper); ``norm`` sets the others.
    """

    def __init__(self, ndf: int = 128, image_size: int = 64, in_channels: int = 1, norm: str = "batch",
                 init_std: float = 0.02):
        super().__init__()
        stages = _stages(image_size)
        self.image_size, self.in_channels = int(image_size), int(in_channels)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(stages - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), _norm(norm, width * 2), nn.LeakyReLU(0.2, True)]
            width *= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, 1, 4, 1, 0, bias=False)
        self.apply(lambda m: dcgan_init(m, init_std))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if image.dim() != 4 or image.shape[1] != self.in_channels or image.shape[2] != size or image.shape[3] != size:
            raise ValueError(f"expected images of shape (B, {self.in_channels}, {size}, {size}), got {list(image.shape)}")
        return self.head(self.features(image)).flatten()
