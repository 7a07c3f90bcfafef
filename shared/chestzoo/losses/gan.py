"""GAN losses in the form MONAI's ``GanTrainer`` calls them: ``d_loss(fakes, reals)`` and ``g_loss(fakes)``.

``GanTrainer`` hands the losses images, not discriminator outputs, so each loss holds the discriminator and calls
it. Fakes are detached in the discriminator loss: the trainer passes the generator's output with its graph, and
without the detach the discriminator step would also run the generator's backward pass for nothing.

Two families:

- ``DiscriminatorLoss`` / ``GeneratorLoss``: the DCGAN objective (binary cross-entropy on logits, non-saturating
  generator loss), with optional label smoothing: each real image gets a target drawn uniformly from
  ``real_range`` and each fake one from ``fake_range`` (0.85-1.0 and 0-0.15 in the lung-CT thesis; a fake range
  of (0, 0) gives one-sided smoothing);
- ``WassersteinCriticLoss`` / ``WassersteinGeneratorLoss``: WGAN-GP (Gulrajani et al. 2017), the critic loss
  ``E[C(fake)] - E[C(real)] + lambda * E[(||grad C(x_hat)||_2 - 1)^2]`` on random interpolates ``x_hat``.

Every loss keeps the statistics of its last call in ``last`` (plain floats): the discriminator's accuracy on the
real and on the fake batch, the generator's fooling rate, the critic's Wasserstein estimate. They are measured on
the very batches the update used, with the decision threshold at logit 0 (probability 0.5) whatever the smoothed
targets were: a real image counts as correct when its logit is > 0, a fake one when its logit is < 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def prepare_reals(batchdata, device=None, non_blocking: bool = False, **kwargs) -> torch.Tensor:
    """``d_prepare_batch`` for ``GanTrainer``: the real images of a dict batch (key ``image``) on ``device``."""
    images = batchdata["image"] if isinstance(batchdata, dict) else batchdata
    return torch.as_tensor(images).to(device=device, non_blocking=non_blocking, **kwargs)


def smoothed_targets(n: int, value_range: Sequence[float], device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` training targets drawn uniformly from ``[low, high]`` (a constant when low == high)."""
    low, high = (float(v) for v in value_range)
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"a target range must satisfy 0 <= low <= high <= 1, got {tuple(value_range)}")
    u = torch.rand(n, device="cpu", generator=generator).to(device)
    return low + (high - low) * u


def _as_range(value) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    low, high = value
    return float(low), float(high)


class DiscriminatorLoss(nn.Module):
    """DCGAN discriminator loss ``BCE(D(real), t_real) + BCE(D(fake), t_fake)`` (each a batch mean).

    ``label_smoothing`` false means hard targets 1 and 0; true draws per-image targets from ``real_range`` and
    ``fake_range``. Accepts a bool or its string form (``--label_smoothing false`` on the command line).
    """

    def __init__(self, discriminator: nn.Module, label_smoothing=False, real_range=(0.85, 1.0), fake_range=(0.0, 0.15)):
        super().__init__()
        from ..utils import as_bool

        self.discriminator = discriminator
        smoothing = as_bool(label_smoothing)
        self.real_range = _as_range(real_range) if smoothing else (1.0, 1.0)
        self.fake_range = _as_range(fake_range) if smoothing else (0.0, 0.0)
        for r in (self.real_range, self.fake_range):
            smoothed_targets(0, r)  # validates the range now, not in the first iteration
        self.last: dict[str, float] = {}

    def forward(self, fakes: torch.Tensor, reals: torch.Tensor) -> torch.Tensor:
        real_logits = self.discriminator(reals)
        fake_logits = self.discriminator(fakes.detach())
        real_t = smoothed_targets(real_logits.numel(), self.real_range, real_logits.device).view_as(real_logits)
        fake_t = smoothed_targets(fake_logits.numel(), self.fake_range, fake_logits.device).view_as(fake_logits)
        loss = F.binary_cross_entropy_with_logits(real_logits, real_t) + F.binary_cross_entropy_with_logits(fake_logits, fake_t)
        with torch.no_grad():
            self.last = {
                "D accuracy real": float((real_logits > 0).float().mean()),
                "D accuracy fake": float((fake_logits < 0).float().mean()),
                "D(x)": float(torch.sigmoid(real_logits).mean()),
                "D(G(z)) before D step": float(torch.sigmoid(fake_logits).mean()),
            }
        return loss


