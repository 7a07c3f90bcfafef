"""The 14 NIH findings (and "Lung Opacity"), each a distribution of site, size, contrast and texture.

A finding never sits at a fixed place with a fixed look: its site is drawn over the patient's own lung fields (or
tied to the patient's own anatomy: the costophrenic angle, the chest wall, the heart), its size and contrast over a
wide range down to barely visible cases, its texture with random phase and frequency. What it looks like locally
(a round sharp density, a meniscus, a pleural line with no markings beyond, a reticular net, ...) is what a model
has to learn. Findings add attenuation (``density``), scale the lung's air (``air``) or its vessel markings
(``markings``), and report one box per lesion. Cardiomegaly, emphysema and fibrosis also change the anatomy
itself (:func:`.anatomy.draw_geometry`).
"""

from __future__ import annotations

import numpy as np

from .anatomy import Body, ramp, smooth_noise, uniform

OPACITY = "Lung Opacity"  # RSNA's class and the pediatric pneumonia: one or two consolidations


DEFAULT_CONSPICUITY = 1.0


class Lesions:
    """What the findings add to one film; ``conspicuity`` scales every finding's contrast."""

    def __init__(self, body: Body, conspicuity: float = DEFAULT_CONSPICUITY):
        self.body = body
        self.conspicuity = conspicuity
        self.density = np.zeros_like(body.X)
        self.air = np.ones_like(body.X)
        self.markings = np.ones_like(body.X)
        self.boxes: list[tuple[str, list[float]]] = []

    def box(self, name: str, mask: np.ndarray) -> None:
        ys, xs = np.nonzero(mask)
        if len(xs):
            self.boxes.append((name, [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]))

    def contrast(self, rng, lo: float, hi: float) -> float:
        """A contrast drawn log-uniformly between ``lo`` and ``hi`` (many faint cases, a few obvious ones), scaled
        by the conspicuity; the draw itself does not depend on it, so only the contrast changes with it."""
        return float(self.conspicuity * lo * (hi / lo) ** rng.random())

    @property
    def lungs(self) -> np.ndarray:
        return np.maximum(self.body.field[-1], self.body.field[1])

    def site(self, rng, lower: float = 0.0, side: int | None = None) -> tuple[float, float, int]:
        """A point drawn over the lung fields, favouring the lower zones by ``lower`` (0: uniform)."""
        b = self.body
        mask = b.right_lung if side == -1 else b.left_lung if side == 1 else b.right_lung | b.left_lung
        index = np.flatnonzero(mask)
        weights = 1.0 + lower * np.clip((b.Y.ravel()[index] - b.g.apex) / b.g.height, 0, 1)
        i = int(rng.choice(index, p=weights / weights.sum()))
        x, y = float(b.X.ravel()[i]), float(b.Y.ravel()[i])
        return x, y, (1 if x > 0 else -1)

    def radius(self, x, y, rx, ry, angle=0.0) -> np.ndarray:
        """Elliptical radius around ``(x, y)`` in patient coordinates (1 on the ellipse)."""
        du, dv = self.body.X - x, self.body.Y - y
        c, s = np.cos(angle), np.sin(angle)
        return np.sqrt(((c * du + s * dv) / rx) ** 2 + ((-s * du + c * dv) / ry) ** 2)

    def noise(self, rng, cell: float) -> np.ndarray:
        return smooth_noise(rng, self.body.h, self.body.w, cell / self.body.px)


def sphere(r: np.ndarray) -> np.ndarray:
    """Projected thickness of a ball: what a round lesion adds to the line integral."""
    return np.sqrt(np.clip(1 - r * r, 0, 1))


# --- focal lesions -----------------------------------------------------------------------------------------


def nodule(les: Lesions, rng) -> None:
    x, y, _ = les.site(rng)
    size = max(uniform(rng, 0.018, 0.04), 1.1 * les.body.px)  # at least about 2 px across at 64 px
    r = les.radius(x, y, size, size * uniform(rng, 0.85, 1.15), uniform(rng, 0, np.pi))
    les.density += les.contrast(rng, 0.2, 0.6) * sphere(r)
    les.box("Nodule", r < 1)


