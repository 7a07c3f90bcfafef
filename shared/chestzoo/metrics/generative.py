"""Measuring a generator without fooling oneself: diversity, memorisation, discriminator accuracies, features.

- Diversity: mean pairwise distance between generated samples in a feature space, divided by the same for real
  images (1 = as varied as the data, near 0 = mode collapse); and the mean MS-SSIM between random pairs of samples
  (Odena et al. 2017), which rises towards 1 as the samples become alike.
- Memorisation: the distance from each generated image to its nearest training image, against the distance from
  each held-out real image to its nearest training image. A generator that copies sits much closer to the training
  set than new real images do.
- Discriminator and generator accuracies on given logits, with the threshold at logit 0 for reals and fakes alike,
  and the threshold-free AUC of real-vs-fake scores (the only one that means something for a WGAN critic).
- ``FeatureNet``: a small CNN trained on the real images of the dataset at hand (slice position and tumour
  presence for CT slices, the class for X-rays); its pooled features are the space for the Frechet distance and
  the diversity ratio, since no ImageNet network can be downloaded here and none would know lung CT anyway. The
  Frechet distance itself is :mod:`chestzoo.metrics.frechet`'s.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# MS-SSIM scale weights of Wang et al. 2003; fewer scales are used when the image is small.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# --- accuracies ------------------------------------------------------------------------------------------------


def rank_auc(positive: torch.Tensor | np.ndarray, negative: torch.Tensor | np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half (Mann-Whitney U / n1 n2)."""
    pos = np.asarray(torch.as_tensor(positive).detach().cpu().double().flatten())
    neg = np.asarray(torch.as_tensor(negative).detach().cpu().double().flatten())
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUC needs at least one positive and one negative score")
    scores = np.concatenate([pos, neg])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    start = 0
    for end in range(1, len(scores) + 1):
        if end == len(scores) or sorted_scores[end] != sorted_scores[start]:
            ranks[order[start:end]] = 0.5 * (start + end - 1) + 1.0
            start = end
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def discriminator_accuracies(real_logits, fake_logits, threshold: float | None = 0.0) -> dict[str, float]:
    """Accuracies of a discriminator from its logits on real and on generated images.

    A real image is classified correctly when its logit is above ``threshold`` (0 = probability 0.5), a fake one
    when its logit is below it; the generator "wins" on a fake that is called real. ``threshold=None`` (a WGAN
    critic, whose scores have no fixed decision point) returns only the AUC.
    """
    real = torch.as_tensor(real_logits).detach().float().flatten()
    fake = torch.as_tensor(fake_logits).detach().float().flatten()
    out = {"D AUC": rank_auc(real, fake)}
    if threshold is not None:
        real_acc = float((real > threshold).float().mean())
        fake_acc = float((fake < threshold).float().mean())
        out.update({
            "D accuracy real": real_acc,
            "D accuracy fake": fake_acc,
            "D accuracy": 0.5 * (real_acc + fake_acc),
            "G fooling rate": 1.0 - fake_acc,
        })
    return out


# --- diversity -------------------------------------------------------------------------------------------------


def mean_pairwise_distance(features: torch.Tensor | np.ndarray) -> float:
    """Mean Euclidean distance over all pairs of distinct rows of ``features`` (N, D)."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64).flatten(1)
    n = len(x)
    if n < 2:
        raise ValueError("need at least two samples for a pairwise distance")
    d = torch.cdist(x, x)
    return float(d.sum() / (n * (n - 1)))


def diversity_ratio(fake_features, real_features) -> float:
    """Mean pairwise feature distance of the generated samples over that of real images: ~1 varied, ~0 collapsed."""
    real = mean_pairwise_distance(real_features)
    if real <= 0:
        raise ValueError("real features are all identical: the feature space cannot measure diversity")
    return mean_pairwise_distance(fake_features) / real


def ms_ssim_scales(size: int, kernel_size: int = 7) -> tuple[float, ...]:
    """The MS-SSIM scale weights that fit an image of side ``size`` with MONAI's check, renormalised to sum 1."""
    for n in range(len(MS_SSIM_WEIGHTS), 0, -1):
        if size // max(1, n - 1) ** 2 > kernel_size - 1:
            weights = MS_SSIM_WEIGHTS[:n]
            return tuple(w / sum(weights) for w in weights)
    raise ValueError(f"image side {size} is too small for MS-SSIM with a {kernel_size}-pixel kernel")


def pairwise_ms_ssim(images: torch.Tensor, pairs: int = 200, seed: int = 0, data_range: float = 2.0,
                     kernel_size: int = 7) -> float:
    """Mean MS-SSIM over ``pairs`` random pairs of distinct images (N, C, H, W); ``data_range`` 2 for [-1, 1] images."""
    from monai.metrics.regression import compute_ms_ssim

    images = torch.as_tensor(images).float()
    n = len(images)
    if n < 2:
        raise ValueError("need at least two images for a pairwise MS-SSIM")
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(0, n, (pairs,), generator=g)
    second = (first + torch.randint(1, n, (pairs,), generator=g)) % n  # never the image itself
    weights = ms_ssim_scales(min(images.shape[-2:]), kernel_size)
    values = compute_ms_ssim(images[first], images[second], spatial_dims=2, data_range=data_range,
                             kernel_size=kernel_size, kernel_sigma=1.5 * kernel_size / 11.0, weights=weights)
    return float(values.mean())


# --- memorisation ----------------------------------------------------------------------------------------------


