"""The synthetic radiograph: findings are where their boxes say and differ from each other."""

import numpy as np
import pytest

from chestzoo.data.synth.phantom import FINDINGS, render_chest


def test_same_seed_same_image():
    a = render_chest(np.random.default_rng(5), 96, ["Nodule", "Effusion"])
    b = render_chest(np.random.default_rng(5), 96, ["Nodule", "Effusion"])
    np.testing.assert_array_equal(a.image, b.image)
    assert a.boxes == b.boxes


def test_lungs_are_two_disjoint_fields_on_the_right_sides():
    p = render_chest(np.random.default_rng(0), 128)
    assert p.image.shape == (128, 128) and 0.0 <= p.image.min() and p.image.max() <= 1.0
    assert not (p.right_lung & p.left_lung).any()
    # the patient's right lung is on the image's left
    assert np.nonzero(p.right_lung)[1].mean() < 64 < np.nonzero(p.left_lung)[1].mean()
    assert p.image[p.lungs].mean() < p.image[~p.lungs].mean()  # aerated lung is dark


@pytest.mark.parametrize("finding", FINDINGS)
def test_each_finding_changes_the_image_inside_its_box(finding):
    rng_seed = 11
    normal = render_chest(np.random.default_rng(rng_seed), 128)
    sick = render_chest(np.random.default_rng(rng_seed), 128, [finding])
    boxes = [b for name, b in sick.boxes if name == finding]
    assert boxes, f"{finding} drew no box"
    x0, y0, x1, y1 = (int(v) for v in boxes[0])
    assert x1 > x0 and y1 > y0
    inside = np.abs(sick.image - normal.image)[y0:y1, x0:x1].mean()
    assert inside > 0.02, f"{finding} hardly visible in its box ({inside:.3f})"


def test_unknown_finding_is_refused():
    with pytest.raises(ValueError, match="unknown findings"):
        render_chest(np.random.default_rng(0), 64, ["Fracture"])
