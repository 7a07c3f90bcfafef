"""Every bundle's training-loss logging reads a number from its trainer's output.

The trainers do not decollate (their output is one dict per batch), so a transform written for decollated output,
such as ``from_engine(['loss'], first=True)``, returns a tuple that StatsHandler and TensorBoardStatsHandler skip
with a warning: the loss curve would silently stay empty.
"""

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

BUNDLES = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "bundles").iterdir() if (p / "configs" / "train.json").is_file())


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.ndim == 0)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_loss_handlers_log_numbers(bundle):
    parser = ConfigParser()
    parser.read_config(str(Path(__file__).resolve().parents[1] / "bundles" / bundle / "configs" / "train.json"))
    trainer = parser.get("train#trainer")
    assert trainer.get("decollate", False) is False, "the trainer's output is one dict per batch"  # GanTrainer, DetectionTrainer: never decollated
    handlers = parser.get("train#handlers")
    logs = [i for i, h in enumerate(handlers) if isinstance(h, dict) and h["_target_"].split(".")[-1] in ("StatsHandler", "TensorBoardStatsHandler") and "output_transform" in h]
    assert logs, f"{bundle} logs no training loss"
    output = {"loss": torch.tensor(0.25), "d_loss": torch.tensor(0.5), "g_loss": torch.tensor(0.75), "pred": torch.zeros(2, 1), "label": torch.zeros(2, 1)}
    for i in logs:
        value = parser.get_parsed_content(f"train#handlers#{i}#output_transform", instantiate=False)(output)
        values = list(value.values()) if isinstance(value, dict) else [value]
        assert values and all(_is_scalar(v) for v in values), (bundle, handlers[i]["_target_"], value)
