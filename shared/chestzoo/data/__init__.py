"""Dataset readers, image reading, datalists and synthetic data."""

from .cache import DiskCacheDataset, cache_enabled
from .datalist import assign_splits, check_patient_disjoint, load_datalist, parse_fractions, split_of, write_datalist
from .errors import DataError
from .io import LoadChestImaged, read_image, read_mask, window
from .registry import DATASETS, prepare, synth
from .screen import UnreadableFiles, check_file, screen_items

__all__ = [
    "assign_splits",
    "parse_fractions",
    "DATASETS",
    "DataError",
    "DiskCacheDataset",
    "LoadChestImaged",
    "UnreadableFiles",
    "cache_enabled",
    "check_file",
    "check_patient_disjoint",
    "load_datalist",
    "prepare",
    "read_image",
    "read_mask",
    "screen_items",
    "split_of",
    "synth",
    "window",
    "write_datalist",
]