def mass(les: Lesions, rng) -> None:
    x, y, _ = les.site(rng)
    size = uniform(rng, 0.045, 0.1)
    r = les.radius(x, y, size, size * uniform(rng, 0.8, 1.2), uniform(rng, 0, np.pi))
    r = r * (1 + 0.12 * les.noise(rng, size * 0.6))  # lobulated outline
    les.density += les.contrast(rng, 0.12, 0.5) * sphere(r)
    les.box("Mass", r < 1)


def _airspace(les: Lesions, rng, name: str, lower: float, mottled: float) -> None:
    """Consolidation: an irregular density confined to the lung, with air bronchograms in part of the cases."""
    x, y, _ = les.site(rng, lower=lower)
    rx = uniform(rng, 0.04, 0.13)
    r = les.radius(x, y, rx, rx * uniform(rng, 0.7, 1.4), uniform(rng, 0, np.pi))
    r = r + 0.3 * les.noise(rng, rx * 0.7)
    region = ramp(1 - r, 0.25) * les.lungs
    texture = 1 - mottled + mottled * np.clip(0.5 + 0.5 * les.noise(rng, 0.015), 0, 1)
    contrast = les.contrast(rng, 0.12, 0.5)
    les.density += contrast * region * texture
    if rng.random() < 0.6:  # air bronchograms: dark branching tubes where the consolidation is dense
        tubes = np.exp(-((les.noise(rng, uniform(rng, 0.015, 0.03)) / 0.3) ** 2))
        les.density -= 0.6 * contrast * tubes * ramp(region - 0.7, 0.3)
    les.box(name, region >= 0.5)


def airspace(name: str, lower: float, mottled: float, second: float):
    def draw(les: Lesions, rng) -> None:
        for _ in range(2 if rng.random() < second else 1):
            _airspace(les, rng, name, lower, mottled)

    return draw


def atelectasis(les: Lesions, rng) -> None:
    """A plate-like band at any angle, or (less often) a wedge of collapsed lobe against the mediastinum."""
    b = les.body
    x, y, side = les.site(rng, lower=2.0)
    if rng.random() < 0.7:
        length, thick = uniform(rng, 0.08, 0.24), max(uniform(rng, 0.014, 0.03), 0.8 * b.px)
        angle = uniform(rng, -0.6, 0.6)
        c, s = np.cos(angle), np.sin(angle)
        along, across = c * (b.X - x) + s * (b.Y - y), -s * (b.X - x) + c * (b.Y - y)
        band = ramp(thick - np.abs(across), b.edge) * ramp(0.5 * length - np.abs(along), 0.3 * length)
    else:
        x = side * (b.g.mediastinum + uniform(rng, 0.03, 0.08))
        r = les.radius(x, y, uniform(rng, 0.03, 0.06), uniform(rng, 0.08, 0.14), side * uniform(rng, 0.2, 0.6))
        band = ramp(1 - r, 0.2)
    band = band * les.lungs
    les.density += les.contrast(rng, 0.2, 0.55) * band
    les.box("Atelectasis", band >= 0.5)


def effusion(les: Lesions, rng) -> None:
    """Fluid in the costophrenic angle, its meniscus rising along the chest wall; the dome is lost in it."""
    b, g = les.body, les.body.g
    sides = (-1, 1) if rng.random() < 0.25 else ((-1 if rng.random() < 0.5 else 1),)
    for side in sides:
        volume = uniform(rng, 0.04, 0.5) * g.height
        lateral = np.clip((side * b.X - g.lung_x + g.lung_rx) / (2 * g.lung_rx), 0, 1)
        top = b.dome(side) - g.dome_height[side] * 0.5 - volume * (0.35 + 0.65 * lateral**1.5)
        above_dome = ramp(b.dome(side) + 0.03 - b.Y, 0.03)  # it hides the dome but stays in the chest
        fluid = ramp(b.Y - top, 0.03) * b.wall[side] * (1 - b.heart) * above_dome
        les.density += les.contrast(rng, 0.15, 0.5) * fluid * ramp(b.Y - top, 0.1)
        les.box("Effusion", (fluid >= 0.5) & (b.Y < b.dome(side) + 0.02))


