"""Shared fixtures: synthetic datasets written once per test session and shared by every test that asks for them."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # so test modules can `import bundle_harness`


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """``synthetic_data(dataset, **synth_options) -> folder``: a synthetic dataset in its official layout with its
    datalists prepared, written on first request and reused for the same (dataset, options) afterwards."""
    from chestzoo.data import registry

    written: dict[str, str] = {}

    def get(dataset: str, **options) -> str:
        key = f"{dataset}:{json.dumps(options, sort_keys=True)}"
        if key not in written:
            root = str(tmp_path_factory.mktemp(f"synth_{dataset}"))
            options = {"patients": 16, "size": 64, "seed": 0, **options}
            registry.synth(dataset, root, **options)
            registry.prepare(dataset, root)
            written[key] = root
        return written[key]

    return get


@pytest.fixture(scope="session")
def trained_bundles(synthetic_data, tmp_path_factory):
    """The bundles `chestzoo serve` serves, trained (train.json only) with the tests' settings into
    ``<root>/<name>/models``; shared by the web page's and the MONAI Label app's tests."""
    from monai.bundle import ConfigWorkflow

    from chestzoo.bundle_runs import BUNDLE_RUNS
    from chestzoo.serve import ROLES

    bundles = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles")
    root = tmp_path_factory.mktemp("trained_bundles")
    for name in ROLES:
        run = BUNDLE_RUNS[name]
        workflow = ConfigWorkflow(
            config_file=os.path.join(bundles, name, "configs", "train.json"),
            meta_file=os.path.join(bundles, name, "configs", "metadata.json"),
            logging_file=False,
            workflow_type="train",
            bundle_root=os.path.join(bundles, name),
            dataset_dir=synthetic_data(run.dataset, **run.test_data),
            ckpt_dir=str(root / name / "models"),
            output_dir=str(root / name / "eval"),
            **run.test,
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        assert (root / name / "models" / "model.pt").is_file(), f"training {name} wrote no model.pt"
    return root


@pytest.fixture(scope="session", autouse=True)
def repository_stays_clean():
    """Runs write into temporary folders only: a config parsed with its default ``bundle_root`` ('.') would write
    ``eval/`` or ``models/`` into the folder pytest runs from."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    before = set(os.listdir(root))
    yield
    added = sorted(set(os.listdir(root)) - before - {".pytest_cache"})
    assert not added, f"the tests wrote {added} into the repository root"
