"""Reading chest images one way for every bundle, on top of MONAI's readers.

Conventions (also under "Conventions" in the README):
- arrays are channel-first ``(C, H, W)`` in numpy/torchvision order, so a box ``[x_min, y_min, x_max, y_max]``
  in pixels covers ``image[..., y_min:y_max, x_min:x_max]``;
- X-rays come out as float32 in [0, 1]: 8-bit PNG/JPEG / 255, 16-bit / 65535 (/ 4095 when all values fit 12 bits), colour and alpha images turned grey;
  DICOM through the modality LUT, then the VOI window when the file has one (else the stored-bit range), with
  MONOCHROME1 inverted so that dense tissue is always bright;
- CT slices come out in Hounsfield units (modality LUT); windowing is a separate step (:func:`window`);
- masks come out as {0, 1}; a list of mask files is merged (union) or stacked as channels.

MONAI's ``PILReader`` and ``PydicomReader`` do the decoding; what they lack (grey conversion, bit-depth scaling,
LUT sequences, VOI windows, MONOCHROME1) is added here. Any failure becomes a :class:`DataError` naming the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import pydicom
from monai.data import NibabelReader, PILReader, PydicomReader
from monai.transforms import MapTransform

try:
    from pydicom.pixels import apply_modality_lut
except ImportError:  # pydicom 2 (the MONAI Label environment pins pydicom below 3)
    from pydicom.pixel_data_handlers.util import apply_modality_lut

from .errors import DataError

DICOM_SUFFIXES = (".dcm", ".dicom", "")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MODALITIES = ("xray", "ct", "mask")

# Lung window (level -600 HU, width 1500 HU), the usual setting for lung parenchyma and nodules.
LUNG_WINDOW = (-600.0, 1500.0)


def _to_grey(image):
    """PIL converter: colour, palette and alpha images become 8-bit grey; grey 8/16-bit images are kept as they are."""
    if image.mode in ("RGB", "RGBA", "LA", "P", "CMYK", "YCbCr"):
        return image.convert("L")
    return image


class ChestDicomReader(PydicomReader):
    """``PydicomReader`` for single-frame chest images: full modality LUT, VOI window, MONOCHROME1 inversion.

    ``modality="xray"`` scales to [0, 1]; ``modality="ct"`` returns Hounsfield units.
    """

    def __init__(self, modality: str = "xray", **kwargs):
        kwargs.setdefault("swap_ij", False)
        super().__init__(**kwargs)
        self.modality = modality

    def get_data(self, data):
        # A radiograph has no ImagePositionPatient/ImageOrientationPatient; the identity affine MONAI warns about is
        # what a 2-D projection image wants, so that warning is noise here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ImageOrientationPatient.*")
            return super().get_data(data)

    def _get_array_data(self, img, filename):
        pixels = img.pixel_array
        if pixels.ndim != 2:
            raise ValueError(f"expected one grey frame, found pixel array of shape {pixels.shape}")
        values = np.asarray(apply_modality_lut(pixels, img), dtype=np.float32)
        if self.modality == "ct":
            return values
        low, high = _display_range(img)
        scaled = np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)
        if str(img.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
            scaled = 1.0 - scaled
        return scaled.astype(np.float32)


def _first(value) -> float:
    return float(value[0]) if isinstance(value, pydicom.multival.MultiValue) else float(value)


def _display_range(ds) -> tuple[float, float]:
    """The value range that maps to black..white: the VOI window if present, else the stored bits after the LUT."""
    if "WindowCenter" in ds and "WindowWidth" in ds:
        centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        return centre - width / 2.0, centre + width / 2.0
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1])
    else:
        stored = np.array([0, 2**bits - 1])
    ends = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    return float(ends.min()), float(ends.max())


def _suffix(path: str) -> str:
    name = os.path.basename(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]


class _Readers:
    """One MONAI reader per (format, modality), built on first use.

    The reader is called directly rather than through ``LoadImage``: on a corrupt file ``LoadImage`` retries every
    other registered reader (importing ITK on the way), which is slow and buries the real error.
    """

    def __init__(self):
        self._cache: dict[tuple[str, str], object] = {}

    def get(self, kind: str, modality: str):
        key = (kind, modality)
        if key not in self._cache:
            if kind == "pil":
                self._cache[key] = PILReader(converter=_to_grey, reverse_indexing=False)
            elif kind == "dicom":
                self._cache[key] = ChestDicomReader(modality="ct" if modality == "ct" else "xray")
            else:
                self._cache[key] = NibabelReader()
        return self._cache[key]

    def read(self, path: str, kind: str, modality: str) -> np.ndarray:
        reader = self.get(kind, modality)
        array, _ = reader.get_data(reader.read(path))
        return np.asarray(array)


_READERS = _Readers()


def _format_of(path: str) -> str:
    suffix = _suffix(path)
    if suffix in PIL_SUFFIXES:
        return "pil"
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    raise DataError(path, f"unsupported image format '{suffix}' (expected PNG, JPEG, DICOM or NIfTI)")


def read_image(path: str | os.PathLike, modality: str = "xray") -> np.ndarray:
    """Read one 2-D image as a float32 ``(H, W)`` array following the module's conventions."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, not {modality!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, "image file not found")
    if os.path.getsize(path) == 0:
        raise DataError(path, "image file is empty")
    kind = _format_of(path)
    try:
        array = _READERS.read(path, kind, modality)
    except DataError:
        raise
    except Exception as exc:  # decoding errors of every reader library end here, re-raised with the file name
        raise DataError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from exc
    array = np.squeeze(array)
    if array.ndim != 2:
        raise DataError(path, f"expected a 2-D grey image, got array of shape {array.shape}")
    if kind == "pil":
        array = _scale_pil(array)
    elif kind == "nifti" and modality == "xray":
        array = array.astype(np.float32)
    if modality == "mask":
        array = (array > 0.5 * max(float(array.max()), 1e-6)).astype(np.float32) if array.max() > 0 else array
    return np.ascontiguousarray(array, dtype=np.float32)


