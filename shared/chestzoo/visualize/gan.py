"""Pictures of a generator's output: sample grids, real-vs-generated panels, nearest training images, curves."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image


def _as_images(images) -> np.ndarray:
    """(N, 1, H, W) / (N, H, W) tensors or arrays as float32 numpy (N, H, W)."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    array = np.asarray(images, dtype=np.float32)
    if array.ndim == 4:
        if array.shape[1] != 1:
            raise ValueError(f"expected grey images (N, 1, H, W), got {array.shape}")
        array = array[:, 0]
    if array.ndim != 3:
        raise ValueError(f"expected a batch of 2-D images, got shape {array.shape}")
    return array


def to_uint8(images, value_range: Sequence[float] = (-1.0, 1.0)) -> np.ndarray:
    """Images in ``value_range`` as uint8 (N, H, W), values outside clipped."""
    low, high = (float(v) for v in value_range)
    scaled = (_as_images(images) - low) / (high - low)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def image_grid(images, value_range: Sequence[float] = (-1.0, 1.0), columns: int | None = None, pad: int = 2) -> np.ndarray:
    """One uint8 picture tiling the images row by row, ``pad`` black pixels between them."""
    tiles = to_uint8(images, value_range)
    n, h, w = tiles.shape
    if n == 0:
        raise ValueError("no images to tile")
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = tile
    return grid


def save_grid(path: str, images, value_range: Sequence[float] = (-1.0, 1.0), columns: int | None = None, scale: int = 1) -> str:
    """Write :func:`image_grid` as a PNG (``scale`` enlarges it with nearest-neighbour pixels)."""
    grid = image_grid(images, value_range, columns)
    picture = Image.fromarray(grid)
    if scale > 1:
        picture = picture.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    picture.save(path)
    return path


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_real_vs_generated(path: str, real, generated, value_range=(-1.0, 1.0), count: int = 32, title: str = "") -> str:
    """Two grids side by side: real images (left) and generated ones (right)."""
    plt = _figure()
    count = min(count, len(real), len(generated))
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    for ax, images, name in ((axes[0], real, "real (held out)"), (axes[1], generated, "generated")):
        ax.imshow(image_grid(images[:count], value_range), cmap="gray", vmin=0, vmax=255)
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_nearest_training(path: str, generated, training, nearest_index, distances, value_range=(-1.0, 1.0), count: int = 8) -> str:
    """Generated images (top row) above their nearest training images (bottom row), with the distances."""
    plt = _figure()
    generated, training = _as_images(generated), _as_images(training)
    count = min(count, len(generated))
    fig, axes = plt.subplots(2, count, figsize=(1.6 * count, 3.6), squeeze=False)
    low, high = value_range
    for i in range(count):
        axes[0, i].imshow(generated[i], cmap="gray", vmin=low, vmax=high)
        axes[0, i].set_title(f"d={distances[i]:.1f}", fontsize=8)
        axes[1, i].imshow(training[nearest_index[i]], cmap="gray", vmin=low, vmax=high)
        for row in (0, 1):
            axes[row, i].axis("off")
    axes[0, 0].text(-0.1, 0.5, "generated", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, "nearest training", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training_curves(path: str, history: Sequence[dict], title: str = "") -> str:
    """Per-epoch curves from a training history (list of dicts with "epoch" and numbers): losses, accuracies, rest."""
    plt = _figure()
    if not history:
        raise ValueError("empty training history")
    epochs = [h["epoch"] for h in history]
    keys = [k for k in history[-1] if k != "epoch"]
    groups = {
        "losses": [k for k in keys if "loss" in k],
        "accuracies (threshold: D probability 0.5)": [k for k in keys if "accuracy" in k or "fooling" in k],
    }
    groups["discriminator outputs"] = [k for k in keys if k not in groups["losses"] and k not in groups["accuracies (threshold: D probability 0.5)"]]
    groups = {name: ks for name, ks in groups.items() if ks}
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 3.8), squeeze=False)
    for ax, (name, ks) in zip(axes[0], groups.items()):
        for k in ks:
            ax.plot(epochs, [h.get(k, float("nan")) for h in history], label=k, marker="." if len(epochs) < 30 else None)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        if "accuracies" in name:
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class GeneratedImageWriter:
    """Ignite handler for an inference run of a generator: on completion, every sample as a PNG, a grid, a DICOM series.

    The evaluator's ``pred`` batches (images in ``value_range``) are collected; at the end ``<output_dir>/png/
    sample_NNNN.png`` (8-bit), ``<output_dir>/samples_grid.png`` and, unless ``dicom`` is false, a synthetic DICOM
    series in ``<output_dir>/dicom`` (:func:`chestzoo.data.synthetic_dicom.write_synthetic_series`) are written.
    ``intensity_range`` is what ``value_range`` stands for: (low HU, high HU) for CT, (0, 1) for X-rays.
    """

    def __init__(self, output_dir: str, modality: str = "CT", value_range=(-1.0, 1.0), intensity_range=(-1350.0, 150.0),
                 window=(-600.0, 1500.0), dicom=True, model_name: str = "DCGAN", software_version: str = "",
                 pixel_spacing: float = 1.0, slice_thickness: float = 5.0, key: str = "pred"):
        from ..utils import as_bool

        self.output_dir = output_dir
        self.modality = str(modality).upper()
        self.value_range = tuple(float(v) for v in value_range)
        self.intensity_range = tuple(float(v) for v in intensity_range)
        self.window = tuple(float(v) for v in window)
        self.dicom = as_bool(dicom)
        self.model_name, self.software_version = model_name, software_version
        self.pixel_spacing, self.slice_thickness = float(pixel_spacing), float(slice_thickness)
        self.key = key
        self.batches: list = []
        self.written: dict[str, list[str]] = {}

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _: self.batches.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine) -> None:
        import torch

        output = engine.state.output
        if isinstance(output, list):
            self.batches.append(torch.stack([torch.as_tensor(o[self.key]) for o in output]).detach().cpu())
        else:
            self.batches.append(torch.as_tensor(output[self.key]).detach().cpu())

    def to_intensity(self, images: np.ndarray) -> np.ndarray:
        """Generator output (in ``value_range``) back to HU (CT) or [0, 1] (X-ray)."""
        low, high = self.value_range
        unit = np.clip((np.asarray(images, dtype=np.float32) - low) / (high - low), 0.0, 1.0)
        a, b = self.intensity_range
        return a + unit * (b - a)

    def _write(self, engine=None) -> dict[str, list[str]]:
        import torch

        from ..data.synthetic_dicom import write_synthetic_series

        images = _as_images(torch.cat(self.batches)) if self.batches else np.zeros((0, 1, 1), np.float32)
        if len(images) == 0:
            raise RuntimeError("no generated images to write: the evaluator produced none")
        pngs = []
        for i, tile in enumerate(to_uint8(images, self.value_range)):
            path = os.path.join(self.output_dir, "png", f"sample_{i + 1:04d}.png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(tile).save(path)
            pngs.append(path)
        grid = save_grid(os.path.join(self.output_dir, "samples_grid.png"), images[:256], self.value_range)
        self.written = {"png": pngs, "grid": [grid]}
        if self.dicom:
            intensity = self.to_intensity(images)
            self.written["dicom"] = write_synthetic_series(
                intensity, os.path.join(self.output_dir, "dicom"), modality="CT" if self.modality == "CT" else "DX",
                model_name=self.model_name, software_version=self.software_version, window=self.window,
                pixel_spacing=self.pixel_spacing, slice_thickness=self.slice_thickness,
            )
        return self.written
