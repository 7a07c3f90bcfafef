"""Per-epoch statistics of a ``GanTrainer`` run: losses, discriminator and generator accuracies, sample grids.

``GanTrainer`` returns only the two losses of an iteration. The chestzoo GAN losses keep what they measured on
the batch they trained on (``last``: accuracies on reals and fakes, fooling rate, Wasserstein estimate), so this
handler averages those over the epoch, puts the means into ``engine.state.metrics`` (where ``StatsHandler`` and
``TensorBoardStatsHandler`` log them), appends them to a JSON history, redraws the curves and writes a grid of
samples from a fixed set of latent vectors. A resumed run keeps the history of the epochs it restored.

Files are written by rank 0 only, so the handler can run in every process of a distributed run.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict

import torch
from ignite.engine import Engine, Events

from ..visualize.gan import plot_training_curves, save_grid
from .generative import sample_latents

logger = logging.getLogger(__name__)


def _is_rank0() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


class GanTrainingMonitor:
    """Ignite handler for ``monai.engines.GanTrainer`` (attach with ``attach(trainer)``).

    Args:
        d_loss, g_loss: the trainer's loss objects (anything with a ``last`` dict of floats).
        generator: the generator, for the sample grids (unwrapped from DDP automatically).
        output_dir: where ``history_file``, ``curves_file`` and ``samples/epoch_NNNN.png`` go.
        latent_size: length of the latent vectors.
        num_samples, seed: the fixed latent vectors of the sample grids.
        interval: write the curves and a grid every ``interval`` epochs (and always at the end).
        value_range: the images' range, for the grids.
    """

    def __init__(self, d_loss, g_loss, generator, output_dir: str, latent_size: int, num_samples: int = 64,
                 seed: int = 0, interval: int = 1, value_range=(-1.0, 1.0), history_file: str = "train_history.json",
                 curves_file: str = "02_training_curves.png", title: str = ""):
        self.d_loss, self.g_loss = d_loss, g_loss
        self.generator = generator
        self.output_dir = output_dir
        self.latents = sample_latents(int(num_samples), int(latent_size), int(seed))
        self.interval = max(1, int(interval))
        self.value_range = tuple(value_range)
        self.history_path = os.path.join(output_dir, history_file)
        self.curves_path = os.path.join(output_dir, curves_file)
        self.title = title
        self.history: list[dict] = []
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0
        self._fresh = True

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self._fresh = True

    def _epoch_started(self, engine: Engine) -> None:
        if self._fresh:
            # Read here, not at STARTED: a CheckpointLoader restores the epoch counter at STARTED, possibly after us.
            self._fresh = False
            self.history = []
            if engine.state.epoch > 1 and os.path.isfile(self.history_path):
                with open(self.history_path) as f:
                    self.history = [h for h in json.load(f) if h["epoch"] < engine.state.epoch]
        self._sums = defaultdict(float)
        self._count = 0

    def _iteration(self, engine: Engine) -> None:
        output = engine.state.output
        values = {"D loss": float(output["d_loss"]), "G loss": float(output["g_loss"])}
        values.update(getattr(self.d_loss, "last", {}) or {})
        values.update(getattr(self.g_loss, "last", {}) or {})
        for key, value in values.items():
            self._sums[key] += float(value)
        self._count += 1

    def _epoch_completed(self, engine: Engine) -> None:
        if not self._count:
            return
        means = {key: total / self._count for key, total in self._sums.items()}
        engine.state.metrics.update(means)
        self.history.append({"epoch": engine.state.epoch, **means})
        if _is_rank0():
            os.makedirs(self.output_dir, exist_ok=True)
            with open(self.history_path, "w") as f:
                json.dump(self.history, f, indent=1)
            if engine.state.epoch % self.interval == 0:
                self._draw(engine.state.epoch)

    def _completed(self, engine: Engine) -> None:
        if _is_rank0() and self.history:
            self._draw(engine.state.epoch)

    @torch.no_grad()
    def _draw(self, epoch: int) -> None:
        plot_training_curves(self.curves_path, self.history, self.title)
        generator = getattr(self.generator, "module", self.generator)
        was_training = generator.training
        generator.eval()
        device = next(generator.parameters()).device
        images = generator(self.latents.to(device)).cpu()
        generator.train(was_training)
        save_grid(os.path.join(self.output_dir, "samples", f"epoch_{epoch:04d}.png"), images, self.value_range)
