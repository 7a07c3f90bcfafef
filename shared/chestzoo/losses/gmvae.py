"""Objectives of the Gaussian-mixture VAE: mixture-prior ELBO, sampled KL, importance-weighted bound, likelihood.

Notation: ``q(z|x)`` (or ``q(z|x,y)``) is the encoder's diagonal Gaussian, ``p(z) = 1/K sum_k N(z; m_k, diag v_k)``
the mixture prior with K learnable components of equal weight, ``p(x|z)`` the decoder's pixel likelihood.

- The KL between a Gaussian and a Gaussian mixture has no closed form, so it is estimated from the sample ``z`` that
  the ELBO draws anyway: ``KL ~ log q(z|x) - log p(z)``, with ``log p(z)`` a log-mean-exp over the components
  (:func:`log_normal_mixture`). With K = 1 it is an unbiased estimate of the closed form :func:`kl_normal`.
- The importance-weighted bound (Burda et al. 2016) ``log 1/M sum_m p(x, z_m) / q(z_m|x)`` is tighter than the
  ELBO for M > 1 and tends to ``log p(x)``; :func:`iwae_bound` evaluates it from the M log-weights.
- Pixels are 8-bit intensities in [0, 1], so the likelihood is a discretised logistic over the 256 grey levels
  (:func:`discretized_logistic_log_prob`): a probability mass, never above 1, so ``-log p(x)`` in nats is a code
  length and the bound is comparable across models. A Gaussian density on [0, 1] is not a likelihood of the
  8-bit data (it grows without bound as its variance shrinks); a Bernoulli on grey values is not a likelihood at
  all (and the continuous Bernoulli's mean is not its parameter).

All log-densities sum over the last (latent) dimension; per-image terms sum over every pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2.0 * math.pi)


def log_mean_exp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``log(mean(exp(x)))`` along ``dim`` without overflow."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


def log_normal(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Log-density of a diagonal Gaussian, summed over the last dimension (broadcasting over the others)."""
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar)).sum(-1)


def log_normal_mixture(z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor) -> torch.Tensor:
    """Log-density of ``z`` (..., D) under the equal-weight mixture of the K Gaussians ``means``, ``logvars`` (K, D).

    ``log p(z) = log mean_k N(z; m_k, v_k)``: a log-mean-exp over the components, which stays finite when every
    component density underflows.
    """
    if means.dim() != 2 or means.shape != logvars.shape:
        raise ValueError(f"mixture means {tuple(means.shape)} and logvars {tuple(logvars.shape)} must both be (K, D)")
    per_component = log_normal(z.unsqueeze(-2), means, logvars)  # (..., K)
    return log_mean_exp(per_component, dim=-1)


def kl_normal(q_mean: torch.Tensor, q_logvar: torch.Tensor, p_mean: torch.Tensor, p_logvar: torch.Tensor) -> torch.Tensor:
    """Closed-form ``KL(N(q_mean, q_var) || N(p_mean, p_var))`` of diagonal Gaussians, summed over the last dimension."""
    return 0.5 * (p_logvar - q_logvar + (torch.exp(q_logvar) + (q_mean - p_mean) ** 2) * torch.exp(-p_logvar) - 1.0).sum(-1)


def kl_sampled(z: torch.Tensor, q_mean: torch.Tensor, q_logvar: torch.Tensor, prior_means: torch.Tensor,
               prior_logvars: torch.Tensor) -> torch.Tensor:
    """Single-sample estimate ``log q(z|x) - log p(z)`` of ``KL(q(z|x) || p(z))`` for ``z`` drawn from ``q(z|x)``.

    ``z`` may carry leading sample dimensions in front of the batch (e.g. ``(M, B, D)``); the result has the shape
    of ``z`` without its last dimension. Averaged over draws it is unbiased for the KL.
    """
    return log_normal(z, q_mean, q_logvar) - log_normal_mixture(z, prior_means, prior_logvars)


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, samples: int | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``z = mean + sd * eps`` (differentiable in mean and logvar); ``samples`` adds a leading dimension."""
    shape = mean.shape if samples is None else (samples, *mean.shape)
    if generator is None:
        eps = torch.randn(shape, dtype=mean.dtype, device=mean.device)
    else:  # a seeded generator may live on another device than the tensors (a CPU generator for a CUDA model)
        eps = torch.randn(shape, dtype=mean.dtype, device=generator.device, generator=generator).to(mean.device)
    return mean + torch.exp(0.5 * logvar) * eps


def iwae_bound(log_weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Importance-weighted bound ``log 1/M sum_m w_m`` from log-weights ``log p(x, z_m) - log q(z_m|x)`` along ``dim``.

    With M = 1 it is the ELBO; it never decreases in expectation as M grows (Burda et al. 2016).
    """
    return log_mean_exp(log_weights, dim=dim)


