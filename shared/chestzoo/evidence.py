"""Whether a bundle's headline number shows learning: its 95% interval against the best no-learning baseline.

One rule, read by the learning tests and the demo report. A bundle clears its task's bar when the lower end of its
interval beats the baseline's value by an absolute ``margin`` and by a ``factor`` (whichever bar is higher). A
generator has no no-learning baseline of that kind: it clears its bar when its Frechet distance is ``factor`` times
below that of the same generator untrained and the two intervals do not overlap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from .metrics.bootstrap import format_interval


@dataclass(frozen=True)
class Margin:
    metric: str  # key of ``summary`` (and ``summary_ci95``) in the bundle's metrics.json
    task: str | None = None  # a ``chestzoo baselines`` task whose headline is the bar; None: a generator
    margin: float = 0.0  # the interval's lower end beats the baseline by at least this much
    factor: float = 1.0  # ... and is at least this many times the baseline (a generator: this many times below)
    untrained: str | None = None  # a generator's summary key of the untrained generator's distance

    def describe(self) -> str:
        if self.task is None:
            return f"{self.metric} at most 1/{self.factor:g} of {self.untrained}, intervals apart"
        bars = [f"baseline + {self.margin:g}"] if self.margin else []
        bars += [f"{self.factor:g} x baseline"] if self.factor != 1.0 else []
        return f"lower end of the {self.metric} interval >= {' and '.join(bars) or 'baseline'}"


def judge(metrics: dict, margin: Margin, baselines: dict | None = None) -> dict:
    """``metrics``: a bundle's metrics.json; ``baselines``: ``chestzoo baselines``' report holding ``margin.task``.

    Returns ``{"passed", "metric", "bundle": interval, "baseline": interval or None, "bar", "rule", "text"}``.
    """
    bundle = metrics.get("summary_ci95", {}).get(margin.metric)
    if bundle is None:
        raise KeyError(f"metrics.json has no interval for {margin.metric!r} under summary_ci95")
    if margin.task is None:
        untrained = metrics["summary_ci95"][margin.untrained]
        bar = untrained["value"] / margin.factor
        passed = _known(bundle["high"], untrained["low"]) and bundle["value"] <= bar and bundle["high"] < untrained["low"]
        reference = untrained
        text = f"{format_interval(bundle)} against untrained {format_interval(untrained)}"
    else:
        if baselines is None or margin.task not in baselines.get("tasks", {}):
            raise KeyError(f"the baselines report has no task {margin.task!r}")
        reference = baselines["tasks"][margin.task]["headline"]
        bar = max(reference["value"] + margin.margin, reference["value"] * margin.factor)
        passed = _known(bundle["low"]) and bundle["low"] >= bar
        text = f"{format_interval(bundle)} against best baseline {format_interval(reference)} ({reference['baseline']})"
    verdict = "clears" if passed else "does not clear"
    return {"passed": bool(passed), "metric": margin.metric, "bundle": bundle, "baseline": reference, "bar": bar, "rule": margin.describe(),
            "text": f"{margin.metric} {text}: {verdict} the bar {bar:.3f}"}


def _known(*values) -> bool:
    return all(v is not None for v in values)


def judge_all(metrics: dict, margins: Sequence[Margin], dataset_dir: str, reports: dict | None = None) -> list[dict]:
    """Every bar of ``margins`` judged on ``metrics``, against the baselines the evaluation scored beside itself
    (``metrics["baselines"]``) or else by running ``chestzoo baselines`` on ``dataset_dir`` for the tasks they name
    (into ``<dataset_dir>/baselines/<task>/``); ``reports`` keeps those runs, keyed by (folder, task), so that
    bundles sharing a dataset compute its baselines once."""
    from .baselines import run_baselines

    reports = {} if reports is None else reports
    verdicts = []
    for margin in margins:
        baselines = None
        if margin.task in metrics.get("baselines", {}).get("tasks", {}):
            baselines = metrics["baselines"]
        elif margin.task is not None:
            key = (str(dataset_dir), margin.task)
            if key not in reports:
                reports[key] = run_baselines(key[0], out=os.path.join(key[0], "baselines", margin.task), task=margin.task)
            baselines = reports[key]
        verdicts.append(judge(metrics, margin, baselines))
    return verdicts
