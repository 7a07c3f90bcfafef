"""Choosing the images a generative model learns from: CT slices away from the ends of a series, tumour slices,
or the X-rays of some classes.

Lung-PET-CT-Dx items carry ``slice_position`` (0 at the head end of the series, 1 at the foot end) and ``box`` (the
tumour boxes of that slice); the pediatric pneumonia items carry a class index into the datalist's top-level
``labels``. Dropping the top and bottom of each series (the lung-CT GAN thesis drops 15% at each end) removes the
neck and abdomen slices that barely show lung.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from .datalist import load_datalist
from .errors import DataError


def select_items(items: Sequence[dict], trim: float = 0.0, tumour_only: bool = False, keep_labels: Sequence[int] | None = None) -> list[dict]:
    """Items kept for training a generator.

    ``trim``: drop slices whose ``slice_position`` lies in the first or last ``trim`` of their series (items with
    no ``slice_position``, such as X-rays, are not affected). ``tumour_only``: keep only items with at least one
    box. ``keep_labels``: keep only items whose integer ``label`` is one of these.
    """
    from ..utils import as_bool

    trim = float(trim)
    if not 0.0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    tumour_only = as_bool(tumour_only)
    keep = None if keep_labels is None else {int(v) for v in keep_labels}
    kept = []
    for item in items:
        position = item.get("slice_position")
        if position is not None and not trim <= float(position) <= 1.0 - trim:
            continue
        if tumour_only and not item.get("box"):
            continue
        if keep is not None and (not isinstance(item.get("label"), int) or item["label"] not in keep):
            continue
        kept.append(item)
    return kept


def label_indices(datalist: str | os.PathLike, names: Sequence[str] | str | None) -> list[int] | None:
    """Indices of class ``names`` in the datalist's top-level ``labels`` (None, "all" or empty keeps every class)."""
    if names is None or names == "all" or (not isinstance(names, str) and len(names) == 0):
        return None
    names = [names] if isinstance(names, str) else list(names)
    path = os.fspath(datalist)
    with open(path) as f:
        labels = json.load(f).get("labels")
    if not labels:
        raise DataError(path, f"datalist has no top-level 'labels' to choose classes {names} from")
    missing = [n for n in names if n not in labels]
    if missing:
        raise DataError(path, f"classes {missing} are not in the datalist's labels {labels}")
    return [labels.index(n) for n in names]


def generator_items(datalist: str | os.PathLike, split: str = "training", trim: float = 0.0, tumour_only: bool = False,
                    classes: Sequence[str] | str | None = None) -> list[dict]:
    """Load one split of ``datalist`` and :func:`select_items` from it; an empty result is an error naming the datalist."""
    items = load_datalist(datalist, split)
    kept = select_items(items, trim=trim, tumour_only=tumour_only, keep_labels=label_indices(datalist, classes))
    if not kept:
        raise DataError(
            os.fspath(datalist),
            f"no '{split}' images left after selection (trim={trim}, tumour_only={tumour_only}, classes={classes}) "
            f"out of {len(items)}",
        )
    return kept


def display_window(datalist: str | os.PathLike | None = None, default=(-600.0, 1500.0)) -> list[float]:
    """The (level, width) window of a datalist's top-level ``window`` (Lung-PET-CT-Dx writes the lung window), else ``default``."""
    if datalist is not None and os.path.isfile(os.fspath(datalist)):
        with open(os.fspath(datalist)) as f:
            window = json.load(f).get("window")
        if window is not None:
            if len(window) != 2 or float(window[1]) <= 0:
                raise DataError(os.fspath(datalist), f"'window' must be [level, width] with width > 0, got {window}")
            return [float(window[0]), float(window[1])]
    return [float(default[0]), float(default[1])]


def intensity_range(modality: str, window: Sequence[float] = (-600.0, 1500.0)) -> list[float]:
    """The input range a generator's [-1, 1] stands for: the window's [low, high] HU for CT, [0, 1] for X-rays."""
    if modality == "ct":
        level, width = (float(v) for v in window)
        return [level - width / 2.0, level + width / 2.0]
    if modality == "xray":
        return [0.0, 1.0]
    raise ValueError(f"modality must be 'ct' or 'xray', got {modality!r}")


def center_square(image):
    """The central square of a channel-first image ``(C, H, W)`` (side = the shorter of H and W); square images pass through.

    X-rays come in many aspect ratios; cropping before resizing keeps the anatomy's proportions.
    """
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[..., top:top + side, left:left + side]
