"""Pictures of a Gaussian-mixture VAE: labelled sample grids, reconstructions, the latent space in two dimensions,
and the ignite handler that writes generated images during inference.

Images are grey, (N, 1, H, W) or (N, H, W), with values in [0, 1].
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def _grey(images) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()
    array = np.asarray(images, dtype=np.float32)
    if array.ndim == 4:
        if array.shape[1] != 1:
            raise ValueError(f"expected grey images (N, 1, H, W), got {array.shape}")
        array = array[:, 0]
    if array.ndim != 3:
        raise ValueError(f"expected a batch of 2-D images, got shape {array.shape}")
    return np.clip(array, 0.0, 1.0)


def to_uint8(images) -> np.ndarray:
    return np.round(_grey(images) * 255.0).astype(np.uint8)


def mosaic(rows: Sequence, pad: int = 2) -> np.ndarray:
    """Rows of images (each a batch, possibly of different lengths) tiled into one float array, white gaps."""
    rows = [_grey(r) for r in rows]
    if not rows or not any(len(r) for r in rows):
        raise ValueError("no images to tile")
    h, w = next(r for r in rows if len(r)).shape[1:]
    columns = max(len(r) for r in rows)
    out = np.ones((len(rows) * (h + pad) + pad, columns * (w + pad) + pad), dtype=np.float32)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            out[pad + i * (h + pad) : pad + i * (h + pad) + h, pad + j * (w + pad) : pad + j * (w + pad) + w] = tile
    return out


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def labelled_grid(path: str, rows: Sequence, names: Sequence[str], title: str = "", scale: float = 1.0) -> str:
    """Save rows of images as one PNG with each row's name on the left (e.g. one row per finding or component)."""
    if len(rows) != len(names):
        raise ValueError(f"{len(rows)} rows but {len(names)} names")
    tiles = mosaic(rows)
    pad = 2
    h = _grey(next(r for r in rows if len(r))).shape[1]
    inches = max(tiles.shape[1] / 64.0, 3.0) * scale
    plt, fig = _figure(inches + 1.8, inches * tiles.shape[0] / tiles.shape[1] + (0.5 if title else 0.1))
    ax = fig.add_axes((1.6 / (inches + 1.8), 0.0, inches / (inches + 1.8), 1.0 if not title else 1 - 0.5 / fig.get_figheight()))
    ax.imshow(tiles, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([pad + i * (h + pad) + h / 2 for i in range(len(rows))])
    ax.set_yticklabels(list(names), fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=9, y=0.995)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def reconstruction_grid(path: str, originals, reconstructions, title: str = "test images (top) and reconstructions (bottom)") -> str:
    """Real images above their reconstructions."""
    return labelled_grid(path, [originals, reconstructions], ["real", "reconstruction"], title)


def pca_2d(points: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Project ``points`` (N, D) on their first two principal axes; ``others`` (M, D) go through the same map."""
    points = np.asarray(points, dtype=np.float64)
    centre = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
    axes = vt[:2].T if vt.shape[0] >= 2 else np.pad(vt.T, ((0, 0), (0, 2 - vt.shape[0])))
    return tuple((np.asarray(p, dtype=np.float64) - centre) @ axes for p in (points, *others))


def latent_map(path: str, z, labels, names: Sequence[str], component_means=None, components=None,
               title: str = "latent space (PCA of posterior means, test images)") -> str:
    """Small multiples of the 2-D PCA map of latent vectors ``z`` (N, D): the first panel coloured by mixture
    component (``components`` (N,), with the component means ``component_means`` (K, D) marked), then one panel per
    finding with its positive images in red over the rest in grey."""
    z = np.asarray(z.detach().cpu() if isinstance(z, torch.Tensor) else z, dtype=np.float64)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.float64)
    if z.ndim != 2 or y.shape != (len(z), len(names)):
        raise ValueError(f"z {z.shape} and labels {y.shape} must be (N, D) and (N, {len(names)})")
    means = None if component_means is None else np.asarray(
        component_means.detach().cpu() if isinstance(component_means, torch.Tensor) else component_means, dtype=np.float64)
    xy, *rest = pca_2d(z, *([] if means is None else [means]))
    panels = 1 + len(names)
    columns = 5
    rows = -(-panels // columns)
    plt, fig = _figure(3.0 * columns, 2.8 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    ax = axes[0]
    if components is not None:
        k = np.asarray(components.detach().cpu() if isinstance(components, torch.Tensor) else components)
        ax.scatter(xy[:, 0], xy[:, 1], c=k, cmap="tab20", s=6, alpha=0.8)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], c="0.5", s=6)
    if rest:
        ax.scatter(rest[0][:, 0], rest[0][:, 1], marker="x", c="black", s=30)
        for i, (u, v) in enumerate(rest[0]):
            ax.annotate(str(i), (u, v), fontsize=6)
    ax.set_title("mixture components", fontsize=8)
    for i, name in enumerate(names):
        ax = axes[1 + i]
        positive = y[:, i] > 0.5
        ax.scatter(xy[~positive, 0], xy[~positive, 1], c="0.8", s=4)
        ax.scatter(xy[positive, 0], xy[positive, 1], c="tab:red", s=7)
        ax.set_title(f"{name} ({int(positive.sum())})", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[panels:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


@torch.no_grad()
def write_latent_map(network, dataset, path: str, names: Sequence[str], device="cpu", batch_size: int = 64,
                     max_images: int | None = 2000) -> str:
    """Encode the images of ``dataset`` (items with "image" and "label"), then :func:`latent_map` of the posterior
    means, coloured by the most responsible prior component."""
    model = getattr(network, "module", network).eval()
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if n < 3:
        raise ValueError(f"need at least 3 images for a latent map, the dataset has {len(dataset)}")
    zs, ys = [], []
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        x = torch.stack([torch.as_tensor(item["image"]) for item in items]).float().to(device)
        y = torch.stack([torch.as_tensor(item["label"]) for item in items]).float().to(device)
        zs.append(model.encode(x, y)["q_mean"].cpu())
        ys.append(y.cpu())
    z = torch.cat(zs)
    components = model.responsibilities(z.to(device)).argmax(1).cpu()
    return latent_map(path, z, torch.cat(ys), names, model.prior()[0].cpu(), components)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_+-]+", "_", name).strip("_") or "row"


class GeneratedImageWriter:
    """Ignite handler for a generator's inference run over :class:`~chestzoo.networks.gmvae.LatentSamples`.

    Every generated image becomes ``<output_dir>/generated/<kind>/<row>/<index>.png``; ``generated/manifest.json``
    lists each file with its row (finding combination or component), component, label names and latent vector;
    one labelled grid per kind (``grids`` maps kind -> file name in ``output_dir``, e.g. "finding" ->
    "02_samples_by_finding.png"). Needs the evaluator's ``decollate=False`` (whole batches).
    """

    def __init__(self, output_dir: str, labels: Sequence[str], grids: dict | None = None, key: str = "pred"):
        self.output_dir, self.labels, self.key = output_dir, list(labels), key
        self.grids = dict(grids or {})
        self.records: list[dict] = []
        self.images: list[np.ndarray] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def _reset(self, engine=None) -> None:
        self.records, self.images = [], []

    def _collect(self, engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(output, list) or not isinstance(batch, dict):
            raise RuntimeError("GeneratedImageWriter needs whole batches: run the evaluator with decollate=False")
        images = to_uint8(output[self.key])
        for i, tile in enumerate(images):
            label = torch.as_tensor(batch["label"][i]).tolist()
            self.records.append({
                "kind": str(batch["kind"][i]),
                "row": str(batch["row"][i]),
                "index": int(batch["index"][i]),
                "component": int(batch["component"][i]),
                "findings": [n for n, v in zip(self.labels, label) if v > 0.5] or ["No Finding"],
                "latent": [round(float(v), 6) for v in torch.as_tensor(batch["image"][i]).flatten().tolist()],
            })
            self.images.append(tile)

    def write(self, engine=None) -> dict:
        if not self.records:
            raise RuntimeError("no generated images to write: the evaluator produced none")
        folder = os.path.join(self.output_dir, "generated")
        for record, tile in zip(self.records, self.images):
            relative = os.path.join("generated", record["kind"], _slug(record["row"]), f"{record['index']:03d}.png")
            os.makedirs(os.path.join(self.output_dir, os.path.dirname(relative)), exist_ok=True)
            Image.fromarray(tile).save(os.path.join(self.output_dir, relative))
            record["file"] = relative
        with open(os.path.join(folder, "manifest.json"), "w") as f:
            json.dump({"labels": self.labels, "images": self.records}, f, indent=1)
        written = {}
        for kind, name in self.grids.items():
            rows: dict[str, list[np.ndarray]] = {}
            for record, tile in zip(self.records, self.images):
                if record["kind"] == kind:
                    rows.setdefault(record["row"], []).append(tile.astype(np.float32) / 255.0)
            if rows:
                title = {"finding": "samples per requested finding combination",
                         "component": "samples per mixture component"}.get(kind, kind)
                written[kind] = labelled_grid(os.path.join(self.output_dir, name), [np.stack(r) for r in rows.values()],
                                              list(rows), title)
        return written