class GeneratorLoss(nn.Module):
    """Non-saturating generator loss ``BCE(D(G(z)), 1)`` (Goodfellow et al. 2014): the generator wants fakes called real."""

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.discriminator = discriminator
        self.last: dict[str, float] = {}

    def forward(self, fakes: torch.Tensor) -> torch.Tensor:
        logits = self.discriminator(fakes)
        loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        with torch.no_grad():
            self.last = {"G fooling rate": float((logits > 0).float().mean()), "D(G(z)) after D step": float(torch.sigmoid(logits).mean())}
        return loss


def gradient_penalty(critic: nn.Module, reals: torch.Tensor, fakes: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP penalty ``E[(||grad_x C(x_hat)||_2 - 1)^2]`` at ``x_hat = e * real + (1 - e) * fake``, ``e ~ U(0, 1)`` per image.

    The graph is kept (``create_graph``) so that the penalty trains the critic. When the two batches differ in
    size (GanTrainer draws as many fakes as the loader's batch size, the last real batch can be smaller), the
    first ``min`` images of each are paired.
    """
    n = min(len(reals), len(fakes))
    reals, fakes = reals[:n], fakes[:n].detach()
    eps = torch.rand(n, *([1] * (reals.dim() - 1)), generator=generator).to(reals.device, reals.dtype)
    mixed = (eps * reals + (1.0 - eps) * fakes).requires_grad_(True)
    scores = critic(mixed)
    (grads,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return ((grads.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


class WassersteinCriticLoss(nn.Module):
    """WGAN-GP critic loss ``mean C(fake) - mean C(real) + gp_weight * gradient_penalty``.

    ``last`` holds the Wasserstein estimate ``mean C(real) - mean C(fake)`` and the penalty. A critic has no
    decision threshold, so no accuracy is reported here; the evaluation measures how well its scores separate
    held-out reals from fakes with a threshold-free AUC instead.
    """

    def __init__(self, critic: nn.Module, gp_weight: float = 10.0):
        super().__init__()
        self.critic = critic
        self.gp_weight = float(gp_weight)
        self.last: dict[str, float] = {}

    def forward(self, fakes: torch.Tensor, reals: torch.Tensor) -> torch.Tensor:
        fakes = fakes.detach()
        real_scores, fake_scores = self.critic(reals), self.critic(fakes)
        distance = real_scores.mean() - fake_scores.mean()
        penalty = gradient_penalty(self.critic, reals, fakes) if self.gp_weight else torch.zeros((), device=reals.device)
        self.last = {"Wasserstein estimate": float(distance.detach()), "gradient penalty": float(penalty.detach())}
        return -distance + self.gp_weight * penalty


class WassersteinGeneratorLoss(nn.Module):
    """WGAN generator loss ``-mean C(G(z))``."""

    def __init__(self, critic: nn.Module):
        super().__init__()
        self.critic = critic
        self.last: dict[str, float] = {}

    def forward(self, fakes: torch.Tensor) -> torch.Tensor:
        scores = self.critic(fakes)
        self.last = {"C(G(z))": float(scores.detach().mean())}
        return -scores.mean()


GAN_KINDS = ("dcgan", "wgan_gp")


def gan_losses(kind: str, discriminator: nn.Module, label_smoothing=False, real_range=(0.85, 1.0),
               fake_range=(0.0, 0.15), gp_weight: float = 10.0) -> tuple[nn.Module, nn.Module]:
    """The (discriminator loss, generator loss) pair of ``kind``: "dcgan" (BCE, optional label smoothing) or "wgan_gp"."""
    if kind == "dcgan":
        return DiscriminatorLoss(discriminator, label_smoothing, real_range, fake_range), GeneratorLoss(discriminator)
    if kind == "wgan_gp":
        return WassersteinCriticLoss(discriminator, gp_weight), WassersteinGeneratorLoss(discriminator)
    raise ValueError(f"gan must be one of {GAN_KINDS}, got {kind!r}")
