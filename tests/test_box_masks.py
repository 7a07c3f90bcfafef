"""Instance masks from boxes (box and ellipse shapes, lung clipping), lung-mask files, resizing with boxes."""

import numpy as np
import pytest
import torch
from PIL import Image

from chestzoo.data.box_masks import (
    BoxMasksd,
    ResizeWithBoxesd,
    attach_lung_masks,
    box_mask,
    box_masks,
    lung_mask_paths,
)
from chestzoo.data.errors import DataError


def test_box_mask_covers_the_pixels_whose_centres_lie_in_the_box():
    mask = box_mask([2, 3, 6, 8], 10, 10)
    expected = np.zeros((10, 10), bool)
    expected[3:8, 2:6] = True
    assert np.array_equal(mask, expected)
    # fractional edges: column centres 2.5 .. 4.5 lie in [2.4, 5.5), row centres 4.5 .. 6.5 in [3.6, 7.5)
    mask = box_mask([2.4, 3.6, 5.5, 7.5], 10, 10)
    assert np.array_equal(np.argwhere(mask.any(axis=0)).ravel(), [2, 3, 4])
    assert np.array_equal(np.argwhere(mask.any(axis=1)).ravel(), [4, 5, 6])


def test_thin_and_outside_boxes_still_give_one_pixel_inside_the_image():
    thin = box_mask([3.2, 3.0, 3.4, 6.0], 10, 10)
    assert thin.sum() == 3 and thin[:, 3].sum() == 3
    outside = box_mask([8, 8, 14, 14], 10, 10)
    assert outside[8:, 8:].all() and outside.sum() == 4


def test_ellipse_is_inscribed_in_the_box():
    box = [10, 20, 50, 40]
    ellipse, filled = box_mask(box, 64, 64, "ellipse"), box_mask(box, 64, 64, "box")
    assert not (ellipse & ~filled).any()
    assert ellipse.sum() / filled.sum() == pytest.approx(np.pi / 4, abs=0.03)
    inner = ellipse[20:40, 10:50]
    assert np.array_equal(inner, inner[::-1, :]) and np.array_equal(inner, inner[:, ::-1])  # symmetric about the centre
    assert not ellipse[20, 10] and ellipse[30, 30]
    with pytest.raises(ValueError, match="mask shape"):
        box_mask(box, 64, 64, "circle")


def test_masks_are_clipped_to_the_lungs_unless_that_leaves_too_little():
    lungs = np.zeros((20, 20), bool)
    lungs[:, :10] = True  # left half is lung
    masks = box_masks([[5, 5, 15, 15], [12, 2, 18, 6]], 20, 20, lungs=lungs)
    assert masks.shape == (2, 20, 20) and masks.dtype == np.uint8
    assert masks[0].sum() == 5 * 10 and not masks[0][:, 10:].any()  # cut at the lung edge
    assert masks[1].sum() == 6 * 4  # entirely outside the lungs: the box is kept as it is
    assert box_masks(np.zeros((0, 4)), 20, 20).shape == (0, 20, 20)
    with pytest.raises(ValueError, match="lung mask of shape"):
        box_masks([[0, 0, 4, 4]], 20, 20, lungs=np.ones((10, 10)))


def test_box_masks_transform_with_resized_lungs_and_empty_images():
    lungs = np.zeros((1, 10, 10), np.float32)
    lungs[:, :, :5] = 1  # left half at half the resolution
    item = {"image": torch.zeros(1, 20, 20), "box": torch.tensor([[4.0, 4.0, 16.0, 16.0]]), "lung": lungs}
    out = BoxMasksd(keys="box")(item)
    assert "lung" not in out
    assert out["masks"].shape == (1, 20, 20)
    assert out["masks"][0].sum() == 12 * 6 and out["masks"][0][:, 10:].sum() == 0
    empty = BoxMasksd(keys="box")({"image": torch.zeros(1, 20, 20), "box": torch.zeros((0, 4))})
    assert empty["masks"].shape == (0, 20, 20)
    plain = BoxMasksd(keys="box", shape="ellipse")({"image": torch.zeros(1, 20, 20), "box": torch.tensor([[4.0, 4.0, 16.0, 16.0]])})
    assert 0 < plain["masks"].sum() < 144


def test_resize_with_boxes_scales_boxes_and_remembers_the_size():
    image = np.random.default_rng(0).random((1, 40, 80)).astype(np.float32)
    lung = np.zeros((1, 40, 80), np.float32)
    lung[:, 10:30, 20:60] = 1
    item = {"image": image, "lung": lung, "box": [[20.0, 10.0, 60.0, 30.0]]}
    out = ResizeWithBoxesd(["image", "lung"], spatial_size=[20, 20], modes=["area", "nearest"])(item)
    assert out["original_size"] == [40, 80]
    assert tuple(out["image"].shape) == (1, 20, 20) and tuple(out["lung"].shape) == (1, 20, 20)
    assert out["box"].tolist() == [[5.0, 5.0, 15.0, 15.0]]
    assert set(np.unique(out["lung"].numpy())) == {0.0, 1.0}
    assert out["lung"][0, 5:15, 5:15].all() and out["lung"].sum() == 100
    negative = ResizeWithBoxesd("image", spatial_size=20)({"image": image, "box": []})
    assert negative["box"].shape == (0, 4)
    no_boxes = ResizeWithBoxesd("image", spatial_size=20, box_keys=[])({"image": image})
    assert "box" not in no_boxes


def _png(path, array):
    Image.fromarray(array.astype(np.uint8) * 255).save(path)


def test_lung_mask_files_are_found_by_pattern(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    _png(masks / "p1_left_lung.png", np.ones((4, 4)))
    _png(masks / "p1_right_lung.png", np.ones((4, 4)))
    _png(masks / "p2.png", np.ones((4, 4)))
    assert [p.rsplit("/", 1)[1] for p in lung_mask_paths("/data/images/p1.dcm", str(masks))] == ["p1_left_lung.png", "p1_right_lung.png"]
    assert lung_mask_paths("/data/images/p2.dcm", str(masks), "{stem}.png") == [str(masks / "p2.png")]
    items = attach_lung_masks([{"image": "/data/images/p1.dcm"}], str(masks))
    assert len(items[0]["lung"]) == 2
    assert attach_lung_masks([{"image": "x.dcm"}], None) == [{"image": "x.dcm"}]
    with pytest.raises(DataError) as info:
        attach_lung_masks([{"image": "/data/images/p3.dcm"}], str(masks))
    assert "p3_*.png" in str(info.value) and "p3.dcm" in str(info.value)
    with pytest.raises(DataError, match="folder not found"):
        attach_lung_masks([{"image": "p1.dcm"}], str(tmp_path / "nowhere"))
