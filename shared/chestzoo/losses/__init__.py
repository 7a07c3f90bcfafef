"""Losses shared by the bundles."""

from .weighted_bce import WeightedBCEWithLogitsLoss, pos_weight_from_labels

__all__ = ["WeightedBCEWithLogitsLoss", "pos_weight_from_labels"]
