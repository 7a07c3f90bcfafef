"""The patient behind a synthetic radiograph: body, lungs, heart, mediastinum and bones, drawn anew for every film.

Everything is drawn in *patient coordinates* ``(X, Y)``: X to the image's right (the patient's left), Y down, one
unit about the width of the film at scale 1. Each pixel's patient coordinates come from the patient's position on
the detector (scale, rotation, translation), so the lung masks, the bones and every finding move together and the
masks stay exact. The picture is a sum of attenuations (soft tissue, bone, minus the air in the lungs) that
:mod:`.phantom` turns into detector values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NORMAL_CTR = (0.45, 0.05)  # mean, sd of the cardiothoracic ratio without cardiomegaly
CARDIOMEGALY_CTR = (0.56, 0.05)  # with it: the two overlap around the 0.5 cut-off, as readers' calls do
AP_MAGNIFICATION = (1.06, 1.18)  # an AP film enlarges the heart (it lies far from the detector)


def ramp(z, width):
    """0 below -width/2, 1 above +width/2, linear between: a soft edge about one pixel wide."""
    return np.clip(0.5 + z / width, 0.0, 1.0)


def uniform(rng, lo, hi) -> float:
    return float(rng.uniform(lo, hi))


def upsample(small: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear interpolation of a small grid onto ``height x width`` (cheap smooth fields)."""
    ny, nx = small.shape
    y = np.linspace(0.0, ny - 1.0, height, dtype=np.float32)
    x = np.linspace(0.0, nx - 1.0, width, dtype=np.float32)
    y0 = np.minimum(y.astype(int), ny - 2)
    x0 = np.minimum(x.astype(int), nx - 2)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = small[y0][:, x0] * (1 - fx) + small[y0][:, x0 + 1] * fx
    bottom = small[y0 + 1][:, x0] * (1 - fx) + small[y0 + 1][:, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def smooth_noise(rng, height: int, width: int, cell_px: float) -> np.ndarray:
    """A random field of unit spread that varies over about ``cell_px`` pixels."""
    cell = max(float(cell_px), 1.0)
    small = rng.standard_normal((int(height / cell) + 2, int(width / cell) + 2)).astype(np.float32)
    return upsample(small, height, width)


@dataclass
class Geometry:
    """One patient's scalar anatomy (patient units) and position on the detector."""

    scale: float  # body size times field of view: how large the patient appears
    angle: float  # rotation (radians)
    shift: tuple[float, float]  # translation of the body centre from the image centre (image-width units)
    apex: float  # Y of the lung apices
    base: dict  # Y where each hemidiaphragm meets the chest wall, by side (-1: patient's right, +1: left)
    lung_x: float  # |X| of each lung's centre
    lung_rx: float  # lung half-width at mid height
    dome_height: dict  # how far each dome rises above its base
    dome_x: float
    dome_w: float
    body_w: float  # half-width of the body's soft tissue
    fat: float  # soft-tissue thickness, by habitus
    mediastinum: float  # half-width of the upper mediastinum
    ctr: float  # true cardiothoracic ratio
    heart: tuple  # (x, y, a, b, angle) of the heart's ellipse as the film shows it
    clavicle_y: float
    scapula_in: float  # how far the scapulae reach into the lung fields (AP films: more)
    female: bool
    view: str

    @property
    def height(self) -> float:
        return max(self.base.values()) - self.apex


def lung_ellipse(apex: float, base: float) -> tuple[float, float]:
    """Centre Y and half-height of the ellipse each lung is cut from; the domes cut its lower part off."""
    ry = 0.5 * (base - apex + 0.12)
    return apex + ry, ry


def _thorax_width(apex, base, lung_x, lung_rx) -> float:
    """Inner thoracic width at its widest (the CTR's denominator), from the lungs' lateral edges."""
    cy, ry = lung_ellipse(apex, base)
    ys = np.linspace(apex, base, 64)
    ey = (ys - cy) / ry
    half = lung_x + lung_rx * (1 + 0.22 * ey) * np.sqrt(np.clip(1 - ey**2, 0, 1))
    return 2.0 * float(half.max())


def draw_geometry(rng: np.random.Generator, findings: set, view: str, disease: np.random.Generator) -> Geometry:
    """The patient's anatomy, with the geometric signs of cardiomegaly, emphysema and fibrosis built in.

    ``disease`` draws how far a finding changes the anatomy, so that ``rng`` draws the same patient either way.
    """
    ap = view == "AP"
    scale = float(np.clip(rng.normal(1.0, 0.09), 0.78, 1.2))
    angle = float(np.clip(rng.normal(0.0, 0.07), -0.17, 0.17))  # about +-10 degrees at most
    shift = (float(rng.normal(0.0, 0.04)), float(rng.normal(0.02, 0.045)))
    habitus = float(np.clip(rng.normal(1.0, 0.07), 0.82, 1.2))
    inspiration = float(np.clip(rng.normal(0.93 if ap else 1.0, 0.08), 0.75, 1.2))
    dome = uniform(rng, 0.04, 0.09)
    if "Emphysema" in findings:  # hyperinflated, flat diaphragm
        degree = uniform(disease, 0.2, 1.0)
        inspiration *= 1.0 + 0.18 * degree
        dome *= 1.0 - 0.7 * degree
    if "Fibrosis" in findings:  # volume loss
        inspiration *= 1.0 - uniform(disease, 0.0, 0.1)
    apex = -0.34 + float(rng.normal(0.0, 0.015))
    height = 0.58 * inspiration
    right_higher = uniform(rng, -0.01, 0.035)
    base = {-1: apex + height - right_higher, 1: apex + height}
    lung_x, lung_rx = 0.19 * habitus, 0.155 * habitus
    mean, sd = CARDIOMEGALY_CTR if "Cardiomegaly" in findings else NORMAL_CTR
    ctr = float(np.clip(rng.normal(mean, sd), 0.32, 0.75))
    thorax = _thorax_width(apex, max(base.values()), lung_x, lung_rx)
    half = 0.5 * ctr * thorax * (uniform(rng, *AP_MAGNIFICATION) if ap else 1.0)
    b, tilt = uniform(rng, 0.105, 0.135), uniform(rng, 0.25, 0.5)
    a = np.sqrt(max(half**2 - (b * np.sin(tilt)) ** 2, (0.6 * half) ** 2)) / np.cos(tilt)
    right_share = uniform(rng, 0.28, 0.4)  # of the heart's width right of the midline
    vertical = np.sqrt((a * np.sin(tilt)) ** 2 + (b * np.cos(tilt)) ** 2)
    heart = (half * (1 - 2 * right_share), base[1] + 0.03 - vertical, float(a), b, tilt)
    return Geometry(
        scale=scale,
        angle=angle,
        shift=shift,
        apex=apex,
        base=base,
        lung_x=lung_x,
        lung_rx=lung_rx,
        dome_height={-1: dome * uniform(rng, 0.85, 1.2), 1: dome * uniform(rng, 0.8, 1.1)},
        dome_x=lung_x + uniform(rng, -0.02, 0.03),
        dome_w=uniform(rng, 0.15, 0.21),
        body_w=(lung_x + 1.25 * lung_rx) * uniform(rng, 1.08, 1.3),
        fat=uniform(rng, 0.8, 1.3),
        mediastinum=uniform(rng, 0.045, 0.065),
        ctr=ctr,
        heart=heart,
        clavicle_y=apex + (float(rng.normal(-0.01, 0.02)) if ap else float(rng.normal(0.03, 0.02))),
        scapula_in=uniform(rng, 0.06, 0.12) if ap else uniform(rng, -0.02, 0.03),
        female=bool(rng.random() < 0.5),
        view=view,
    )


class Body:
    """A patient's geometry laid onto a pixel grid: coordinates, lung fields and the anatomical attenuation."""

    def __init__(self, g: Geometry, height: int, width: int):
        self.g, self.h, self.w = g, height, width
        unit = min(height, width)
        py, px = np.mgrid[0:height, 0:width].astype(np.float32)
        px = (px + 0.5 - width / 2) / unit - g.shift[0]
        py = (py + 0.5 - height / 2) / unit - g.shift[1]
        c, s = np.cos(g.angle), np.sin(g.angle)
        self.X = ((c * px + s * py) / g.scale).astype(np.float32)
        self.Y = ((-s * px + c * py) / g.scale).astype(np.float32)
        self.px = 1.0 / (unit * g.scale)  # one pixel in patient units
        self.edge = 1.5 * self.px
        self._lungs()

    def to_pixels(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Integer (column, row) of patient coordinates: the inverse of the grid's mapping."""
        g, unit = self.g, min(self.h, self.w)
        c, s = np.cos(g.angle), np.sin(g.angle)
        px = g.scale * (c * x - s * y) + g.shift[0]
        py = g.scale * (s * x + c * y) + g.shift[1]
        cols = np.floor(px * unit + self.w / 2).astype(int)
        rows = np.floor(py * unit + self.h / 2).astype(int)
        return cols, rows

    def hilum(self, side: int) -> tuple[float, float]:
        g = self.g
        return side * (g.mediastinum + 0.05), g.apex + 0.3 * g.height / 0.58

    def dome(self, side: int) -> np.ndarray:
        """Y of the hemidiaphragm under each pixel's column: a dome that dips into the costophrenic sulcus."""
        g = self.g
        t = (side * self.X - g.dome_x) / g.dome_w
        return g.base[side] - g.dome_height[side] * (1 - t * t)

    def _lungs(self) -> None:
        g, X, Y = self.g, self.X, self.Y
        cy, ry = lung_ellipse(g.apex, max(g.base.values()))
        hx, hy, ha, hb, ht = g.heart
        c, s = np.cos(ht), np.sin(ht)
        du, dv = X - hx, Y - hy
        self.heart_r = np.sqrt(((c * du - s * dv) / ha) ** 2 + ((s * du + c * dv) / hb) ** 2)
        self.heart = ramp((1 - self.heart_r) * hb, self.edge)
        self.ey = (Y - cy) / ry
        self.side_r, self.wall, self.field = {}, {}, {}
        for side in (-1, 1):
            rx = g.lung_rx * (1 + 0.22 * self.ey)
            ex = (side * X - g.lung_x) / rx
            r = np.sqrt(ex * ex + self.ey * self.ey)
            knob = 0.03 * np.exp(-(((Y - g.apex - 0.17) / 0.04) ** 2)) if side == 1 else 0.0  # aortic knob
            medial = side * X - (g.mediastinum + knob)
            above_dome = self.dome(side) - Y
            wall = np.minimum(ramp((1 - r) * g.lung_rx, self.edge), ramp(medial, self.edge))
            self.side_r[side] = r
            self.wall[side] = wall  # inside the chest wall, whatever the diaphragm and heart do
            self.field[side] = np.minimum(np.minimum(wall, ramp(above_dome, self.edge)), 1 - self.heart)
        below = {side: ramp(Y - self.dome(side), 0.03) for side in (-1, 1)}
        self.below_diaphragm = np.where(X < 0, below[-1], below[1])
        self.right_lung = self.field[-1] >= 0.5
        self.left_lung = self.field[1] >= 0.5

    # --- attenuation layers ---------------------------------------------------------------------------------

    def soft_tissue(self, rng) -> np.ndarray:
        g, X, Y = self.g, self.X, self.Y
        neck = 0.11 + (g.body_w - 0.11) * ramp(Y - (g.apex - 0.06), 0.08)
        profile = np.sqrt(np.clip(1 - (X / neck) ** 2, 0, 1))
        tissue = (0.5 * g.fat + 0.2 * self.below_diaphragm) * profile  # liver and bowel below the domes
        if g.female:  # breast shadows over the lower lateral lung fields, sharp below
            for side in (-1, 1):
                bx, by = side * (g.lung_x + uniform(rng, 0.0, 0.06)), g.base[side] - uniform(rng, 0.0, 0.06)
                r = np.sqrt(((X - bx) / 0.2) ** 2 + ((Y - by) / 0.13) ** 2)
                tissue = tissue + uniform(rng, 0.06, 0.14) * np.sqrt(np.clip(1 - r * r, 0, 1))
        return tissue

    def lung_air(self) -> np.ndarray:
        """Air in the lungs: thickest mid-lung; some lies behind the heart and in the sulci behind the domes."""
        air = np.zeros_like(self.X)
        for side in (-1, 1):
            depth = 0.3 + 0.7 * np.sqrt(np.clip(1 - self.side_r[side] ** 2, 0, 1))
            below = self.Y - self.dome(side)
            posterior_sulcus = ramp(below, self.edge) * ramp(0.06 - below, 0.06)
            hidden = self.wall[side] * np.maximum(0.3 * self.heart, 0.3 * posterior_sulcus)
            air = air + depth * np.maximum(self.field[side], hidden)
        return air

    def vessels(self, rng) -> np.ndarray:
        """Lung markings: branching vessels fanning out from each hilum and fading towards the periphery."""
        marks = np.zeros_like(self.X)
        broken = 0.5 + 0.5 * np.abs(smooth_noise(rng, self.h, self.w, 0.03 / self.px))
        for side in (-1, 1):
            hx, hy = self.hilum(side)
            theta = np.arctan2(self.Y - hy, side * (self.X - hx))
            rho = np.hypot(self.X - hx, self.Y - hy)
            # a random profile over the angle, looked up with a slight twist outwards: curving streaks
            angles = np.linspace(-np.pi, np.pi, 720)
            profile = sum(np.cos(k * angles + uniform(rng, 0, 2 * np.pi)) for k in rng.integers(8, 34, size=10))
            fan = np.interp(theta + uniform(rng, -1.5, 1.5) * rho, angles, profile, period=2 * np.pi)
            streaks = np.clip(fan / 3.0 - 0.6, 0, 1)
            hilum = np.exp(-((rho / 0.05) ** 2))
            marks = marks + (0.12 * streaks * broken * np.exp(-rho / 0.16) + 0.12 * hilum) * self.wall[side]
        return marks

    def mediastinum(self) -> np.ndarray:
        g, X, Y = self.g, self.X, self.Y
        heart = np.sqrt(np.clip(1 - self.heart_r**2, 0, 1)) * (1 - self.below_diaphragm)  # merges with the liver
        upper = ramp(g.mediastinum + 0.01 - np.abs(X - 0.01), 0.03) * ramp(Y - g.apex + 0.1, 0.05)
        trachea = ramp(0.014 - np.abs(X), 0.01) * ramp(g.apex + 0.22 - Y, 0.02)
        return 0.28 * heart + 0.3 * upper - 0.12 * trachea

    def spine(self) -> np.ndarray:
        X, Y = self.X, self.Y
        body = ramp(0.045 - np.abs(X), 0.02)
        discs = 0.85 + 0.15 * np.cos(2 * np.pi * (Y / 0.052)) ** 2
        return 0.18 * body * discs

    def ribs(self, rng) -> np.ndarray:
        """Posterior ribs arching from the spine, faint anterior ribs sloping down towards the sternum."""
        g, X, Y = self.g, self.X, self.Y
        ax = np.abs(X)
        thorax = ramp(g.body_w * 0.95 - ax, 0.06) * ramp(g.base[1] + 0.03 - Y, 0.08)
        spacing = 0.062 * (g.height / 0.58) ** 0.5 * uniform(rng, 0.93, 1.07)
        posterior = (Y - g.apex + 0.04 + 0.5 * ax - 1.6 * ax * ax) / spacing
        width = uniform(rng, 0.36, 0.46)
        band = np.clip((np.cos(2 * np.pi * posterior) - np.cos(np.pi * width)) / (1 - np.cos(np.pi * width)), 0, 1)
        ribs = 0.065 * np.sqrt(band) * ramp(ax - 0.04, 0.02) * ramp(posterior + 0.3, 0.2)
        anterior = (Y - g.apex - 0.08 + 0.45 * ax) / (1.3 * spacing)
        aband = np.clip((np.cos(2 * np.pi * anterior) - 0.6) / 0.4, 0, 1)
        ribs = ribs + 0.04 * aband * ramp(ax - 0.12, 0.05) * ramp(anterior, 0.3)
        return ribs * thorax

    def shoulder_girdle(self) -> np.ndarray:
        """Clavicles running up and out from the sternum; scapulae at the upper lateral chest wall."""
        g, X, Y = self.g, self.X, self.Y
        ax = np.abs(X)
        centre = g.clavicle_y - 0.2 * (ax - 0.04) + 0.35 * (ax - 0.2) ** 2
        clavicle = ramp(0.013 - np.abs(Y - centre), self.edge) * ramp(ax - 0.035, 0.02) * ramp(g.body_w - ax, 0.05)
        medial = g.lung_x + g.lung_rx - g.scapula_in + 0.18 * (Y - g.apex)
        scapula = ramp(ax - medial, 0.02) * ramp(g.apex + 0.32 - Y, 0.06) * ramp(Y - g.apex + 0.08, 0.04)
        return 0.2 * clavicle + 0.1 * scapula * ramp(g.body_w - ax, 0.04)

    def abdomen(self, rng) -> np.ndarray:
        """A gas bubble in the stomach under the left dome, usually."""
        if rng.random() < 0.25:
            return np.zeros_like(self.X)
        g = self.g
        bx, by = g.dome_x + uniform(rng, -0.04, 0.05), g.base[1] - g.dome_height[1] + uniform(rng, 0.04, 0.08)
        r = np.sqrt(((self.X - bx) / uniform(rng, 0.03, 0.06)) ** 2 + ((self.Y - by) / uniform(rng, 0.02, 0.04)) ** 2)
        return -uniform(rng, 0.08, 0.2) * ramp(1 - r, 0.3)
