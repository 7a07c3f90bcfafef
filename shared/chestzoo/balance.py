"""Class balance for single-label training sets: balanced sampling or class-weighted loss.

RSNA's binary target is about 31% positive (three classes: 29% / 40% / 31%); a classifier trained on the raw mix
leans towards the majority. Two standard remedies, chosen by one config key ``balance``:

- ``"sampler"``: draw training images with probability inversely proportional to their class's size, so every class
  is equally likely in each batch (sampling with replacement, one epoch = as many draws as images);
- ``"weights"``: keep the natural mix and weight the cross-entropy of class ``c`` by ``N / (K * N_c)``;
- ``"none"``: neither.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

BALANCE_MODES = ("sampler", "weights", "none")


def check_mode(balance: str) -> str:
    if balance not in BALANCE_MODES:
        raise ValueError(f"balance must be one of {BALANCE_MODES}, got {balance!r}")
    return balance


def class_counts(items: Sequence[dict], num_classes: int, key: str = "label") -> np.ndarray:
    """Number of items of each class (``item[key]`` is a class index)."""
    labels = np.asarray([int(item[key]) for item in items], dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"class indices must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()} under '{key}'")
    return np.bincount(labels, minlength=num_classes)


def sample_weights(items: Sequence[dict], num_classes: int, key: str = "label") -> torch.Tensor:
    """Per-item sampling weight ``1 / N_class``: each class then carries the same total weight."""
    counts = class_counts(items, num_classes, key)
    return torch.as_tensor([1.0 / counts[int(item[key])] for item in items], dtype=torch.double)


def balanced_sampler(items: Sequence[dict], num_classes: int, balance: str = "sampler", key: str = "label",
                     distributed: bool = False, seed: int = 0):
    """A class-balanced sampler for ``balance == "sampler"``, else None (the loader then shuffles as usual).

    ``distributed`` gives MONAI's ``DistributedWeightedRandomSampler``: each rank draws its share of the epoch.
    """
    if check_mode(balance) != "sampler":
        return None
    weights = sample_weights(items, num_classes, key)
    generator = torch.Generator().manual_seed(seed)
    if distributed:
        from monai.data import DistributedWeightedRandomSampler

        return DistributedWeightedRandomSampler(items, weights=weights, generator=generator, even_divisible=True)
    return torch.utils.data.WeightedRandomSampler(weights, num_samples=len(items), replacement=True, generator=generator)


def class_weights(items: Sequence[dict], num_classes: int, balance: str = "weights", key: str = "label", device=None):
    """Cross-entropy class weights ``N / (K * N_c)`` for ``balance == "weights"``, else None (unweighted loss).

    A class absent from the training set gets weight 0 (it cannot be learned, and must not divide by zero).
    """
    if check_mode(balance) != "weights":
        return None
    counts = class_counts(items, num_classes, key).astype(np.float64)
    weights = np.divide(counts.sum(), num_classes * counts, out=np.zeros(num_classes), where=counts > 0)
    return torch.as_tensor(weights, dtype=torch.float32, device=device)
