"""Judging generated chest X-rays with a classifier that played no part in making them.

A generative model's own classifier is no judge of its samples (it shares the encoder, and it was trained with the
decoder), so sample quality is measured with a :class:`ReferenceClassifier`, a small multi-label CNN trained here
on the real training images alone:

- Frechet distance between real and generated images in the reference classifier's pooled features
  (:mod:`chestzoo.metrics.frechet`), next to the same distance for a baseline generator (e.g. an untrained
  decoder) so that the number has a scale;
- conditional fidelity: for samples drawn for requested findings, the reference classifier's AUROC in telling the
  samples that were asked to show a finding from those that were not (:func:`conditional_fidelity`).

The reference classifier's own AUROC on real test images is reported too: a judge that cannot classify real
images says nothing about generated ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .classification import multilabel_auroc
from .frechet import FeatureExtractor, extract_features, frechet_interval

logger = logging.getLogger(__name__)


class ReferenceClassifier(nn.Module):
    """Four conv-BN-ReLU-maxpool stages (``width`` doubling each), average and max pooling, a linear layer to
    ``num_labels`` logits. ``features(x)`` is the pooled vector (the space for the Frechet distance)."""

    def __init__(self, num_labels: int = 14, in_channels: int = 1, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(4):
            out = width * 2**i
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            channels = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(2 * channels, num_labels)
        self.num_labels, self.feature_dim = int(num_labels), 2 * channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _Features(nn.Module):
    def __init__(self, classifier: ReferenceClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x)


def reference_features(classifier: ReferenceClassifier) -> FeatureExtractor:
    """The classifier's pooled features as a :class:`~chestzoo.metrics.frechet.FeatureExtractor`."""
    return FeatureExtractor(_Features(classifier), pool=None)


def train_reference_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 15, batch_size: int = 32,
                               lr: float = 4e-3, width: int = 8, seed: int = 0, device="cpu") -> ReferenceClassifier:
    """Train a :class:`ReferenceClassifier` on real ``images`` (N, C, H, W) in [0, 1] with multi-hot ``labels``
    (N, L); returns it in eval mode. Seeded with its own generator state (the global one is restored), so one
    dataset always gives the same judge. Random horizontal shifts of a few pixels keep it from memorising."""
    images, labels = torch.as_tensor(images).float(), torch.as_tensor(labels).float()
    if images.dim() != 4 or labels.dim() != 2 or len(images) != len(labels) or len(images) < 2:
        raise ValueError(f"need images (N, C, H, W) and labels (N, L) with N >= 2, got {tuple(images.shape)} and {tuple(labels.shape)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = ReferenceClassifier(labels.shape[1], images.shape[1], int(width)).to(device)
        optimiser = torch.optim.Adam(net.parameters(), lr=float(lr))
        batch_size = int(batch_size)
        batches = [range(start, min(start + batch_size, len(images))) for start in range(0, len(images), batch_size)]
        batches = [b for b in batches if len(b) >= 2]  # batch norm needs two images
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=float(lr), total_steps=int(epochs) * len(batches))
        net.train()
        for _ in range(int(epochs)):
            order = torch.randperm(len(images))
            for batch in batches:
                idx = order[batch.start : batch.stop]
                shift = int(torch.randint(-2, 3, ()).item())
                x = torch.roll(images[idx].to(device), shifts=shift, dims=3)
                loss = F.binary_cross_entropy_with_logits(net(x), labels[idx].to(device))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
    return net.eval()


