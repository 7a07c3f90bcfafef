"""A trained bundle rebuilt in Python: its network with the checkpoint's weights, its preprocessing and
post-processing, all read from the bundle's own ``inference.json`` (shared by ``chestzoo compare`` and ``chestzoo
serve``).

A network must be rebuilt with the shape it was trained with, so the overrides used for training go in again:
``settings`` "demo" and "test" take them from :data:`chestzoo.bundle_runs.BUNDLE_RUNS`, "none" keeps the config's
real-data settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from .bundle_runs import BUNDLE_RUNS
from .data import DataError

BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"
SETTINGS = ("none", "demo", "test")


def settings_overrides(name: str, settings: str = "none", extra: Mapping | None = None) -> dict:
    """The config overrides bundle ``name`` was trained with: ``settings`` (none, demo, test), then ``extra[name]``."""
    if settings not in SETTINGS:
        raise ValueError(f"settings must be one of {SETTINGS}, not {settings!r}")
    out: dict = {}
    if settings != "none":
        run = BUNDLE_RUNS[name]
        out.update(run.demo if settings == "demo" else run.test)
    out.update((extra or {}).get(name, {}))
    return out


def train_command(bundle_dir: str | os.PathLike, ckpt_dir: str | os.PathLike) -> str:
    """The command that trains the bundle into ``ckpt_dir``, for messages about a missing checkpoint."""
    def shown(path) -> str:  # relative to the working folder when inside it: shorter, and what one would type
        relative = os.path.relpath(os.path.abspath(path))
        return os.fspath(path) if relative.startswith("..") else relative

    bundle = Path(bundle_dir)
    return (f"python -m monai.bundle run --config_file {shown(bundle / 'configs' / 'train.json')} "
            f"--bundle_root {shown(bundle)} --dataset_dir <dataset folder> --ckpt_dir {shown(ckpt_dir)}")


class UntrainedBundleError(DataError):
    """No trained checkpoint for a bundle; the message says which command trains it."""

    def __init__(self, bundle_dir: str | os.PathLike, ckpt_dir: str | os.PathLike):
        self.bundle = Path(bundle_dir).name
        self.command = train_command(bundle_dir, ckpt_dir)
        super().__init__(Path(ckpt_dir) / "model.pt", f"{self.bundle} is not trained yet (no checkpoint); train it with: {self.command}")


class BundleModel:
    """Bundle ``bundle_dir``'s ``network_def`` with the weights of ``ckpt_dir/model.pt`` (in eval mode on ``device``),
    plus ``preprocessing`` and ``postprocessing`` when its inference.json defines them.

    ``checkpoint_key`` names the entry of the checkpoint holding the network's state dict (the bundles save it as
    "model"); a checkpoint that is a bare state dict loads too. Other config items are read with :meth:`get`.
    """

    def __init__(self, bundle_dir: str | os.PathLike, ckpt_dir: str | os.PathLike, overrides: Mapping | None = None,
                 device: torch.device | str = "cpu", checkpoint_key: str = "model"):
        from monai.bundle import ConfigParser

        self.bundle_dir, self.ckpt_dir = Path(bundle_dir), Path(ckpt_dir)
        self.name = self.bundle_dir.name
        self.device = torch.device(device)
        checkpoint = self.ckpt_dir / "model.pt"
        if not checkpoint.is_file():
            raise UntrainedBundleError(self.bundle_dir, self.ckpt_dir)
        parser = ConfigParser()
        parser.read_config(str(self.bundle_dir / "configs" / "inference.json"))
        parser.read_meta(str(self.bundle_dir / "configs" / "metadata.json"))
        parser.update({"bundle_root": str(self.bundle_dir), "ckpt_dir": str(self.ckpt_dir), **dict(overrides or {})})
        self.parser = parser
        self.network = parser.get_parsed_content("network_def").to(self.device)
        state = torch.load(checkpoint, map_location=self.device, weights_only=True)
        self.network.load_state_dict(state[checkpoint_key] if isinstance(state.get(checkpoint_key), dict) else state)
        self.network.eval()
        self.preprocessing = self.get("preprocessing")
        self.postprocessing = self.get("postprocessing")

    def get(self, id: str, default=None):
        """The parsed config item ``id`` (e.g. "labels", "heatmap_methods"), or ``default`` when the config lacks it."""
        return self.parser.get_parsed_content(id) if id in self.parser else default

    def prepare(self, path: str) -> dict:
        """The bundle's preprocessing of one image file."""
        if self.preprocessing is None:
            raise ValueError(f"{self.name}'s inference.json has no preprocessing")
        return self.preprocessing({"image": path})
