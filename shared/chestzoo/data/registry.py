"""The datasets chestzoo reads, by the short name used on the command line and in ``datasets/<name>/``.

Each dataset has a reader module ``chestzoo.data.<name>`` with ``prepare(root, out=None, **options)`` and a
synthetic writer ``chestzoo.data.synth.<name>`` with ``write(out, patients, size, seed, **options)``.
"""

from __future__ import annotations

import importlib

DATASETS = {
    "nih": "NIH ChestX-ray14 (Wang et al. 2017): PNGs, Data_Entry_2017.csv, BBox_List_2017.csv, official split",
    "rsna": "RSNA Pneumonia Detection Challenge (2018): DICOMs, stage_2_train_labels.csv, detailed class info",
    "lung_pet_ct_dx": "Lung-PET-CT-Dx (TCIA): NBIA DICOM series, metadata.csv, PASCAL-VOC tumour boxes",
    "montgomery": "Montgomery County chest X-ray set: PNGs with left and right lung masks",
    "pediatric": "Pediatric pneumonia chest X-rays (Kermany et al. 2018): chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}",
}


def _module(package: str, dataset: str):
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    return importlib.import_module(f"{package}.{dataset}")


def synth(dataset: str, out: str, **options):
    """Write a synthetic copy of ``dataset`` in its official layout under ``out``."""
    return _module("chestzoo.data.synth", dataset).write(out, **options)


def prepare(dataset: str, root: str, out: str | None = None, **options):
    """Read ``dataset`` from its official layout under ``root`` and write a MONAI datalist."""
    return _module("chestzoo.data", dataset).prepare(root, out, **options)