def nearest_neighbours(queries, references, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each query (flattened) to its nearest reference, and that reference's index."""
    q = torch.as_tensor(np.asarray(queries), dtype=torch.float32).flatten(1)
    r = torch.as_tensor(np.asarray(references), dtype=torch.float32).flatten(1)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} values each, references {r.shape[1]}")
    dists, index = [], []
    for start in range(0, len(q), chunk):
        d = torch.cdist(q[start:start + chunk], r)
        best = d.min(dim=1)
        dists.append(best.values)
        index.append(best.indices)
    return torch.cat(dists).numpy(), torch.cat(index).numpy()


def memorisation(generated, training, heldout, quantile: float = 0.05) -> dict:
    """Compare how close generated and held-out real images come to the training set.

    Returns "NN distance ratio" (median generated-to-training nearest distance over the same for held-out reals:
    about 1 or above is healthy, well below 1 means the generator reproduces training images), "near-copy rate"
    (fraction of generated images closer to a training image than all but ``quantile`` of held-out reals are;
    about ``quantile`` is expected by chance) and the per-sample distances and nearest indices.
    """
    d_gen, idx = nearest_neighbours(generated, training)
    d_real, _ = nearest_neighbours(heldout, training)
    cut = float(np.quantile(d_real, quantile))
    median_real = float(np.median(d_real))
    return {
        "NN distance ratio": float(np.median(d_gen)) / max(median_real, 1e-12),
        "near-copy rate": float((d_gen < cut).mean()),
        "near-copy reference rate": quantile,
        "generated distances": d_gen,
        "heldout distances": d_real,
        "nearest index": idx,
    }


# --- a feature space learnt from the real data -----------------------------------------------------------------


class FeatureNet(nn.Module):
    """Small CNN whose globally pooled activations (``features``) serve as the space for generative metrics.

    Four conv-BN-ReLU-pool stages (``width`` doubling each) then global average pooling give ``8 * width`` features;
    heads on top predict a regression target (e.g. relative slice position) and/or ``num_classes`` classes.
    """

    def __init__(self, in_channels: int = 1, width: int = 8, num_classes: int = 0, regression: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(4):
            out = width * 2**i
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(True), nn.MaxPool2d(2)]
            channels = out
        self.body = nn.Sequential(*layers)
        self.feature_dim = channels
        self.regression = nn.Linear(channels, 1) if regression else None
        self.classifier = nn.Linear(channels, num_classes) if num_classes else None
        if self.regression is None and self.classifier is None:
            raise ValueError("FeatureNet needs a regression target or classes to learn from")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        out = {}
        if self.regression is not None:
            out["regression"] = self.regression(f).squeeze(1)
        if self.classifier is not None:
            out["logits"] = self.classifier(f)
        return out


def train_feature_net(images: torch.Tensor, regression_target: torch.Tensor | None = None,
                      class_target: torch.Tensor | None = None, num_classes: int = 0, width: int = 8,
                      epochs: int = 10, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                      device="cpu") -> FeatureNet:
    """Train a :class:`FeatureNet` on real ``images`` (N, C, H, W) to predict the given targets; returns it in eval mode.

    The run is seeded (its own generator, the global RNG state is restored afterwards) so that two evaluations of
    one dataset measure generators in the same feature space.
    """
    images = torch.as_tensor(images).float()
    n = len(images)
    if n < 2:
        raise ValueError("need at least two real images to train the feature network")
    if regression_target is None and class_target is None:
        raise ValueError("give a regression target, class targets, or both")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet(images.shape[1], width, num_classes if class_target is not None else 0,
                         regression=regression_target is not None).to(device)
        optimiser = torch.optim.Adam(net.parameters(), lr=lr)
        reg = None if regression_target is None else torch.as_tensor(regression_target).float()
        cls = None if class_target is None else torch.as_tensor(class_target).long()
        net.train()
        for _ in range(epochs):
            order = torch.randperm(n)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                if len(idx) < 2:  # batch norm needs two samples
                    continue
                out = net(images[idx].to(device))
                loss = torch.zeros((), device=device)
                if reg is not None:
                    loss = loss + F.mse_loss(out["regression"], reg[idx].to(device)) * 10.0
                if cls is not None:
                    loss = loss + F.cross_entropy(out["logits"], cls[idx].to(device))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    return net.eval()


@torch.no_grad()
def extract_features(net: FeatureNet, images: torch.Tensor, batch_size: int = 256, device="cpu") -> np.ndarray:
    """Pooled features (N, D) of ``images`` as float64 numpy."""
    net.eval()
    out = [net.features(torch.as_tensor(images[i:i + batch_size]).float().to(device)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).double().numpy()


@torch.no_grad()
def feature_net_quality(net: FeatureNet, images: torch.Tensor, regression_target=None, class_target=None,
                        device="cpu") -> dict[str, float]:
    """How well the feature network does its own task on held-out real images (shows its features carry the signal)."""
    out = net(torch.as_tensor(images).float().to(device))
    quality = {}
    if regression_target is not None and "regression" in out:
        quality["feature net position MAE"] = float((out["regression"].cpu() - torch.as_tensor(regression_target).float()).abs().mean())
    if class_target is not None and "logits" in out:
        quality["feature net accuracy"] = float((out["logits"].argmax(1).cpu() == torch.as_tensor(class_target).long()).float().mean())
    return quality


def sample_latents(n: int, latent_size: int, seed: int) -> torch.Tensor:
    """``n`` standard-normal latent vectors from a seeded generator (the same seed gives the same vectors)."""
    return torch.randn(n, latent_size, generator=torch.Generator().manual_seed(int(seed)))
