"""Check the files a datalist names before a long run starts, and either stop or skip the bad ones.

A run over 112,120 images should not die in epoch 3 on one corrupt PNG. :func:`screen_items` opens every file
cheaply (PNG chunk checksums, DICOM header and pixel-data length, NIfTI header), without decoding pixels, and
either raises one error that lists every bad file or, with ``skip_bad=True``, drops the items that name one,
logs them and writes them to a JSON report.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence

import nibabel
import pydicom
from PIL import Image

from .errors import DataError
from .io import _format_of

logger = logging.getLogger(__name__)


class UnreadableFiles(DataError):
    """Several input files failed the screen; ``problems`` maps each file to what is wrong with it."""

    def __init__(self, problems: dict[str, str]):
        self.problems = problems
        listing = "\n".join(f"  {path}: {problem}" for path, problem in problems.items())
        first = next(iter(problems))
        DataError.__init__(
            self, first, f"{len(problems)} unreadable input file(s); fix them or run with skip_bad=True:\n{listing}"
        )


def check_file(path: str) -> None:
    """Raise :class:`DataError` if ``path`` is missing, empty or structurally broken (pixels are not decoded)."""
    if not os.path.isfile(path):
        raise DataError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise DataError(path, "file is empty")
    kind = _format_of(path)
    try:
        if kind == "pil":
            with Image.open(path) as image:
                image.verify()  # walks the chunks and checks their CRCs for PNG
        elif kind == "dicom":
            _check_dicom(path)
        else:
            nibabel.load(path).header  # noqa: B018 - parsing the header is the check
    except DataError:
        raise
    except Exception as exc:  # every library's own error type, re-raised with the file name
        raise DataError(path, f"cannot read ({type(exc).__name__}: {exc})") from exc


def _check_dicom(path: str) -> None:
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise DataError(path, "DICOM file has no pixel data")
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
        expected *= int(ds.get("NumberOfFrames", 1) or 1)
        if len(ds.PixelData) < expected:
            raise DataError(path, f"pixel data truncated ({len(ds.PixelData)} of {expected} bytes)")


def _paths(value) -> list[str]:
    if value is None:
        return []
    return [os.fspath(v) for v in value] if isinstance(value, (list, tuple)) else [os.fspath(value)]


def screen_items(
    items: Sequence[dict],
    keys: Iterable[str] = ("image",),
    skip_bad=False,
    report: str | None = None,
) -> list[dict]:
    """Return the items whose files under ``keys`` all pass :func:`check_file`.

    With ``skip_bad`` false (the default) one :class:`UnreadableFiles` error lists every bad file; with it true the
    bad items are dropped, logged, and written to ``report`` (JSON) when a path is given.
    """
    from ..utils import as_bool

    keys = tuple(keys)
    good, problems = [], {}
    for item in items:
        bad = False
        for path in (p for key in keys for p in _paths(item.get(key))):
            try:
                check_file(path)
            except DataError as exc:
                problems[path] = exc.problem
                bad = True
        if not bad:
            good.append(item)
    if problems and not as_bool(skip_bad):
        raise UnreadableFiles(problems)
    if problems:
        logger.warning("skipping %d of %d items with unreadable files:\n%s", len(items) - len(good), len(items),
                       "\n".join(f"  {p}: {msg}" for p, msg in problems.items()))
    if report:
        os.makedirs(os.path.dirname(os.path.abspath(report)), exist_ok=True)
        with open(report, "w") as f:
            json.dump({"checked": len(items), "kept": len(good), "skipped": problems}, f, indent=2)
    return good
