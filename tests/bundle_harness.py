"""The checks every bundle passes, joined with one line in ``tests/test_bundle_<name>.py``::

    from bundle_harness import bundle_tests; globals().update(bundle_tests("<name>"))

What runs, for ``BUNDLE_RUNS[name]`` (shared/chestzoo/bundle_runs.py):

- the bundle's files: the Model Zoo's required files, JSON indented with 4 spaces and free of absolute paths,
  ``version`` a key of ``changelog``, metadata valid against the zoo schema (``monai.bundle.verify_metadata``);
- ``verify_net_in_out`` on the network of inference.json, with the config's own defaults as the zoo's CI does;
- every config of ``BundleRun.configs`` (train, evaluate, inference) run in order through ``ConfigWorkflow`` on the
  bundle's synthetic dataset with the ``BundleRun.test`` overrides, with ``check_properties()`` clean for each
  (train properties for train configs, inference properties for the others);
- the command line: ``python -m monai.bundle run training --config_file train.json`` (the older zoo form) and then
  ``python -m monai.bundle run --config_file inference.json`` on the checkpoint it wrote (two subprocesses in all);
- TorchScript export of the trained checkpoint with ``ckpt_export`` (unless ``BundleRun.torchscript`` is False),
  giving the same outputs as the network it came from;
- for the bundles whose train.json has ``init_ckpt`` (fine-tuning): training starts from that checkpoint's weights;
- nothing written into the repository: checkpoints and outputs go to pytest's temporary folders.

Fixtures a bundle's own tests can use: ``bundle_dataset`` (the prepared synthetic dataset folder) and
``bundle_outputs`` (``{"ckpt_dir", "output_dir", "dataset_dir"}`` after the in-process runs). Checks a bundle's own
tests call with their details: ``bundle_workflow``, ``check_training_resumes``, ``train_in_two_processes``,
``check_offline_weights_fail_clearly``, and for the learning tests ``check_learned`` (every headline interval clears
its bar over the best no-learning baseline, ``BundleRun.margins``) with its twin ``check_untrained_fails``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chestzoo import bundle_checks as checks
from chestzoo.bundle_checks import absolute_paths, workflow_type  # noqa: F401 - re-exported for bundle test modules
from chestzoo.bundle_runs import BUNDLE_RUNS, override_args

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = PROJECT_ROOT / "bundles"
SUBPROCESS_TIMEOUT = 900


def _check(function, *args, **kwargs):
    """A zoo check from chestzoo.bundle_checks as a test: its failure fails the test, its skip skips it."""
    try:
        return function(*args, **kwargs)
    except checks.CheckSkipped as exc:
        pytest.skip(str(exc))


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


def config_path(name: str, config: str) -> str:
    return str(BUNDLES / name / "configs" / f"{config}.json")


def bundle_workflow(name: str, config: str, **overrides):
    """An initialised ``ConfigWorkflow`` of bundle ``name``'s ``config`` (train, evaluate, inference) with ``overrides``."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=config_path(name, config), meta_file=config_path(name, "metadata"), logging_file=False,
                              workflow_type=workflow_type(config), bundle_root=str(BUNDLES / name), **overrides)
    workflow.initialize()
    return workflow


