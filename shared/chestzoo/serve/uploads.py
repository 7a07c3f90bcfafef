"""Checking an uploaded radiograph before any model sees it.

The upload's bytes are written into a fresh temporary folder under a name chosen here from the bytes themselves
(``upload.png``, ``upload.jpg`` or ``upload.dcm``), read with :func:`chestzoo.data.io.read_image`, and the folder is
removed when the request ends. Nothing from the request (file name, form fields) is used to build a path; the
client's file name only comes back inside messages.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import numpy as np

from ..data import DataError
from ..data.io import read_image

MAX_SIDE = 8192  # pixels; the largest public CXR sets (Montgomery) are under 5000 on a side
MAX_PIXELS = 50_000_000  # refuse decompression bombs before decoding them


class UploadError(ValueError):
    """An upload the server refuses; the message is meant for the user."""


def sniff(data: bytes) -> str | None:
    """The upload's format from its first bytes: "png", "jpg", "dcm", or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if len(data) >= 132 and data[128:132] == b"DICM":  # DICOM Part 10: 128-byte preamble, then "DICM"
        return "dcm"
    return None


def _dimensions(path: str, kind: str) -> tuple[int, int, int]:
    """(rows, columns, channels) from the file's header, without decoding the pixels."""
    if kind == "dcm":
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        missing = [tag for tag in ("Rows", "Columns") if tag not in ds]
        if missing:
            raise UploadError(f"malformed DICOM: no {' or '.join(missing)} in the header")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames != 1:
            raise UploadError(f"the DICOM holds {frames} frames; upload a single radiograph")
        return int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1))
    from PIL import Image

    with Image.open(path) as picture:
        return picture.size[1], picture.size[0], len(picture.getbands())


@contextlib.contextmanager
def read_upload(data: bytes, client_name: str = "upload") -> Iterator[tuple[str, np.ndarray]]:
    """``(path, image)`` for an uploaded radiograph: the temporary file (valid inside the ``with``) and the image as
    float32 (H, W) in [0, 1]. Raises :class:`UploadError` with a message for the user."""
    name = os.path.basename(str(client_name or "upload"))[:120] or "upload"  # for messages only
    if not data:
        raise UploadError(f"{name}: the file is empty")
    kind = sniff(data)
    if kind is None:
        raise UploadError(f"{name}: not a PNG, JPEG or DICOM image")
    with tempfile.TemporaryDirectory(prefix="chestzoo_serve_") as folder:
        path = os.path.join(folder, f"upload.{kind}")
        with open(path, "wb") as f:
            f.write(data)
        what = "malformed DICOM" if kind == "dcm" else f"damaged {kind.upper()}"
        # reader libraries quote the file they failed on: show the client's name, not the server's temporary path
        clean = lambda text: str(text).replace(path, name).replace(folder, "")  # noqa: E731
        try:
            rows, columns, channels = _dimensions(path, kind)
        except UploadError as exc:
            raise UploadError(f"{name}: {clean(exc)}") from None
        except Exception as exc:  # every header parser's failure: the upload is broken, say so in one line
            raise UploadError(f"{name}: {what} ({type(exc).__name__}: {clean(exc)})") from None
        if kind == "dcm" and channels != 1:
            raise UploadError(f"{name}: the DICOM has {channels} channels (SamplesPerPixel); a radiograph has 1")
        if max(rows, columns) > MAX_SIDE or rows * columns > MAX_PIXELS:
            raise UploadError(f"{name}: {columns} x {rows} pixels is too large (at most {MAX_SIDE} on a side)")
        if min(rows, columns) < 16:
            raise UploadError(f"{name}: {columns} x {rows} pixels is too small for a radiograph")
        try:
            image = read_image(path)
        except DataError as exc:
            raise UploadError(f"{name}: {what}: {clean(exc.problem)}") from None
        yield path, image