def quantize(x: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Snap intensities in [0, 1] to the nearest of ``bins`` grey levels (resizing and 16-bit files leave them between)."""
    return torch.round(x.clamp(0.0, 1.0) * (bins - 1)) / (bins - 1)


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                  bins: int = 256) -> torch.Tensor:
    """Element-wise log-probability of grey levels ``x`` in [0, 1] under a logistic discretised into ``bins`` levels.

    Level ``x`` owns the interval ``[x - h, x + h]`` with ``h = 1 / (2 (bins - 1))``; the lowest and highest levels
    also own the tails, so the probabilities of the ``bins`` levels add up to exactly 1. ``x`` is snapped to the
    nearest level first (:func:`quantize`). The interval mass is evaluated as
    ``log(sigmoid(a) - sigmoid(b)) = a + log(1 - exp(b - a)) - softplus(a) - softplus(b)``, which stays accurate when
    both sigmoids are close to 0 or 1 and needs no fallback branch.
    """
    x = quantize(x, bins)
    half = 0.5 / (bins - 1)
    inv_scale = torch.exp(-log_scale)
    centred = x - mean
    a = inv_scale * (centred + half)  # upper edge of the level's interval
    b = inv_scale * (centred - half)  # lower edge
    interior = a + torch.log(-torch.expm1(b - a)) - F.softplus(a) - F.softplus(b)
    lowest = -F.softplus(-a)  # log sigmoid(a): everything below the first level's upper edge
    highest = -F.softplus(b)  # log (1 - sigmoid(b)): everything above the last level's lower edge
    eps = 0.25 / (bins - 1)
    return torch.where(x < eps, lowest, torch.where(x > 1.0 - eps, highest, interior))


class GMVAELoss(nn.Module):
    """Training objective of the (label-conditioned) GMVAE with its jointly trained classifier.

    ``loss = mean_batch(nll + kl_weight * kl) / pixels + classification_weight * BCE(q(y|x), y)``

    The first term is the negative ELBO in nats per pixel (the per-image NELBO divided by the number of pixels, so
    that one weight for the classifier works at 64 x 64 and at 224 x 224); the second is the semi-supervised VAE's
    classification term (Kingma et al. 2014, M2), here with 14 independent Bernoulli labels. ``pred`` is the output
    dict of :class:`chestzoo.networks.gmvae.GMVAE`; ``target`` the multi-hot labels. The last batch's terms are kept
    in :attr:`terms` (detached floats) for logging.
    """

    def __init__(self, classification_weight: float = 1.0, kl_weight: float = 1.0, consistency_weight: float = 1.0):
        super().__init__()
        if min(classification_weight, kl_weight, consistency_weight) < 0:
            raise ValueError("loss weights must be non-negative")
        self.classification_weight = float(classification_weight)
        self.kl_weight = float(kl_weight)
        self.consistency_weight = float(consistency_weight)
        self.terms: dict[str, float] = {}

    def forward(self, pred: dict, target: torch.Tensor) -> torch.Tensor:
        pixels = pred["recon"][0].numel()
        nll, kl = pred["nll"].mean(), pred["kl"].mean()
        loss = (nll + self.kl_weight * kl) / pixels
        bce = torch.zeros((), device=nll.device)
        if pred.get("logits") is not None:
            bce = F.binary_cross_entropy_with_logits(pred["logits"], target.to(pred["logits"].dtype))
            loss = loss + self.classification_weight * bce
        terms = {"nelbo": nll + kl, "nll": nll, "kl": kl, "bce": bce}
        if pred.get("consistency_logits") is not None:
            consistency = F.binary_cross_entropy_with_logits(pred["consistency_logits"], pred["consistency_labels"])
            loss = loss + self.consistency_weight * consistency
            terms["consistency"] = consistency
        self.terms = {k: float(v.detach()) for k, v in terms.items()}
        return loss