def pneumothorax(les: Lesions, rng) -> None:
    """Air between lung and chest wall: a thin pleural line, no lung markings beyond it; apical or lateral."""
    b = les.body
    side = -1 if rng.random() < 0.5 else 1
    r = b.side_r[side]
    angle = np.arctan2(b.ey, (side * b.X - b.g.lung_x) / b.g.lung_rx)  # 0 lateral, -pi/2 apical
    centre, span = uniform(rng, -1.7, -0.1), uniform(rng, 0.7, 1.6)
    gap = uniform(rng, 0.05, 0.45) * np.clip(np.cos((angle - centre) / span * np.pi / 2), 0, 1)
    inside = b.wall[side] * ramp(b.dome(side) - b.Y, b.edge)
    space = ramp(r - (1 - gap), b.edge) * (gap > 0.01) * inside
    line_width = max(0.006, 0.8 * b.px) / b.g.lung_rx
    line = ramp(line_width - np.abs(r - (1 - gap)), b.edge / b.g.lung_rx) * (gap > 0.02) * inside
    size = float(gap.max())
    les.markings *= 1 - space
    les.air *= 1 + les.contrast(rng, 0.3, 0.9) * space
    les.density += les.contrast(rng, 0.12, 0.35) * line
    les.density += 0.3 * size * inside * (1 - space) * b.field[side]  # the collapsing lung gets denser
    les.box("Pneumothorax", space >= 0.5)


def pleural_thickening(les: Lesions, rng) -> None:
    """A band along part of the chest wall, at times with calcified plaques."""
    b = les.body
    side = -1 if rng.random() < 0.5 else 1
    angle = np.arctan2(b.ey, (side * b.X - b.g.lung_x) / b.g.lung_rx)
    centre, span = uniform(rng, -1.8, 0.9), uniform(rng, 0.3, 1.1)
    thick = max(uniform(rng, 0.06, 0.16), 2.0 * b.px / b.g.lung_rx)
    inner = 1 - thick * (1 + 0.4 * les.noise(rng, 0.04))
    band = ramp(b.side_r[side] - inner, 0.02) * ramp(span - np.abs(angle - centre), 0.2) * b.field[side]
    if rng.random() < 0.2:
        band = band * (1 + 1.5 * (les.noise(rng, 0.02) > 1.2))
    les.density += les.contrast(rng, 0.15, 0.5) * band
    les.box("Pleural_Thickening", band >= 0.5)


def hernia(les: Lesions, rng) -> None:
    """Hiatal hernia: a round retrocardiac density above the diaphragm with an air-fluid level."""
    b, g = les.body, les.body.g
    x = g.heart[0] + uniform(rng, -0.08, 0.05)
    size = uniform(rng, 0.035, 0.09)
    y = g.base[1] - g.dome_height[1] - uniform(rng, 0.0, 0.08)
    r = les.radius(x, y, size * uniform(rng, 1.0, 1.4), size, uniform(rng, -0.3, 0.3))
    sac = ramp(1 - r, 0.2)
    level = y + size * uniform(rng, -0.6, 0.2)
    air = sac * ramp(level - b.Y, b.edge)
    contrast = les.contrast(rng, 0.15, 0.45)
    les.density += contrast * (sac - 3.0 * air)  # the gas bubble shows through the heart
    les.box("Hernia", sac >= 0.5)


# --- diffuse patterns --------------------------------------------------------------------------------------


def _reticular(les: Lesions, rng, cell: float) -> np.ndarray:
    """A net of fine lines (the zero crossings of a random field), its mesh size and phase random."""
    return np.exp(-((les.noise(rng, cell) / 0.35) ** 2))


def fibrosis(les: Lesions, rng) -> None:
    """A reticular net in the peripheral and lower zones, its extent varying."""
    b = les.body
    extent = uniform(rng, 0.25, 1.0)
    zone = np.maximum(ramp(b.side_r[-1] - (1 - 0.7 * extent), 0.2), ramp(b.side_r[1] - (1 - 0.7 * extent), 0.2))
    zone = zone * ramp((b.Y - b.g.apex) / b.g.height - (1 - extent), 0.3) * les.lungs
    net = _reticular(les, rng, uniform(rng, 0.012, 0.03))
    les.density += les.contrast(rng, 0.06, 0.25) * zone * net
    les.markings *= 1 - 0.3 * zone
    les.box("Fibrosis", zone >= 0.5)


