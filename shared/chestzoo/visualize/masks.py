"""Lung masks as files and pictures: PNG (and NIfTI) masks, overlays on the radiograph, example grids.

Masks are ``(C, H, W)`` arrays in {0, 1}: one channel for both lungs, or a left/right pair. Overlays fill the
prediction in a translucent colour per channel and draw the ground truth's outline in green.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..data.io import read_image
from .explain import unique_stem

logger = logging.getLogger(__name__)

# red for the merged lungs or the left lung, blue for the right lung
CHANNEL_COLOURS = ((230, 60, 60), (60, 120, 235), (240, 200, 40))
TRUTH_COLOUR = (40, 220, 80)


def _as_mask(mask) -> np.ndarray:
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"expected a (C, H, W) or (H, W) mask, got shape {m.shape}")
    return m > 0.5


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` (H, W) that touch the background (4-neighbourhood)."""
    padded = np.pad(mask, 1, mode="constant")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def overlay_masks(image, pred=None, truth=None, alpha: float = 0.35, text: str | None = None) -> Image.Image:
    """RGB picture of the grey ``image`` (H, W) in [0, 1] with ``pred`` filled and outlined and ``truth`` outlined."""
    from PIL import ImageDraw

    grey = np.clip(np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32), 0, 1)
    grey = np.squeeze(grey)
    if grey.ndim != 2:
        raise ValueError(f"image must be (H, W), got {grey.shape}")
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=2)
    for masks, filled in ((pred, True), (truth, False)):
        if masks is None:
            continue
        m = _as_mask(masks)
        if m.shape[1:] != grey.shape:
            raise ValueError(f"mask {m.shape[1:]} and image {grey.shape} differ in size")
        for c, channel in enumerate(m):
            colour = np.asarray(CHANNEL_COLOURS[c % len(CHANNEL_COLOURS)] if filled else TRUTH_COLOUR, dtype=np.float32)
            if filled:
                rgb[channel] = (1 - alpha) * rgb[channel] + alpha * colour
            rgb[_outline(channel)] = colour
    picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")
    if text:
        ImageDraw.Draw(picture).text((3, 3), text, fill=(255, 255, 255))
    return picture


def write_mask_pngs(folder: str, stem: str, mask, channel_names: Sequence[str]) -> list[str]:
    """One 8-bit PNG (0 / 255) per channel, ``<folder>/<stem>_<channel name>.png``, as Montgomery ships its masks."""
    m = _as_mask(mask)
    if len(channel_names) != m.shape[0]:
        raise ValueError(f"{len(channel_names)} channel names for a mask with {m.shape[0]} channels")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for channel, name in zip(m, channel_names):
        path = os.path.join(folder, f"{stem}_{name.replace(' ', '_')}.png")
        Image.fromarray(channel.astype(np.uint8) * 255).save(path)
        paths.append(path)
    return paths


def write_mask_nifti(path: str, mask) -> str:
    """The mask as one NIfTI label image (0 background, 1.. channel number), stored (H, W) like chestzoo reads it."""
    import nibabel

    m = _as_mask(mask)
    labels = np.zeros(m.shape[1:], dtype=np.uint8)
    for c, channel in enumerate(m):
        labels[channel] = c + 1
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(labels, np.eye(4)), path)
    return path


