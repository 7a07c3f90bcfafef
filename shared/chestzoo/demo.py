"""``chestzoo demo``: synthetic data in the official layouts, then every bundle trained, evaluated and run for
inference with MONAI's own runner, then a short Markdown report with the numbers and pictures.

Every step runs exactly the command a user would type (``chestzoo synth``/``prepare`` functions and
``python -m monai.bundle run``), shrunk only by the overrides in :mod:`chestzoo.bundle_runs`.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .bundle_runs import BUNDLE_RUNS, BundleRun, override_args
from .data import registry

logger = logging.getLogger(__name__)

BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"
PICTURES_PER_BUNDLE = 4


def bundle_command(bundles_dir: Path, name: str, config: str, overrides: dict) -> list[str]:
    """The ``python -m monai.bundle run`` command line for one config of one bundle."""
    bundle = bundles_dir / name
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / f"{config}.json")]
    command += ["--bundle_root", str(bundle), "--logging_file", str(bundle / "configs" / "logging.conf")]
    return command + override_args(overrides)


def _merged_data_options(runs: list[BundleRun], fast: bool) -> dict:
    """One synthetic dataset serves every bundle that trains on it: take the largest request of each option."""
    merged: dict = {}
    for run in runs:
        for key, value in (run.test_data if fast else run.demo_data).items():
            merged[key] = max(merged.get(key, value), value)
    return merged


def run_demo(out: str = "demo_output", bundles: list[str] | None = None, fast: bool = False,
             bundles_dir: str | Path = BUNDLES_DIR) -> Path:
    """Run the demo into ``out`` and return the path of its report. ``fast`` uses the tests' tiny settings."""
    out, bundles_dir = Path(out).resolve(), Path(bundles_dir)
    available = [n for n in BUNDLE_RUNS if (bundles_dir / n / "configs").is_dir()]
    names = bundles or available
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise ValueError(f"unknown or missing bundles {unknown}; available: {available}")
    if not names:
        raise RuntimeError(f"no bundles found under {bundles_dir}")
    started = time.time()
    datasets = {}
    for dataset in dict.fromkeys(BUNDLE_RUNS[n].dataset for n in names):
        options = _merged_data_options([BUNDLE_RUNS[n] for n in names if BUNDLE_RUNS[n].dataset == dataset], fast)
        root = out / "data" / dataset
        logger.info("synthetic %s %s -> %s", dataset, options, root)
        registry.synth(dataset, str(root), **options)
        registry.prepare(dataset, str(root))
        datasets[dataset] = root

    results = []
    for name in names:
        run = BUNDLE_RUNS[name]
        work = out / name
        work.mkdir(parents=True, exist_ok=True)
        overrides = {"dataset_dir": str(datasets[run.dataset]), "output_dir": str(work), "ckpt_dir": str(work / "models")}
        overrides.update(run.test if fast else run.demo)
        seconds = {}
        for config in run.configs:
            command = bundle_command(bundles_dir, name, config, overrides)
            log = work / f"{config}.log"
            logger.info("%s %s (log: %s)", name, config, log)
            t0 = time.time()
            with open(log, "w") as f:
                f.write(" ".join(shlex.quote(c) for c in command) + "\n\n")
                f.flush()
                done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=str(work))
            seconds[config] = time.time() - t0
            if done.returncode != 0:
                tail = "".join(open(log).readlines()[-25:])
                raise RuntimeError(f"{name} {config} failed (exit {done.returncode}); log {log}:\n{tail}")
        results.append((name, run, seconds, _summary(work)))
    report = write_report(out, results, fast, time.time() - started)
    logger.info("demo finished in %.0f s; report: %s", time.time() - started, report)
    return report


def _summary(work: Path) -> dict:
    """Headline numbers a bundle's evaluate config wrote to ``metrics.json`` under ``summary``."""
    path = work / "metrics.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text()).get("summary", {})


def write_report(out: Path, results: list, fast: bool, seconds: float) -> Path:
    lines = [
        "# chestzoo demo report",
        "",
        "All numbers below come from **synthetic data** written by `chestzoo synth` in the official dataset layouts;",
        "they show that each bundle trains, evaluates and infers correctly, not how it performs on the real datasets.",
        "",
        f"Settings: {'tests (fast)' if fast else 'demo'}; total time {seconds / 60:.1f} min on {os.cpu_count()} CPU cores.",
        "",
        "| bundle | dataset | headline metrics (synthetic test split) | train / evaluate / infer (s) |",
        "|---|---|---|---|",
    ]
    for name, run, secs, summary in results:
        metrics = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()) or "-"
        times = " / ".join(f"{secs[c]:.0f}" for c in run.configs)
        lines.append(f"| `{name}` | {run.dataset} | {metrics} | {times} |")
    for name, _, _, _ in results:
        pictures = sorted((out / name).glob("*.png"))[:PICTURES_PER_BUNDLE]
        if pictures:
            lines += ["", f"## {name}", ""] + [f"![{p.stem}]({name}/{p.name})" for p in pictures]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
