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


@pytest.fixture(scope="session", autouse=True)
def repository_stays_clean():
    """Runs write into temporary folders only: a config parsed with its default ``bundle_root`` ('.') would write
    ``eval/`` or ``models/`` into the folder pytest runs from."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    before = set(os.listdir(root))
    yield
    added = sorted(set(os.listdir(root)) - before - {".pytest_cache"})
    assert not added, f"the tests wrote {added} into the repository root"