def example_grid(pictures: Sequence[Image.Image], path: str, columns: int = 4, cell: int = 256) -> str:
    """Paste pictures into one PNG, ``columns`` per row, each scaled to ``cell`` pixels wide (aspect kept)."""
    if not pictures:
        raise ValueError("no pictures to put in a grid")
    first = pictures[0]
    w, h = cell, max(1, round(cell * first.height / first.width))
    rows = -(-len(pictures) // columns)
    grid = Image.new("RGB", (w * min(columns, len(pictures)), h * rows))
    for i, picture in enumerate(pictures):
        resample = Image.NEAREST if picture.width < w else Image.LANCZOS  # keep mask edges crisp when enlarging
        grid.paste(picture.resize((w, h), resample), ((i % columns) * w, (i // columns) * h))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path)
    return path


def resize_mask(mask, size: Sequence[int]) -> np.ndarray:
    """A binary ``(C, h, w)`` mask brought to ``size`` (H, W): bilinear on the 0/1 values, then thresholded at 1/2."""
    m = torch.as_tensor(_as_mask(mask), dtype=torch.float32)[None]
    if tuple(m.shape[2:]) == tuple(size):
        return m[0].numpy() > 0.5
    return torch.nn.functional.interpolate(m, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)[0].numpy() > 0.5


def _batch_items(engine) -> list[tuple[dict, dict]]:
    from monai.data import decollate_batch

    batch, output = engine.state.batch, engine.state.output
    batch = decollate_batch(batch) if isinstance(batch, dict) else batch
    output = decollate_batch(output) if isinstance(output, dict) else output
    return list(zip(batch, output))


class SegmentationExamples:
    """Ignite handler for evaluation: the first ``count`` images with prediction and ground truth in one PNG grid."""

    def __init__(self, path: str, count: int = 8, columns: int = 4, pred_key: str = "pred", label_key: str = "label"):
        self.path, self.count, self.columns = path, int(count), int(columns)
        self.pred_key, self.label_key = pred_key, label_key
        self.pictures: list[Image.Image] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _: self.pictures.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def iteration_completed(self, engine) -> None:
        from monai.metrics import compute_dice

        for item, out in _batch_items(engine):
            if len(self.pictures) >= self.count:
                return
            pred, truth = torch.as_tensor(out[self.pred_key]), torch.as_tensor(item[self.label_key])
            dice = float(compute_dice(pred[None].float().cpu(), truth[None].float().cpu(), include_background=True).nanmean())
            self.pictures.append(overlay_masks(item["image"][0], pred, truth, text=f"Dice {dice:.3f}"))

    def completed(self, engine) -> None:
        if self.count > 0 and self.pictures:
            example_grid(self.pictures, self.path, self.columns)


class LungMaskWriter:
    """Ignite handler for inference: per image, the mask at the size of the input file, as PNG (one per channel)
    and optionally NIfTI, plus an overlay on the radiograph; ``masks.json`` lists everything at the end.

    Reads the decollated ``image_path`` and ``pred`` (binary, at the network's resolution) of each batch. The
    first ``grid`` overlays also go into one picture, ``grid_name`` in ``output_dir``.
    """

    def __init__(self, output_dir: str, channel_names: Sequence[str], nifti: bool = False, overlays: int | None = None,
                 grid: int = 8, grid_name: str = "02_inference_overlays.png"):
        from ..utils import as_bool

        self.output_dir = output_dir
        self.channel_names = list(channel_names)
        self.nifti = as_bool(nifti)
        self.overlays = overlays
        self.grid, self.grid_name = int(grid), grid_name
        self.records: list[dict] = []
        self._pictures: list[Image.Image] = []
        self._stems: set[str] = set()

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _: (self.records.clear(), self._stems.clear(), self._pictures.clear()))
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def iteration_completed(self, engine) -> None:
        for item, out in _batch_items(engine):
            self.records.append(self.write(item["image_path"], out["pred"]))

    def write(self, path: str, pred) -> dict:
        original = read_image(path)
        mask = resize_mask(pred, original.shape)
        stem = unique_stem(path, self._stems)
        record = {"image": path, "size": list(original.shape)}
        record["masks"] = [os.path.relpath(p, self.output_dir) for p in write_mask_pngs(os.path.join(self.output_dir, "masks"), stem, mask, self.channel_names)]
        record["area_fraction"] = {name: float(channel.mean()) for name, channel in zip(self.channel_names, mask)}
        if self.nifti:
            record["nifti"] = os.path.relpath(write_mask_nifti(os.path.join(self.output_dir, "masks", f"{stem}.nii.gz"), mask), self.output_dir)
        if self.overlays is None or len(self.records) < self.overlays:
            overlay_path = os.path.join(self.output_dir, "overlays", f"{stem}.png")
            os.makedirs(os.path.dirname(overlay_path), exist_ok=True)
            picture = overlay_masks(original, mask)
            picture.save(overlay_path)
            record["overlay"] = os.path.relpath(overlay_path, self.output_dir)
            if len(self._pictures) < self.grid:
                self._pictures.append(picture)
        return record

    def completed(self, engine) -> None:
        from ..metrics.report import write_json

        write_json(os.path.join(self.output_dir, "masks.json"), {"channels": self.channel_names, "images": self.records})
        if self._pictures:
            example_grid(self._pictures, os.path.join(self.output_dir, self.grid_name))
        logger.info("wrote lung masks for %d images to %s", len(self.records), os.path.join(self.output_dir, "masks"))
