"""Box annotations for a Mask R-CNN: instance masks from boxes (optionally clipped to the lungs), resizing with boxes.

RSNA Pneumonia (and NIH) annotations are boxes, while a Mask R-CNN's mask head wants one binary mask per box. The
plain choice is the filled box (``shape="box"``); ``"ellipse"`` fills the ellipse inscribed in the box, closer to
the rounded outline of a consolidation. With a lung mask the instance mask is further cut to the lung fields, since
a pneumonic opacity lies inside the lungs: a box drawn over the lung edge then teaches the mask head to stop at the
pleura rather than paint the chest wall or the heart.

Where the lungs come from (one option, kept simple): a folder of lung masks with the files of each radiograph
named after the image file by a pattern, ``{stem}_*.png`` by default: every file matching it is read and their union
taken. That is what the ``cxr_lung_segmentation`` bundle's inference writes into ``<its output_dir>/masks`` (one PNG
per lung channel, ``<image stem>_<channel>.png``); for one hand-made mask per image use e.g. ``{stem}.png``. A lung
mask of another size than its image is resized to it (nearest neighbour). If clipping would leave less than ``min_lung_fraction`` of
a box, the unclipped shape is kept: the annotation says there is an opacity, so a lung mask that misses it is the
likelier error.

A pixel belongs to a box ``[x_min, y_min, x_max, y_max]`` when its centre ``(col + 0.5, row + 0.5)`` lies inside it;
a box too thin to contain any centre still gets the one pixel it touches most, so no instance mask is ever empty.

:class:`ResizeWithBoxesd` brings an image (and its lung mask) to a fixed size once, before caching, and scales the
boxes with it, keeping the stored size under ``original_size`` so that predictions can be mapped back to the pixels
of the file (which the challenge's submission wants).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .errors import DataError

MASK_SHAPES = ("box", "ellipse")
LUNG_MASK_NAME = "{stem}_*.png"
_IMAGE_SUFFIXES = (".nii.gz", ".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii")


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _span(low: float, high: float, size: int) -> tuple[int, int]:
    """Pixel index range whose centres lie in [low, high), at least one pixel, inside 0..size."""
    start = int(np.ceil(low - 0.5))
    stop = int(np.ceil(high - 0.5))
    if stop <= start:  # thinner than one pixel: the pixel holding the box's middle
        start = int(np.floor((low + high) / 2.0))
        stop = start + 1
    start, stop = max(0, min(start, size - 1)), max(1, min(stop, size))
    return start, max(stop, start + 1)


def box_mask(box: Sequence[float], height: int, width: int, shape: str = "box") -> np.ndarray:
    """``(H, W)`` bool mask of one ``[x_min, y_min, x_max, y_max]`` box (filled box or inscribed ellipse)."""
    if shape not in MASK_SHAPES:
        raise ValueError(f"mask shape must be one of {MASK_SHAPES}, not {shape!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    mask = np.zeros((height, width), dtype=bool)
    c0, c1 = _span(x0, x1, width)
    r0, r1 = _span(y0, y1, height)
    if shape == "box":
        mask[r0:r1, c0:c1] = True
        return mask
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    rx, ry = max((x1 - x0) / 2.0, 0.5), max((y1 - y0) / 2.0, 0.5)
    rows = np.arange(r0, r1)[:, None] + 0.5
    cols = np.arange(c0, c1)[None, :] + 0.5
    inside = ((cols - cx) / rx) ** 2 + ((rows - cy) / ry) ** 2 <= 1.0
    if not inside.any():  # tiny box: keep its centre pixel
        inside[(r1 - r0) // 2, (c1 - c0) // 2] = True
    mask[r0:r1, c0:c1] = inside
    return mask


def box_masks(
    boxes,
    height: int,
    width: int,
    shape: str = "box",
    lungs=None,
    min_lung_fraction: float = 0.2,
) -> np.ndarray:
    """``(N, H, W)`` uint8 instance masks of ``N`` boxes, cut to ``lungs`` (an ``(H, W)`` or ``(C, H, W)`` mask) if given.

    A box keeps its unclipped mask when fewer than ``min_lung_fraction`` of its pixels lie in the lungs.
    """
    b = _numpy(boxes).astype(np.float64).reshape(-1, 4) if np.size(_numpy(boxes)) else np.zeros((0, 4))
    out = np.zeros((len(b), height, width), dtype=np.uint8)
    lung = None
    if lungs is not None:
        lung = _numpy(lungs)
        if lung.ndim == 3:
            lung = lung.max(axis=0)
        if lung.shape != (height, width):
            raise ValueError(f"lung mask of shape {lung.shape} for an image of {height} x {width}")
        lung = lung > 0.5
    for k, box in enumerate(b):
        mask = box_mask(box, height, width, shape)
        if lung is not None:
            clipped = mask & lung
            if clipped.sum() >= min_lung_fraction * mask.sum():
                mask = clipped
        out[k] = mask
    return out


def resize_mask(mask, height: int, width: int) -> np.ndarray:
    """A ``(C, h, w)`` binary mask resized to ``(C, height, width)`` by nearest neighbour (unchanged if same size)."""
    m = _numpy(mask).astype(np.float32)
    if m.ndim == 2:
        m = m[None]
    if m.shape[-2:] == (height, width):
        return m
    resized = F.interpolate(torch.as_tensor(m)[None], size=(height, width), mode="nearest-exact")[0]
    return resized.numpy()


class BoxMasksd(MapTransform):
    """Dictionary transform: instance masks ``(N, H, W)`` uint8 under ``mask_key`` from the boxes under ``keys``.

    The size comes from ``ref_key`` (the image, channel-first). With ``lung_key`` present in the item, its mask
    (same size as the image, or resized to it) clips the instances, and the lung key is then removed unless
    ``keep_lung`` is set.
    """

    def __init__(
        self,
        keys: KeysCollection = "box",
        ref_key: str = "image",
        mask_key: str = "masks",
        shape: str = "box",
        lung_key: str | None = "lung",
        min_lung_fraction: float = 0.2,
        keep_lung: bool = False,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if shape not in MASK_SHAPES:
            raise ValueError(f"mask shape must be one of {MASK_SHAPES}, not {shape!r}")
        if len(self.keys) != 1:
            raise ValueError("BoxMasksd takes one box key")
        self.ref_key, self.mask_key, self.shape = ref_key, mask_key, shape
        self.lung_key, self.min_lung_fraction, self.keep_lung = lung_key, float(min_lung_fraction), keep_lung

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            height, width = (int(s) for s in d[self.ref_key].shape[-2:])
            lungs = None
            if self.lung_key and self.lung_key in d:
                lungs = resize_mask(d[self.lung_key], height, width)
            d[self.mask_key] = torch.as_tensor(box_masks(d[key], height, width, self.shape, lungs, self.min_lung_fraction))
        if self.lung_key and self.lung_key in d and not self.keep_lung:
            del d[self.lung_key]
        return d


def _stem(path: str) -> str:
    name = os.path.basename(os.fspath(path))
    lower = name.lower()
    for suffix in _IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def lung_mask_paths(image: str, lung_mask_dir: str, name: str = LUNG_MASK_NAME) -> list[str]:
    """The lung-mask file(s) of ``image`` in ``lung_mask_dir``: ``name`` formatted with the image's ``stem``, where a
    ``*`` matches any text (several files are merged by the loader). Empty when there is none."""
    pattern = os.path.join(os.fspath(lung_mask_dir), name.format(stem=glob.escape(_stem(image))))
    if "*" in name or "?" in name:
        return sorted(glob.glob(pattern))
    return [pattern] if os.path.isfile(pattern) else []


def attach_lung_masks(items: Sequence[dict], lung_mask_dir: str | None, key: str = "lung", name: str = LUNG_MASK_NAME,
                      image_key: str = "image") -> list[dict]:
    """Copies of ``items`` with ``key`` listing each image's lung-mask files in ``lung_mask_dir`` (unchanged if None).

    Every item needs its mask: a missing one raises :class:`DataError` naming the file pattern and the image.
    """
    from ..utils import as_bool

    if lung_mask_dir is None or (isinstance(lung_mask_dir, str) and not as_bool(lung_mask_dir)):
        return [dict(item) for item in items]
    if not os.path.isdir(lung_mask_dir):
        raise DataError(lung_mask_dir, "lung mask folder not found")
    out = []
    for item in items:
        paths = lung_mask_paths(item[image_key], lung_mask_dir, name)
        if not paths:
            expected = os.path.join(os.fspath(lung_mask_dir), name.format(stem=_stem(item[image_key])))
            raise DataError(expected, f"lung mask missing for image {item[image_key]}")
        out.append({**item, key: paths})
    return out


class ResizeWithBoxesd(MapTransform):
    """Resize the images under ``keys`` to ``spatial_size`` (H, W) and scale the boxes under ``box_keys`` with them.

    ``modes`` gives the interpolation per image key ("area" for radiographs, "nearest" for masks). The first key's
    size before resizing is stored as ``[H, W]`` under ``size_key``. Boxes are ``[x_min, y_min, x_max, y_max]``
    pixels, x along W. Arrays may be numpy or torch, channel-first.
    """

    def __init__(self, keys: KeysCollection, spatial_size, box_keys: KeysCollection = "box", modes="area",
                 size_key: str = "original_size", allow_missing_keys: bool = False):
        from monai.utils import ensure_tuple, ensure_tuple_rep

        super().__init__(keys, allow_missing_keys)
        size = ensure_tuple_rep(spatial_size, 2)
        self.spatial_size = (int(size[0]), int(size[1]))
        self.box_keys = ensure_tuple(box_keys)
        self.modes = ensure_tuple_rep(modes, len(self.keys))
        self.size_key = size_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        first = d[self.keys[0]]
        height, width = (int(s) for s in first.shape[-2:])
        d[self.size_key] = [height, width]
        for key, mode in self.key_iterator(d, self.modes):
            image = torch.as_tensor(_numpy(d[key]), dtype=torch.float32)
            if tuple(image.shape[-2:]) != self.spatial_size:
                kwargs = {"antialias": False} if mode in ("bilinear", "bicubic") else {}
                image = F.interpolate(image[None], size=self.spatial_size, mode=mode, **kwargs)[0]
            d[key] = image
        sx, sy = self.spatial_size[1] / width, self.spatial_size[0] / height
        scale = np.asarray([sx, sy, sx, sy], dtype=np.float32)
        for key in self.box_keys:
            if key in d:
                boxes = _numpy(d[key]).astype(np.float32).reshape(-1, 4) if np.size(_numpy(d[key])) else np.zeros((0, 4), np.float32)
                d[key] = boxes * scale
        return d
