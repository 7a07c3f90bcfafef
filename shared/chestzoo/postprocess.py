"""Cleaning up predicted lung masks: keep the lungs' own connected components and fill holes in them.

A lung-field segmentation should hold two large blobs (or one per channel when left and right lung are separate
channels). Stray islands of false positives elsewhere - a U-Net's typical reaction to noise - are removed by
keeping only the largest components, and pinholes (an opacity mistaken for background) are filled. The result is
that of MONAI's ``KeepLargestConnectedComponent`` then ``FillHoles`` applied one channel at a time (MONAI treats a
multi-channel input as one-hot with channel 0 as background, which a left/right lung pair is not), computed with
one ``scipy.ndimage.label`` of the mask and one of its background: MONAI's hole filling grows the outside
background pixel by pixel, which is several times slower per mask (the measured timings, with their commands, are in
benchmarks/README.md, "Per-step costs").
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type
from scipy import ndimage


class KeepLungs(Transform):
    """Binary lung masks ``(C, H, W)`` (or a batch of them) -> the ``components`` largest components per channel,
    holes filled.

    Args:
        components: components kept per channel; ``None`` means 2 for a single merged channel (both lungs) and 1
            for each channel of a left/right pair.
        min_relative_size: a kept component smaller than this fraction of the channel's largest one is dropped too
            (when the two lungs touch they form one component, and the "second lung" would be a stray island).
        fill_holes: fill enclosed background inside the kept components.
        connectivity: 1 (edges) or 2 (edges and corners) for what counts as connected; MONAI's default is 2.
    """

    def __init__(self, components: int | None = None, min_relative_size: float = 0.1, fill_holes: bool = True, connectivity: int | None = None):
        if components is not None and components < 1:
            raise ValueError(f"components must be at least 1, got {components}")
        if not 0.0 <= min_relative_size <= 1.0:
            raise ValueError(f"min_relative_size must be in [0, 1], got {min_relative_size}")
        self.components = components
        self.min_relative_size = float(min_relative_size)
        self.fill_holes = fill_holes
        self.structure = ndimage.generate_binary_structure(2, connectivity or 2)

    def __call__(self, img):
        """``img``: a ``(C, H, W)`` mask, or a ``(B, C, H, W)`` batch (an engine that does not decollate)."""
        data = np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img)
        if data.ndim not in (3, 4):
            raise ValueError(f"expected a (C, H, W) mask or a (B, C, H, W) batch, got shape {tuple(data.shape)}")
        n = self.components or (2 if data.shape[-3] == 1 else 1)
        out = [self._clean(channel > 0.5, n) for channel in data.reshape(-1, *data.shape[-2:])]
        result = np.stack(out).reshape(data.shape).astype(np.float32)
        return convert_to_dst_type(result, img, dtype=img.dtype if hasattr(img, "dtype") else None)[0]

    def _clean(self, mask: np.ndarray, n: int) -> np.ndarray:
        labels, count = ndimage.label(mask, structure=self.structure)
        if count == 0:
            return mask
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        keep = np.ones(count + 1, dtype=bool)
        if count > n:  # the n largest, ties ranked as MONAI ranks them
            keep[:] = False
            keep[np.argsort(sizes)[::-1][:n]] = True
        keep &= sizes >= self.min_relative_size * sizes.max()
        keep[0] = False
        mask = keep[labels]
        if self.fill_holes:
            background, regions = ndimage.label(~mask, structure=self.structure)
            hole = np.ones(regions + 1, dtype=bool)
            hole[0] = False
            hole[np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])] = False
            mask |= hole[background]
        return mask


class KeepLungsd(MapTransform):
    """Dictionary version of :class:`KeepLungs`."""

    def __init__(self, keys: KeysCollection, components: int | None = None, min_relative_size: float = 0.1,
                 fill_holes: bool = True, connectivity: int | None = None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.transform = KeepLungs(components, min_relative_size, fill_holes, connectivity)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d
