"""Writing DICOM files for the synthetic datasets: file meta, reproducible UIDs and dates, pixel data encodings.

Everything here is deterministic, so the same seed gives the same bytes:

- UIDs are hashed from a seed and names (:func:`make_uid`), never drawn at random;
- dates and times are fixed (:data:`FIXED_DATE`, :data:`FIXED_TIME`), never the wall clock;
- the implementation UID and version name are chestzoo's own, so the bytes do not change with the pydicom version;
- pixel data is stored uncompressed (explicit or implicit VR little endian), as JPEG Baseline (8-bit lossy, encoded
  with Pillow and encapsulated) or as RLE Lossless (pydicom's encoder).

Typical use::

    ds = new_dataset(SecondaryCaptureImageStorage, make_uid(seed, "rsna", patient_id, "image"))
    ds.Modality = "CR"
    set_pixels(ds, pixels_uint8, syntax="jpeg")
    save(ds, path)
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

# Transfer syntaxes by short name.
SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "jpeg": JPEGBaseline8Bit,
    "rle": RLELossless,
}

# The placeholder date that anonymised public archives use (RSNA's files carry it too), and midnight.
FIXED_DATE = "19010101"
FIXED_TIME = "000000.00"

IMPLEMENTATION_UID = generate_uid(entropy_srcs=["chestzoo synthetic DICOM writer"])
IMPLEMENTATION_VERSION = "CHESTZOO_SYNTH"  # SH: at most 16 characters


def make_uid(seed: int, *names: object) -> UID:
    """A UID that depends only on ``seed`` and ``names`` (e.g. dataset, patient, "study"): same inputs, same UID."""
    return generate_uid(entropy_srcs=["chestzoo", str(seed), *(str(n) for n in names)])


def new_dataset(
    sop_class_uid: str,
    sop_instance_uid: str,
    *,
    date: str = FIXED_DATE,
    time: str = FIXED_TIME,
    character_set: str = "ISO_IR 100",
) -> FileDataset:
    """An empty DICOM file with its file meta information, SOP class/instance and a fixed study date and time.

    The caller adds the patient, study, series and equipment attributes, then the pixels with :func:`set_pixels`.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = character_set
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = date
    ds.StudyTime = time
    return ds


def set_verbatim(ds: FileDataset, keyword: str, value) -> None:
    """Set an element without pydicom's value check, for values real archives store against the standard.

    Example: the RSNA files hold Patient's Age as a bare number ('51') where the AS format wants '051Y'.
    """
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"unknown DICOM keyword {keyword!r}")
    ds.add(DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE))


def encode_jpeg_baseline(pixels: np.ndarray, quality: int = 95) -> bytes:
    """One 8-bit grey frame as a JPEG Baseline (ISO 10918-1, process 1) code stream."""
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError(f"JPEG Baseline needs one 8-bit grey frame, got {pixels.dtype} array of shape {pixels.shape}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buffer.getvalue()


def set_pixels(
    ds: FileDataset,
    pixels: np.ndarray,
    *,
    syntax: str = "explicit",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    jpeg_quality: int = 95,
) -> None:
    """Store one grey frame (uint8, uint16 or int16; ``(rows, columns)``) in ``ds`` with the given transfer syntax.

    ``syntax`` is a key of :data:`SYNTAXES`. The Image Pixel module (rows, columns, bits, pixel representation,
    photometric interpretation) follows the array. JPEG Baseline also records the lossy compression, as DICOM asks.
    """
    if syntax not in SYNTAXES:
        raise ValueError(f"syntax must be one of {sorted(SYNTAXES)}, not {syntax!r}")
    pixels = np.ascontiguousarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16, np.int16):
        raise ValueError(f"expected one grey uint8, uint16 or int16 frame, not {pixels.dtype} of shape {pixels.shape}")
    bits = bits_stored or 8 * pixels.dtype.itemsize
    jpeg = encode_jpeg_baseline(pixels, jpeg_quality) if syntax == "jpeg" else None  # fails before ds is touched
    ds.set_pixel_data(pixels, photometric, bits, generate_instance_uid=False)
    if jpeg is not None:
        ds.PixelData = encapsulate([jpeg])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    elif syntax == "rle":
        ds.compress(RLELossless, generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = SYNTAXES[syntax]


def save(ds: FileDataset, path: str | os.PathLike) -> str:
    """Write ``ds`` as a DICOM Part 10 file (preamble, 'DICM', file meta), creating the folder if needed."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
