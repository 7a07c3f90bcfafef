"""Mask files and pictures (chestzoo.visualize.masks) and confusion-matrix plots (chestzoo.visualize.confusion)."""

import numpy as np
import pytest
from PIL import Image

from chestzoo.data import read_image, read_mask
from chestzoo.visualize.confusion import plot_confusion_matrix
from chestzoo.visualize.masks import CHANNEL_COLOURS, TRUTH_COLOUR, example_grid, overlay_masks, resize_mask, write_mask_nifti, write_mask_pngs


def _pair(h=30, w=24):
    m = np.zeros((2, h, w), np.float32)
    m[0, 5:25, 13:21] = 1  # left lung: the image's right
    m[1, 5:25, 3:11] = 1
    return m


def test_png_masks_read_back_with_chestzoo_readers(tmp_path):
    mask = _pair()
    paths = write_mask_pngs(str(tmp_path), "case", mask, ["left lung", "right lung"])
    assert [p.rsplit("/", 1)[1] for p in paths] == ["case_left_lung.png", "case_right_lung.png"]
    assert Image.open(paths[0]).mode == "L" and np.asarray(Image.open(paths[0])).max() == 255
    np.testing.assert_array_equal(read_mask(paths, merge=False), mask)
    np.testing.assert_array_equal(read_mask(paths, merge=True)[0], mask.max(axis=0))
    with pytest.raises(ValueError, match="channel names"):
        write_mask_pngs(str(tmp_path), "case", mask, ["lungs"])


def test_nifti_label_image_keeps_rows_and_columns(tmp_path):
    mask = _pair()
    path = write_mask_nifti(str(tmp_path / "case.nii.gz"), mask)
    labels = read_image(path, "ct")
    assert labels.shape == mask.shape[1:]
    np.testing.assert_array_equal(labels == 1, mask[0].astype(bool))
    np.testing.assert_array_equal(labels == 2, mask[1].astype(bool))


def test_overlay_fills_prediction_and_outlines_truth():
    image = np.full((30, 24), 0.5, np.float32)
    mask = _pair()
    truth = np.zeros((1, 30, 24), np.float32)
    truth[0, 2:28, 2:22] = 1
    rgb = np.asarray(overlay_masks(image, mask, truth))
    assert rgb.shape == (30, 24, 3)
    assert tuple(rgb[5, 15]) == CHANNEL_COLOURS[0]  # outline pixel of the first channel
    inside = rgb[15, 16].astype(int)
    assert inside[0] > inside[2], "left-lung fill is reddish"
    assert tuple(rgb[2, 12]) == TRUTH_COLOUR
    assert tuple(rgb[0, 0]) == (127, 127, 127), "outside every mask the image is untouched"
    with pytest.raises(ValueError, match="differ in size"):
        overlay_masks(image, mask[:, :10])


def test_resize_mask_and_grid(tmp_path):
    mask = _pair()
    big = resize_mask(mask, (60, 48))
    assert big.shape == (2, 60, 48) and big.dtype == bool
    assert abs(big.mean() - mask.mean()) < 0.02
    pictures = [overlay_masks(np.zeros((30, 24)), mask) for _ in range(5)]
    path = example_grid(pictures, str(tmp_path / "grid.png"), columns=4, cell=64)
    assert Image.open(path).size == (4 * 64, 2 * 80)


def test_confusion_matrix_plot(tmp_path):
    path = plot_confusion_matrix([[5, 1, 0], [2, 7, 1], [0, 0, 4]], ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"], str(tmp_path / "cm.png"))
    assert Image.open(path).size[0] > 200
    with pytest.raises(ValueError, match="shape"):
        plot_confusion_matrix([[1, 2], [3, 4]], ["a", "b", "c"], str(tmp_path / "bad.png"))
