"""Synthetic Lung-PET-CT-Dx in the layout of a TCIA NBIA download plus the annotation release.

What :func:`write` produces under ``out``::

    manifest-<id>/metadata.csv                       NBIA's series table (same 17 columns)
    manifest-<id>/Lung-PET-CT-Dx/Lung_Dx-A0001/<MM-DD-YYYY>-NA-<study>-<5 UID digits>/
        <series number>.000000-<series description>-<5 UID digits>/1-01.dcm ...
    Lung-PET-CT-Dx-Annotations-XML-Files-rev12222020/Annotation/A0001/<SOPInstanceUID>.xml

Each patient has one axial chest CT series (CT Image Storage, stored values with RescaleIntercept -1024 so that
only the modality LUT gives Hounsfield units); every third patient also has a PET study (Modality PT) that a
reader must skip. The subject's letter is the histology (A, B, E, G: ``chestzoo.data.labels.LUNG_CT_CLASSES``).

The CT is a numerical phantom in HU: air outside, a fat layer under the skin, soft tissue, two lungs with
vessels, mediastinum and heart, an aorta, a vertebra, ribs, and liver and spleen domes rising into the lung
bases. The lungs are small at the apex and give way to the domes at the base, so slices near either end of a
series look unlike the middle ones. A solid tumour (a ball with a few smaller lobulations, +40 HU) sits in one
lung across several consecutive slices; its size varies between patients and, a little, with the histology.
One PASCAL-VOC XML per slice that shows the tumour holds the tumour's exact extent on that slice as
``[xmin, ymin, xmax, ymax]`` pixel edges (the tumour covers ``image[ymin:ymax, xmin:xmax]``).

Everything derives from the seed: UIDs come from ``generate_uid(entropy_srcs=...)``, dates are drawn, not read
from the clock, so the same seed writes the same bytes.
"""

from __future__ import annotations

import csv
import datetime
import os
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)
from scipy.ndimage import gaussian_filter


COLLECTION = "Lung-PET-CT-Dx"
DOI_URI = "https://doi.org/10.7937/TCIA.2020.NNC2-0461"
ANNOTATION_RELEASE = "Lung-PET-CT-Dx-Annotations-XML-Files-rev12222020"
METADATA_COLUMNS = (
    "Series UID",
    "Collection",
    "3rd Party Analysis",
    "Data Description URI",
    "Subject ID",
    "Study UID",
    "Study Description",
    "Study Date",
    "Series Description",
    "Manufacturer",
    "Modality",
    "SOP Class Name",
    "SOP Class UID",
    "Number of Images",
    "File Size",
    "File Location",
    "Download Timestamp",
)

FIELD_OF_VIEW_MM = 360.0  # in-plane, square
COVERAGE_MM = 200.0  # cranio-caudal extent of a series
TUMOUR_HU = 40.0

# Histology letters in the order patients are dealt out; the real cohort is mostly adenocarcinoma.
_LETTER_CYCLE = ("A", "B", "A", "G", "E", "A", "G", "B")
_DOWNLOADED = datetime.datetime(2021, 1, 5, 10, 0, 0)
# Tumour radius range in mm per histology (small cell tends to be central and bulky, large cell big).
_RADIUS_MM = {"A": (13.0, 22.0), "B": (15.0, 25.0), "E": (17.0, 27.0), "G": (14.0, 24.0)}


def _uid(seed: int, *parts) -> str:
    return generate_uid(entropy_srcs=["chestzoo", "lung_pet_ct_dx", str(seed), *map(str, parts)])


@dataclass
class Lobe:
    """One ball of the tumour: centre (x, y, z) in patient mm and radius in mm."""

    centre: tuple[float, float, float]
    radius: float


