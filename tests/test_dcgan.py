"""DCGAN generator and discriminator: shapes at 64 and 128 pixels, the N(0, 0.02) initialisation really applied,
per-sample critics for WGAN-GP, TorchScript."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from chestzoo.networks.dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_init


def _excess_kurtosis(x: torch.Tensor) -> float:
    x = x.double().flatten()
    z = (x - x.mean()) / x.std()
    return float((z**4).mean() - 3.0)


@pytest.mark.parametrize("size, stages", [(64, 4), (128, 5)])
def test_generator_shapes_and_range(size, stages):
    g = DCGANGenerator(latent_size=100, ngf=8, image_size=size)
    z = torch.randn(3, 100)
    out = g(z)
    assert out.shape == (3, 1, size, size)
    assert out.abs().max() <= 1.0  # tanh
    torch.testing.assert_close(g.eval()(z), g(z[:, :, None, None]))  # (B, nz) and (B, nz, 1, 1) are the same input
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in g.modules()) == stages + 1
    widths = [m.out_channels for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert widths == [8 * 2 ** (stages - 1 - i) for i in range(stages)] + [1]  # ngf is the last hidden width


@pytest.mark.parametrize("size", [64, 128])
def test_discriminator_shapes(size):
    d = DCGANDiscriminator(ndf=8, image_size=size)
    assert d(torch.randn(4, 1, size, size)).shape == (4,)
    widths = [m.out_channels for m in d.features if isinstance(m, nn.Conv2d)]
    assert widths[0] == 8 and widths[-1] == 8 * 2 ** (len(widths) - 1)
    with pytest.raises(ValueError, match="expected images of shape"):
        d(torch.randn(4, 1, size // 2, size // 2))


def test_bad_sizes_are_refused():
    for size in (48, 4, 100):
        with pytest.raises(ValueError, match="power of two"):
            DCGANGenerator(image_size=size)
    with pytest.raises(ValueError, match="latent size"):
        DCGANGenerator(latent_size=100, ngf=8)(torch.randn(2, 64))
    with pytest.raises(ValueError, match="norm must be"):
        DCGANDiscriminator(ndf=8, norm="spectral")


def test_initialisation_is_applied_in_the_constructor():
    """Every conv weight ~ N(0, 0.02) and every norm scale ~ N(1, 0.02): not PyTorch's default uniform init."""
    torch.manual_seed(0)
    for net in (DCGANGenerator(ngf=32), DCGANDiscriminator(ndf=32)):
        convs = [m.weight.detach() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.weight.numel() > 20000]
        assert convs
        for w in convs:
            assert abs(float(w.mean())) < 0.002
            assert 0.0185 < float(w.std()) < 0.0215
            assert abs(_excess_kurtosis(w)) < 0.3  # a normal law; the default (uniform) gives -1.2
        norms = torch.cat([m.weight.detach() for m in net.modules() if isinstance(m, nn.BatchNorm2d)])
        assert abs(float(norms.mean()) - 1.0) < 0.005 and 0.015 < float(norms.std()) < 0.025  # default would be all 1
        biases = [m.bias for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        assert all(float(b.abs().max()) == 0.0 for b in biases)


def test_default_pytorch_initialisation_would_fail_the_check():
    """The kurtosis check above tells N(0, 0.02) from PyTorch's default, so it would catch an init that never ran."""
    torch.manual_seed(0)
    plain = nn.ConvTranspose2d(256, 128, 4, 2, 1, bias=False)
    assert _excess_kurtosis(plain.weight.detach()) < -1.0
    dcgan_init(plain)
    w = plain.weight.detach()
    assert abs(_excess_kurtosis(w)) < 0.3 and 0.0185 < float(w.std()) < 0.0215


def test_layer_norm_critic_scores_each_image_alone():
    """A WGAN-GP critic must not mix the images of a batch (the gradient penalty is per image); batch norm does."""
    torch.manual_seed(0)
    x = torch.randn(6, 1, 64, 64)
    critic = DCGANDiscriminator(ndf=8, norm="layer").train()
    torch.testing.assert_close(critic(x)[:2], critic(x[:2]))
    batchnorm = DCGANDiscriminator(ndf=8, norm="batch").train()
    assert not torch.allclose(batchnorm(x)[:2], batchnorm(x[:2]))


def test_torchscript():
    g = DCGANGenerator(ngf=8).eval()
    z = torch.randn(2, 100, 1, 1)
    torch.testing.assert_close(torch.jit.script(g)(z), g(z))
    d = DCGANDiscriminator(ndf=8).eval()
    x = torch.randn(2, 1, 64, 64)
    torch.testing.assert_close(torch.jit.script(d)(x), d(x))
