"""chestzoo.engines.resilience: atomic checkpoints under SIGKILL, the non-finite-loss stop, the resumable run state."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from ignite.engine import Engine
from monai.handlers import EarlyStopHandler

from chestzoo.engines.resilience import AtomicCheckpointSaver, NonFiniteLoss, StopOnNonFiniteLoss, TrainingProgress
from chestzoo.networks import latest_checkpoint

# Two epochs with a checkpoint after each; the second save is SIGKILLed after half of its bytes reached the disk.
KILLED_DURING_SAVE = textwrap.dedent(
    """
    import io, os, signal, sys
    import torch
    from ignite.engine import Engine
    from monai.handlers import CheckpointSaver
    from chestzoo.engines.resilience import AtomicCheckpointSaver

    saver_class = {"atomic": AtomicCheckpointSaver, "monai": CheckpointSaver}[sys.argv[2]]
    original_save, calls = torch.save, []

    def save_then_die(obj, f, **kwargs):
        calls.append(1)
        if len(calls) < 2:
            return original_save(obj, f, **kwargs)
        buffer = io.BytesIO()
        original_save(obj, buffer, **kwargs)
        data = buffer.getvalue()
        opened = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
        opened.write(data[: len(data) // 2])
        opened.flush()
        os.fsync(opened.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save_then_die
    net = torch.nn.Linear(64, 64)
    engine = Engine(lambda e, b: 0.0)
    saver_class(save_dir=sys.argv[1], save_dict={"model": net, "trainer": engine}, save_interval=1, n_saved=1).attach(engine)
    engine.run([0, 1], max_epochs=2)
    """
)


@pytest.mark.parametrize("saver", ["atomic", "monai"])
def test_a_kill_during_a_save_leaves_the_previous_checkpoint(saver, tmp_path):
    """SIGKILL half-way through writing checkpoint 2: the atomic saver leaves checkpoint 1 whole and nothing under
    checkpoint 2's name; MONAI's own saver (the counter-example that shows the test can fail) leaves a torn file."""
    done = subprocess.run([sys.executable, "-c", KILLED_DURING_SAVE, str(tmp_path), saver], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    names = sorted(os.listdir(tmp_path))
    if saver == "monai":
        # ignite deletes checkpoint 1 before writing checkpoint 2, and MONAI writes in place: a torn file remains
        assert names == ["checkpoint_epoch=2.pt"]
        with pytest.raises(Exception):
            torch.load(tmp_path / names[0], weights_only=True)
        return
    assert "checkpoint_epoch=2.pt" not in names, "a partly written file appeared under its final name"
    partial = [n for n in names if n != "checkpoint_epoch=1.pt"]
    assert len(partial) == 1 and (tmp_path / partial[0]).stat().st_size > 0, f"the kill did not happen during the write: {names}"
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint_epoch=1.pt")
    state = torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 2 and set(state["model"]) == {"weight", "bias"}


def test_atomic_saver_keeps_n_saved_across_a_resume(tmp_path):
    """A resumed run replaces the checkpoints of the run it continues; the best-metric file keeps its fixed name."""
    net = torch.nn.Linear(2, 2)

    def run(max_epochs):
        engine = Engine(lambda e, b: 0.0)
        AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net, "trainer": engine}, save_interval=1, n_saved=1,
                              save_final=True, final_filename="checkpoint_final.pt").attach(engine)
        resume = latest_checkpoint(str(tmp_path))
        if resume:
            engine.load_state_dict(torch.load(resume, weights_only=True)["trainer"])
        engine.run([0, 1], max_epochs=max_epochs)

    run(2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch=2.pt", "checkpoint_final.pt"]
    os.remove(tmp_path / "checkpoint_final.pt")  # as after a kill before the end
    run(4)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch=4.pt", "checkpoint_final.pt"]
    assert torch.load(tmp_path / "checkpoint_final.pt", weights_only=True)["trainer"]["iteration"] == 8


def _nan_after(iteration: int):
    def step(engine, batch):
        return {"loss": torch.tensor(float("nan") if engine.state.iteration >= iteration else 1.0), "pred": torch.zeros(1)}

    return step


def test_a_nan_loss_stops_with_the_last_good_checkpoint(tmp_path):
    net = torch.nn.Linear(2, 2)
    engine = Engine(_nan_after(5))  # epoch length 2: epochs 1 and 2 complete, iteration 5 is the first of epoch 3
    StopOnNonFiniteLoss(ckpt_dir=str(tmp_path)).attach(engine)
    AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net, "trainer": engine}, save_interval=1, n_saved=1,
                          save_final=True, final_filename="checkpoint_final.pt").attach(engine)
    with pytest.raises(NonFiniteLoss) as info:
        engine.run([0, 1], max_epochs=5)
    message = str(info.value)
    assert "loss=nan" in message and "epoch 3, iteration 5" in message
    assert str(tmp_path / "checkpoint_epoch=2.pt") in message
    assert os.listdir(tmp_path) == ["checkpoint_epoch=2.pt"], "no final checkpoint of the broken weights"


def test_non_finite_loss_keys_and_outputs():
    engine = Engine(lambda e, b: [{"loss": 0.5}, {"loss": 0.5}])  # a decollated SupervisedTrainer output
    StopOnNonFiniteLoss().attach(engine)
    engine.run([0], max_epochs=1)
    gan = Engine(lambda e, b: {"g_loss": torch.tensor(1.0), "d_loss": torch.tensor(math.inf), "pred": torch.tensor(math.nan)})
    StopOnNonFiniteLoss().attach(gan)
    with pytest.raises(NonFiniteLoss, match=r"d_loss=inf.*no checkpoint was written"):
        gan.run([0], max_epochs=1)


def test_training_progress_round_trip():
    trainer, evaluator = Engine(lambda e, b: None), Engine(lambda e, b: None)
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = 0.75, 3
    early = EarlyStopHandler(patience=5, score_function=lambda e: 0.0)
    early.set_trainer(trainer)
    early._handler.counter, early._handler.best_score = 2, 0.75
    state = TrainingProgress(evaluator=evaluator, early_stop=early).state_dict()
    assert state == {"best_metric": 0.75, "best_metric_epoch": 3, "early_stop": {"counter": 2, "best_score": 0.75}}

    fresh_evaluator, fresh_early = Engine(lambda e, b: None), EarlyStopHandler(patience=5, score_function=lambda e: 0.0)
    fresh_early.set_trainer(Engine(lambda e, b: None))
    TrainingProgress(evaluator=fresh_evaluator, early_stop=fresh_early).load_state_dict(state)
    assert (fresh_evaluator.state.best_metric, fresh_evaluator.state.best_metric_epoch) == (0.75, 3)
    assert (fresh_early._handler.counter, fresh_early._handler.best_score) == (2, 0.75)


def test_ignite_atomic_saver_writes_beside_the_target(tmp_path, monkeypatch):
    """The atomic write relies on the temporary file being in the same folder (os.replace within one file system)."""
    engine = Engine(lambda e, b: None)
    seen = []
    original = torch.save

    def spy(obj, f, **kwargs):
        seen.append(os.path.dirname(getattr(f, "name", "")))
        original(obj, f, **kwargs)

    AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": torch.nn.Linear(1, 1)}, save_interval=1).attach(engine)
    monkeypatch.setattr(torch, "save", spy)
    engine.run([0], max_epochs=1)
    assert seen == [str(tmp_path)]
    assert os.listdir(tmp_path) == ["model_epoch=1.pt"]
