"""What real radiographs carry besides anatomy and disease: tubes, lines, pacemakers, ECG leads, burned-in text.

Devices are commoner on AP (portable, bedside) films and on sicker patients, as in real data, but never certain,
so a model cannot read a label off a tube alone. Collimator edges, the laterality marker and text blocks are
burned into the displayed image (the last two in random corners).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from .anatomy import Body, uniform

# 5 x 7 laterality letters, as the lead markers radiographers put on the cassette.
LETTERS = {
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
}


def _curve(points, n: int) -> np.ndarray:
    """De Casteljau evaluation of a Bezier curve: (n, 2) points."""
    p = np.broadcast_to(np.asarray(points, dtype=np.float64), (n, len(points), 2)).copy()
    t = np.linspace(0.0, 1.0, n)[:, None, None]
    while p.shape[1] > 1:
        p = p[:, :-1] * (1 - t) + p[:, 1:] * t
    return p[:, 0]


class Devices:
    """Radiopaque things drawn into one film, as extra attenuation."""

    def __init__(self, body: Body):
        self.body = body
        self.canvas = np.zeros_like(body.X)

    def stroke(self, control, width: float, density: float) -> None:
        """A tube or wire along a Bezier curve; ``width`` in patient units (at least about a pixel)."""
        b = self.body
        length = float(np.sum(np.hypot(*np.diff(np.asarray(control), axis=0).T)))
        xy = _curve(control, max(8, int(2 * length / b.px)))
        cols, rows = b.to_pixels(xy[:, 0], xy[:, 1])
        keep = (rows >= 0) & (rows < b.h) & (cols >= 0) & (cols < b.w)
        line = np.zeros_like(self.canvas)
        line[rows[keep], cols[keep]] = 1.0
        sigma = max(0.5, 0.5 * width / b.px)
        line = gaussian_filter(line, sigma) * (np.sqrt(2 * np.pi) * sigma)
        self.canvas += density * np.clip(line, 0, 1)

    def disc(self, x, y, rx, ry, density: float) -> None:
        b = self.body
        r = np.hypot((b.X - x) / rx, (b.Y - y) / ry)
        self.canvas += density * np.clip((1 - r) / 0.15, 0, 1)


def draw_devices(body: Body, rng, view: str, sickness: float) -> np.ndarray:
    """Attenuation of the devices on this film (zero where none); ``sickness`` in [0, 1]."""
    g, d = body.g, Devices(body)
    ap = float(view == "AP")
    top = g.apex - 0.5
    carina = g.apex + 0.24 * g.height / 0.58
    if rng.random() < 0.02 + 0.1 * ap + 0.08 * sickness:  # endotracheal tube: two walls and a radiopaque stripe
        x = uniform(rng, -0.015, 0.015)
        tip = carina - uniform(rng, 0.03, 0.12)
        for offset, density in ((-0.011, 0.12), (0.011, 0.12), (0.004, 0.5)):
            d.stroke([(x + offset, top), (x + offset + uniform(rng, -0.01, 0.01), tip)], 0.004, density)
    if rng.random() < 0.03 + 0.1 * ap + 0.08 * sickness:  # nasogastric tube into the stomach
        x = uniform(rng, -0.02, 0.02)
        stomach = (g.dome_x + uniform(rng, -0.05, 0.05), g.base[1] + uniform(rng, 0.02, 0.1))
        path = [(x, top), (x + uniform(rng, -0.02, 0.03), g.base[1] - 0.1), (0.02, g.base[1] + 0.1), stomach]
        d.stroke(path, 0.006, 0.45)
    if rng.random() < 0.04 + 0.12 * ap + 0.1 * sickness:  # central venous line to the superior vena cava
        side = -1 if rng.random() < 0.7 else 1
        entry = (side * uniform(rng, 0.25, 0.4), g.clavicle_y + uniform(rng, -0.04, 0.04))
        tip = (uniform(rng, -0.06, -0.02), g.apex + uniform(rng, 0.17, 0.3))
        d.stroke([entry, (side * 0.1, g.clavicle_y + 0.05), tip], 0.005, 0.4)
    if rng.random() < 0.03 + 0.04 * sickness:  # pacemaker: generator below a clavicle, leads into the heart
        side = 1 if rng.random() < 0.8 else -1
        box = (side * uniform(rng, 0.2, 0.32), g.clavicle_y + uniform(rng, 0.05, 0.12))
        d.disc(*box, uniform(rng, 0.04, 0.06), uniform(rng, 0.03, 0.04), 1.2)
        hx, hy, ha, hb, _ = g.heart
        for _ in range(int(rng.integers(1, 3))):
            apex = (hx + ha * uniform(rng, 0.1, 0.7), hy + hb * uniform(rng, 0.0, 0.6))
            d.stroke([box, (side * 0.06, g.clavicle_y), (-0.04, g.apex + 0.28), apex], 0.006, 0.7)
    if rng.random() < 0.08 + 0.3 * ap + 0.05 * sickness:  # ECG electrodes and their wires
        for _ in range(int(rng.integers(2, 6))):
            x, y = uniform(rng, -0.4, 0.4), uniform(rng, g.apex - 0.05, g.base[1] + 0.1)
            d.disc(x, y, 0.018, 0.018, 0.35)
            d.disc(x, y, 0.006, 0.006, 0.6)
            bend = (x + uniform(rng, -0.3, 0.3), y + uniform(rng, -0.3, 0.3))
            d.stroke([(x, y), bend, (uniform(rng, -0.8, 0.8), -0.8)], 0.004, 0.25)  # the wire leaves the film
    return d.canvas


def collimate(image: np.ndarray, rng) -> np.ndarray:
    """Sometimes the collimator shuts out a strip along one or two edges: unexposed, so white."""
    if rng.random() >= 0.3:
        return image
    h, w = image.shape
    rows, cols = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    distance = (rows, h - 1 - rows, cols, w - 1 - cols)  # to the top, bottom, left and right edge
    shut = np.zeros_like(image)
    for edge in rng.permutation(4)[: int(rng.integers(1, 3))]:
        width = uniform(rng, 0.02, 0.07) * (h if edge < 2 else w)
        shut = np.maximum(shut, np.clip(width - distance[edge], 0, 1))
    return image * (1 - shut) + uniform(rng, 0.85, 1.0) * shut


def _stamp(image: np.ndarray, bitmap: np.ndarray, row: int, col: int, value: float) -> None:
    h, w = bitmap.shape
    if 0 <= row and row + h <= image.shape[0] and 0 <= col and col + w <= image.shape[1]:
        patch = image[row : row + h, col : col + w]
        patch[bitmap] = value


def burn_in(image: np.ndarray, rng) -> np.ndarray:
    """The laterality letter and blocks of text in corners, burned into the displayed image."""
    h, w = image.shape
    image = image.copy()
    corners = rng.permutation(4)
    if rng.random() < 0.7:
        letter = "L" if rng.random() < 0.5 else "R"
        k = max(1, int(round(min(h, w) * uniform(rng, 0.006, 0.012))))
        bitmap = np.kron(np.array([[c == "1" for c in row] for row in LETTERS[letter]]), np.ones((k, k), bool))
        row, col = _corner(int(corners[0]), bitmap.shape, h, w, rng)
        _stamp(image, bitmap, row, col, uniform(rng, 0.85, 1.0))
    if rng.random() < 0.5:  # a few lines of tiny "characters" (random 3 x 5 glyphs)
        k = max(1, int(round(min(h, w) * 0.005)))
        # a glyph is at least 5 px tall: small films get fewer, shorter lines, so text stays in its corner
        lines = min(int(rng.integers(1, 5)), max(1, min(h, w) // 64))
        chars = min(int(rng.integers(4, 14)), max(3, min(h, w) // 10))
        glyphs = rng.random((lines, chars, 5, 3)) < 0.5
        text = np.zeros((lines * 7, chars * 4), bool)
        for i in range(lines):
            for j in range(chars):
                text[i * 7 : i * 7 + 5, j * 4 : j * 4 + 3] = glyphs[i, j]
        text = np.kron(text, np.ones((k, k), bool))
        row, col = _corner(int(corners[1]), text.shape, h, w, rng)
        _stamp(image, text, row, col, uniform(rng, 0.8, 1.0))
    return image


def _corner(corner: int, shape, h: int, w: int, rng) -> tuple[int, int]:
    margin = int(rng.integers(1, max(2, min(h, w) // 20)))
    row = margin if corner < 2 else h - shape[0] - margin
    col = margin if corner % 2 == 0 else w - shape[1] - margin
    return row, col
