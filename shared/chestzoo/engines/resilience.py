"""Training that survives a crash: atomic checkpoints, the state a resumed run needs, a stop on a non-finite loss.

- :class:`AtomicCheckpointSaver` is MONAI's ``CheckpointSaver`` with two changes. MONAI builds ignite's
  ``DiskSaver`` with ``atomic=False``; here every file is written to a temporary file in the same folder and moved
  over the final name with ``os.replace``, so a kill during a save leaves the previous file, never half of one. And
  ignite deletes the checkpoint it replaces *before* writing the new one; here the deletion waits until the new file
  is in place, so a kill between the two never leaves a run with nothing to resume from.
- :class:`TrainingProgress` holds what a resumed run needs beyond model, optimiser, scheduler and trainer: the best
  validation metric, the early-stopping counter and the score of the best-metric checkpoint, so that a resumed run
  neither overwrites a better ``model.pt`` nor restarts its patience.
- :class:`StopOnNonFiniteLoss` stops a run whose loss became NaN or infinite with one message naming the last good
  checkpoint; the checkpoint savers write nothing after it (no ``checkpoint_final.pt`` of broken weights).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointSaver

from ..networks.checkpoint import latest_checkpoint

logger = logging.getLogger(__name__)


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite; the message names the last good checkpoint."""


