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

from .bundle_model import BUNDLES_DIR
from .bundle_runs import BUNDLE_RUNS, override_args
from .data import registry

logger = logging.getLogger(__name__)

PICTURES_PER_BUNDLE = 4


def bundle_command(bundles_dir: Path, name: str, config: str, overrides: dict) -> list[str]:
    """The ``python -m monai.bundle run`` command line for one config of one bundle."""
    bundle = bundles_dir / name
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / f"{config}.json")]
    command += ["--bundle_root", str(bundle), "--logging_file", str(bundle / "configs" / "logging.conf")]
    return command + override_args(overrides)


def data_folders(names: list[str], fast: bool) -> dict[str, tuple[str, str, dict]]:
    """Bundle name -> (folder under ``data/``, dataset, synth options). Bundles asking for the same synthetic data
    share one folder; a bundle that needs other data (more boxed images, larger pictures) gets its own."""
    requests: dict[str, tuple[str, dict]] = {}
    for name in names:
        run = BUNDLE_RUNS[name]
        requests[name] = (run.dataset, dict(run.test_data if fast else run.demo_data))
    distinct: list[tuple[str, dict]] = []
    for request in requests.values():
        if request not in distinct:
            distinct.append(request)
    folders = {}
    for dataset, options in distinct:
        same_dataset = [o for d, o in distinct if d == dataset]
        suffix = "" if len(same_dataset) == 1 else "_" + "_".join(f"{k}{v}" for k, v in sorted(options.items()))
        folders[json.dumps([dataset, options], sort_keys=True)] = f"{dataset}{suffix}"
    return {n: (folders[json.dumps(list(r), sort_keys=True)], *r) for n, r in requests.items()}


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
    datasets = {}  # bundle name -> its synthetic dataset folder
    written: dict[str, Path] = {}
    for name, (folder, dataset, options) in data_folders(names, fast).items():
        if folder not in written:
            root = written[folder] = out / "data" / folder
            logger.info("synthetic %s %s -> %s", dataset, options, root)
            registry.synth(dataset, str(root), **options)
            registry.prepare(dataset, str(root))
        datasets[name] = written[folder]

    results = []
    for name in names:
        run = BUNDLE_RUNS[name]
        work = out / name
        work.mkdir(parents=True, exist_ok=True)
        overrides = {"dataset_dir": str(datasets[name]), "output_dir": str(work), "ckpt_dir": str(work / "models")}
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
    comparison = _compare_rsna_models(out, names, datasets, fast)
    evidence = judge_learning(out, names, datasets)
    report = write_report(out, results, fast, time.time() - started, comparison, evidence)
    logger.info("demo finished in %.0f s; report: %s", time.time() - started, report)
    return report


def _compare_rsna_models(out: Path, names: list[str], datasets: dict, fast: bool) -> Path | None:
    """``chestzoo compare`` on the demo's checkpoints, once all three RSNA models have been trained."""
    from .compare import MODELS, run_compare

    if not all(spec.bundle in names for spec in MODELS):
        return None
    logger.info("comparing the three RSNA models on the synthetic RSNA test split")
    classifier, segmenter, detector = (spec.bundle for spec in MODELS)
    if datasets[classifier] != datasets[detector]:
        raise ValueError(f"{classifier} and {detector} must be trained on the same synthetic RSNA set to be compared")
    report = run_compare(str(datasets[detector]), str(out / "comparison"), settings="test" if fast else "demo",
                         ckpt_dirs={spec.bundle: str(out / spec.bundle / "models") for spec in MODELS},
                         lung_dataset_dir=str(datasets[segmenter]))
    return report.relative_to(out)


def judge_learning(out: Path, names: list[str], datasets: dict) -> dict[str, list[dict]]:
    """Each bundle's headline intervals against the best no-learning baseline of its task on the same synthetic test
    split (``chestzoo baselines``), by :func:`chestzoo.evidence.judge_all`."""
    from .evidence import judge_all

    reports: dict = {}
    verdicts = {}
    for name in names:
        metrics_path = out / name / "metrics.json"
        if metrics_path.is_file():
            logger.info("%s against its no-learning baselines", name)
            verdicts[name] = judge_all(json.loads(metrics_path.read_text()), BUNDLE_RUNS[name].margins, datasets[name], reports)
    return verdicts


def _summary(work: Path) -> dict:
    """Headline numbers a bundle's evaluate config wrote to ``metrics.json`` under ``summary``; those with a
    bootstrap interval under ``summary_ci95`` become text, e.g. ``"0.874 [0.842, 0.903]"``."""
    from .metrics.bootstrap import format_interval

    path = work / "metrics.json"
    if not path.is_file():
        return {}
    metrics = json.loads(path.read_text())
    summary, intervals = metrics.get("summary", {}), metrics.get("summary_ci95", {})
    return {k: format_interval({**intervals[k], "value": v}) if isinstance(v, float) and intervals.get(k) else v
            for k, v in summary.items()}


def write_report(out: Path, results: list, fast: bool, seconds: float, comparison: Path | None = None,
                 evidence: dict[str, list[dict]] | None = None) -> Path:
    from .metrics.bootstrap import format_interval

    lines = [
        "# chestzoo demo report",
        "",
        "All numbers below come from **synthetic data** written by `chestzoo synth` in the official dataset layouts;",
        "they show that each bundle trains, evaluates and infers correctly, not how it performs on the real datasets.",
        "",
        f"Settings: {'tests (fast)' if fast else 'demo'}; total time {seconds / 60:.1f} min on {os.cpu_count()} CPU cores.",
        "",
        "Brackets hold bootstrap 95% intervals (1000 resamples of the test patients, or images where a dataset has no",
        "patient ids); metrics.json says which under `summary_ci95`.",
        "",
        "| bundle | dataset | headline metrics (synthetic test split) | train / evaluate / infer (s) |",
        "|---|---|---|---|",
    ]
    for name, run, secs, summary in results:
        metrics = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()) or "-"
        times = " / ".join(f"{secs[c]:.0f}" for c in run.configs)
        lines.append(f"| `{name}` | {run.dataset} | {metrics} | {times} |")
    if evidence:
        lines += ["", "## Evidence of learning", "",
                  "Each headline number beside the best score reached without learning on the same test split",
                  "(`chestzoo baselines`: best single pixel, class-mean template, constant mask or fixed boxes; a generator",
                  "is compared with itself untrained). A bundle shows learning when its interval clears the bar.", "",
                  "| bundle | number (95% interval) | best no-learning baseline | rule | bar | verdict |", "|---|---|---|---|---|---|"]
        for name, verdicts in evidence.items():
            for v in verdicts:
                reference = v["baseline"]
                baseline = f"{format_interval(reference)} ({reference.get('baseline', 'untrained')})"
                lines.append(f"| `{name}` | {v['metric']} "
                             f"{format_interval(v['bundle'])} | {baseline} | {v['rule']} | {v['bar']:.3f} | "
                             f"{'clears' if v['passed'] else '**does not clear**'} |")
    if comparison is not None:
        lines += ["", f"The three RSNA pneumonia models side by side on the same test images: [{comparison}]({comparison})."]
    for name, _, _, _ in results:
        pictures = sorted((out / name).glob("*.png"))[:PICTURES_PER_BUNDLE]
        if pictures:
            lines += ["", f"## {name}", ""] + [f"![{p.stem}]({name}/{p.name})" for p in pictures]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
