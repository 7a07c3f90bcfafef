"""`chestzoo export`: a self-contained bundle folder and zip that runs with `python -m monai.bundle run` without
chestzoo, proved in this environment with chestzoo blocked and, for every bundle, in a fresh virtual environment
that holds only MONAI, PyTorch and the packages the bundle's metadata lists."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import pytest

from chestzoo.bundle_checks import BUNDLES_DIR
from chestzoo.bundle_runs import BUNDLE_RUNS, override_args
from chestzoo.export import ExportError, export_bundle

NAMES = sorted(name for name in BUNDLE_RUNS if (BUNDLES_DIR / name).is_dir())
TIMEOUT = 900
# python that cannot import chestzoo: the module is marked absent before anything runs
BLOCKED = "import sys, runpy; sys.modules['chestzoo'] = None; sys.argv = ['monai.bundle', *sys.argv[1:]]; runpy.run_module('monai.bundle', run_name='__main__', alter_sys=True)"
# an unrewritten reference in a config: `chestzoo.` not preceded by `scripts.` (nor inside another name)
_UNREWRITTEN = re.compile(r"(?<![\w.])chestzoo\.[A-Za-z_]")
# the environment of the fresh-venv runs: nothing from this one on the path
CLEAN_ENV = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}, "PYTHONNOUSERSITE": "1"}


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def _run_commands(bundle_dir: Path, python: list[str], dataset_dir: str, work: Path, run) -> None:
    """train.json then inference.json from the bundle folder, as a zoo user runs them; outputs under ``work``."""
    dirs = {"dataset_dir": dataset_dir, "ckpt_dir": str(work / "models"), "output_dir": str(work / "eval")}
    for config in ("train", "inference"):
        command = python + ["run", "--config_file", f"configs/{config}.json"] + override_args({**run.test, **dirs})
        done = subprocess.run(command, cwd=bundle_dir, capture_output=True, text=True, timeout=TIMEOUT, env=CLEAN_ENV)
        assert done.returncode == 0, f"{config}.json failed in the exported bundle:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    assert (work / "models" / "model.pt").is_file(), "training wrote no model.pt"
    assert os.listdir(work / "eval"), "inference wrote nothing"


@pytest.mark.parametrize("name", NAMES)
def test_export_is_self_contained(name, tmp_path):
    summary = export_bundle(BUNDLES_DIR / name, tmp_path)
    dest = Path(summary["bundle"])
    assert dest == tmp_path / name and (dest / "scripts" / "chestzoo" / "__init__.py").is_file()
    metadata = json.loads((dest / "configs" / "metadata.json").read_text())
    assert "chestzoo" not in metadata["required_packages_version"]
    for path in (dest / "configs").glob("*.json"):
        content = json.loads(path.read_text())
        left = [s for s in _strings(content) if (s.startswith("$") or s.startswith("chestzoo.")) and _UNREWRITTEN.search(s.replace("scripts.chestzoo.", ""))]
        assert not left, f"{path.name} still names chestzoo: {left[:3]}"
    # the zip holds exactly the folder, under the bundle's name, as the zoo's zips do
    with zipfile.ZipFile(summary["zip"]) as archive:
        names = set(archive.namelist())
    assert names == {p.relative_to(tmp_path).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert not any("/models/" in n or "__pycache__" in n for n in names)
    # every copied module imports with chestzoo itself unimportable
    modules = [m.replace("chestzoo", "scripts.chestzoo", 1) for m in summary["modules"]]
    code = f"import sys, importlib; sys.modules['chestzoo'] = None; [importlib.import_module(m) for m in {modules!r}]"
    done = subprocess.run([sys.executable, "-c", code], cwd=dest, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_exported_bundle_trains_and_infers_without_chestzoo(tmp_path, synthetic_data):
    """The command line on the exported segmentation bundle with chestzoo blocked (the fresh-venv test below does
    this for every bundle in a separate environment)."""
    name = "cxr_lung_segmentation"
    run = BUNDLE_RUNS[name]
    summary = export_bundle(BUNDLES_DIR / name, tmp_path / "export")
    _run_commands(Path(summary["bundle"]), [sys.executable, "-c", BLOCKED], synthetic_data(run.dataset, **run.test_data), tmp_path / "work", run)


def test_export_names_an_unlisted_package(tmp_path):
    bundle = tmp_path / "src" / "cxr_lung_segmentation"
    shutil.copytree(BUNDLES_DIR / bundle.name, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    metadata_file = bundle / "configs" / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    del metadata["required_packages_version"]["nibabel"]
    metadata_file.write_text(json.dumps(metadata, indent=4) + "\n")
    with pytest.raises(ExportError, match="nibabel"):
        export_bundle(bundle, tmp_path / "out")
    assert not (tmp_path / "out" / bundle.name).exists(), "a failed export leaves no half-written bundle"


def test_export_refuses_to_overwrite(tmp_path):
    export_bundle(BUNDLES_DIR / "lung_ct_dcgan", tmp_path, make_zip=False)
    with pytest.raises(ExportError, match="exists"):
        export_bundle(BUNDLES_DIR / "lung_ct_dcgan", tmp_path, make_zip=False)
    export_bundle(BUNDLES_DIR / "lung_ct_dcgan", tmp_path, make_zip=False, overwrite=True)


def _site_packages(env: Path) -> Path:
    return env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _pip(env: Path, *args: str) -> None:
    done = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", *args], capture_output=True, text=True, timeout=1800, env=CLEAN_ENV)
    assert done.returncode == 0, f"pip install {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


def _runtime_venv(torch_version: str, monai_version: str) -> Path:
    """A venv holding only PyTorch and MONAI (with fire), made once per version pair in
    ``$CHESTZOO_EXPORT_RUNTIME_DIR`` (default ``~/.cache/chestzoo``): installing PyTorch takes minutes, and the venv
    never receives anything else, so reusing it keeps the test's premise."""
    root = Path(os.environ.get("CHESTZOO_EXPORT_RUNTIME_DIR", Path.home() / ".cache" / "chestzoo"))
    runtime = root / f"export-runtime-torch{torch_version}-monai{monai_version}"
    if not (runtime / "complete").is_file():
        building = root / f"{runtime.name}.building{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        venv.create(building, with_pip=True)
        _pip(building, f"torch=={torch_version}", f"monai[fire]=={monai_version}")  # fire: the runner's command line
        shutil.rmtree(runtime, ignore_errors=True)
        building.rename(runtime)  # a venv's scripts name its folder; only .pth lines into site-packages use it here
        (runtime / "complete").write_text(f"torch=={torch_version} monai[fire]=={monai_version}\n")
    return runtime


