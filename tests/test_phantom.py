"""The synthetic radiograph: patients vary, findings vary in site and look, and they are where their boxes say."""

import time

import numpy as np
import pytest

from chestzoo.data.synth.anatomy import Body, draw_geometry
from chestzoo.data.synth.confounders import draw_devices
from chestzoo.data.synth.phantom import FINDINGS, render_chest


def _render(seed, size=64, findings=(), view="PA"):
    return render_chest(np.random.default_rng(seed), size, findings, view=view)


def test_same_seed_same_image_other_seed_other_patient():
    a, b = _render(5, 96, ["Nodule", "Effusion"]), _render(5, 96, ["Nodule", "Effusion"])
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.right_lung, b.right_lung)
    assert a.boxes == b.boxes
    c = _render(6, 96, ["Nodule", "Effusion"])
    assert not np.array_equal(a.lungs, c.lungs) and a.boxes != c.boxes


@pytest.mark.parametrize("view", ["PA", "AP"])
def test_lungs_are_two_disjoint_fields_on_the_right_sides(view):
    for seed in range(5):
        p = _render(seed, 128, view=view)
        assert p.image.shape == (128, 128) and p.image.dtype == np.float32
        assert 0.0 <= p.image.min() and p.image.max() <= 1.0
        assert not (p.right_lung & p.left_lung).any()
        # the patient's right lung is on the image's left
        assert np.nonzero(p.right_lung)[1].mean() < 64 < np.nonzero(p.left_lung)[1].mean()
        assert p.image[p.lungs].mean() < p.image[~p.lungs].mean()  # aerated lung is dark


def test_non_square_films_keep_the_chest_inside():
    for height, width in ((78, 64), (64, 90)):
        p = render_chest(np.random.default_rng(1), height, width=width)
        assert p.image.shape == p.lungs.shape == (height, width)
        assert p.lungs.sum() > 0.1 * height * width


def test_anatomy_varies_between_patients():
    """Size, position, rotation and inspiration move the lungs: a constant mask no longer fits every patient."""
    lungs = np.array([_render(seed).lungs for seed in range(40)])
    areas = lungs.sum(axis=(1, 2))
    ys, xs = zip(*(np.argwhere(m).mean(axis=0) for m in lungs))
    assert areas.std() / areas.mean() > 0.1
    assert np.std(xs) > 1.0 and np.std(ys) > 1.5  # pixels at 64 px
    mean_mask = lungs.mean(axis=0) >= 0.5
    dice = [2 * (m & mean_mask).sum() / (m.sum() + mean_mask.sum()) for m in lungs]
    assert np.mean(dice) < 0.85


def test_cardiothoracic_ratios_overlap_around_the_cutoff():
    def ctrs(findings):
        rng = np.random.default_rng(0)
        return np.array([draw_geometry(rng, findings, "PA", rng).ctr for _ in range(400)])

    normal, enlarged = ctrs(set()), ctrs({"Cardiomegaly"})
    assert normal.mean() == pytest.approx(0.45, abs=0.01) and enlarged.mean() == pytest.approx(0.56, abs=0.01)
    assert 0.1 < (normal > 0.5).mean() < 0.3 and 0.05 < (enlarged < 0.5).mean() < 0.25


@pytest.mark.parametrize("finding", FINDINGS)
def test_each_finding_changes_the_image_inside_its_box(finding):
    """Same seed with and without the finding: same patient and film, so the difference is the finding."""
    changes = []
    for seed in range(5):
        normal, sick = _render(seed, 128), _render(seed, 128, [finding])
        boxes = [b for name, b in sick.boxes if name == finding]
        assert boxes, f"{finding} drew no box"
        x0, y0, x1, y1 = (int(v) for v in boxes[0])
        assert x1 > x0 and y1 > y0
        changes.append(np.abs(sick.image - normal.image)[y0:y1, x0:x1].mean())
    assert np.median(changes) > 0.01, f"{finding} hardly visible in its box ({changes})"
    assert min(changes) > 0.0


def test_nodules_appear_anywhere_in_the_lungs_at_a_visible_size():
    centres, sizes = [], []
    for seed in range(60):
        p = _render(seed, 64, ["Nodule"])
        (x0, y0, x1, y1), = [b for name, b in p.boxes if name == "Nodule"]
        centres.append(((x0 + x1) / 2, (y0 + y1) / 2))
        sizes.append(min(x1 - x0, y1 - y0))
    xs, ys = np.array(centres).T
    assert (xs < 32).sum() > 10 and (xs > 32).sum() > 10  # both lungs
    assert np.std(ys) > 6 and np.std(xs) > 8
    assert min(sizes) >= 2


def test_findings_vary_in_contrast():
    """The same finding on the same patient is sometimes obvious, sometimes subtle."""
    changes = []
    for seed in range(20):
        normal = _render([seed, 1], 64)
        sick = render_chest(np.random.default_rng([seed, 1]), 64, ["Mass"])
        changes.append(np.abs(sick.image - normal.image).max())
    assert max(changes) > 2.5 * min(changes)


def test_conspicuity_scales_the_findings_alone():
    """Same seed at conspicuity 1 and 3: the same patient, film and box, a plainer finding; no finding, no change."""
    for seed in range(5):
        faint, plain = (render_chest(np.random.default_rng(seed), 64, ["Mass"], conspicuity=c) for c in (1.0, 3.0))
        normal = render_chest(np.random.default_rng(seed), 64, conspicuity=3.0)
        assert np.array_equal(normal.image, _render(seed, 64).image)
        assert faint.boxes == plain.boxes
        x0, y0, x1, y1 = (int(v) for v in faint.boxes[0][1])
        inside = (slice(y0, y1), slice(x0, x1))
        change = {c: np.abs(film.image - normal.image)[inside].mean() for c, film in ((1, faint), (3, plain))}
        assert change[3] > 1.5 * change[1], change
    with pytest.raises(ValueError, match="conspicuity"):
        render_chest(np.random.default_rng(0), 64, ["Mass"], conspicuity=0)


def test_devices_appear_at_some_rate_more_on_sick_ap_films():
    def rate(view, sickness):
        rng = np.random.default_rng(3)
        bodies = [Body(draw_geometry(rng, set(), view, rng), 48, 48) for _ in range(150)]
        return np.mean([draw_devices(b, rng, view, sickness).max() > 0 for b in bodies])

    well, sick = rate("PA", 0.0), rate("AP", 1.0)
    assert 0.05 < well < 0.4 and well < sick < 0.95


def test_rendering_is_fast():
    """The demo writes about a thousand films; best of a few, so a busy machine does not fail the test."""
    for size, limit in ((64, 0.02), (256, 0.2)):
        times = []
        for seed in range(4):
            start = time.perf_counter()
            _render(seed, size, ["Pneumonia", "Effusion"], view="AP")
            times.append(time.perf_counter() - start)
        assert min(times) < limit, (size, times)


def test_unknown_finding_or_view_is_refused():
    with pytest.raises(ValueError, match="unknown findings"):
        render_chest(np.random.default_rng(0), 64, ["Fracture"])
    with pytest.raises(ValueError, match="view"):
        render_chest(np.random.default_rng(0), 64, view="lateral")
