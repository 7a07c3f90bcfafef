"""Evaluating a trained GAN generator against real images it never saw, and writing the report.

What :func:`evaluate_generator` measures (all on the same held-out real images and the same latent vectors):

- Frechet distance between held-out real and generated images in the feature space of a small CNN
  (:class:`chestzoo.metrics.generative.FeatureNet`) trained here, on the training images, to predict what the
  dataset gives (relative slice position and tumour presence for CT slices, the class for X-rays). The same is
  measured for an untrained generator of the same architecture (the floor a trained one must beat by far) and for
  the training images themselves (the best a generator could hope for with this many samples);
- diversity: mean pairwise feature distance of the samples over that of held-out reals, and mean MS-SSIM between
  random pairs of samples next to the same for reals;
- memorisation: nearest training image of every sample in pixel space, against the same for held-out reals;
- the discriminator's accuracy on held-out reals and on fresh fakes, the generator's fooling rate, and the
  threshold-free AUC (for a WGAN critic only the AUC).

The numbers go to ``metrics.json`` (headline numbers under "summary"), the pictures to PNGs named so that the
most telling sort first.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from ..visualize.gan import plot_nearest_training, plot_real_vs_generated, save_grid
from .bootstrap import patient_ids
from .frechet import frechet_distance_between, frechet_interval
from .generative import (
    diversity_ratio,
    discriminator_accuracies,
    extract_features,
    feature_net_quality,
    memorisation,
    pairwise_ms_ssim,
    sample_latents,
    train_feature_net,
)

logger = logging.getLogger(__name__)

# The headline numbers (metrics.json "summary"); everything measured is under "all".
SUMMARY_KEYS = (
    "FD",
    "FD untrained G",
    "FD untrained / trained",
    "diversity ratio",
    "MS-SSIM generated pairs",
    "MS-SSIM real pairs",
    "NN distance ratio",
    "D accuracy real",
    "D accuracy fake",
    "G fooling rate",
    "D AUC",
)


class GeneratedCollector:
    """Ignite handler that keeps every ``pred`` batch an evaluator produced (the generated images), on the CPU."""

    def __init__(self, key: str = "pred"):
        self.key = key
        self.batches: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.batches.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, list):  # decollated: one dict per sample
            self.batches.append(torch.stack([torch.as_tensor(o[self.key]) for o in output]).detach().cpu())
        else:
            self.batches.append(torch.as_tensor(output[self.key]).detach().cpu())

    @property
    def images(self) -> torch.Tensor:
        if not self.batches:
            raise RuntimeError("no generated images were collected: did the evaluator run?")
        return torch.cat(self.batches).float()


def latent_items(num_samples: int, latent_size: int, seed: int = 0, latents_file: str | None = None) -> list[dict]:
    """Inference/evaluation inputs: ``{"image": latent vector}`` dicts, seeded or read from a .npy/.pt file (N, latent_size)."""
    if latents_file:
        if str(latents_file).endswith(".npy"):
            latents = torch.as_tensor(np.load(latents_file)).float()
        else:
            latents = torch.as_tensor(torch.load(latents_file, map_location="cpu")).float()
        if latents.dim() != 2 or latents.shape[1] != int(latent_size):
            raise ValueError(f"{latents_file}: expected latent vectors of shape (N, {latent_size}), got {tuple(latents.shape)}")
    else:
        latents = sample_latents(int(num_samples), int(latent_size), int(seed))
    return [{"image": z} for z in latents]


def stack_images(items: Sequence[dict], transform, max_items: int | None = None, seed: int = 0, cache_dir=None,
                 cache_dtype: str = "float16") -> tuple[torch.Tensor, list[dict]]:
    """Apply ``transform`` to (at most ``max_items`` randomly chosen, in order) items; return (N, C, H, W) and the items used.

    With ``cache_dir`` the transformed images are read from (or written once to) the preprocessing cache
    (:class:`chestzoo.data.DiskCacheDataset`, images stored as ``cache_dtype``: float16 by default, since windowed
    images lie in [-1, 1]); the same items and transform as a training dataset share its cache entry.
    """
    from ..data.cache import DiskCacheDataset, cache_enabled

    items = list(items)
    if max_items and len(items) > int(max_items):
        keep = np.sort(np.random.default_rng(seed).choice(len(items), int(max_items), replace=False))
        items = [items[i] for i in keep]
    if cache_enabled(cache_dir) and items:
        dataset = DiskCacheDataset(items, transform, cache_dir=cache_dir, dtypes={"image": cache_dtype})
        images = [torch.as_tensor(np.asarray(dataset[i]["image"])).float() for i in range(len(items))]
    else:
        images = [torch.as_tensor(np.asarray(transform(dict(item))["image"])).float() for item in items]
    return torch.stack(images), items


def feature_targets(items: Sequence[dict]) -> dict:
    """What the feature network learns from these items: slice position and tumour presence (CT) or the class."""
    targets: dict = {}
    if all("slice_position" in i for i in items):
        targets["regression_target"] = torch.tensor([float(i["slice_position"]) for i in items])
    if all("box" in i for i in items) and any(i["box"] for i in items) and not all(i["box"] for i in items):
        targets["class_target"] = torch.tensor([1 if i["box"] else 0 for i in items])
        targets["num_classes"] = 2
        targets["class_meaning"] = "tumour present"
    elif all(isinstance(i.get("label"), int) for i in items) and len({i["label"] for i in items}) > 1:
        targets["class_target"] = torch.tensor([i["label"] for i in items])
        targets["num_classes"] = int(max(i["label"] for i in items)) + 1
        targets["class_meaning"] = "class label"
    if not targets:
        raise ValueError("the real images carry nothing to train the feature network on (no slice_position, boxes or labels)")
    return targets


def _targets_or_none(items: Sequence[dict]) -> dict:
    """Feature targets of held-out items for the quality check, or none when they carry nothing to check against."""
    try:
        return feature_targets(items)
    except ValueError:
        return {}


@torch.no_grad()
def _generate(generator: torch.nn.Module, latents: torch.Tensor, device, batch_size: int = 256) -> torch.Tensor:
    generator.eval()
    return torch.cat([generator(latents[i:i + batch_size].to(device)).cpu() for i in range(0, len(latents), batch_size)]).float()


@torch.no_grad()
def discriminator_logits(discriminator: torch.nn.Module, images: torch.Tensor, device, batch_size: int = 128,
                         batch_stats: bool = True) -> torch.Tensor:
    """The discriminator's logits for ``images``, in batches of ``batch_size`` drawn from that set only.

    With ``batch_stats`` (the default) batch-norm layers normalise with each batch's own statistics, as they did
    in every training step, where reals and fakes went through the discriminator in separate batches; the running
    averages, a blend of real and fake batches, describe neither and would measure a classifier that was never
    trained. A copy is run so the discriminator's own buffers stay untouched.
    """
    import copy

    net = copy.deepcopy(discriminator).to(device)
    net.train(batch_stats)
    return torch.cat([net(images[i:i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]).float()


def evaluate_generator(
    generated: torch.Tensor,
    train_images: torch.Tensor,
    train_items: Sequence[dict],
    heldout_images: torch.Tensor,
    heldout_items: Sequence[dict],
    untrained_generator: torch.nn.Module,
    latents: torch.Tensor,
    discriminator: torch.nn.Module | None = None,
    critic: bool = False,
    output_dir: str = ".",
    device="cpu",
    batch_size: int = 128,
    feature_epochs: int = 30,
    feature_width: int = 8,
    seed: int = 0,
    value_range: Sequence[float] = (-1.0, 1.0),
    title: str = "",
    extra: dict | None = None,
    feature_images: torch.Tensor | None = None,
    feature_items: Sequence[dict] | None = None,
    n_resamples: int = 1000,
) -> dict:
    """Measure ``generated`` images (N, C, H, W) against held-out reals; write metrics.json and PNGs; return the summary.

    The feature network learns from ``feature_images``/``feature_items`` when given (e.g. every class of the
    training split when the generator learnt only one, which leaves nothing to classify), else from the training
    images the generator saw.

    The Frechet distances of the trained and the untrained generator get bootstrap 95% intervals (``ci95`` and
    ``summary_ci95`` in metrics.json; ``n_resamples``): held-out reals and generated images are resampled apart,
    the reals by patient when their items name one.
    """
    os.makedirs(output_dir, exist_ok=True)
    generated = torch.as_tensor(generated).float()
    if len(generated) < 2 or len(heldout_images) < 2 or len(train_images) < 2:
        raise ValueError(f"need at least two generated, training and held-out images (got {len(generated)}, {len(train_images)}, {len(heldout_images)})")
    device = torch.device(device)

    if feature_images is None:
        feature_images, feature_items = train_images, train_items
    targets = feature_targets(feature_items)
    net = train_feature_net(
        feature_images, targets.get("regression_target"), targets.get("class_target"), targets.get("num_classes", 0),
        width=feature_width, epochs=feature_epochs, seed=seed, device=device,
    )
    heldout_targets = _targets_or_none(heldout_items)
    quality = feature_net_quality(net, heldout_images, heldout_targets.get("regression_target"),
                                  heldout_targets.get("class_target"), device=device)

    untrained = _generate(untrained_generator.to(device), latents, device)
    f_real = extract_features(net, heldout_images, device=device)
    f_train = extract_features(net, train_images, device=device)
    f_fake = extract_features(net, generated, device=device)
    f_untrained = extract_features(net, untrained, device=device)

    real_groups = patient_ids(heldout_items) if len(heldout_items) == len(f_real) else None
    fd_ci = frechet_interval(f_real, f_fake, real_groups, n_resamples=n_resamples, seed=seed)
    fd_untrained_ci = frechet_interval(f_real, f_untrained, real_groups, n_resamples=n_resamples, seed=seed)
    fd, fd_untrained = fd_ci["value"], fd_untrained_ci["value"]
    fd_train = frechet_distance_between(f_real, f_train)

    mem = memorisation(generated, train_images, heldout_images)
    measures = {
        "FD": fd,
        "FD untrained G": fd_untrained,
        "FD untrained / trained": fd_untrained / max(fd, 1e-12),
        "FD train vs held-out reals": fd_train,
        "diversity ratio": diversity_ratio(f_fake, f_real),
        "MS-SSIM generated pairs": pairwise_ms_ssim(generated, seed=seed),
        "MS-SSIM real pairs": pairwise_ms_ssim(heldout_images, seed=seed),
        "NN distance ratio": mem["NN distance ratio"],
        "near-copy rate": mem["near-copy rate"],
    }
    if discriminator is not None:
        real_logits = discriminator_logits(discriminator, heldout_images, device, batch_size)
        fake_logits = discriminator_logits(discriminator, generated, device, batch_size)
        measures.update(discriminator_accuracies(real_logits, fake_logits, threshold=None if critic else 0.0))
    measures.update(quality)
    summary = {k: measures[k] for k in SUMMARY_KEYS if k in measures}

    plot_real_vs_generated(os.path.join(output_dir, "01_real_vs_generated.png"), heldout_images, generated, value_range,
                           title=title or f"FD {fd:.2f} (untrained generator {fd_untrained:.2f})")
    plot_nearest_training(os.path.join(output_dir, "03_nearest_training_images.png"), generated, train_images,
                          mem["nearest index"], mem["generated distances"], value_range)
    save_grid(os.path.join(output_dir, "04_untrained_generator.png"), untrained[:64], value_range)

    ci = {"FD": fd_ci, "FD untrained G": fd_untrained_ci}
    details = {
        "summary": summary,
        "summary_ci95": {k: v for k, v in ci.items() if k in summary},
        "all": measures,
        "ci95": ci,
        "feature_space": {
            "network": "chestzoo.metrics.generative.FeatureNet",
            "trained_on": f"{len(feature_images)} training images",
            "targets": [k for k in ("regression_target", "class_target") if k in targets],
            "class_meaning": targets.get("class_meaning"),
            "epochs": feature_epochs,
            "width": feature_width,
            "feature_dim": net.feature_dim,
        },
        "counts": {"generated": len(generated), "training": len(train_images), "held_out": len(heldout_images)},
        "memorisation": {
            "near-copy reference rate": mem["near-copy reference rate"],
            "median generated-to-training distance": float(np.median(mem["generated distances"])),
            "median held-out-to-training distance": float(np.median(mem["heldout distances"])),
        },
        **(extra or {}),
    }
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(details, f, indent=4)
    logger.info("GAN evaluation: %s", json.dumps(measures, indent=1))
    return summary