@pytest.mark.slow
def test_exported_zips_run_in_fresh_virtual_environments(tmp_path, synthetic_data):
    """Each bundle's zip, unpacked, trains and infers in a new venv with only its metadata's packages.

    PyTorch and MONAI with its runner's `fire` (the versions the metadata names) are installed once into a runtime venv
    (kept between sessions, see :func:`_runtime_venv`); each bundle's venv is
    a plain ``python -m venv`` that sees that runtime through a ``.pth`` line and gets its own
    ``required_packages_version`` by pip. Nothing from this environment leaks in: no system site-packages, and
    ``import chestzoo`` fails there.
    """
    start = time.perf_counter()
    metas = {name: json.loads((BUNDLES_DIR / name / "configs" / "metadata.json").read_text()) for name in NAMES}
    versions = {(m["pytorch_version"], m["monai_version"]) for m in metas.values()}
    assert len(versions) == 1, f"the bundles name different PyTorch / MONAI versions: {versions}"
    (torch_version, monai_version), = versions
    runtime = _runtime_venv(torch_version, monai_version)
    timings = {"runtime venv": round(time.perf_counter() - start)}
    for name in NAMES:
        t0 = time.perf_counter()
        run = BUNDLE_RUNS[name]
        summary = export_bundle(BUNDLES_DIR / name, tmp_path / "export")
        unpacked = tmp_path / "unpacked" / name
        with zipfile.ZipFile(summary["zip"]) as archive:
            archive.extractall(unpacked)
        env = tmp_path / f"venv_{name}"
        venv.create(env, with_pip=True)
        (_site_packages(env) / "runtime.pth").write_text(str(_site_packages(runtime)) + "\n")
        _pip(env, *summary["install"])
        python = str(env / "bin" / "python")
        probe = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('chestzoo') is None, u.find_spec('monai') is not None)"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120, env=CLEAN_ENV)
        assert probe.stdout.split() == ["True", "True"], f"{name}: chestzoo must be absent and MONAI present: {probe.stdout} {probe.stderr[-2000:]}"
        _run_commands(unpacked / name, [python, "-m", "monai.bundle"], synthetic_data(run.dataset, **run.test_data), tmp_path / f"work_{name}", run)
        timings[name] = round(time.perf_counter() - t0)
    print(f"fresh-venv timings (s): {timings}")
