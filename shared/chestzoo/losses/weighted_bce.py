"""Weighted binary cross-entropy for multi-label classification with rare positives.

Wang et al. 2017 (ChestX-ray8) weight the positive and negative terms of each batch so that they contribute equally:
``beta_P = (|P| + |N|) / |P|`` and ``beta_N = (|P| + |N|) / |N|``, with ``|P|`` and ``|N|`` the numbers of ones and
zeros in the batch's label matrix. The loss works on logits (``-log sigmoid(z) = softplus(-z)``), so it stays finite
for confident predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODES = ("batch", "batch_per_class", "dataset")


class WeightedBCEWithLogitsLoss(nn.Module):
    """Weighted BCE on logits ``(B, C)`` against multi-hot targets ``(B, C)``; returns the mean over all entries.

    Modes:
        ``batch`` (Wang et al.): one ``beta_P`` / ``beta_N`` pair from all labels of the batch.
        ``batch_per_class``: a pair for each class, from that class's column of the batch.
        ``dataset``: fixed per-class ``pos_weight`` (e.g. negatives / positives over the training set, see
        :func:`pos_weight_from_labels`), as ``torch.nn.BCEWithLogitsLoss(pos_weight=...)``.

    Where a batch (or a class's column) holds no positives, only negative terms exist and they get weight 1; likewise
    for no negatives. So an all-negative batch gives plain BCE instead of a division by zero.
    """

    def __init__(self, mode: str = "batch", pos_weight: Sequence[float] | torch.Tensor | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if (mode == "dataset") != (pos_weight is not None):
            raise ValueError("pos_weight is needed for mode='dataset' and only there")
        self.mode = mode
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same shape")
        target = target.to(logits.dtype)
        pos_term = F.softplus(-logits) * target  # -log p where y = 1
        neg_term = F.softplus(logits) * (1.0 - target)  # -log(1 - p) where y = 0
        if self.mode == "dataset":
            pos_weight = self.pos_weight.to(logits.device, logits.dtype)
            return (pos_weight * pos_term + neg_term).mean()
        with torch.no_grad():
            if self.mode == "batch":
                positives, total = target.sum(), float(target.numel())
            else:
                positives, total = target.sum(dim=0), float(target.shape[0])
            negatives = total - positives
            both = (positives > 0) & (negatives > 0)  # otherwise one kind of term is absent: plain BCE
            beta_p = torch.where(both, total / positives.clamp(min=1.0), torch.ones_like(positives))
            beta_n = torch.where(both, total / negatives.clamp(min=1.0), torch.ones_like(negatives))
        return (beta_p * pos_term + beta_n * neg_term).mean()


def pos_weight_from_labels(labels, max_weight: float | None = None) -> list[float]:
    """Per-class ``negatives / positives`` over a training set's multi-hot labels ``(N, C)``.

    A class with no positives gets weight 1 (its positive term never occurs); ``max_weight`` caps very rare classes.
    """
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"labels must be a (samples, classes) multi-hot array, got shape {y.shape}")
    positives = y.sum(axis=0)
    negatives = y.shape[0] - positives
    weight = np.where(positives > 0, negatives / np.maximum(positives, 1.0), 1.0)
    weight = np.maximum(weight, 0.0)
    if max_weight is not None:
        weight = np.minimum(weight, max_weight)
    return [float(w) for w in weight]
