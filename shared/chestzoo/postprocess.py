"""Cleaning up predicted lung masks: keep the lungs' own connected components and fill holes in them.

A lung-field segmentation should hold two large blobs (or one per channel when left and right lung are separate
channels). Stray islands of false positives elsewhere - a U-Net's typical reaction to noise - are removed by
keeping only the largest components, and pinholes (an opacity mistaken for background) are filled. Built on
MONAI's ``KeepLargestConnectedComponent`` and ``FillHoles``, applied one channel at a time: MONAI treats a
multi-channel input as one-hot with channel 0 as background, which a left/right lung pair is not.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import FillHoles, KeepLargestConnectedComponent, MapTransform, Transform
from monai.utils import convert_to_dst_type
from scipy import ndimage


class KeepLungs(Transform):
    """Binary lung masks ``(C, H, W)`` -> the ``components`` largest components per channel, holes filled.

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
        self.connectivity = connectivity

    def __call__(self, img):
        data = torch.as_tensor(np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img))
        if data.ndim != 3:
            raise ValueError(f"expected a (C, H, W) mask, got shape {tuple(data.shape)}")
        n = self.components or (2 if data.shape[0] == 1 else 1)
        keep = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, connectivity=self.connectivity, num_components=n)
        fill = FillHoles(applied_labels=[1], connectivity=self.connectivity)
        out = []
        for channel in (data > 0.5).to(torch.uint8):
            mask = torch.as_tensor(keep(channel[None].clone()))
            mask = self._drop_small(mask[0].numpy().astype(bool))
            if self.fill_holes:
                mask = np.asarray(fill(mask[None].astype(np.uint8)))[0].astype(bool)
            out.append(mask)
        result = np.stack(out).astype(np.float32)
        return convert_to_dst_type(result, img, dtype=img.dtype if hasattr(img, "dtype") else None)[0]

    def _drop_small(self, mask: np.ndarray) -> np.ndarray:
        if self.min_relative_size <= 0 or not mask.any():
            return mask
        structure = ndimage.generate_binary_structure(2, self.connectivity or 2)
        labels, count = ndimage.label(mask, structure=structure)
        if count < 2:
            return mask
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(sizes >= self.min_relative_size * sizes.max()) + 1
        return np.isin(labels, keep)


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
