"""Bootstrap percentile intervals for any metric, resampling images or whole patients.

Images of one patient are not independent (same anatomy, same scanner, often the same finding), so resampling
images understates the spread; with ``groups`` (patient ids) the resampling unit is the patient: draw patients with
replacement and take all of their images. ``strata`` resample each stratum on its own and keep its size, which is
what two independent samples need (e.g. real and generated features for a Frechet distance).

A resample where the metric is undefined (AUROC with one class present; the metric returns None or NaN) is skipped
and counted, so that the interval is over the defined resamples; when more than half are skipped there is no
interval (``low``/``high`` None), since the rest no longer describe the data's sampling distribution.

A metric may return one number or a mapping of names to numbers (e.g. per-class AUROC and their mean): then one
pass of resampling serves every name and the result maps each name to its interval.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping

import numpy as np

try:  # installed with scikit-learn
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

MAX_SKIPPED = 0.5


def _defined(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _take(array, index: np.ndarray):
    """``array[index]`` for numpy arrays and tensors, a list for Python sequences (e.g. per-image box lists)."""
    if hasattr(array, "shape") and hasattr(array, "__getitem__") and not isinstance(array, (list, tuple)):
        if type(array).__module__.startswith("torch"):
            import torch

            return array[torch.as_tensor(index, dtype=torch.long, device=array.device)]
        return array[index]
    return [array[i] for i in index]


def _codes(values, n: int) -> np.ndarray:
    """Integer code per image for any hashable labels (patient ids may be str, int or None)."""
    if values is None:
        return np.arange(n)
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{len(values)} group labels for {n} samples")
    lookup: dict = {}
    return np.asarray([lookup.setdefault(v, len(lookup)) for v in values], dtype=np.int64)


class _Resampler:
    """Index arrays of bootstrap resamples: units (patients or images) drawn with replacement within each stratum."""

    def __init__(self, n: int, groups=None, strata=None):
        unit = _codes(groups, n)
        n_units = int(unit.max()) + 1 if n else 0
        # images sorted by unit, so that a unit's images are one slice order[start : start + count]
        self.order = np.argsort(unit, kind="stable")
        self.counts = np.bincount(unit, minlength=n_units)
        self.starts = np.cumsum(self.counts) - self.counts
        stratum = _codes(strata, n) if strata is not None else np.zeros(n, dtype=np.int64)
        unit_stratum = np.zeros(n_units, dtype=np.int64)
        unit_stratum[unit] = stratum
        if strata is not None and np.any(stratum != unit_stratum[unit]):
            raise ValueError("a group spans two strata")
        self.strata_units = [np.flatnonzero(unit_stratum == s) for s in np.unique(unit_stratum)]

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        chosen = np.concatenate([units[rng.integers(0, len(units), len(units))] for units in self.strata_units])
        lengths = self.counts[chosen]
        # position within each chosen unit's slice, without a Python loop over units
        offsets = np.repeat(self.starts[chosen] - (np.cumsum(lengths) - lengths), lengths)
        return self.order[offsets + np.arange(int(lengths.sum()))]


def bootstrap_interval(
    metric: Callable,
    *arrays,
    groups=None,
    strata=None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    unit: str | None = None,
    bias_corrected: bool = False,
) -> dict:
    """Point estimate of ``metric(*arrays)`` and its bootstrap percentile interval.

    Args:
        metric: callable on ``arrays`` (same length along axis 0) returning a number (None or NaN when undefined),
            or a mapping of names to such numbers.
        arrays: numpy arrays, tensors or Python lists, indexed together.
        groups: one label per item (e.g. patient id); resamples whole groups instead of items.
        strata: one label per item; each stratum is resampled on its own, keeping its size.
        n_resamples, seed, level: number of resamples, seed of the numpy Generator, coverage of the interval.
        unit: the name of what is resampled in the result; default ``"patient"`` with groups, else ``"image"``.
        bias_corrected: shift the interval by the bootstrap estimate of bias (mean of the resamples minus the point
            estimate, reported as ``"bias"``), for statistics that duplicates in a resample push one way, such as
            the Frechet distance, whose plain percentile interval can lie wholly above the point estimate.

    Returns ``{"value", "low", "high", "level", "n_resamples", "skipped", "unit"}`` (``value``/``low``/``high`` None
    where undefined), or for a mapping-valued metric a dict of such dicts, one per name.
    """
    if not arrays:
        raise ValueError("bootstrap_interval needs at least one array")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"arrays differ in length: {[len(a) for a in arrays]}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    point = metric(*arrays)
    named = isinstance(point, Mapping)
    names = list(point) if named else [None]
    point_values = {k: _defined(point[k] if named else point) for k in names}
    samples: dict = {k: [] for k in names}
    if n and n_resamples > 0:
        resampler = _Resampler(n, groups, strata)
        rng = np.random.default_rng(seed)
        # one BLAS thread: a resample's small matrices (e.g. 64 x 64 covariances) gain nothing from threads, and on a
        # busy machine their start-up made a Frechet distance 30 times slower (20 ms against 0.6 ms)
        single_thread = threadpool_limits(1, user_api="blas") if threadpool_limits else contextlib.nullcontext()
        with single_thread:
            for _ in range(int(n_resamples)):
                index = resampler.sample(rng)
                result = metric(*(_take(a, index) for a in arrays))
                for k in names:
                    value = _defined(result.get(k) if named else result)
                    if value is not None:
                        samples[k].append(value)
    unit = unit or ("patient" if groups is not None else "image")
    alpha = (1.0 - level) / 2.0
    out = {}
    for k in names:
        values = np.asarray(samples[k])
        skipped = int(n_resamples) - len(values) if n else int(n_resamples)
        low = high = None
        if point_values[k] is not None and len(values) and skipped <= MAX_SKIPPED * n_resamples:
            low, high = (float(q) for q in np.quantile(values, [alpha, 1.0 - alpha]))
        out[k] = {"value": point_values[k], "low": low, "high": high, "level": level,
                  "n_resamples": int(n_resamples), "skipped": skipped, "unit": unit}
        if bias_corrected:
            bias = float(values.mean() - point_values[k]) if low is not None else None
            out[k].update(bias=bias, low=None if bias is None else low - bias, high=None if bias is None else high - bias)
    return out if named else out[None]


def format_interval(interval: Mapping | None, digits: int = 3) -> str:
    """``"0.874 [0.842, 0.903]"`` for markdown and CSV; the bare value without an interval, ``"n/a"`` without a value."""
    if not interval or interval.get("value") is None:
        return "n/a"
    text = f"{interval['value']:.{digits}f}"
    if interval.get("low") is not None and interval.get("high") is not None:
        text += f" [{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]"
    return text


def patient_ids(items, key: str = "patient") -> list | None:
    """``groups`` for :func:`bootstrap_interval` from datalist items: their patient ids, or None when no item has one.

    An item without the key becomes a patient of its own, so that it is still resampled, alone.
    """
    items = list(items)
    if not any(isinstance(item, Mapping) and key in item for item in items):
        return None
    return [item[key] if isinstance(item, Mapping) and key in item else ("image", i) for i, item in enumerate(items)]