def edema(les: Lesions, rng) -> None:
    """Perihilar haze ("bat wings") of varying extent, with septal lines at the lung bases."""
    b, g = les.body, les.body.g
    spread = uniform(rng, 0.08, 0.2)
    haze = sum(np.exp(-0.5 * les.radius(*b.hilum(side), spread, spread) ** 2) for side in (-1, 1))
    haze = haze * (0.7 + 0.3 * les.noise(rng, 0.04))
    septal = ramp(np.cos(2 * np.pi * b.Y / uniform(rng, 0.012, 0.025) + uniform(rng, 0, 6.3)) - 0.7, 0.3)
    periphery = np.maximum(b.side_r[-1], b.side_r[1]) > 0.8
    bases = ramp((b.Y - g.apex) / g.height - 0.65, 0.2)
    pattern = (haze + 0.4 * septal * periphery * bases) * les.lungs
    les.density += les.contrast(rng, 0.06, 0.25) * pattern
    les.box("Edema", pattern >= 0.35)


def infiltration(les: Lesions, rng) -> None:
    """Several ill-defined faint patches scattered over one or both lungs."""
    patches = np.zeros_like(les.density)
    side = None if rng.random() < 0.4 else (-1 if rng.random() < 0.5 else 1)
    for _ in range(int(rng.integers(2, 7))):
        x, y, _ = les.site(rng, lower=1.0, side=side)
        size = uniform(rng, 0.025, 0.07)
        patches = np.maximum(patches, ramp(1 - les.radius(x, y, size, size * uniform(rng, 0.7, 1.3)), 0.8))
    patches = patches * les.lungs * (0.6 + 0.4 * np.clip(les.noise(rng, 0.015), -1, 1))
    les.density += les.contrast(rng, 0.15, 0.45) * patches
    les.box("Infiltration", patches >= 0.3)


def emphysema(les: Lesions, rng) -> None:
    """Lucent lungs with sparse peripheral markings, sometimes bullae; hyperinflation is in the geometry."""
    b = les.body
    degree = uniform(rng, 0.2, 1.0)
    les.air *= 1 + 0.3 * degree * les.lungs
    periphery = np.maximum(b.side_r[-1], b.side_r[1])
    les.markings *= 1 - 0.6 * degree * ramp(periphery - 0.6, 0.3)
    for _ in range(int(rng.integers(0, 3))):
        x, y, _ = les.site(rng, lower=-0.5)
        r = les.radius(x, y, *(2 * [uniform(rng, 0.025, 0.07)]))
        les.markings *= ramp(r - 1, 0.1)
        les.air *= 1 + 0.25 * ramp(1 - r, 0.1) * les.lungs
        les.density += 0.06 * ramp(0.12 - np.abs(r - 1), 0.1) * les.lungs  # thin wall
    les.box("Emphysema", les.lungs >= 0.5)


def cardiomegaly(les: Lesions, rng) -> None:
    """The enlarged heart is in the geometry (its CTR); here only its box."""
    les.box("Cardiomegaly", les.body.heart >= 0.5)


DRAW = {
    "Atelectasis": atelectasis,
    "Cardiomegaly": cardiomegaly,
    "Effusion": effusion,
    "Infiltration": infiltration,
    "Mass": mass,
    "Nodule": nodule,
    "Pneumonia": airspace("Pneumonia", lower=1.5, mottled=0.6, second=0.25),
    "Pneumothorax": pneumothorax,
    "Consolidation": airspace("Consolidation", lower=1.5, mottled=0.2, second=0.15),
    "Edema": edema,
    "Emphysema": emphysema,
    "Fibrosis": fibrosis,
    "Pleural_Thickening": pleural_thickening,
    "Hernia": hernia,
    OPACITY: airspace(OPACITY, lower=1.5, mottled=0.4, second=0.5),
}
