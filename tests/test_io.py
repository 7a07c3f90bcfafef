"""Image reading conventions shared by every bundle (chestzoo.data.io)."""

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from chestzoo.data import DataError, LoadChestImaged, read_image, read_mask, window

RAMP = (np.arange(48 * 32).reshape(32, 48) % 256).astype(np.uint8)  # 32 rows, 48 columns: not square on purpose


def _dicom(path, pixels, photometric="MONOCHROME2", sop=SecondaryCaptureImageStorage, **tags):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID, ds.SOPInstanceUID = sop, "1.2.3.4"
    ds.Rows, ds.Columns = pixels.shape
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_png_8bit_is_scaled_rows_first(tmp_path):
    Image.fromarray(RAMP).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.shape == (32, 48) and image.dtype == np.float32
    np.testing.assert_allclose(image, RAMP / 255.0, atol=1e-6)


def test_png_16bit_rgba_and_jpeg(tmp_path):
    Image.fromarray(RAMP.astype(np.uint16) * 257).save(tmp_path / "b.png")
    np.testing.assert_allclose(read_image(tmp_path / "b.png"), RAMP / 255.0, atol=1e-5)
    Image.fromarray(RAMP.astype(np.uint16) * 16).save(tmp_path / "b12.png")  # 12-bit values in a 16-bit PNG
    np.testing.assert_allclose(read_image(tmp_path / "b12.png"), RAMP.astype(np.float32) * 16 / 4095.0, atol=1e-5)
    Image.fromarray(RAMP).convert("RGBA").save(tmp_path / "c.png")
    np.testing.assert_allclose(read_image(tmp_path / "c.png"), RAMP / 255.0, atol=1 / 255)
    Image.fromarray(RAMP).save(tmp_path / "d.jpg", quality=100)
    assert np.abs(read_image(tmp_path / "d.jpg") - RAMP / 255.0).mean() < 0.02


def test_dicom_monochrome1_is_inverted(tmp_path):
    mono2 = read_image(_dicom(tmp_path / "m2.dcm", RAMP))
    mono1 = read_image(_dicom(tmp_path / "m1.dcm", RAMP, "MONOCHROME1"))
    np.testing.assert_allclose(mono2, RAMP / 255.0, atol=1e-6)
    np.testing.assert_allclose(mono1, 1.0 - RAMP / 255.0, atol=1e-6)


def test_dicom_voi_window_and_bits_stored(tmp_path):
    pixels = (RAMP.astype(np.uint16) * 16)  # 12-bit values in 16-bit words
    path = _dicom(tmp_path / "w.dcm", pixels)
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = 12, 11
    ds.save_as(path)
    np.testing.assert_allclose(read_image(path), pixels / 4095.0, atol=1e-6)
    ds.WindowCenter, ds.WindowWidth = 2048, 2048
    ds.save_as(path)
    expected = np.clip((pixels - 1024.0) / 2048.0, 0, 1)
    np.testing.assert_allclose(read_image(path), expected, atol=1e-6)


def test_ct_is_hounsfield_then_windowed(tmp_path):
    stored = np.full((16, 16), 1024 - 850, dtype=np.int16)  # lung
    stored[4:8, 4:8] = 1024 + 40  # soft tissue
    path = _dicom(tmp_path / "ct.dcm", stored, sop=CTImageStorage, RescaleIntercept=-1024, RescaleSlope=1)
    hu = read_image(path, "ct")
    assert hu[0, 0] == pytest.approx(-850) and hu[5, 5] == pytest.approx(40)
    lung = window(hu)
    assert lung[0, 0] == pytest.approx((-850 + 1350) / 1500) and lung.max() <= 1.0


def test_masks_merge_or_stack(tmp_path):
    left = np.zeros((8, 10), np.uint8)
    left[2:5, 6:9] = 255
    right = np.zeros((8, 10), np.uint8)
    right[2:5, 1:4] = 255
    Image.fromarray(left).save(tmp_path / "l.png")
    Image.fromarray(right).save(tmp_path / "r.png")
    paths = [str(tmp_path / "l.png"), str(tmp_path / "r.png")]
    merged, stacked = read_mask(paths), read_mask(paths, merge=False)
    assert merged.shape == (1, 8, 10) and merged.sum() == 18
    assert stacked.shape == (2, 8, 10) and stacked[0, 3, 7] == 1 and stacked[1, 3, 7] == 0
    out = LoadChestImaged("mask", modality="mask")({"mask": paths})
    np.testing.assert_array_equal(out["mask"], merged)


def test_load_transform_is_channel_first(tmp_path):
    Image.fromarray(RAMP).save(tmp_path / "a.png")
    out = LoadChestImaged("image")({"image": str(tmp_path / "a.png")})
    assert tuple(out["image"].shape) == (1, 32, 48)
    assert out["image_path"] == str(tmp_path / "a.png")


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("missing.png", None, "not found"),
        ("empty.png", b"", "empty"),
        ("corrupt.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot decode"),
        ("notes.txt", b"hello", "unsupported image format"),
    ],
)
def test_bad_files_name_the_file(tmp_path, name, content, problem):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=problem) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_truncated_dicom_names_the_file(tmp_path):
    path = _dicom(tmp_path / "t.dcm", RAMP)
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(DataError, match="cannot decode") as info:
        read_image(path)
    assert "t.dcm" in str(info.value)
