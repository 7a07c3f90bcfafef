"""Evaluating a Gaussian-mixture VAE: bounds on the test likelihood, its own classifier's AUROC, sample quality.

:class:`BoundsInferer` makes a MONAI evaluator compute, per test image, the ELBO terms averaged over several draws
of ``z`` and the importance-weighted bound (:meth:`chestzoo.networks.gmvae.GMVAE.bounds`);
:func:`write_evaluation_report` turns the evaluator's metrics into ``metrics.json`` (with the "summary" the demo
report reads), draws the reconstructions and the ROC curves, and measures the samples with an independent
reference classifier trained on the real training images (:mod:`chestzoo.metrics.sample_quality`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from monai.inferers import Inferer

from .bootstrap import bootstrap_interval
from .classification import multilabel_auroc
from .sample_quality import load_or_train_reference, sample_quality

logger = logging.getLogger(__name__)


def _unwrap(network):
    return getattr(network, "module", network)


class BoundsInferer(Inferer):
    """Evaluator inferer: ``network.bounds(x, y, samples)``, a dict of per-image ``nll``, ``kl``, ``nelbo``,
    ``iwae`` (nats) and ``probs``. ``y`` arrives as a keyword from ``PrepareBatchExtraInput({"y": "label"})``.
    The draws come from a generator seeded once per inferer, so an evaluation is repeatable."""

    def __init__(self, samples: int = 64, seed: int = 0):
        super().__init__()
        if int(samples) < 1:
            raise ValueError("samples must be at least 1")
        self.samples, self.seed = int(samples), int(seed)
        self.generator: torch.Generator | None = None

    def __call__(self, inputs: torch.Tensor, network, *args, y: torch.Tensor | None = None, **kwargs):
        if self.generator is None or self.generator.device != inputs.device:
            self.generator = torch.Generator(device=inputs.device).manual_seed(self.seed)
        return _unwrap(network).bounds(inputs, y, self.samples, self.generator)


class PerImageMean(Metric):
    """Mean of a per-image quantity (the output_transform gives a (B,) tensor) over all images of a run; summed
    across ranks under distributed training. (ignite's ``Average`` treats a 1-D output as one vector value.)"""

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._count = torch.tensor(0, dtype=torch.long, device=self._device)

    @reinit__is_reduced
    def update(self, output: torch.Tensor) -> None:
        values = torch.as_tensor(output).detach().flatten().to(self._device, torch.float64)
        self._sum += values.sum()
        self._count += values.numel()

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        if int(self._count) == 0:
            raise NotComputableError("PerImageMean needs at least one image before it can be computed")
        return float(self._sum / self._count)


def stack_dataset(dataset, max_items: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, H, W) and labels (N, L) of a dataset whose items hold "image" and "label"."""
    n = len(dataset) if max_items is None else min(len(dataset), int(max_items))
    if n == 0:
        raise ValueError("the dataset is empty")
    items = [dataset[i] for i in range(n)]
    images = torch.stack([torch.as_tensor(item["image"]).float() for item in items])
    labels = torch.stack([torch.as_tensor(item["label"]).float() for item in items])
    return images, labels


def gmvae_sampler(network, label_pool: torch.Tensor | None = None, device="cpu"):
    """``sampler(n, y, generator)`` for :func:`~chestzoo.metrics.sample_quality.sample_quality`: decoder means of
    draws from the prior. A conditional model asked for unconditional samples (``y`` None) draws its label vectors
    from ``label_pool`` (the training labels, i.e. the empirical p(y)), which completes p(y) p(z) p(x|y, z)."""
    model = _unwrap(network)

    def sample(n: int, y: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        if y is None and model.conditional:
            if label_pool is None:
                raise ValueError("a conditional model needs label vectors to draw unconditional samples from")
            y = label_pool[torch.randint(len(label_pool), (n,), generator=generator)]
        z, _ = model.sample_latent(n, generator=generator)
        out = []
        for start in range(0, n, 128):
            y_part = None if y is None else y[start : start + 128].to(device)
            out.append(model.decode(z[start : start + 128].to(device), y_part)[0].cpu())
        return torch.cat(out)

    return sample


def _as_float(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def write_evaluation_report(
    evaluator,
    network,
    train_dataset,
    output_dir: str,
    labels: Sequence[str],
    reference_path: str | None = None,
    reference_epochs: int = 10,
    reference_width: int = 8,
    fidelity_samples: int = 32,
    reconstructions: int = 8,
    device="cpu",
    seed: int = 0,
    groups=None,
    n_resamples: int = 1000,
) -> dict:
    """Write ``metrics.json``, ``01_reconstructions.png`` and ``05_roc.png`` into ``output_dir`` after the evaluator
    ran over the test split; returns the content of ``metrics.json``.

    ``evaluator.state.metrics`` must hold ``test_nelbo``, ``test_nll``, ``test_kl``, ``test_iwae`` (means over the
    test images) and ``test_mean_auc`` with its details (``save_details=True``). ``train_dataset`` is the real
    training split: the reference classifier that judges the samples learns from it (cached in ``reference_path``).

    q(y|x)'s AUROCs and the Frechet distances get bootstrap 95% intervals (``test.ci95``,
    ``sample_quality.ci95``, ``summary_ci95``; ``n_resamples``), drawing test images by patient where ``groups``
    gives one patient id per test image (in the order of the evaluator's dataset).
    """
    from ..visualize.gmvae import reconstruction_grid
    from ..visualize.roc import plot_roc_curves

    model = _unwrap(network).eval()
    labels = list(labels)
    metrics = evaluator.state.metrics
    details = evaluator.state.metric_details.get("test_mean_auc")
    if details is None:
        raise RuntimeError("the evaluator kept no test_mean_auc details: give its MeanAUROC save_details=True")
    probs, truth = (torch.as_tensor(t).float().cpu() for t in details)
    auroc = multilabel_auroc(probs, truth, labels)
    test_dataset = evaluator.data_loader.dataset
    test_images, test_labels = stack_dataset(test_dataset)
    if groups is not None and len(groups) != len(test_images):
        raise ValueError(f"{len(groups)} patient ids for {len(test_images)} test images")

    def q_auroc(p, y):
        result = multilabel_auroc(p, y, labels)
        return {"mean_auroc": result["mean_auroc"], **result["per_class"]}

    auroc_ci = bootstrap_interval(q_auroc, probs.numpy(), truth.numpy(), groups=groups, n_resamples=n_resamples, seed=seed)
    pixels = int(np.prod(test_images.shape[1:]))
    to_bits = 1.0 / (pixels * math.log(2.0))
    samples = int(getattr(evaluator.inferer, "samples", 1))
    test = {
        "images": len(test_images),
        "iwae_samples": samples,
        "nelbo_nats": float(metrics["test_nelbo"]),
        "nll_nats": float(metrics["test_nll"]),
        "kl_nats": float(metrics["test_kl"]),
        "iwae_nats": -float(metrics["test_iwae"]),
        "nelbo_bits_per_dim": float(metrics["test_nelbo"]) * to_bits,
        "iwae_bits_per_dim": -float(metrics["test_iwae"]) * to_bits,
        "mean_auroc": auroc["mean_auroc"],
        "per_class": auroc["per_class"],
        "auroc_skipped": auroc["skipped"],
        "ci95": {"mean_auroc": auroc_ci["mean_auroc"], "per_class": {n: auroc_ci[n] for n in labels}},
    }

    os.makedirs(output_dir, exist_ok=True)
    n = min(int(reconstructions), len(test_images))
    if n:
        x, y = test_images[:n].to(device), test_labels[:n].to(device)
        with torch.no_grad():
            recon = model.decode(model.encode(x, y)["q_mean"], y)[0]
        reconstruction_grid(os.path.join(output_dir, "01_reconstructions.png"), x, recon)
    plot_roc_curves(probs.numpy(), truth.numpy(), labels, os.path.join(output_dir, "05_roc.png"),
                    title="q(y|x) of the GMVAE on the test split")

    # Sample quality, judged by a classifier trained on the real training images only.
    train_images, train_labels = stack_dataset(train_dataset)
    reference = load_or_train_reference(reference_path, train_images, train_labels, epochs=int(reference_epochs),
                                        width=int(reference_width), seed=int(seed), device=device).to(device)
    from ..networks.gmvae import finding_requests, untrained_copy

    requests = finding_requests(labels) if model.conditional else None
    quality = sample_quality(
        gmvae_sampler(model, train_labels, device),
        reference,
        test_images,
        requests=requests,
        per_request=int(fidelity_samples),
        baselines={
            "untrained": gmvae_sampler(untrained_copy(model, seed), train_labels, device),
            # the scale's other end: a generator that always draws the average training image, and real images
            "mean_image": lambda n, y, g: train_images.mean(0, keepdim=True).expand(n, *train_images.shape[1:]),
            "training_images": lambda n, y, g: train_images[torch.randperm(len(train_images), generator=g)[:n]],
        },
        names=labels,
        real_labels=test_labels,
        seed=int(seed),
        device=device,
        real_groups=groups,
        n_resamples=n_resamples,
    )
    fidelity = quality.get("fidelity")
    sample_report = {
        "judge": "reference classifier (4 conv stages, width %d) trained in this run on the training split" % int(reference_width),
        "reference_auroc_on_real_test": quality["reference_auroc"],
        "samples": quality["samples"],
        "frechet_distance": quality["frechet_distance"],
        "frechet_distance_untrained": quality["frechet_distance_untrained"],
        "frechet_distance_mean_image": quality["frechet_distance_mean_image"],
        "frechet_distance_training_images": quality["frechet_distance_training_images"],
        "ci95": quality["ci95"],
        "fidelity": fidelity,
        "fidelity_samples_per_request": int(fidelity_samples) if fidelity else 0,
    }
    summary = {
        "mean AUROC": _as_float(test["mean_auroc"]),
        "NELBO bits/dim": test["nelbo_bits_per_dim"],
        "IWAE bits/dim": test["iwae_bits_per_dim"],
        "FD samples": quality["frechet_distance"],
        "FD untrained": quality["frechet_distance_untrained"],
    }
    if fidelity:
        summary["fidelity AUROC"] = _as_float(fidelity["mean_auroc"])
    summary["judge AUROC"] = _as_float(quality["reference_auroc"]["mean_auroc"])
    summary_ci = {"mean AUROC": auroc_ci["mean_auroc"], "FD samples": quality["ci95"]["frechet_distance"],
                  "FD untrained": quality["ci95"]["frechet_distance_untrained"]}
    summary = {k: v for k, v in summary.items() if v is not None}
    report = {
        "labels": labels,
        "variant": "conditional" if model.conditional else "unconditional",
        "test": test,
        "sample_quality": sample_report,
        "summary": summary,
        "summary_ci95": {k: v for k, v in summary_ci.items() if k in summary},
    }
    from .report import write_json

    write_json(os.path.join(output_dir, "metrics.json"), report)
    logger.info("evaluation summary: %s", report["summary"])
    return report
