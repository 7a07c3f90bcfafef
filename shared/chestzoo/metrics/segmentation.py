"""Segmentation metrics on binary masks: Dice (MONAI's, for a whole batch at once), MONAI's IoU, and a 95% Hausdorff
distance that cannot hide misses.

MONAI's ``DiceMetric`` loops over images and channels in Python: 3.8 ms per batch of eight 64 x 64 masks as an
engine hands them over (MetaTensors), a fifth of the demo U-Net's forward pass, in every validation.
:class:`BatchDiceMetric` gives the same values from a few tensor sums, in 0.5 ms (benchmarks/README.md, "Per-step
costs").

MONAI's ``HausdorffDistanceMetric`` gives NaN for an image whose prediction (or ground truth) is empty, and its mean
skips NaNs - so a model that finds no lung at all in some images would score *better* on them. Here an empty
prediction against a non-empty truth (or the reverse) scores the image diagonal, the largest distance two pixels
of the image can have, and two empty masks score 0. Distances are in pixels of the masks as evaluated (multiply by
the pixel spacing for millimetres).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import DiceMetric, HausdorffDistanceMetric


class BatchDiceMetric(DiceMetric):
    """MONAI's ``DiceMetric`` on binary ``(B, C, H, W)`` masks, computed for all images and channels at once.

    Same options and values as ``DiceMetric(include_background, reduction, ignore_empty=...)``: a channel whose
    ground truth is empty scores NaN (skipped by the mean) with ``ignore_empty``, else 1 when the prediction is
    empty too and 0 when it is not.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if y_pred.ndim < 3 or y_pred.shape != y.shape:
            raise ValueError(f"expected binary (B, C, spatial...) masks of one shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}")
        y_pred, y = y_pred.float(), y.float()
        dims = tuple(range(2, y.ndim))
        truth, predicted = y.sum(dims), y_pred.sum(dims)
        dice = 2.0 * (y_pred * y).sum(dims) / (truth + predicted).clamp_min(1e-12)
        empty = torch.full_like(dice, float("nan")) if self.ignore_empty else (predicted == 0).float()
        dice = torch.where(truth > 0, dice, empty)
        return dice if self.include_background else dice[:, 1:]


class MeanDice(IgniteMetricHandler):
    """MONAI's ``MeanDice`` handler on :class:`BatchDiceMetric`."""

    def __init__(self, include_background: bool = True, reduction: str = "mean", ignore_empty: bool = True,
                 output_transform=lambda x: x, save_details: bool = True):
        metric = BatchDiceMetric(include_background=include_background, reduction=reduction, ignore_empty=ignore_empty)
        super().__init__(metric_fn=metric, output_transform=output_transform, save_details=save_details)


class HausdorffDistance95Metric(HausdorffDistanceMetric):
    """95th-percentile symmetric Hausdorff distance per image and channel, empty masks scored as described above.

    Inputs are binary ``(B, C, H, W)`` masks; every channel counts (a left/right lung pair has no background channel).
    """

    def __init__(self, percentile: float = 95.0, reduction: str = "mean", get_not_nans: bool = False):
        super().__init__(include_background=True, percentile=percentile, reduction=reduction, get_not_nans=get_not_nans)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:  # type: ignore[override]
        pred_any = y_pred.flatten(2).sum(-1) > 0
        true_any = y.flatten(2).sum(-1) > 0
        both = pred_any & true_any
        with warnings.catch_warnings():  # MONAI's own deprecation notice about an argument it passes itself
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
            return self._distances(y_pred, y, pred_any, true_any, both, **kwargs)

    def _distances(self, y_pred, y, pred_any, true_any, both, **kwargs) -> torch.Tensor:
        if bool(both.all()):
            return super()._compute_tensor(y_pred, y, **kwargs)
        diagonal = math.sqrt(sum(float(s - 1) ** 2 for s in y.shape[2:]))
        out = torch.where(pred_any ^ true_any, diagonal, 0.0).to(dtype=torch.float32, device=y.device)
        if bool(both.any()):
            # distances only where both masks have pixels; MONAI warns and returns inf/NaN for the rest
            index = both.any(dim=1).nonzero().flatten()
            with warnings.catch_warnings():  # the empty channels of these images are handled here
                warnings.filterwarnings("ignore", message=".*is all 0, this may result in nan/inf distance.*")
                distances = super()._compute_tensor(y_pred[index], y[index], **kwargs).to(out.device, out.dtype)
            out[index] = torch.where(both[index], distances, out[index])
        return out


