"""A frontal chest radiograph phantom: a different patient on every film, findings drawn from distributions.

Every synthetic X-ray dataset draws its images here, so a bundle that learns on one learns the same anatomy on all.
Each film draws a patient (:mod:`.anatomy`: size, habitus, position and rotation on the detector, inspiration,
diaphragm, heart and mediastinum, bones, soft tissue), the requested findings (:mod:`.findings`: site, size,
contrast and texture drawn per film) and the clutter of real films (:mod:`.confounders`: tubes, lines, pacemakers,
ECG leads, markers, text), then exposes it: attenuation to detector values with varying exposure, scatter haze,
quantum and detector noise. No single pixel or mean template separates the findings; their local look does.

The phantom returns the exact lung masks (the segmentation truth, which follows the drawn anatomy) and one box per
lesion, in pixels as ``[x_min, y_min, x_max, y_max]``. The patient's right lung is on the image's left. Only the
given random generator is used, so the same seed gives the same image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

from ..labels import NIH_LABELS
from .anatomy import Body, draw_geometry, smooth_noise, uniform
from .confounders import burn_in, collimate, draw_devices
from .findings import DEFAULT_CONSPICUITY, DRAW, OPACITY, Lesions

FINDINGS = NIH_LABELS + (OPACITY,)
VIEWS = ("PA", "AP")


@dataclass
class ChestPhantom:
    image: np.ndarray  # float32 (H, W) in [0, 1]
    right_lung: np.ndarray  # bool (H, W): patient's right, image left
    left_lung: np.ndarray  # bool (H, W)
    boxes: list[tuple[str, list[float]]] = field(default_factory=list)  # (finding, [x_min, y_min, x_max, y_max])
    ctr: float = 0.0  # the true cardiothoracic ratio (an AP film shows the heart larger)

    @property
    def lungs(self) -> np.ndarray:
        return self.right_lung | self.left_lung


def render_chest(
    rng: np.random.Generator,
    height: int,
    findings=(),
    width: int | None = None,
    view: str = "PA",
    conspicuity: float = DEFAULT_CONSPICUITY,
) -> ChestPhantom:
    """Draw one radiograph with the given findings (names from ``FINDINGS``) in a ``view`` ("PA" or "AP") film.

    ``conspicuity`` scales the contrast of every finding (1: faint cases are common, as in real films; 3: most
    findings are plain to see). The same seed draws the same patient, sites and sizes at any conspicuity.
    """
    unknown = set(findings) - set(FINDINGS)
    if unknown:
        raise ValueError(f"unknown findings {sorted(unknown)}; known: {FINDINGS}")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, not {view!r}")
    if not conspicuity > 0:
        raise ValueError(f"conspicuity must be positive, not {conspicuity}")
    names = [f for f in FINDINGS if f in set(findings)]  # fixed order: the draws do not depend on the caller's
    width = width or height
    # Separate streams for the patient, the findings and the film: the same seed with and without a finding
    # gives the same patient on the same film, so a finding's own effect can be seen (and tested) alone.
    patient, disease, film = (np.random.default_rng(int(s)) for s in rng.integers(0, 2**63, size=3))
    body = Body(draw_geometry(patient, set(names), view, disease), height, width)
    lesions = Lesions(body, float(conspicuity))
    for name in names:
        DRAW[name](lesions, disease)
    attenuation = (
        body.soft_tissue(patient)
        + body.mediastinum()
        + body.spine()
        + body.ribs(patient)
        + body.shoulder_girdle()
        + body.abdomen(patient)
        + body.vessels(patient) * lesions.markings
        - 0.42 * body.lung_air() * lesions.air
        + lesions.density
        + draw_devices(body, film, view, min(len(names), 3) / 3)
    )
    image = burn_in(collimate(_expose(attenuation, film), film), film)
    return ChestPhantom(image, body.right_lung, body.left_lung, lesions.boxes, body.g.ctr)


def _expose(attenuation: np.ndarray, rng) -> np.ndarray:
    """Detector values: log response with varying exposure, scatter haze, blur, quantum and detector noise."""
    h, w = attenuation.shape
    signal = 1 - np.exp(-uniform(rng, 1.1, 1.8) * np.clip(attenuation, 0, None))
    scatter = uniform(rng, 0.05, 0.3)
    haze = scatter * (float(signal.mean()) + 0.15 * smooth_noise(rng, h, w, min(h, w) / 3))
    signal = (1 - scatter) * signal + haze
    signal = gaussian_filter(signal, max(0.5, min(h, w) / 400))
    quantum = uniform(rng, 0.005, 0.03) * (0.5 + signal)  # fewer photons get through dense parts
    noise = rng.standard_normal((h, w), dtype=np.float32)
    signal = signal + quantum * noise + uniform(rng, 0.002, 0.01) * rng.standard_normal((h, w), dtype=np.float32)
    lo, hi = uniform(rng, -0.05, 0.08), uniform(rng, 0.85, 1.1)
    gamma = float(np.exp(rng.normal(0.0, 0.15)))
    return (np.clip((signal - lo) / (hi - lo), 0, 1) ** gamma).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def to_uint16(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 65535.0), 0, 65535).astype(np.uint16)
