"""A frontal chest radiograph phantom whose findings have their own look and place.

Every synthetic X-ray dataset draws its images here, so a bundle that learns on one learns the same anatomy on all.
The image is a body, two dark lung fields, heart, spine and ribs, plus any of the 14 NIH findings, each with a
distinctive appearance in a characteristic place (a nodule is a small bright disk in a lung, an effusion fills a
costophrenic angle, cardiomegaly widens the heart, ...). The phantom returns the true lung masks and one box per
finding, in pixels as ``[x_min, y_min, x_max, y_max]``. The patient's right lung is on the image's left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

from ..labels import NIH_LABELS

# Extra phantom-only finding used for RSNA "Lung Opacity" and pediatric pneumonia: one or two fuzzy consolidations.
OPACITY = "Lung Opacity"
FINDINGS = NIH_LABELS + (OPACITY,)


@dataclass
class ChestPhantom:
    image: np.ndarray  # float32 (H, W) in [0, 1]
    right_lung: np.ndarray  # bool (H, W): patient's right, image left
    left_lung: np.ndarray  # bool (H, W)
    boxes: list[tuple[str, list[float]]] = field(default_factory=list)  # (finding, [x_min, y_min, x_max, y_max])

    @property
    def lungs(self) -> np.ndarray:
        return self.right_lung | self.left_lung


class _Canvas:
    def __init__(self, height: int, width: int):
        self.h, self.w = height, width
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        self.u, self.v = xs / width, ys / height  # normalised coordinates

    def ellipse(self, cx, cy, rx, ry, soft=0.0, angle=0.0):
        """Soft ellipse in [0, 1]: 1 inside, falling to 0 over ``soft`` (fraction of the radius) at the edge."""
        du, dv = self.u - cx, self.v - cy
        if angle:
            c, s = np.cos(angle), np.sin(angle)
            du, dv = c * du + s * dv, -s * du + c * dv
        r = np.sqrt((du / rx) ** 2 + (dv / ry) ** 2)
        if soft <= 0:
            return (r <= 1.0).astype(np.float32)
        return np.clip((1.0 + soft - r) / soft, 0.0, 1.0).astype(np.float32)

    def box_of(self, alpha: np.ndarray, threshold: float = 0.5) -> list[float] | None:
        ys, xs = np.nonzero(alpha >= threshold)
        if len(xs) == 0:
            return None
        return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def render_chest(rng: np.random.Generator, height: int, findings=(), width: int | None = None) -> ChestPhantom:
    """Draw one radiograph with the given findings (names from ``FINDINGS``)."""
    unknown = set(findings) - set(FINDINGS)
    if unknown:
        raise ValueError(f"unknown findings {sorted(unknown)}; known: {FINDINGS}")
    width = width or height
    c = _Canvas(height, width)
    j = lambda scale: float(rng.normal(0.0, scale))  # noqa: E731 - anatomical jitter
    findings = set(findings)

    emphysema = "Emphysema" in findings
    lung_ry = 0.27 * (1.12 if emphysema else 1.0) + j(0.01)
    lung_cy = 0.46 + (0.03 if emphysema else 0.0) + j(0.01)
    centres = {"right": 0.31 + j(0.01), "left": 0.69 + j(0.01)}
    lung_rx = 0.145 + j(0.006)

    image = 0.08 + 0.42 * c.ellipse(0.5 + j(0.01), 0.56, 0.47, 0.58, soft=0.08)  # air around the body, soft tissue
    lungs = {side: c.ellipse(cx, lung_cy, lung_rx, lung_ry, soft=0.04) for side, cx in centres.items()}
    # diaphragm domes cut the lung bases
    for side, cx in centres.items():
        dome = c.v > lung_cy + lung_ry * (0.72 - 1.6 * (c.u - cx) ** 2 / lung_rx)
        lungs[side] = np.where(dome, 0.0, lungs[side])
    lung_tone = 0.38 * (1.35 if emphysema else 1.0)
    for side in lungs:
        image = image - lung_tone * lungs[side]

    heart_rx = (0.115 * (1.55 if "Cardiomegaly" in findings else 1.0)) + j(0.005)
    heart = c.ellipse(0.53 + j(0.008), 0.63 + j(0.008), heart_rx, 0.10 + j(0.004), soft=0.12)
    spine = np.clip(1.0 - np.abs(c.u - 0.5) / 0.035, 0.0, 1.0) * (c.v > 0.08)
    image = np.maximum(image, 0.42 * spine + 0.12)
    image = image + 0.42 * heart * (1.0 - 0.4 * spine)
    right_lung = (lungs["right"] >= 0.5) & (heart < 0.5)
    left_lung = (lungs["left"] >= 0.5) & (heart < 0.5)
    lung_any = right_lung | left_lung

    boxes: list[tuple[str, list[float]]] = []

    def add(name: str, alpha: np.ndarray, amount: float, within_lungs: bool = True) -> None:
        nonlocal image
        if within_lungs:
            alpha = alpha * gaussian_filter(lung_any.astype(np.float32), 1.0)
        image = image + amount * alpha
        box = c.box_of(alpha, 0.35 * float(alpha.max()) if alpha.max() > 0 else 1.0)
        if box is not None:
            boxes.append((name, box))

    def side_centre() -> tuple[str, float]:
        side = "right" if rng.random() < 0.5 else "left"
        return side, centres[side]

    if "Cardiomegaly" in findings:
        boxes.append(("Cardiomegaly", c.box_of(heart)))
    if "Emphysema" in findings:
        boxes.append(("Emphysema", c.box_of(lung_any.astype(np.float32))))
    if "Atelectasis" in findings:  # thin plate-like band in a lower zone
        _, cx = side_centre()
        band = c.ellipse(cx + j(0.02), lung_cy + 0.12 + j(0.02), 0.085, 0.014, soft=0.3, angle=0.25 * rng.uniform(-1, 1))
        add("Atelectasis", band, 0.42)
    if "Effusion" in findings:  # fluid in a costophrenic angle with a meniscus rising laterally
        side, cx = side_centre()
        lateral = (c.u - cx) * (-1 if side == "right" else 1) / lung_rx
        top = lung_cy + lung_ry * (0.55 - 0.25 * np.clip(lateral, 0, 1)) + j(0.01)
        fluid = ((c.v > top) & (np.abs(c.u - cx) < lung_rx * 1.1)).astype(np.float32) * lungs[side]
        add("Effusion", gaussian_filter(fluid, 1.5), 0.40)
    if "Infiltration" in findings:  # cluster of faint fuzzy patches, mid zone
        _, cx = side_centre()
        x0, y0 = cx + j(0.03), lung_cy + j(0.04)
        patches = sum(c.ellipse(x0 + j(0.035), y0 + j(0.04), 0.022, 0.022, soft=0.8) for _ in range(int(rng.integers(4, 7))))
        add("Infiltration", np.clip(patches, 0, 1) * (0.6 + 0.4 * rng.random(patches.shape)).astype(np.float32), 0.22)
    if "Mass" in findings:  # large, well-defined, upper or mid zone
        _, cx = side_centre()
        add("Mass", c.ellipse(cx + j(0.03), lung_cy - 0.08 + j(0.04), 0.065, 0.065, soft=0.12), 0.45)
    if "Nodule" in findings:  # small, very bright, anywhere in a lung
        _, cx = side_centre()
        add("Nodule", c.ellipse(cx + j(0.05), lung_cy + j(0.08), 0.02, 0.02, soft=0.25), 0.6)
    if "Pneumonia" in findings or OPACITY in findings:  # fuzzy mottled consolidation, lower zone
        name = "Pneumonia" if "Pneumonia" in findings else OPACITY
        for _ in range(1 if name == "Pneumonia" or rng.random() < 0.5 else 2):
            _, cx = side_centre()
            blob = c.ellipse(cx + j(0.03), lung_cy + 0.08 + j(0.04), 0.075, 0.09, soft=0.6)
            mottle = gaussian_filter(rng.random(blob.shape).astype(np.float32), 1.2)
            add(name, blob * (0.55 + mottle), 0.34)
    if "Pneumothorax" in findings:  # apical-lateral lucent crescent without lung markings, with a pleural line
        side, cx = side_centre()
        sign = -1 if side == "right" else 1
        inner = c.ellipse(cx - sign * 0.03, lung_cy + 0.03, lung_rx * 0.8, lung_ry * 0.85)
        crescent = np.clip(lungs[side] - inner, 0, 1) * (c.v < lung_cy + 0.1)
        line = np.clip(gaussian_filter(inner, 0.8) - inner, 0, 1) * (crescent.max() > 0) * (c.v < lung_cy + 0.1) * lungs[side]
        image = image - 0.12 * crescent + 0.5 * line
        boxes.append(("Pneumothorax", c.box_of(crescent)))
    if "Consolidation" in findings:  # homogeneous dense region with a sharp border, mid zone
        _, cx = side_centre()
        add("Consolidation", c.ellipse(cx + j(0.02), lung_cy + 0.02 + j(0.03), 0.07, 0.05, soft=0.05), 0.36)
    if "Edema" in findings:  # bilateral perihilar haze ("bat wings")
        haze = sum(c.ellipse(cx + (0.05 if side == "right" else -0.05), lung_cy + 0.02, 0.09, 0.13, soft=0.9) for side, cx in centres.items())
        add("Edema", np.clip(haze, 0, 1), 0.2)
    if "Fibrosis" in findings:  # fine reticular net in the lower, peripheral zones of both lungs
        net = (0.5 + 0.5 * np.sin(c.u * width * 0.9) * np.sin(c.v * height * 0.9)).astype(np.float32)
        zone = (c.v > lung_cy).astype(np.float32) * lung_any
        add("Fibrosis", gaussian_filter(zone, 2.0) * net, 0.25)
    if "Pleural_Thickening" in findings:  # bright rim along the lateral chest wall, upper zone
        side, cx = side_centre()
        sign = -1 if side == "right" else 1
        rim = np.clip(c.ellipse(cx, lung_cy, lung_rx * 1.08, lung_ry * 1.04) - c.ellipse(cx, lung_cy, lung_rx, lung_ry), 0, 1)
        rim = rim * (c.v < lung_cy) * ((c.u - cx) * sign > 0)
        add("Pleural_Thickening", gaussian_filter(rim, 0.8), 0.45, within_lungs=False)
    if "Hernia" in findings:  # hiatal hernia: round retrocardiac density with an air-fluid level, at the midline
        cy = 0.7 + j(0.01)
        sac = c.ellipse(0.5 + j(0.01), cy, 0.05, 0.04, soft=0.15)
        air = sac * (c.v < cy - 0.01)
        image = image + 0.3 * sac - 0.5 * air
        boxes.append(("Hernia", c.box_of(sac)))

    ribs = np.clip(np.sin((c.v + 0.07 * np.cos(3.0 * (c.u - 0.5))) * 60.0), 0.85, 1.0) - 0.85
    image = image + 0.5 * ribs * lung_any
    image = gaussian_filter(image, 0.6) + rng.normal(0.0, 0.015, image.shape)
    gamma = float(np.exp(rng.normal(0.0, 0.08)))  # exposure varies between studies
    image = np.clip(image, 0.0, 1.0) ** gamma
    return ChestPhantom(image.astype(np.float32), right_lung, left_lung, [(n, b) for n, b in boxes if b is not None])


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def to_uint16(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 65535.0), 0, 65535).astype(np.uint16)