@dataclass
class CtCase:
    """One synthetic patient: anatomy jitter, tumour geometry and the CT series geometry."""

    index: int
    letter: str
    size: int
    slices: int
    seed: int
    z_top: float  # z (mm) of the most superior slice
    thickness: float
    caudocranial: bool  # instance numbers run from the feet up (the reader must sort by position)
    signed_pixels: bool  # int16 storage instead of 12-bit uint16
    tumour_side: str  # "right" or "left" lung (the patient's)
    lobes: list[Lobe] = field(default_factory=list)
    vessels: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (x, y, drift, radius) in mm
    jitter: dict = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return f"Lung_Dx-{self.letter}{self.index + 1:04d}"

    @property
    def annotation_folder(self) -> str:
        return f"{self.letter}{self.index + 1:04d}"

    @property
    def pixel_spacing(self) -> float:
        return FIELD_OF_VIEW_MM / self.size

    def z(self, k: int) -> float:
        """z (mm, patient superior is +) of slice ``k``, counted from the head."""
        return self.z_top - k * self.thickness

    def relative(self, k: int) -> float:
        return k / max(self.slices - 1, 1)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Patient x (to the patient's left) and y (to posterior) of every pixel centre, in mm."""
        coords = (np.arange(self.size, dtype=np.float32) + 0.5) * self.pixel_spacing - FIELD_OF_VIEW_MM / 2
        return np.meshgrid(coords, coords)  # xs vary along columns, ys along rows

    def lung_centres(self) -> dict[str, tuple[float, float]]:
        j = self.jitter
        return {"right": (-72.0 + j["lung_dx"], 5.0 + j["lung_dy"]), "left": (72.0 + j["lung_dx"], 5.0 + j["lung_dy"])}

    def lungs(self, k: int, xs: np.ndarray, ys: np.ndarray) -> dict[str, np.ndarray]:
        """Boolean lung masks of slice ``k`` (before the tumour is drawn)."""
        t = self.relative(k)
        grow = 0.45 + 0.55 * np.sin(0.5 * np.pi * min(t / 0.55, 1.0))  # apex small, widest at mid chest
        out = {}
        for side, (cx, cy) in self.lung_centres().items():
            rx, ry = 62.0 * grow * self.jitter["lung_scale"], 82.0 * grow * self.jitter["lung_scale"]
            lung = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
            dome_r = self.dome_radius(side, t)
            if dome_r > 0:
                lung &= (xs - cx) ** 2 + (ys - cy + 10.0) ** 2 > dome_r**2
            # the mediastinum and heart keep the lungs apart
            lung &= ~self._heart(t, xs, ys)
            out[side] = lung
        return out

    @staticmethod
    def dome_radius(side: str, t: float) -> float:
        """Radius (mm) of the liver (right) or spleen (left) dome cutting a lung base at relative height ``t``.

        The domes start wide rather than as a point, so their first slice does not look like a nodule.
        """
        if t <= 0.72:
            return 0.0
        return (95.0 if side == "right" else 80.0) * (0.5 + 0.5 * (t - 0.72) / 0.28)

    def _heart(self, t: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        j = self.jitter
        width = 22.0 + 36.0 * np.clip((t - 0.25) / 0.4, 0.0, 1.0)  # narrow mediastinum above, heart below
        return ((xs - 12.0 - j["heart_dx"]) / width) ** 2 + ((ys + 18.0) / (45.0 + 0.4 * width)) ** 2 <= 1.0

    def tumour(self, k: int, xs: np.ndarray, ys: np.ndarray, lungs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Boolean tumour mask of slice ``k``: pixel centres inside any lobe, kept within the tumour's lung."""
        z = self.z(k)
        mask = np.zeros(xs.shape, dtype=bool)
        for lobe in self.lobes:
            cx, cy, cz = lobe.centre
            dz2 = (z - cz) ** 2
            if dz2 >= lobe.radius**2:
                continue
            mask |= (xs - cx) ** 2 + (ys - cy) ** 2 + dz2 <= lobe.radius**2
        if lungs is None:
            lungs = self.lungs(k, xs, ys)
        return mask & lungs[self.tumour_side]

    def render(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Slice ``k`` (0 = most superior) in HU as float32, and its tumour mask."""
        xs, ys = self.grid()
        t = self.relative(k)
        z = self.z(k)
        j = self.jitter
        rng = np.random.default_rng([self.seed, self.index, k, 7])

        hu = np.full(xs.shape, -1000.0, dtype=np.float32)  # air
        bx, by = 160.0 * j["body_scale"], 112.0 * j["body_scale"]
        body = (xs / bx) ** 2 + ((ys - 8.0) / by) ** 2 <= 1.0
        inner = (xs / (bx - 12.0)) ** 2 + ((ys - 8.0) / (by - 10.0)) ** 2 <= 1.0
        hu[body] = -100.0  # subcutaneous fat
        hu[inner] = 30.0  # muscle and soft tissue

        # ribs: bright ovals just inside the fat layer, present on every other ~25 mm band
        if np.cos(2 * np.pi * z / 25.0) > -0.3:
            angles = np.concatenate([np.linspace(0.25 * np.pi, 0.75 * np.pi, 4), np.linspace(1.2 * np.pi, 1.8 * np.pi, 5)])
            for angle in angles:
                rx, ry = (bx - 20.0) * np.cos(angle), (by - 17.0) * np.sin(angle)
                hu[(xs - rx) ** 2 + (ys - 8.0 - ry) ** 2 <= 6.0**2] = 700.0

        lungs = self.lungs(k, xs, ys)
        lung_any = lungs["right"] | lungs["left"]
        hu[lung_any] = -850.0
        # vessels: tubes running roughly cranio-caudally, thinning towards the periphery
        for vx, vy, drift, radius in self.vessels:
            px, py = vx + drift * (z - self.z_top) / COVERAGE_MM, vy
            vessel = ((xs - px) ** 2 + (ys - py) ** 2 <= radius**2) & lung_any
            hu[vessel] = 40.0

        for side, (cx, cy) in self.lung_centres().items():  # liver and spleen below the diaphragm
            dome_r = self.dome_radius(side, t)
            if dome_r > 0:
                organ = ((xs - cx) ** 2 + (ys - cy + 10.0) ** 2 <= dome_r**2) & inner
                hu[organ] = 60.0 if side == "right" else 50.0

        heart = self._heart(t, xs, ys) & inner
        hu[heart] = 40.0
        if t < 0.3:  # trachea above the carina
            hu[(xs - 0.0) ** 2 + (ys + 30.0) ** 2 <= 9.0**2] = -1000.0
        hu[(xs - 18.0) ** 2 + (ys - 40.0) ** 2 <= 13.0**2] = 45.0  # descending aorta
        # vertebra: cortical bone rim around cancellous bone, and the spinous process
        vert = (xs**2 + (ys - 75.0) ** 2) <= 20.0**2
        hu[vert] = 700.0
        hu[(xs**2 + (ys - 75.0) ** 2) <= 14.0**2] = 250.0
        hu[(np.abs(xs) <= 5.0) & (ys > 92.0) & (ys < 112.0)] = 700.0

        hu = gaussian_filter(hu, 0.5)  # partial volume at organ edges
        hu += rng.normal(0.0, 12.0, hu.shape).astype(np.float32)  # quantum noise

        tumour = self.tumour(k, xs, ys, lungs)
        if tumour.any():
            texture = gaussian_filter(rng.normal(0.0, 1.0, hu.shape).astype(np.float32), 1.0)
            hu[tumour] = TUMOUR_HU + 8.0 * texture[tumour] + rng.normal(0.0, 6.0, int(tumour.sum()))
        return hu.astype(np.float32), tumour


def box_of(mask: np.ndarray) -> list[int] | None:
    """``[xmin, ymin, xmax, ymax]`` pixel edges of a mask, or None when it is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def make_cases(patients: int = 12, size: int = 64, seed: int = 0, slices: int = 24) -> list[CtCase]:
    """The synthetic patients :func:`write` draws, in order (deterministic in the arguments)."""
    if patients < 1 or size < 16 or slices < 4:
        raise ValueError(f"need patients >= 1, size >= 16 and slices >= 4 (got {patients}, {size}, {slices})")
    cases = []
    for i in range(patients):
        rng = np.random.default_rng([seed, i, 1])
        letter = _LETTER_CYCLE[i % len(_LETTER_CYCLE)]
        thickness = round(COVERAGE_MM / slices, 3)
        case = CtCase(
            index=i,
            letter=letter,
            size=size,
            slices=slices,
            seed=seed,
            z_top=round(float(rng.uniform(-140.0, -100.0)), 2),
            thickness=thickness,
            caudocranial=i % 4 == 3,
            signed_pixels=i % 2 == 1,
            tumour_side="right" if rng.random() < 0.55 else "left",
            jitter={
                "lung_dx": float(rng.normal(0, 3)),
                "lung_dy": float(rng.normal(0, 3)),
                "lung_scale": float(rng.uniform(0.93, 1.05)),
                "heart_dx": float(rng.normal(0, 3)),
                "body_scale": float(rng.uniform(0.95, 1.05)),
            },
        )
        # tumour: a main ball in the middle of the series (kept away from the top and bottom 15%) plus lobulations
        radius = float(rng.uniform(*_RADIUS_MM[letter]))
        k_centre = float(rng.uniform(0.35, 0.65)) * (slices - 1)
        cz = case.z(0) - k_centre * thickness
        lung_cx, lung_cy = case.lung_centres()[case.tumour_side]
        lateral = -1.0 if case.tumour_side == "right" else 1.0  # patient right is -x
        cx = lung_cx + lateral * float(rng.uniform(-0.05, 0.3)) * 50.0
        cy = lung_cy + float(rng.uniform(-0.3, 0.2)) * 70.0
        case.lobes.append(Lobe((cx, cy, cz), radius))
        for _ in range(int(rng.integers(2, 5))):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            r = radius * float(rng.uniform(0.35, 0.55))
            centre = np.array([cx, cy, cz]) + direction * radius * 0.85
            case.lobes.append(Lobe(tuple(float(c) for c in centre), r))
        # vessels: fixed tubes in both lungs, away from the tumour centre
        vessels = []
        for side, (lx, ly) in case.lung_centres().items():
            for _ in range(14):
                vx, vy = lx + rng.uniform(-40, 40), ly + rng.uniform(-60, 60)
                if (vx - cx) ** 2 + (vy - cy) ** 2 < (radius * 1.8) ** 2:
                    continue
                vessels.append((vx, vy, rng.uniform(-15, 15), rng.uniform(1.5, 3.5)))
        case.vessels = np.array(vessels, dtype=np.float64).reshape(-1, 4)
        cases.append(case)
    return cases


# --- DICOM writing -------------------------------------------------------------------------------------------


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "CHESTZOO"
    return meta


def _ds_number(value: float) -> str:
    """A decimal string short enough for DICOM's 16-character DS."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


@dataclass
class SeriesSpec:
    subject: str
    study_uid: str
    series_uid: str
    frame_uid: str
    study_date: str  # YYYYMMDD
    study_description: str
    series_description: str
    series_number: int
    modality: str


def _base_dataset(spec: SeriesSpec, sop_class: str, sop_uid: str, sex: str, age: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = spec.study_date
    ds.SeriesDate = spec.study_date
    ds.ContentDate = spec.study_date
    ds.StudyTime = "093000"
    ds.AccessionNumber = ""
    ds.Modality = spec.modality
    ds.Manufacturer = "SIEMENS"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = spec.study_description
    ds.SeriesDescription = spec.series_description
    ds.PatientName = spec.subject
    ds.PatientID = spec.subject
    ds.PatientBirthDate = ""
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = ""
    ds.SeriesNumber = spec.series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = spec.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    return ds


def ct_slice_dataset(
    case: CtCase, spec: SeriesSpec, k: int, hu: np.ndarray, sop_uid: str, instance: int, sex: str, age: int
) -> Dataset:
    """A CT Image Storage dataset for slice ``k``: stored value = HU + 1024, RescaleIntercept -1024."""
    ds = _base_dataset(spec, CTImageStorage, sop_uid, sex, age)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = _ds_number(case.thickness)
    ds.KVP = "120"
    ds.InstanceNumber = instance
    first = -FIELD_OF_VIEW_MM / 2 + case.pixel_spacing / 2
    ds.ImagePositionPatient = [_ds_number(first), _ds_number(first), _ds_number(case.z(k))]
    ds.SliceLocation = _ds_number(case.z(k))
    ds.Rows, ds.Columns = hu.shape
    ds.PixelSpacing = [_ds_number(case.pixel_spacing)] * 2
    stored = np.round(hu) + 1024.0
    if case.signed_pixels:
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
        pixels = np.clip(stored, -32768, 32767).astype("<i2")
    else:
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        pixels = np.clip(stored, 0, 4095).astype("<u2")
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = pixels.tobytes()
    return ds


def pet_slice_dataset(
    case: CtCase, spec: SeriesSpec, k: int, activity: np.ndarray, sop_uid: str, sex: str, age: int
) -> Dataset:
    """A PET Image Storage dataset (activity in Bq/ml through RescaleSlope): what a CT reader must leave out."""
    ds = _base_dataset(spec, PositronEmissionTomographyImageStorage, sop_uid, sex, age)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SeriesType = ["WHOLE BODY", "IMAGE"]
    ds.Units = "BQML"
    ds.CorrectedImage = ["ATTN", "DECY"]
    ds.DecayCorrection = "START"
    thickness = 2 * case.thickness
    ds.SliceThickness = _ds_number(thickness)
    ds.InstanceNumber = k + 1
    spacing = FIELD_OF_VIEW_MM / activity.shape[0]
    first = -FIELD_OF_VIEW_MM / 2 + spacing / 2
    z = case.z(2 * k)
    ds.ImagePositionPatient = [_ds_number(first), _ds_number(first), _ds_number(z)]
    ds.SliceLocation = _ds_number(z)
    ds.Rows, ds.Columns = activity.shape
    ds.PixelSpacing = [_ds_number(spacing)] * 2
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 0
    slope = 0.5
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = _ds_number(slope)
    ds.PixelData = np.clip(np.round(activity / slope), 0, 65535).astype("<u2").tobytes()
    return ds


def voc_xml(folder: str, filename: str, width: int, height: int, objects: list[tuple[str, list[int]]]) -> str:
    """A PASCAL-VOC annotation as LabelImg writes it (the layout of the Lung-PET-CT-Dx XML release)."""
    lines = ['<annotation verified="no">', f"  <folder>{escape(folder)}</folder>"]
    lines += [f"  <filename>{escape(filename)}</filename>"]
    lines += ["  <path>Unknow</path>", "  <source>Unknow<database>Unknown</database>", "  </source>"]
    lines += ["  <size>", f"    <width>{width}</width>", f"    <height>{height}</height>", "    <depth>1</depth>", "  </size>"]
    lines += ["  <segmented>0</segmented>"]
    for name, (xmin, ymin, xmax, ymax) in objects:
        lines += ["  <object>", f"    <name>{escape(name)}</name>"]
        lines += ["    <pose>Unspecified</pose>", "    <truncated>0</truncated>"]
        lines += ["    <Difficult>0</Difficult>", "    <bndbox>", f"      <xmin>{xmin}</xmin>", f"      <ymin>{ymin}</ymin>"]
        lines += [f"      <xmax>{xmax}</xmax>", f"      <ymax>{ymax}</ymax>", "    </bndbox>", "  </object>"]
    lines.append("</annotation>")
    return "\n".join(lines)


def _folder_date(yyyymmdd: str) -> str:
    return f"{yyyymmdd[4:6]}-{yyyymmdd[6:8]}-{yyyymmdd[0:4]}"


def _file_size(nbytes: int) -> str:
    return f"{nbytes / 1024:.2f} KB" if nbytes < 1024 * 1024 else f"{nbytes / 1024 / 1024:.2f} MB"


def _instance_name(instance: int, count: int) -> str:
    """NBIA names a series' files 1-01.dcm ... (three digits once a series has 100 images or more)."""
    return f"1-{instance:0{max(2, len(str(count)))}d}.dcm"


def _pet_activity(case: CtCase, k_ct: int, matrix: int) -> np.ndarray:
    """Coarse FDG uptake (Bq/ml) on a ``matrix``-sized grid: body background, hot heart, very hot tumour."""
    hu, tumour = case.render(k_ct)
    factor = case.size // matrix
    hu = hu[: matrix * factor, : matrix * factor].reshape(matrix, factor, matrix, factor).mean(axis=(1, 3))
    hot = tumour[: matrix * factor, : matrix * factor].reshape(matrix, factor, matrix, factor).mean(axis=(1, 3))
    activity = np.where(hu > -500, 3000.0, 200.0) + 9000.0 * ((hu > 20) & (hu < 60)) * 0.3 + 25000.0 * hot
    return gaussian_filter(activity, 0.8)


def write(out: str | os.PathLike, patients: int = 12, size: int = 64, seed: int = 0, slices: int = 24) -> dict:
    """Write a synthetic Lung-PET-CT-Dx download (NBIA layout + annotation XMLs) under ``out``.

    ``size`` is the CT matrix (square), ``slices`` the number of CT slices per patient. Returns a summary.
    """
    out = os.fspath(out)
    cases = make_cases(patients, size, seed, slices)
    manifest = os.path.join(out, f"manifest-{1600000000000 + 1000 * int(seed)}")
    annotation_root = os.path.join(out, ANNOTATION_RELEASE, "Annotation")
    rows: list[dict] = []
    counts = {"ct_slices": 0, "annotated_slices": 0, "pet_series": 0}
    for case in cases:
        rng = np.random.default_rng([seed, case.index, 2])
        sex = "M" if rng.random() < 0.6 else "F"
        age = int(rng.integers(38, 82))
        year = int(rng.integers(2006, 2012))
        date = f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
        ct = SeriesSpec(
            subject=case.subject,
            study_uid=_uid(seed, case.subject, "study", 1),
            series_uid=_uid(seed, case.subject, "series", 1),
            frame_uid=_uid(seed, case.subject, "frame", 1),
            study_date=date,
            study_description="Chest",
            series_description="5mm Lung SS50",
            series_number=2,
            modality="CT",
        )
        series_dir = os.path.join(
            manifest,
            COLLECTION,
            case.subject,
            f"{_folder_date(date)}-NA-{ct.study_description}-{ct.study_uid[-5:]}",
            f"{ct.series_number}.000000-{ct.series_description}-{ct.series_uid[-5:]}",
        )
        os.makedirs(series_dir, exist_ok=True)
        nbytes = 0
        for k in range(case.slices):
            hu, tumour = case.render(k)
            instance = case.slices - k if case.caudocranial else k + 1
            sop_uid = _uid(seed, case.subject, "ct", k)
            ds = ct_slice_dataset(case, ct, k, hu, sop_uid, instance, sex, age)
            path = os.path.join(series_dir, _instance_name(instance, case.slices))
            ds.save_as(path, enforce_file_format=True)
            nbytes += os.path.getsize(path)
            box = box_of(tumour)
            if box is not None:
                xml_dir = os.path.join(annotation_root, case.annotation_folder)
                os.makedirs(xml_dir, exist_ok=True)
                with open(os.path.join(xml_dir, f"{sop_uid}.xml"), "w") as f:
                    f.write(voc_xml(case.annotation_folder, sop_uid, size, size, [(case.letter, box)]))
                    f.write("\n")
                counts["annotated_slices"] += 1
        counts["ct_slices"] += case.slices
        rows.append(_metadata_row(ct, case.slices, nbytes, series_dir, manifest, len(rows)))

        if case.index % 3 == 0:  # a PET/CT study whose PET series the reader must skip
            pet_date = f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
            pet = SeriesSpec(
                subject=case.subject,
                study_uid=_uid(seed, case.subject, "study", 2),
                series_uid=_uid(seed, case.subject, "series", 2),
                frame_uid=_uid(seed, case.subject, "frame", 2),
                study_date=pet_date,
                study_description="PET WholebodyOnly Adult",
                series_description="PET WB",
                series_number=4,
                modality="PT",
            )
            pet_dir = os.path.join(
                manifest,
                COLLECTION,
                case.subject,
                f"{_folder_date(pet_date)}-NA-{pet.study_description}-{pet.study_uid[-5:]}",
                f"{pet.series_number}.000000-{pet.series_description}-{pet.series_uid[-5:]}",
            )
            os.makedirs(pet_dir, exist_ok=True)
            matrix = max(8, size // 2)
            count = case.slices // 2
            nbytes = 0
            for k in range(count):
                activity = _pet_activity(case, 2 * k, matrix)
                ds = pet_slice_dataset(case, pet, k, activity, _uid(seed, case.subject, "pt", k), sex, age)
                path = os.path.join(pet_dir, _instance_name(k + 1, count))
                ds.save_as(path, enforce_file_format=True)
                nbytes += os.path.getsize(path)
            rows.append(_metadata_row(pet, count, nbytes, pet_dir, manifest, len(rows)))
            counts["pet_series"] += 1

    with open(os.path.join(manifest, "metadata.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METADATA_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return {
        "root": out,
        "manifest": manifest,
        "annotations": annotation_root,
        "patients": len(cases),
        "series": len(rows),
        **counts,
    }


def _metadata_row(spec: SeriesSpec, images: int, nbytes: int, series_dir: str, manifest: str, order: int) -> dict:
    location = "./" + os.path.relpath(series_dir, manifest).replace(os.sep, "/")
    is_ct = spec.modality == "CT"
    return {
        "Series UID": spec.series_uid,
        "Collection": COLLECTION,
        "3rd Party Analysis": "NO",
        "Data Description URI": DOI_URI,
        "Subject ID": spec.subject,
        "Study UID": spec.study_uid,
        "Study Description": spec.study_description,
        "Study Date": _folder_date(spec.study_date),
        "Series Description": spec.series_description,
        "Manufacturer": "SIEMENS",
        "Modality": spec.modality,
        "SOP Class Name": "CT Image Storage" if is_ct else "Positron Emission Tomography Image Storage",
        "SOP Class UID": CTImageStorage if is_ct else PositronEmissionTomographyImageStorage,
        "Number of Images": images,
        "File Size": _file_size(nbytes),
        "File Location": location,
        # a fixed download date, advanced per series, instead of the clock
        "Download Timestamp": (_DOWNLOADED + datetime.timedelta(seconds=2 * order)).isoformat(timespec="milliseconds"),
    }

