"""Frechet distance between two sets of image features, in the feature space of any torch module.

``FD = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``: the Frechet (2-Wasserstein) distance between the
Gaussians fitted to the two feature sets (Heusel et al. 2017 call it FID when the features are Inception-v3's pool
layer). No ImageNet network can be downloaded here, and none knows radiographs, so the features come from a
network trained on the images at hand; :class:`FeatureExtractor` wraps any module and any of its layers.

The trace of the matrix square root is computed from the eigenvalues of the symmetric product
``S_a^(1/2) S_b S_a^(1/2)``, which has the same eigenvalues as ``S_a S_b`` but is symmetric positive semi-definite,
so the result is real and needs no ``scipy.linalg.sqrtm`` (whose iteration can fail or return complex values on
the nearly singular covariances that small feature sets give).

Three steps, each usable alone: :func:`extract_features` (module -> (N, D) array), :func:`feature_statistics`
((N, D) -> mean, covariance), :func:`frechet_distance` (two statistics -> float); :func:`frechet_distance_between`
chains the last two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of ``features`` (N, D), in float64. Needs N >= 2."""
    f = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    f = f.astype(np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be (samples, dimensions), got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinity")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative eigenvalues from rounding set to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """Frechet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b)."""
    mu_a, mu_b = np.atleast_1d(np.asarray(mu_a, np.float64)), np.atleast_1d(np.asarray(mu_b, np.float64))
    sigma_a, sigma_b = np.atleast_2d(np.asarray(sigma_a, np.float64)), np.atleast_2d(np.asarray(sigma_b, np.float64))
    d = mu_a.shape[0]
    if mu_b.shape != (d,) or sigma_a.shape != (d, d) or sigma_b.shape != (d, d):
        raise ValueError(f"shapes do not match: mu {mu_a.shape} / {mu_b.shape}, sigma {sigma_a.shape} / {sigma_b.shape}")
    root_a = _sqrt_psd(sigma_a)
    product = root_a @ sigma_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2.0), 0.0, None)).sum()
    distance = float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * trace_root)
    return max(distance, 0.0)  # rounding can leave a tiny negative number for identical statistics


def frechet_distance_between(features_a, features_b) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets (N_a, D) and (N_b, D)."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def frechet_interval(real_features, generated_features, real_groups=None, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Frechet distance between two feature sets with a bootstrap 95% interval (see
    :func:`chestzoo.metrics.bootstrap.bootstrap_interval`).

    Each set is resampled on its own, keeping its size; with ``real_groups`` (one patient id per real feature, e.g.
    CT slices of one patient) real features are drawn by patient, generated ones always one by one. Duplicates in a
    resample shrink its covariances and so raise its distance: with 80 features of 128 dimensions every resample
    scored 127-144 against 99 on the data, so the interval is shifted back by that bootstrap bias (``"bias"``).
    """
    real = real_features.detach().cpu().numpy() if isinstance(real_features, torch.Tensor) else np.asarray(real_features)
    fake = generated_features.detach().cpu().numpy() if isinstance(generated_features, torch.Tensor) else np.asarray(generated_features)
    features = np.concatenate([real, fake]).astype(np.float64)
    generated = np.r_[np.zeros(len(real), dtype=bool), np.ones(len(fake), dtype=bool)]
    groups = None
    if real_groups is not None:
        groups = [("real", g) for g in real_groups] + [("generated", i) for i in range(len(fake))]
    from .bootstrap import bootstrap_interval

    def distance(f, g):  # a resample of patients may hold fewer than the two features a covariance needs
        return frechet_distance_between(f[~g], f[g]) if min((~g).sum(), g.sum()) >= 2 else None

    return bootstrap_interval(distance, features, generated, groups=groups,
                              strata=generated, n_resamples=n_resamples, seed=seed, bias_corrected=True,
                              unit="patient / generated image" if groups is not None else "image")


class FeatureExtractor(nn.Module):
    """Features of ``module`` for a batch of images: its output, or the output of one of its layers.

    Args:
        module: any ``torch.nn.Module``; it is put in eval mode and not trained further.
        layer: dotted name of a submodule (as in ``module.named_modules()``) whose output is the feature; None for
            the module's own output (which must then be a tensor).
        pool: ``"mean"`` (global average), ``"max"`` or ``None``: how spatial dimensions (beyond the second) are
            reduced; without pooling the feature map is flattened.
        transform: optional callable applied to the images before the module (e.g. normalisation or resizing).
    """

    def __init__(self, module: nn.Module, layer: str | None = None, pool: str | None = "mean",
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        if pool not in ("mean", "max", None):
            raise ValueError(f"pool must be 'mean', 'max' or None, not {pool!r}")
        self.module, self.layer, self.pool, self.transform = module.eval(), layer, pool, transform
        self._target = None
        if layer is not None:
            modules = dict(module.named_modules())
            if layer not in modules:
                raise ValueError(f"no layer {layer!r} in {type(module).__name__}; layers: {sorted(n for n in modules if n)}")
            self._target = modules[layer]

    def train(self, mode: bool = True):  # the wrapped network stays in eval mode (batch-norm statistics frozen)
        super().train(mode)
        self.module.eval()
        return self

    def _reduce(self, f: torch.Tensor) -> torch.Tensor:
        if f.dim() > 2 and self.pool == "mean":
            f = f.flatten(2).mean(-1)
        elif f.dim() > 2 and self.pool == "max":
            f = f.flatten(2).amax(-1)
        return f.flatten(1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.transform(images) if self.transform is not None else images
        if self._target is None:
            out = self.module(x)
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"{type(self.module).__name__} returns {type(out).__name__}; name a layer to take features from")
            return self._reduce(out)
        captured: list[torch.Tensor] = []
        handle = self._target.register_forward_hook(lambda _m, _i, output: captured.append(output))
        try:
            self.module(x)
        finally:
            handle.remove()
        return self._reduce(captured[-1])


@torch.no_grad()
def extract_features(extractor: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor | Iterable,
                     batch_size: int = 128, device: str | torch.device = "cpu") -> np.ndarray:
    """Run ``extractor`` (a :class:`FeatureExtractor` or any callable batch -> (B, D)) over ``images``: a tensor
    (N, C, H, W), or an iterable of batches (tensors, or dicts holding the batch under "image"). Returns (N, D)
    float64."""
    if isinstance(extractor, nn.Module):
        extractor = extractor.to(device).eval()
    if isinstance(images, torch.Tensor):
        batches: Iterable = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    else:
        batches = images
    out = []
    for batch in batches:
        x = batch["image"] if isinstance(batch, dict) else batch
        out.append(extractor(torch.as_tensor(x).float().to(device)).detach().double().cpu())
    if not out:
        raise ValueError("no images to extract features from")
    return torch.cat(out).numpy()