@torch.no_grad()
def predict(classifier: nn.Module, images: torch.Tensor, batch_size: int = 128, device="cpu") -> torch.Tensor:
    """Sigmoid probabilities (N, L) of ``classifier`` on ``images``."""
    classifier = classifier.to(device).eval()
    out = [torch.sigmoid(classifier(images[i : i + batch_size].float().to(device))).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def _fingerprint(images: torch.Tensor, labels: torch.Tensor, settings: dict) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(str(tuple(images.shape)).encode())
    digest.update(images[:: max(1, len(images) // 64)].float().numpy().tobytes())
    digest.update(labels.float().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_or_train_reference(path: str | None, images: torch.Tensor, labels: torch.Tensor, **settings) -> ReferenceClassifier:
    """:func:`train_reference_classifier`, cached in ``path``: the file is reused only when it was trained on the
    same images (a fingerprint of shapes, a subset of pixels and the labels) with the same settings."""
    images, labels = torch.as_tensor(images).float(), torch.as_tensor(labels).float()
    key = _fingerprint(images, labels, {k: v for k, v in settings.items() if k != "device"})
    if path and os.path.isfile(path):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("fingerprint") == key:
            net = ReferenceClassifier(labels.shape[1], images.shape[1], int(settings.get("width", 8)))
            net.load_state_dict(saved["state_dict"])
            logger.info("reference classifier reused from %s", path)
            return net.eval()
        logger.info("reference classifier in %s was trained on other data; training a new one", path)
    net = train_reference_classifier(images, labels, **settings)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.save({"fingerprint": key, "state_dict": net.state_dict()}, path)
    return net.cpu()


def conditional_fidelity(scores, requested, names: Sequence[str] | None = None) -> dict:
    """How well a reference classifier recognises the requested findings in generated images.

    ``scores`` (N, L): the reference classifier's probabilities on N generated images; ``requested`` (N, L): the
    multi-hot finding combination each image was generated for. Per finding, the AUROC of its score between
    images generated with and without it; the mean over findings requested at least once (and not always).
    Same return value as :func:`~chestzoo.metrics.classification.multilabel_auroc`.
    """
    return multilabel_auroc(scores, requested, names)


Sampler = Callable[[int, "torch.Tensor | None", torch.Generator], torch.Tensor]


@torch.no_grad()
def sample_quality(sampler: Sampler, reference: ReferenceClassifier, real_images: torch.Tensor,
                   requests: dict[str, Sequence[float]] | None = None, per_request: int = 32,
                   baselines: dict[str, Sampler] | None = None, names: Sequence[str] | None = None,
                   real_labels: torch.Tensor | None = None, seed: int = 0, device="cpu", real_groups=None,
                   n_resamples: int = 1000, interval_baselines: Sequence[str] = ("untrained",)) -> dict:
    """Frechet distances and conditional fidelity of a generator, judged by ``reference``.

    ``sampler(n, y, generator)`` returns n images (n, C, H, W) in [0, 1]; ``y`` is None (unconditional draw) or the
    (n, L) multi-hot combinations to draw. ``real_images`` are held-out real images; the generator is asked for as
    many unconditional samples, and each baseline (name -> sampler) too. With ``requests`` (name -> multi-hot),
    ``per_request`` samples per request are drawn and scored for :func:`conditional_fidelity`. With
    ``real_labels`` the reference classifier's own AUROC on ``real_images`` is included. ``ci95`` holds bootstrap
    95% intervals (``n_resamples``; reals drawn by patient with ``real_groups``) of the generator's Frechet distance
    and of the ``interval_baselines``' (each costs 1-3 s at the demo's sizes, so not every baseline gets one).
    """
    extractor = reference_features(reference)
    real_features = extract_features(extractor, real_images, device=device)
    n = len(real_images)
    result: dict = {"samples": n, "ci95": {}}

    def fd_of(key: str, draw: Sampler, tag: int, interval: bool) -> None:
        images = draw(n, None, torch.Generator().manual_seed(int(seed) + tag))
        ci = frechet_interval(real_features, extract_features(extractor, images, device=device), real_groups,
                              n_resamples=n_resamples if interval else 0, seed=int(seed))
        result[key] = ci["value"]
        if interval:
            result["ci95"][key] = ci

    fd_of("frechet_distance", sampler, 0, True)
    for i, (name, baseline) in enumerate((baselines or {}).items()):
        fd_of(f"frechet_distance_{name}", baseline, 1 + i, name in interval_baselines)
    if real_labels is not None:
        result["reference_auroc"] = multilabel_auroc(predict(reference, real_images, device=device), real_labels, names)
    if requests:
        generator = torch.Generator().manual_seed(int(seed) + 1000)
        wanted, scores = [], []
        for vector in requests.values():
            y = torch.as_tensor(vector, dtype=torch.float32).unsqueeze(0).expand(int(per_request), -1).contiguous()
            images = sampler(int(per_request), y, generator)
            scores.append(predict(reference, images, device=device))
            wanted.append(y)
        result["fidelity"] = conditional_fidelity(torch.cat(scores), torch.cat(wanted), names)
    return result
