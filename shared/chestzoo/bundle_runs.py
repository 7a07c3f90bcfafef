"""How the demo and the tests run each bundle: which synthetic dataset it trains on and the overrides that shrink it.

The bundles' configs hold the real-data settings; the demo (CPU minutes) and the tests (CPU seconds) shrink them
only through these command-line overrides, never through a second copy of a config.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BundleRun:
    dataset: str  # synthetic dataset (a key of chestzoo.data.registry.DATASETS)
    datalist: str = "datalist.json"  # which datalist, written by `chestzoo prepare`, in the dataset folder
    demo_data: dict = field(default_factory=dict)  # synth options for the demo: patients, size
    demo: dict = field(default_factory=dict)  # overrides for every config of the bundle in the demo
    test_data: dict = field(default_factory=dict)  # synth options for the tests
    test: dict = field(default_factory=dict)  # overrides for every config of the bundle in the tests
    configs: tuple[str, ...] = ("train", "evaluate", "inference")  # run by the demo and the tests, in order


# One entry per bundle in bundles/<name>.
BUNDLE_RUNS: dict[str, BundleRun] = {}
