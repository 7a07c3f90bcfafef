"""Dataset readers, image reading, datalists and synthetic data."""

from .datalist import check_patient_disjoint, load_datalist, split_of, write_datalist
from .errors import DataError
from .io import LoadChestImaged, read_image, read_mask, window
from .registry import DATASETS, prepare, synth

__all__ = [
    "DATASETS",
    "DataError",
    "LoadChestImaged",
    "check_patient_disjoint",
    "load_datalist",
    "prepare",
    "read_image",
    "read_mask",
    "split_of",
    "synth",
    "window",
    "write_datalist",
]
