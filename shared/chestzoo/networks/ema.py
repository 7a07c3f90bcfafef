"""An exponential moving average of a network's weights, kept up to date by an Ignite handler.

Averaging the generator's weights over the last iterations (Yazici et al. 2019, "The Unusual Effectiveness of
Averaging in GAN Training") smooths out the oscillation of adversarial training: the averaged generator is what
gets evaluated, exported and used for inference. After every iteration ``avg = decay * avg + (1 - decay) * live``
for the parameters; buffers (batch-norm running statistics) are copied from the live network. ``decay=0`` makes
the average a plain copy of the live network.
"""

from __future__ import annotations

import copy

import torch
from ignite.engine import Engine, Events
from torch import nn


class WeightAverage(nn.Module):
    """Holds ``averaged``, a copy of ``model`` whose weights follow an exponential moving average of ``model``'s.

    Being a module, it goes into checkpoints like any network (its state dict is the averaged network's, with an
    ``averaged.`` prefix). ``attach(trainer)`` updates it after every iteration.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.source = [getattr(model, "module", model)]  # a list, so the live network is not registered as a child
        self.averaged = copy.deepcopy(self.source[0])
        for p in self.averaged.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        live = self.source[0]
        for avg, new in zip(self.averaged.parameters(), live.parameters()):
            avg.lerp_(new.detach(), 1.0 - self.decay)
        for avg, new in zip(self.averaged.buffers(), live.buffers()):
            avg.copy_(new)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda _: self.update())

    def forward(self, *args, **kwargs):
        return self.averaged(*args, **kwargs)