def _scale_pil(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8 or array.dtype == bool:
        return array.astype(np.float32) / 255.0
    if array.dtype in (np.uint16, np.int32, np.int16, np.uint32):
        # Radiographs often hold 12-bit detector values in 16-bit PNGs (NLM describes the Montgomery set as 12-bit):
        # scaling those by 65535 would leave the image nearly black, so a 16-bit image whose values all fit in
        # 12 bits is scaled by 4095.
        full = 4095.0 if int(array.max()) <= 4095 else 65535.0
        return np.clip(array.astype(np.float32) / full, 0.0, 1.0)
    return array.astype(np.float32)


def window(hu: np.ndarray, level: float = LUNG_WINDOW[0], width: float = LUNG_WINDOW[1]) -> np.ndarray:
    """Map Hounsfield units to [0, 1] through a display window (default: lung window)."""
    low = level - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float32) - low) / width, 0.0, 1.0)


def read_mask(paths: str | Sequence[str], merge: bool = True) -> np.ndarray:
    """Read one mask or several (e.g. Montgomery's left and right lung): ``(C, H, W)`` with C = 1 when merged."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    masks = [read_image(p, "mask") for p in paths]
    shapes = {m.shape for m in masks}
    if len(shapes) != 1:
        raise DataError(paths[0], f"mask files have different shapes {sorted(shapes)}: {paths}")
    stacked = np.stack(masks)
    return stacked.max(axis=0, keepdims=True) if merge else stacked


class LoadChestImaged(MapTransform):
    """Dictionary transform: load ``keys`` as channel-first float32 arrays (see module doc).

    ``modality`` is "xray", "ct" or "mask"; for masks, a list of files per key is merged (``merge_masks=True``)
    or stacked as channels. The source path is kept under ``<key>_path`` for logs and output file names.
    """

    def __init__(self, keys, modality: str = "xray", merge_masks: bool = True, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, not {modality!r}")
        self.modality = modality
        self.merge_masks = merge_masks

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            source = d[key]
            if self.modality == "mask":
                d[key] = read_mask(source, merge=self.merge_masks)
            else:
                d[key] = read_image(source, self.modality)[None]
            d[f"{key}_path"] = source if isinstance(source, str) else list(source)
        return d