class HausdorffDistance95(IgniteMetricHandler):
    """Ignite/MONAI metric handler for :class:`HausdorffDistance95Metric` (mean over images and channels)."""

    def __init__(self, percentile: float = 95.0, output_transform=lambda x: x, save_details: bool = True):
        super().__init__(metric_fn=HausdorffDistance95Metric(percentile=percentile), output_transform=output_transform, save_details=save_details)


def _per_image(details) -> torch.Tensor:
    """An evaluator's ``metric_details`` entry as a float (images, channels) tensor."""
    values = torch.as_tensor(details, dtype=torch.float32).detach().cpu()
    return values.reshape(values.shape[0], -1) if values.ndim != 2 else values


def _stats(values: torch.Tensor) -> dict:
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return {"mean": None, "std": None, "median": None, "min": None, "max": None}
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std(unbiased=False)),
        "median": float(finite.median()),
        "min": float(finite.min()),
        "max": float(finite.max()),
    }


def _finite_mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def segmentation_report(metric_details: dict, names: dict, channel_names, output_dir: str | None = None, headline: dict | None = None,
                        groups=None, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Summarise per-image segmentation metrics, per channel and over all channels, and write ``metrics.json``.

    ``metric_details`` is an evaluator's ``state.metric_details`` (``{metric name: (images, channels) values}``);
    ``names`` maps the reported name to the metric name, e.g. ``{"Dice": "test_dice", "HD95 (px)": "test_hd95"}``.
    The ``summary`` holds each reported name's mean over images and channels (``headline`` renames or subsets
    it). Each mean gets a bootstrap 95% interval (``ci95`` beside it, ``summary_ci95`` beside the summary),
    resampling the patients ``groups`` names (one id per image, in evaluation order) or else images. Returns the
    report.
    """
    from .bootstrap import bootstrap_interval
    from .report import write_json

    channel_names = list(channel_names)
    metrics, summary = {}, {}
    images = None
    for reported, metric in names.items():
        if metric not in metric_details:
            raise KeyError(f"no per-image values for metric '{metric}' (found {sorted(metric_details)}); was save_details on?")
        values = _per_image(metric_details[metric])
        if values.shape[1] != len(channel_names):
            raise ValueError(f"metric '{metric}' has {values.shape[1]} channels for channel names {channel_names}")
        images = int(values.shape[0])
        metrics[reported] = {"all": _stats(values), "per_channel": {c: _stats(values[:, i]) for i, c in enumerate(channel_names)}}
        summary[reported] = metrics[reported]["all"]["mean"]
    per_image = {reported: _per_image(metric_details[metric]).double().numpy() for reported, metric in names.items()}

    def means(index):  # resampled rows of every metric at once
        out = {}
        for reported, values in per_image.items():
            out[(reported, None)] = _finite_mean(values[index])
            out.update({(reported, c): _finite_mean(values[index, i]) for i, c in enumerate(channel_names)})
        return out

    ci = bootstrap_interval(means, np.arange(images or 0), groups=groups, n_resamples=n_resamples, seed=seed)
    for reported, entry in metrics.items():
        entry["all"]["ci95"] = ci[(reported, None)]
        for c in channel_names:
            entry["per_channel"][c]["ci95"] = ci[(reported, c)]
    summary_ci = {reported: ci[(reported, None)] for reported in names}
    if headline is not None:
        summary = {new: summary[old] for new, old in headline.items()}
        summary_ci = {new: summary_ci[old] for new, old in headline.items()}
    report = {"images": images, "channels": channel_names, "summary": summary, "summary_ci95": summary_ci, "metrics": metrics}
    if output_dir is not None:
        write_json(f"{output_dir}/metrics.json", report)
    return report
