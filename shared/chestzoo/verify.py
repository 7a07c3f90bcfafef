"""``chestzoo verify``: the zoo checks of :mod:`chestzoo.bundle_checks` on one bundle, with a printed table."""

from __future__ import annotations

import json
import os
import tempfile

from .bundle_checks import CheckResult, find_bundle, verify_bundle
from .bundle_runs import BUNDLE_RUNS, BundleRun

SETTINGS = ("test", "demo", "none")


def settings_overrides(run: BundleRun, settings: str) -> dict:
    if settings not in SETTINGS:
        raise ValueError(f"settings must be one of {SETTINGS}, not {settings!r}")
    return {"test": run.test, "demo": run.demo, "none": {}}[settings]


def format_results(name: str, results: list[CheckResult]) -> str:
    lines = [f"chestzoo verify {name}"]
    for r in results:
        lines.append(f"  {r.status.upper():4s}  {r.name:12s} {r.seconds:6.1f} s  {r.detail}")
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip")}
    lines.append(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    return "\n".join(lines)


def run_verify(bundle: str, settings: str = "test", dataset_dir: str | None = None, ckpt: str | None = None,
               schema: str | None = None, out: str | None = None, echo: bool = True) -> list[CheckResult]:
    """Verify ``bundle`` (a name under bundles/ or a folder). Without ``dataset_dir``, the properties check reads a
    small synthetic dataset of the bundle's kind, written to a temporary folder."""
    path = find_bundle(bundle)
    run = BUNDLE_RUNS.get(path.name)
    if run is None and settings != "none":
        raise ValueError(f"{path.name} has no entry in chestzoo/bundle_runs.py; use --settings none")
    overrides = settings_overrides(run, settings) if run else {}
    with tempfile.TemporaryDirectory() as tmp:
        if dataset_dir is None and run is not None:
            from .data import registry

            dataset_dir = os.path.join(tmp, run.dataset)
            registry.synth(run.dataset, dataset_dir, **{"patients": 16, "size": 64, "seed": 0, **run.test_data})
            registry.prepare(run.dataset, dataset_dir)
        results = verify_bundle(path, net_id=run.net_id if run else "network_def", configs=_property_configs(run),
                                overrides=overrides, dataset_dir=dataset_dir, ckpt=ckpt, schema=schema,
                                torchscript=run.torchscript if run else True, onnx=run.onnx if run else True)
    if echo:
        print(format_results(path.name, results))
    if out:
        with open(out, "w") as f:
            json.dump({"bundle": path.name, "settings": settings, "results": [r.as_dict() for r in results]}, f, indent=2)
    return results


def _property_configs(run: BundleRun | None) -> tuple[str, ...]:
    """train.json gets the train properties, the others (evaluate, inference) the infer properties."""
    return run.configs if run else ("train", "inference")
