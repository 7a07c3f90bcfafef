"""Test-time augmentation: views map boxes back exactly, fusion by NMS and WBF does what it says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from chestzoo.tta import TestTimeAugmentation, View, fuse_nms, fuse_wbf, make_views

H, W = 96, 128
OBJECTS = {0: [20.0, 30.0, 50.0, 46.0], 1: [80.0, 10.0, 100.0, 70.0]}  # class -> box [x_min, y_min, x_max, y_max]


def picture() -> torch.Tensor:
    image = torch.full((1, H, W), 0.1)
    for label, (x0, y0, x1, y1) in OBJECTS.items():
        image[0, int(y0):int(y1), int(x0):int(x1)] = 0.5 + 0.3 * label  # class shown by brightness
    return image


def rectangle_detector(images):
    """A 'detector' that boxes the bright regions and names the class by their brightness."""
    out = []
    for image in images:
        grey = image[0].numpy()
        regions, _ = ndimage.label(grey > 0.3)
        boxes, labels = [], []
        for sl in ndimage.find_objects(regions):
            ys, xs = sl
            boxes.append([xs.start, ys.start, xs.stop, ys.stop])
            labels.append(int(round((float(np.median(grey[sl][grey[sl] > 0.3])) - 0.5) / 0.3)))
        out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.long),
                    "scores": torch.full((len(boxes),), 0.9)})
    return out


def test_views_default_to_the_seed():
    views = make_views()
    assert views[0].is_identity
    assert len(views) == 8 and len(set(views)) == 8
    assert {v.scale for v in views} == {0.9, 1.0, 1.1}
    assert sum(v.flip for v in views) == 3
    assert {v.brightness for v in views} == {0.9, 1.0, 1.1}
    assert len(make_views(flip=False, brightness=())) == 3
    assert len(make_views(flip="false", brightness=())) == 3, "a command-line 'false' must not switch flips on"


@pytest.mark.parametrize("view", make_views(scales=(0.5, 0.9, 1.0, 1.1, 1.5)), ids=lambda v: v.name)
def test_boxes_found_on_a_view_map_back_to_the_original(view):
    image = picture()
    augmented = view.apply(image)
    assert augmented.shape[-2:] == (round(H * view.scale), round(W * view.scale))
    assert 0.0 <= float(augmented.min()) and float(augmented.max()) <= 1.0
    found = rectangle_detector([augmented])[0]
    back = view.boxes_back(found["boxes"], image.shape[-2:], augmented.shape[-2:])
    order = torch.argsort(found["labels"])
    expected = torch.tensor([OBJECTS[k] for k in sorted(OBJECTS)])
    # bilinear resampling blurs edges by about a pixel of the view, i.e. 1 / scale pixels of the original
    torch.testing.assert_close(back[order], expected, atol=1.5 / min(view.scale, 1.0), rtol=0)
    if view.flip:
        assert not torch.allclose(found["boxes"][order], expected, atol=2.0), "a flipped view must see mirrored boxes"


def test_tta_finds_each_object_once_and_times_every_view():
    tta = TestTimeAugmentation()
    images = [picture(), torch.flip(picture(), dims=[-1])]
    views = tta.predict_views(rectangle_detector, images)
    assert len(views) == 2 and all(len(v) == len(tta.views) for v in views)
    assert set(tta.seconds) == {v.name for v in tta.views} and all(s > 0 for s in tta.seconds.values())
    for fusion in ("nms", "wbf"):
        fused = tta.fuse(views[0], fusion)
        assert sorted(fused["labels"].tolist()) == [0, 1]
        for box, label in zip(fused["boxes"], fused["labels"]):
            torch.testing.assert_close(box, torch.tensor(OBJECTS[int(label)]), atol=1.7, rtol=0)
    mirrored = tta(rectangle_detector, images)[1]
    box = mirrored["boxes"][mirrored["labels"] == 0][0]
    torch.testing.assert_close(box, torch.tensor([W - 50.0, 30.0, W - 20.0, 46.0]), atol=1.7, rtol=0)


def test_weighted_boxes_fusion_by_hand():
    a = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]), "labels": torch.tensor([0, 0]), "scores": torch.tensor([0.8, 0.6])}
    b = {"boxes": torch.tensor([[2.0, 0.0, 12.0, 10.0]]), "labels": torch.tensor([0]), "scores": torch.tensor([0.4])}
    fused = fuse_wbf([a, b], n_views=2, iou_threshold=0.55)
    assert fused["labels"].tolist() == [0, 0]
    # the pair: coordinates weighted by score, score = mean score (0.6), found by 2 of 2 views
    torch.testing.assert_close(fused["boxes"][0], torch.tensor([0.8 / 1.2 * 0 + 0.4 / 1.2 * 2, 0.0, 10 + 0.4 / 1.2 * 2, 10.0]))
    assert float(fused["scores"][0]) == pytest.approx(0.6)
    # the lone box: found by 1 of 2 views, its score halved
    assert float(fused["scores"][1]) == pytest.approx(0.3)
    # with 4 views the pair is found by half of them
    assert float(fuse_wbf([a, b], n_views=4)["scores"][0]) == pytest.approx(0.3)
    # boxes of different classes never merge
    c = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}
    assert sorted(fuse_wbf([a, c], n_views=2)["labels"].tolist()) == [0, 0, 1]


def test_nms_fusion_keeps_the_best_box_per_class():
    a = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0]), "scores": torch.tensor([0.5])}
    b = {"boxes": torch.tensor([[1.0, 0.0, 11.0, 10.0], [1.0, 0.0, 11.0, 10.0]]), "labels": torch.tensor([0, 1]), "scores": torch.tensor([0.7, 0.2])}
    fused = fuse_nms([a, b], iou_threshold=0.3)
    assert fused["labels"].tolist() == [0, 1]
    torch.testing.assert_close(fused["boxes"][0], torch.tensor([1.0, 0.0, 11.0, 10.0]))
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}
    assert len(fuse_nms([empty, empty])["boxes"]) == 0 and len(fuse_wbf([empty])["boxes"]) == 0


def test_a_detector_with_fixed_scale_keeps_the_view_scale():
    """With TorchvisionDetector's fixed-factor resize, an enlarged view reaches the network enlarged."""
    from chestzoo.networks.detection import ScaledRCNNTransform

    transform = ScaledRCNNTransform(image_scale=0.5).eval()
    for view in (View(0.9), View(1.1)):
        batch, _ = transform([view.apply(picture())[0:1].expand(3, -1, -1)])
        assert batch.image_sizes[0] == (round(round(H * view.scale) * 0.5), round(round(W * view.scale) * 0.5))


def test_unknown_fusion_is_refused():
    with pytest.raises(ValueError, match="fusion"):
        TestTimeAugmentation(fusion="mean")