def check_training_resumes(name: str, dataset_dir: str, tmp_path: Path) -> Path:
    """Trains ``name`` for one epoch, then with ``max_epochs`` 2 into the same folders: the second run must train epoch
    2 alone, from the first run's checkpoint. Returns the checkpoint folder for the bundle's own checks."""
    from ignite.engine import Events

    dirs = {"dataset_dir": dataset_dir, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    epochs_run = []
    for max_epochs in (1, 2):
        workflow = bundle_workflow(name, "train", **dirs, **{**BUNDLE_RUNS[name].test, "max_epochs": max_epochs})
        epochs = []
        workflow.parser.get_parsed_content("train#trainer").add_event_handler(Events.EPOCH_COMPLETED, lambda engine: epochs.append(engine.state.epoch))
        workflow.run()
        workflow.finalize()
        epochs_run.append(epochs)
    assert epochs_run == [[1], [2]], "the second run must go on from epoch 1, not start over"
    return tmp_path / "models"


def train_in_two_processes(name: str, tmp_path: Path, **overrides) -> None:
    """``multi_gpu_train.json`` over ``train.json`` in two CPU processes (``torch.distributed.run``, Gloo), run from
    ``tmp_path`` with the bundle's test settings and ``overrides``; fails with the end of its log."""
    configs = [config_path(name, "train"), config_path(name, "multi_gpu_train")]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle", "run"]
    command += ["--config_file", json.dumps(configs), "--meta_file", config_path(name, "metadata")]
    command += override_args({**BUNDLE_RUNS[name].test, "bundle_root": str(BUNDLES / name), **overrides})
    done = subprocess.run(command, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=str(tmp_path), env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def check_offline_weights_fail_clearly(name: str, tmp_path: Path, monkeypatch) -> None:
    """With no network and no cached weights, building train.json's pretrained network fails with chestzoo's one-line
    ``PretrainedWeightsUnavailable`` naming ``--pretrained False``, unless ``init_ckpt`` gives the weights to start from."""
    from urllib.error import URLError

    import torch
    from monai.bundle import ConfigParser

    from chestzoo.networks import PretrainedWeightsUnavailable

    def no_network(*args, **kwargs):
        raise URLError("offline")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    parser = ConfigParser()
    parser.read_config(config_path(name, "train"))
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("network_def")
    cause = info.value
    while cause is not None and not isinstance(cause, PretrainedWeightsUnavailable):
        cause = cause.__cause__ or cause.__context__
    assert cause is not None, f"the error must come from the weight loader, got {info.value!r}"
    assert "--pretrained False" in str(cause) and "\n" not in str(cause)
    # fine-tuning overwrites the pretrained weights, so it does not fetch them
    parser = ConfigParser()
    parser.read_config(config_path(name, "train"))
    parser["init_ckpt"] = str(tmp_path / "model.pt")
    parser.get_parsed_content("network_def")


def check_settings_follow_sources(name: str, settings):
    """Each row ``(key, value, source[, deviation])`` of a bundle's "Settings and their sources" table is train.json's
    default; returns the parsed train.json for the checks a bundle adds."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_path(name, "train"))
    for key, value, source, *deviation in settings:
        assert parser[key] == value, f"{key}: {source}" + (f" (deviation: {deviation[0]})" if deviation and deviation[0] else "")
    return parser


_BASELINES: dict = {}  # chestzoo baselines' reports, computed once per test session for each dataset and task


def learning_verdicts(name: str, output_dir: str, dataset_dir: str) -> list[dict]:
    """The evaluation in ``output_dir`` judged against each bar of ``BundleRun.margins`` (chestzoo.evidence)."""
    from chestzoo.evidence import judge_all

    metrics = json.loads((Path(output_dir) / "metrics.json").read_text())
    return judge_all(metrics, BUNDLE_RUNS[name].margins, dataset_dir, _BASELINES)


def check_learned(name: str, output_dir: str, dataset_dir: str) -> None:
    """A learning test's assertion: every headline interval clears its bar over the best no-learning baseline."""
    verdicts = learning_verdicts(name, output_dir, dataset_dir)
    print("\n".join(v["text"] for v in verdicts))  # shown by `pytest -rP`: the measured margins
    assert verdicts and all(v["passed"] for v in verdicts), "\n".join(v["text"] for v in verdicts)


def not_yet_learned(measured: str):
    """Marks a learning test whose bundle does not yet clear its bar at the test's settings: it must fail on that
    assertion (an error of any other kind still fails the run), and the day it passes, strict xfail fails it so
    that the mark is removed."""
    return pytest.mark.xfail(strict=True, raises=AssertionError,
                             reason=f"does not yet clear its bar on the varied synthetic phantom at these settings: {measured}")


def check_untrained_fails(name: str, dataset_dir: str, tmp_path: Path, **overrides) -> None:
    """The learning test's twin: the untrained network, evaluated exactly as the trained one, fails every bar."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_path(name, "train"))
    parser.update({"dataset_dir": dataset_dir, **overrides})
    (tmp_path / "models").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content(BUNDLE_RUNS[name].net_id).state_dict(), tmp_path / "models" / "model.pt")
    dirs = {"dataset_dir": dataset_dir, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    workflow = bundle_workflow(name, "evaluate", **dirs, **overrides)
    workflow.run()
    workflow.finalize()
    verdicts = learning_verdicts(name, dirs["output_dir"], dataset_dir)
    print("\n".join(v["text"] for v in verdicts))
    assert verdicts and not any(v["passed"] for v in verdicts), "\n".join(v["text"] for v in verdicts)


def bundle_tests(name: str) -> dict:
    """The fixtures and tests of the shared bundle checks for bundle ``name``, to be put into a test module's globals."""
    if name not in BUNDLE_RUNS:
        raise KeyError(f"no BUNDLE_RUNS entry for {name!r} in chestzoo/bundle_runs.py")
    run = BUNDLE_RUNS[name]
    bundle = BUNDLES / name
    meta_file = config_path(name, "metadata")

    @pytest.fixture(scope="module", name="bundle_dataset")
    def bundle_dataset(synthetic_data):
        root = synthetic_data(run.dataset, **run.test_data)
        assert os.path.isfile(os.path.join(root, run.datalist)), f"`chestzoo prepare {run.dataset}` wrote no {run.datalist}"
        return root

    @pytest.fixture(scope="module", name="bundle_outputs")
    def bundle_outputs(bundle_dataset, tmp_path_factory):
        work = tmp_path_factory.mktemp(f"{name}_run")
        dirs = {"ckpt_dir": str(work / "models"), "output_dir": str(work / "eval"), "dataset_dir": bundle_dataset}
        before = _tree(bundle)
        missing = {}
        for config in run.configs:
            workflow = bundle_workflow(name, config, **dirs, **run.test)
            missing[config] = workflow.check_properties()
            workflow.run()
            workflow.finalize()
        return {**dirs, "missing_properties": missing, "written_into_bundle": sorted(_tree(bundle) - before)}

    def test_required_files():
        _check(checks.check_files, bundle)

    def test_json_style():
        _check(checks.check_json_style, bundle)

    def test_metadata():
        _check(checks.check_metadata, bundle)

    def test_verify_net_in_out():
        _check(checks.check_net_in_out, bundle, run.net_id)

    def test_workflows_properties_and_outputs(bundle_outputs):
        for config, missing in bundle_outputs["missing_properties"].items():
            assert missing == [], f"{config}.json lacks the {workflow_type(config)} properties {missing}"
        assert os.path.isfile(os.path.join(bundle_outputs["ckpt_dir"], "model.pt")), "training wrote no models/model.pt"
        assert os.listdir(bundle_outputs["output_dir"]), "evaluation and inference wrote nothing into output_dir"
        assert bundle_outputs["written_into_bundle"] == [], f"the runs wrote into the bundle: {bundle_outputs['written_into_bundle']}"

    def test_evaluation_reports_its_baselines(bundle_outputs):
        """The evaluation's metrics.json holds the no-learning baselines of every task its bars name, scored on the
        datalist it evaluated; a generator's bar is its own untrained self, which its summary holds."""
        metrics = json.loads((Path(bundle_outputs["output_dir"]) / "metrics.json").read_text())
        for margin in run.margins:
            if margin.task is None:
                assert margin.untrained in metrics["summary"], f"no {margin.untrained!r} in the summary"
                continue
            task = metrics.get("baselines", {}).get("tasks", {}).get(margin.task)
            assert task, f"metrics.json holds no {margin.task} baselines"
            assert task["datalist"] == run.datalist and task["headline"]["value"] is not None
            assert (Path(bundle_outputs["output_dir"]) / "baselines" / "baselines.md").is_file()

    def test_command_line(bundle_dataset, tmp_path):
        """``run training`` (older form) trains; ``run --config_file inference.json`` (current form) infers with it."""
        before = _tree(bundle)
        dirs = {"bundle_root": str(bundle), "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval"), "dataset_dir": bundle_dataset}
        overrides = override_args({**run.test, **dirs})
        commands = {
            "train": [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config_path(name, "train")],
            "inference": [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_path(name, "inference")],
        }
        for config, command in commands.items():
            if config not in run.configs:
                continue
            done = subprocess.run(command + ["--meta_file", meta_file] + overrides, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=str(tmp_path))
            assert done.returncode == 0, f"{' '.join(command[2:5])} {config}.json failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        assert os.path.isfile(tmp_path / "models" / "model.pt")
        assert _tree(bundle) == before, "the command-line runs wrote into the bundle"

    def test_torchscript_export(bundle_outputs, tmp_path):
        if not run.torchscript:
            pytest.skip(f"{name} declares its network not scriptable (BundleRun.torchscript=False)")
        ckpt = os.path.join(bundle_outputs["ckpt_dir"], "model.pt")
        overrides = {"dataset_dir": bundle_outputs["dataset_dir"], **run.test}
        _check(checks.check_torchscript, bundle, run.net_id, overrides, ckpt=ckpt, workdir=str(tmp_path))

    def test_init_ckpt_starts_training_from_its_weights(bundle_outputs, tmp_path):
        """``--init_ckpt model.pt`` fine-tunes: the first iteration sees that file's weights, not the initialisation."""
        import torch
        from ignite.engine import Events

        ckpt = os.path.join(bundle_outputs["ckpt_dir"], "model.pt")
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        starts = {}
        for init_ckpt in (None, ckpt):
            work = tmp_path / ("fine_tuned" if init_ckpt else "fresh")
            dirs = {"dataset_dir": bundle_outputs["dataset_dir"], "ckpt_dir": str(work / "models"), "output_dir": str(work / "eval")}
            workflow = bundle_workflow(name, "train", **dirs, **{**run.test, "max_epochs": 1, "init_ckpt": init_ckpt})
            network = workflow.parser.get_parsed_content("network")

            def first_iteration(engine, init_ckpt=init_ckpt, network=network):
                starts[init_ckpt] = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
                engine.terminate()

            workflow.parser.get_parsed_content("train#trainer").add_event_handler(Events.ITERATION_STARTED(once=1), first_iteration)
            workflow.run()
            workflow.finalize()
        assert starts[ckpt].keys() == saved.keys()
        assert all(torch.equal(starts[ckpt][k], saved[k].cpu()) for k in saved), "training did not start from --init_ckpt"
        assert not all(torch.equal(starts[None][k], saved[k].cpu()) for k in saved), "without --init_ckpt it must start afresh"

    fine_tunes = "init_ckpt" in json.loads(Path(config_path(name, "train")).read_text())
    return {
        **({"test_init_ckpt_starts_training_from_its_weights": test_init_ckpt_starts_training_from_its_weights} if fine_tunes else {}),
        "bundle_dataset": bundle_dataset,
        "bundle_outputs": bundle_outputs,
        "test_required_files": test_required_files,
        "test_json_style": test_json_style,
        "test_metadata": test_metadata,
        "test_verify_net_in_out": test_verify_net_in_out,
        "test_workflows_properties_and_outputs": test_workflows_properties_and_outputs,
        "test_command_line": test_command_line,
        "test_torchscript_export": test_torchscript_export,
        "test_evaluation_reports_its_baselines": test_evaluation_reports_its_baselines,
    }
