"""Lung-mask post-processing (chestzoo.postprocess): keep the lungs' components, fill holes, per channel."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from chestzoo.postprocess import KeepLungs, KeepLungsd


def _two_lungs(height=48, width=40):
    right = np.zeros((height, width), bool)
    left = np.zeros((height, width), bool)
    right[6:36, 3:17] = True
    left[6:36, 22:37] = True
    return right, left


def test_merged_mask_keeps_both_lungs_drops_islands_and_fills_holes():
    right, left = _two_lungs()
    noisy = (right | left).copy()
    noisy[12:16, 7:11] = False  # a hole inside the right lung
    noisy[40:43, 30:33] = True  # an island below the lungs
    noisy[44, 2] = True  # a stray pixel
    out = KeepLungs()(noisy[None].astype(np.float32))
    assert out.shape == (1, 48, 40) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0].astype(bool), right | left)


def test_second_component_much_smaller_than_the_first_is_dropped():
    right, left = _two_lungs()
    fused = right | left
    fused[20:22, 17:22] = True  # the lungs touch: one component
    fused[40:43, 30:33] = True  # the second largest is now an island
    out = KeepLungs()(torch.from_numpy(fused[None].astype(np.float32)))
    assert isinstance(out, torch.Tensor)
    assert not out[0, 40:43, 30:33].any()
    keep_all = KeepLungs(min_relative_size=0.0)(fused[None].astype(np.float32))
    assert keep_all[0, 40:43, 30:33].all(), "without the size rule the two largest components stay"


def test_left_right_channels_keep_one_component_each():
    right, left = _two_lungs()
    pair = np.stack([left, right]).astype(np.float32)  # (left lung, right lung) as in Montgomery's datalist
    pair[0, 40:44, 30:34] = 1  # island in the left-lung channel
    pair[1, 20:23, 8:11] = 0  # hole in the right-lung channel
    out = KeepLungs()(pair)
    np.testing.assert_array_equal(out[0].astype(bool), left)
    np.testing.assert_array_equal(out[1].astype(bool), right)


def test_a_batch_is_cleaned_image_by_image():
    right, left = _two_lungs()
    first = (right | left).astype(np.float32)
    second = first.copy()
    first[44, 2] = 1  # a stray pixel
    second[12:16, 7:11] = 0  # a hole
    batch = torch.from_numpy(np.stack([first, second])[:, None])
    out = KeepLungs()(batch)
    assert out.shape == (2, 1, 48, 40)
    for i in range(2):
        np.testing.assert_array_equal(out[i].numpy(), KeepLungs()(batch[i]).numpy())
        np.testing.assert_array_equal(out[i, 0].numpy().astype(bool), right | left)


def test_fill_holes_can_be_switched_off_and_probabilities_are_thresholded():
    right, left = _two_lungs()
    mask = (right | left).astype(np.float32) * 0.9
    mask[12:16, 7:11] = 0.2
    out = KeepLungs(fill_holes=False)(mask[None])
    assert not out[0, 12:16, 7:11].any() and out[0, 20, 10] == 1.0


def test_dictionary_version_keeps_meta_and_other_keys():
    right, left = _two_lungs()
    pred = MetaTensor(torch.from_numpy((right | left)[None].astype(np.float32)), meta={"filename_or_obj": "x.png"})
    pred[0, 44, 2] = 1
    out = KeepLungsd(keys="pred")({"pred": pred, "label": 7})
    assert out["label"] == 7 and out["pred"][0, 44, 2] == 0
    assert isinstance(out["pred"], MetaTensor) and out["pred"].meta["filename_or_obj"] == "x.png"


def _monai_reference(mask, components, min_relative_size, fill_holes, connectivity):
    """The same cleaning with MONAI's own transforms, one channel at a time."""
    from monai.transforms import FillHoles, KeepLargestConnectedComponent
    from scipy import ndimage

    keep = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, connectivity=connectivity, num_components=components)
    fill = FillHoles(applied_labels=[1], connectivity=connectivity)
    out = []
    for channel in (mask > 0.5).astype(np.uint8):
        kept = np.asarray(keep(torch.from_numpy(channel[None])))[0].astype(bool)
        labels, count = ndimage.label(kept, structure=ndimage.generate_binary_structure(2, connectivity or 2))
        if count >= 2 and min_relative_size > 0:
            sizes = np.bincount(labels.ravel())[1:]
            kept = np.isin(labels, np.flatnonzero(sizes >= min_relative_size * sizes.max()) + 1)
        if fill_holes:
            kept = np.asarray(fill(kept[None].astype(np.uint8)))[0].astype(bool)
        out.append(kept)
    return np.stack(out).astype(np.float32)


@pytest.mark.parametrize("connectivity", [None, 1])
@pytest.mark.parametrize("channels", [1, 2])
def test_same_masks_as_monai_transforms_on_noisy_predictions(connectivity, channels):
    from scipy import ndimage

    rng = np.random.default_rng(channels * 10 + (connectivity or 0))
    for _ in range(20):
        # smoothed noise thresholded: blobs of many sizes, with holes, islands and touching pairs
        noise = ndimage.gaussian_filter(rng.random((channels, 40, 48)), sigma=(0, 2, 2))
        mask = (noise > np.quantile(noise, rng.uniform(0.3, 0.7))).astype(np.float32)
        for min_size, fill in ((0.1, True), (0.0, False), (0.5, True)):
            n = 2 if channels == 1 else 1
            expected = _monai_reference(mask, n, min_size, fill, connectivity)
            out = KeepLungs(min_relative_size=min_size, fill_holes=fill, connectivity=connectivity)(mask)
            np.testing.assert_array_equal(out, expected)


def test_bad_arguments():
    with pytest.raises(ValueError):
        KeepLungs(components=0)
    with pytest.raises(ValueError):
        KeepLungs(min_relative_size=2.0)
    with pytest.raises(ValueError, match="C, H, W"):
        KeepLungs()(np.zeros((4, 4)))