class _AtomicDiskSaver(DiskSaver):
    """ignite's atomic ``DiskSaver`` (temporary file, then ``os.replace``), with MONAI's fixed file name and the
    removal of a replaced checkpoint deferred until its successor is written."""

    def __init__(self, dirname: str, filename: str | None = None):
        super().__init__(dirname=dirname, atomic=True, require_empty=False)
        self.filename = filename
        self._pending: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)
        pending, self._pending = self._pending, []
        for old in pending:
            if old != filename:
                (self.dirname / old).unlink(missing_ok=True)

    def remove(self, filename: str) -> None:
        self._pending.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` (same arguments) whose files are written atomically.

    Interval checkpoints already in ``save_dir`` (from the run this one resumes) count towards ``n_saved``, so a
    resumed run keeps as many as an uninterrupted one. After a :class:`FloatingPointError` (a non-finite loss) the
    final checkpoint is not written: it would hold the broken weights and become the newest file to resume from.
    """

    def __init__(self, save_dir: str, save_dict: dict, *args, **kwargs):
        super().__init__(save_dir, save_dict, *args, **kwargs)
        fixed = {"_final_checkpoint": self._final_filename, "_key_metric_checkpoint": kwargs.get("key_metric_filename"),
                 "_interval_checkpoint": None}
        for attribute, filename in fixed.items():
            checkpoint = getattr(self, attribute)
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(save_dir, filename)

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        if self._interval_checkpoint is not None:
            engine.add_event_handler(Events.STARTED, self._adopt_interval_files)

    def _adopt_interval_files(self, engine: Engine) -> None:
        """Count the interval checkpoints of the run this one resumes (numbered up to where it resumes) towards
        ``n_saved``, so that they are replaced as the run goes on instead of piling up."""
        name, step = ("epoch", engine.state.epoch) if self.epoch_level else ("iteration", engine.state.iteration)
        prefix = f"{self._interval_checkpoint.filename_prefix}_" if self._interval_checkpoint.filename_prefix else ""
        stem = next(iter(self.save_dict)) if len(self.save_dict) == 1 else "checkpoint"  # ignite's naming
        pattern = re.compile(rf"^{re.escape(prefix + stem)}_{name}=(\d+)\.pt$")
        known = {item.filename for item in self._interval_checkpoint._saved}
        found = []
        for entry in os.listdir(self.save_dir) if os.path.isdir(self.save_dir) else []:
            match = pattern.match(entry)
            if match and int(match.group(1)) <= step and entry not in known:
                found.append(Checkpoint.Item(int(match.group(1)), entry))
        self._interval_checkpoint._saved = sorted(self._interval_checkpoint._saved + found, key=lambda item: item.priority)

    def exception_raised(self, engine: Engine, e: Exception) -> None:
        if isinstance(e, FloatingPointError):
            raise e
        super().exception_raised(engine, e)


def _scalars(value, path: str = "") -> list[tuple[str, float]]:
    """Every scalar under a key that names a loss, in an engine output (dict, list of dicts, tensor)."""
    found = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            found += _scalars(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for item in value:
            found += _scalars(item, path)
    elif path.split(".")[-1].endswith("loss"):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            found.append((path, float(value.detach())))
        elif isinstance(value, (int, float)):
            found.append((path, float(value)))
    return found


class StopOnNonFiniteLoss:
    """Raise :class:`NonFiniteLoss` at the first iteration whose output holds a NaN or infinite loss.

    It checks every scalar under a key ending in ``loss`` (``loss``, ``d_loss``, ``g_loss``, ...) as soon as MONAI's
    trainers have computed it (before the backward pass) and after each iteration (``GanTrainer``), before any
    epoch-end checkpoint can save broken weights; the message names the newest checkpoint
    in ``ckpt_dir``, which is where the same command resumes from. Unlike ignite's ``TerminateOnNan`` the run ends
    with an error (and a non-zero exit status), not as if it had completed.
    """

    def __init__(self, ckpt_dir: str | None = None, keys: Sequence[str] | None = None):
        self.ckpt_dir = ckpt_dir
        self.keys = tuple(keys) if keys else None

    def attach(self, engine: Engine) -> None:
        # MONAI's trainers fire LOSS_COMPLETED before backward: a check there keeps the weights finite too
        if engine.has_registered_events(IterationEvents.LOSS_COMPLETED):
            engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        losses = [(k, v) for k, v in _scalars(engine.state.output) if self.keys is None or k.split(".")[-1] in self.keys]
        bad = [(k, v) for k, v in losses if not math.isfinite(v)]
        if not bad:
            return
        last = latest_checkpoint(self.ckpt_dir) if self.ckpt_dir else None
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written before it"
        values = ", ".join(f"{k}={v}" for k, v in dict(bad).items())
        raise NonFiniteLoss(
            f"training stopped: the loss is not finite ({values}) at epoch {engine.state.epoch}, iteration "
            f"{engine.state.iteration}; {where}. Lower the learning rate or check the input images, then run the "
            "same command to resume from that checkpoint."
        )


class TrainingProgress:
    """The run state a resumed training needs beyond model, optimiser, scheduler and trainer; save and load it
    under one key of the checkpoint (``"progress"``) like any other state-dict object.

    Args:
        evaluator: the validation engine; its ``best_metric`` and ``best_metric_epoch`` are kept.
        early_stop: a ``monai.handlers.EarlyStopHandler``; its counter and best score are kept.
        best_saver: the ``CheckpointSaver`` that writes the best-metric model; the score of the file it wrote is kept,
            so a resumed run replaces it only with a better one.
    """

    def __init__(self, evaluator: Engine | None = None, early_stop=None, best_saver: CheckpointSaver | None = None):
        self.evaluator = evaluator
        self.early_stop = early_stop
        self.best_saver = best_saver

    def _best_checkpoint(self) -> Checkpoint | None:
        return None if self.best_saver is None else self.best_saver._key_metric_checkpoint

    def state_dict(self) -> dict:
        state = {}
        if self.evaluator is not None:
            state["best_metric"] = float(self.evaluator.state.best_metric)
            state["best_metric_epoch"] = int(self.evaluator.state.best_metric_epoch)
        handler = getattr(self.early_stop, "_handler", None)
        if handler is not None:
            best = handler.best_score
            state["early_stop"] = {"counter": int(handler.counter), "best_score": None if best is None else float(best)}
        best_checkpoint = self._best_checkpoint()
        if best_checkpoint is not None:
            state["best_checkpoint"] = [[float(p), str(f)] for p, f in best_checkpoint._saved]
        return state

    def load_state_dict(self, state: Mapping) -> None:
        if self.evaluator is not None and "best_metric" in state:
            self.evaluator.state.best_metric = state["best_metric"]
            self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]
        handler = getattr(self.early_stop, "_handler", None)
        if "early_stop" in state:
            if handler is None:
                raise RuntimeError("TrainingProgress: call early_stop.set_trainer(trainer) before loading a checkpoint")
            handler.counter = state["early_stop"]["counter"]
            handler.best_score = state["early_stop"]["best_score"]
        best_checkpoint = self._best_checkpoint()
        if best_checkpoint is not None and "best_checkpoint" in state:
            best_checkpoint._saved = [Checkpoint.Item(p, f) for p, f in state["best_checkpoint"]]
