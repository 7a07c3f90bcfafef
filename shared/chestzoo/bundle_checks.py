"""The Model Zoo's checks for a bundle, one implementation for ``chestzoo verify`` and the test harness.

Each ``check_*`` function raises :class:`CheckFailed` (an ``AssertionError``, so pytest reports it as a failed
assertion) with a message that says what is wrong, raises :class:`CheckSkipped` where the check cannot apply (and says
why), and otherwise returns a short note of what it compared. :func:`verify_bundle` runs them all and collects a
:class:`CheckResult` per check.

The checks follow ``Project-MONAI/model-zoo``'s ``ci/verify_bundle.py``: required files, ``version`` a key of
``changelog``, the metadata schema, the train and infer properties of ``ConfigWorkflow.check_properties()``,
``verify_net_in_out``, TorchScript export and reload; and, beyond the zoo, an ONNX export whose ONNX Runtime outputs
are compared with PyTorch's.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

REQUIRED_FILES = (
    "LICENSE",
    "configs/metadata.json",
    "configs/train.json",
    "configs/evaluate.json",
    "configs/inference.json",
    "configs/multi_gpu_train.json",
    "configs/logging.conf",
    "docs/README.md",
    "docs/data_license.txt",
)
README_SECTIONS = ("overview", "data", "training", "performance", "commands", "references", "licen")
SCHEMA_NAME = "meta_schema_20240725.json"
# a quoted literal in an expression that starts at the file-system root, unless it is appended to something ("+ '/x'")
_ABSOLUTE_IN_EXPRESSION = re.compile(r"(?<!\+ )(?<!\+)['\"](/[^'\"]*|[A-Za-z]:\\[^'\"]*|~[^'\"]*)['\"]")
# ONNX Runtime and PyTorch differ by float rounding only; a wrong graph differs by far more
ONNX_RTOL, ONNX_ATOL = 1e-3, 1e-4
TORCHSCRIPT_RTOL, TORCHSCRIPT_ATOL = 1e-4, 1e-4
CHECKS = ("files", "json_style", "metadata", "properties", "net_in_out", "torchscript", "onnx")


class CheckFailed(AssertionError):
    """A zoo check found the bundle wrong."""


class CheckSkipped(Exception):
    """A check that does not apply to this bundle; the message says why."""


@dataclass
class CheckResult:
    name: str
    status: str  # "pass", "fail" or "skip"
    detail: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"


def find_bundle(bundle: str | os.PathLike) -> Path:
    """A bundle folder: a path, or the name of a bundle under the repository's ``bundles/``."""
    path = Path(bundle)
    if (path / "configs" / "metadata.json").is_file():
        return path.resolve()
    if (BUNDLES_DIR / str(bundle) / "configs" / "metadata.json").is_file():
        return BUNDLES_DIR / str(bundle)
    raise FileNotFoundError(f"no bundle {bundle!r}: neither a folder with configs/metadata.json nor a name under {BUNDLES_DIR}")


def workflow_type(config: str) -> str:
    """The ``ConfigWorkflow`` type of a config: train properties for train configs, infer properties for the rest."""
    return "train" if config.startswith("train") else "infer"


def default_schema() -> Path:
    """The Model Zoo's metadata schema, shipped inside the package so that the check runs in any clone and offline
    (the file the zoo publishes as MONAI-extra-test-data release 0.8.1's meta_schema_20240725.json)."""
    return Path(__file__).resolve().parent / "schemas" / SCHEMA_NAME


def absolute_paths(node, where: str = "") -> list[str]:
    """Every string in a JSON document that names an absolute path (URLs are fine), as 'key: value'."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            found += absolute_paths(value, f"{where}#{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += absolute_paths(value, f"{where}#{i}")
    elif isinstance(node, str):
        if node.startswith("$"):
            found += [f"{where}: {m}" for m in _ABSOLUTE_IN_EXPRESSION.findall(node)]
        elif "://" not in node and (os.path.isabs(node) or node.startswith("~") or re.match(r"^[A-Za-z]:\\", node)):
            found.append(f"{where}: {node}")
    return found


def _files(bundle) -> tuple[Path, Path, Path]:
    bundle = Path(bundle)
    return bundle, bundle / "configs", bundle / "configs" / "metadata.json"


def check_files(bundle) -> str:
    """The zoo's required files, the README's template sections and the Apache licence."""
    bundle = Path(bundle)
    absent = [f for f in REQUIRED_FILES if not (bundle / f).is_file()]
    if absent:
        raise CheckFailed(f"{bundle.name} lacks {absent}")
    readme = (bundle / "docs" / "README.md").read_text().lower()
    headings = " ".join(line for line in readme.splitlines() if line.startswith("#"))
    missing = [s for s in README_SECTIONS if s not in headings]
    if missing:
        raise CheckFailed(f"docs/README.md lacks sections {missing}")
    if "apache license" not in (bundle / "LICENSE").read_text().lower():
        raise CheckFailed("LICENSE is not the Apache License")
    return f"{len(REQUIRED_FILES)} required files, README sections {', '.join(README_SECTIONS)}"


def check_json_style(bundle) -> str:
    """JSON indented with 4 spaces and free of absolute paths (checkpoint and output folders aside)."""
    bundle = Path(bundle)
    paths = [p for p in sorted(bundle.rglob("*.json")) if not {"models", "eval"} & set(p.relative_to(bundle).parts)]
    for path in paths:
        text = path.read_text()
        content = json.loads(text)
        if text.rstrip("\n") != json.dumps(content, indent=4, ensure_ascii=False):
            raise CheckFailed(f"{path.name} is not formatted with 4-space indents")
        if absolute_paths(content):
            raise CheckFailed(f"{path.name} names absolute paths: {absolute_paths(content)}")
    return f"{len(paths)} JSON files"


def check_metadata(bundle, schema: str | os.PathLike | None = None) -> str:
    """``version`` a key of ``changelog``, ``image`` in and ``pred`` out, and the zoo schema (``verify_metadata``)."""
    from monai.bundle import verify_metadata

    _, _, meta_file = _files(bundle)
    metadata = json.loads(meta_file.read_text())
    if metadata.get("version") not in metadata.get("changelog", {}):
        raise CheckFailed(f"version {metadata.get('version')!r} is not a key of changelog")
    data_format = metadata.get("network_data_format", {})
    for key in ("inputs", "outputs"):
        if key not in data_format:
            raise CheckFailed(f"network_data_format lacks {key!r}")
    if not data_format["inputs"].get("image"):
        raise CheckFailed("the network input key must be 'image'")
    if not data_format["outputs"].get("pred"):
        raise CheckFailed("the network output key must be 'pred'")
    schema = Path(schema) if schema else default_schema()
    if not schema.is_file():
        raise CheckFailed(f"schema file {schema} not found")
    try:
        verify_metadata(meta_file=str(meta_file), filepath=str(schema))
    except Exception as exc:  # jsonschema's ValidationError and MONAI's wrappers: the message is the finding
        raise CheckFailed(f"metadata.json does not validate against {schema.name}: {exc}") from exc
    return f"version {metadata['version']} in changelog; valid against {schema.name}"


def check_properties(bundle, configs=("train", "inference"), dataset_dir: str | None = None, workdir: str | None = None,
                     overrides: dict | None = None) -> str:
    """``ConfigWorkflow(...).initialize()`` then ``check_properties()`` for each config: nothing missing.

    Properties such as ``train#dataset`` are instantiated by the check, so ``dataset_dir`` must hold a dataset the
    bundle reads; outputs go under ``workdir``.
    """
    from monai.bundle import ConfigWorkflow

    bundle, configs_dir, meta_file = _files(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir or tmp)
        dirs = {"ckpt_dir": str(work / "models"), "output_dir": str(work / "eval")}
        if dataset_dir is not None:
            dirs["dataset_dir"] = str(dataset_dir)
        problems = {}
        for config in configs:
            workflow = ConfigWorkflow(config_file=str(configs_dir / f"{config}.json"), meta_file=str(meta_file), logging_file=False,
                                      workflow_type=workflow_type(config), bundle_root=str(bundle), **dirs, **(overrides or {}))
            workflow.initialize()
            try:
                missing = workflow.check_properties()
            except KeyError as exc:  # MONAI raises for a required property whose id is absent instead of listing it
                missing = [str(exc).strip("\"'")]
            if missing:
                problems[config] = missing
    if problems:
        raise CheckFailed("; ".join(f"{c}.json lacks the {workflow_type(c)} properties {m}" for c, m in problems.items()))
    return ", ".join(f"{c}.json: {workflow_type(c)} properties complete" for c in configs)


def check_net_in_out(bundle, net_id: str = "network_def", overrides: dict | None = None) -> str:
    """``monai.bundle.verify_net_in_out`` on inference.json's network, on the CPU, as the zoo's CI runs it."""
    from monai.bundle import verify_net_in_out

    bundle, configs_dir, meta_file = _files(bundle)
    verify_net_in_out(net_id=net_id, meta_file=str(meta_file), config_file=str(configs_dir / "inference.json"), device="cpu",
                      bundle_root=str(bundle), **(overrides or {}))
    return f"{net_id}: input and output shapes and dtypes agree with network_data_format"


def build_network(bundle, net_id: str = "network_def", overrides: dict | None = None, ckpt: str | None = None):
    """inference.json's network in eval mode (weights from ``ckpt`` if given, else as initialised) and an input of
    the metadata's shape (``verify_net_in_out``'s fake shape, batch 1)."""
    import torch
    from monai.bundle import ConfigParser
    from monai.bundle.scripts import _get_fake_spatial_shape

    bundle, configs_dir, meta_file = _files(bundle)
    parser = ConfigParser()
    parser.read_config(str(configs_dir / "inference.json"))
    parser.read_meta(str(meta_file))
    parser.update({"bundle_root": str(bundle), **(overrides or {})})
    network = parser.get_parsed_content(net_id)
    if ckpt:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        network.load_state_dict(state["model"] if isinstance(state.get("model"), dict) else state)
    network.eval()
    image = parser.get("_meta_#network_data_format#inputs#image")
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, image["num_channels"], *_get_fake_spatial_shape(image["spatial_shape"]), generator=generator)
    return network, x


def _checkpoint(network, ckpt: str | None, folder: str) -> str:
    """``ckpt``, or the network's current weights saved as the zoo's ``{"model": state_dict}`` checkpoint."""
    import torch

    if ckpt:
        return ckpt
    path = os.path.join(folder, "model.pt")
    torch.save({"model": network.state_dict()}, path)
    return path


def check_torchscript(bundle, net_id: str = "network_def", overrides: dict | None = None, ckpt: str | None = None,
                      workdir: str | None = None) -> str:
    """``ckpt_export`` to TorchScript, ``torch.jit.load``, and the same outputs as the network it came from."""
    import torch
    from monai.bundle import ckpt_export

    bundle, configs_dir, meta_file = _files(bundle)
    network, x = build_network(bundle, net_id, overrides, ckpt)
    with tempfile.TemporaryDirectory() as tmp:
        folder = workdir or tmp
        ts_file = os.path.join(folder, "model.ts")
        ckpt_file = _checkpoint(network, ckpt, folder)
        nested = isinstance(torch.load(ckpt_file, map_location="cpu", weights_only=True).get("model"), dict)
        ckpt_export(net_id=net_id, filepath=ts_file, ckpt_file=ckpt_file, key_in_ckpt="model" if nested else "", meta_file=str(meta_file),
                    config_file=str(configs_dir / "inference.json"), bundle_root=str(bundle), **(overrides or {}))
        scripted = torch.jit.load(ts_file)
        with torch.no_grad():
            expected, got = network(x), scripted(x)
    try:
        torch.testing.assert_close(got, expected, rtol=TORCHSCRIPT_RTOL, atol=TORCHSCRIPT_ATOL)
    except AssertionError as exc:
        raise CheckFailed(f"the reloaded TorchScript model's outputs differ from the network's: {exc}") from exc
    return f"exported with ckpt_export, reloaded, outputs equal on an input of shape {tuple(x.shape)}"


def _flatten(output, prefix: str = "output") -> list[tuple[str, object]]:
    """(name, tensor) for every tensor in a (nested) tensor / list / tuple / dict output, in torch.export's order."""
    import torch

    if isinstance(output, torch.Tensor):
        return [(prefix, output)]
    if isinstance(output, dict):
        return [item for key, value in output.items() for item in _flatten(value, f"{prefix}[{key!r}]")]
    if isinstance(output, (list, tuple)):
        return [item for i, value in enumerate(output) for item in _flatten(value, f"{prefix}[{i}]")]
    return []


def _onnx_compare(session, network, x, label: str) -> tuple[list[str], list[str]]:
    """(compared, not comparable) outputs of ONNX Runtime against PyTorch on input ``x``; raises on a difference."""
    import numpy as np
    import torch

    with torch.no_grad():
        expected = _flatten(network(x))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    if len(got) != len(expected):
        raise CheckFailed(f"on {label}, ONNX gives {len(got)} outputs, PyTorch {len(expected)} tensors")
    compared, skipped = [], []
    for (name, tensor), value in zip(expected, got):
        tensor = tensor.detach().cpu()
        if tuple(tensor.shape) != tuple(np.shape(value)):
            skipped.append(f"{name}: shape {tuple(tensor.shape)} in PyTorch, {tuple(np.shape(value))} in ONNX")
            continue
        try:
            torch.testing.assert_close(torch.as_tensor(value).to(tensor.dtype), tensor, rtol=ONNX_RTOL, atol=ONNX_ATOL)
        except AssertionError as exc:
            raise CheckFailed(f"on {label}, ONNX Runtime's {name} differs from PyTorch's: {exc}") from exc
        compared.append(f"{name} {tuple(tensor.shape)}")
    return compared, skipped


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    reason = next((line for line in lines if "Could not guard" in line or "Error" in line), lines[0] if lines else "")
    return f"{type(exc).__name__}: {reason.strip()[:300]}"


def check_onnx(bundle, net_id: str = "network_def", overrides: dict | None = None, ckpt: str | None = None,
               workdir: str | None = None) -> str:
    """Export inference.json's network to ONNX and compare ONNX Runtime's outputs with PyTorch's.

    The export tries torch's current exporter (``torch.export`` underneath) and, if that cannot capture the network,
    the TorchScript-based one. The graph is then run by ONNX Runtime on the export input and on two other inputs
    (an intensity ramp, another random draw): a graph traced with a data-dependent size baked in (a detector's number of boxes)
    fails there, and a trace that torch warns holds such values as constants (``TracerWarning``) fails outright.
    Tensor outputs are compared one by one; outputs of another shape are listed as not comparable, and
    at least one must compare. A network that cannot be exported fails the check with the exporters' reasons.
    """
    import onnx
    import onnxruntime
    import torch

    network, x = build_network(bundle, net_id, overrides, ckpt)
    with torch.no_grad():
        if not _flatten(network(x)):
            raise CheckFailed(f"{net_id} returns no tensor; nothing to compare")
    # a ramp and another draw: not constant (instance norm of a constant image divides 0 by 0)
    ramp = torch.linspace(0, 1, x.shape[-1]).expand_as(x).contiguous() if x.dim() > 2 else torch.linspace(-1, 1, x.numel()).reshape(x.shape)
    others = {"an intensity ramp": ramp, "a second random input": torch.rand(x.shape, generator=torch.Generator().manual_seed(1))}
    reasons = []
    with tempfile.TemporaryDirectory() as tmp:
        for exporter, kwargs in (("torch.export", {"dynamo": True, "external_data": False}), ("TorchScript-based", {"dynamo": False})):
            onnx_file = os.path.join(workdir or tmp, f"model_{len(reasons)}.onnx")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", torch.jit.TracerWarning)
                    torch.onnx.export(network, (x,), onnx_file, input_names=["image"], verbose=False, **kwargs)
                traced_constants = [str(w.message).splitlines()[0] for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
                if traced_constants:  # torch's own warning that the graph holds the traced input's values
                    raise CheckFailed(f"the trace holds data-dependent values as constants ({len(traced_constants)} "
                                      f"TracerWarnings, e.g. {traced_constants[0]!r})")
                onnx.checker.check_model(onnx_file)
                session = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
                compared, skipped = _onnx_compare(session, network, x, "the export input")
                for label, other in others.items():
                    _onnx_compare(session, network, other, label)
            except Exception as exc:  # the exporter's or ONNX Runtime's reason is the finding; try the next exporter
                reasons.append(f"{exporter} exporter: {_first_line(exc)}")
                continue
            if not compared:
                raise CheckFailed(f"no ONNX output is comparable with PyTorch's: {'; '.join(skipped)}")
            note = (f"{exporter} exporter; ONNX Runtime equals PyTorch (rtol {ONNX_RTOL}, atol {ONNX_ATOL}) on "
                    f"{', '.join(compared)} for 3 inputs")
            if reasons:
                note += f" ({'; '.join(reasons)})"
            return note + (f"; not comparable: {'; '.join(skipped)}" if skipped else "")
    raise CheckFailed(f"{net_id} cannot be exported to ONNX: {' | '.join(reasons)}")


def verify_bundle(bundle, net_id: str = "network_def", configs=("train", "inference"), overrides: dict | None = None,
                  dataset_dir: str | None = None, ckpt: str | None = None, schema: str | None = None, torchscript: bool = True,
                  onnx: bool = True, checks=CHECKS) -> list[CheckResult]:
    """Every zoo check on ``bundle``; a failing check does not stop the others.

    ``overrides`` shrink the network (the tests' settings) for the properties, TorchScript and ONNX checks;
    ``verify_net_in_out`` runs on the config's own defaults, as the zoo's CI does. ``torchscript=False`` reports the
    TorchScript check as skipped for a network its bundle declares not scriptable; ``onnx=False`` (a bundle declared
    not exportable to ONNX) still tries the export and reports the exporters' reasons as a skip, and fails if the
    export works after all (the declaration is then out of date).
    """
    runs = {
        "files": lambda: check_files(bundle),
        "json_style": lambda: check_json_style(bundle),
        "metadata": lambda: check_metadata(bundle, schema),
        "properties": lambda: check_properties(bundle, configs, dataset_dir, overrides=overrides),
        "net_in_out": lambda: check_net_in_out(bundle, net_id),
        "torchscript": lambda: (check_torchscript(bundle, net_id, overrides, ckpt) if torchscript
                                else _skip("the bundle declares its network not scriptable (BundleRun.torchscript=False)")),
        "onnx": lambda: check_onnx(bundle, net_id, overrides, ckpt) if onnx else _declared_not_onnx(bundle, net_id, overrides, ckpt),
    }
    results = []
    for name in checks:
        start = time.perf_counter()
        try:
            results.append(CheckResult(name, "pass", runs[name]()))
        except CheckSkipped as exc:
            results.append(CheckResult(name, "skip", str(exc)))
        except Exception as exc:  # reported per check, so one failure does not hide the others
            results.append(CheckResult(name, "fail", f"{type(exc).__name__}: {exc}" if not isinstance(exc, CheckFailed) else str(exc)))
        results[-1].seconds = round(time.perf_counter() - start, 2)
    return results


def _skip(reason: str):
    raise CheckSkipped(reason)


def _declared_not_onnx(bundle, net_id, overrides, ckpt):
    try:
        note = check_onnx(bundle, net_id, overrides, ckpt)
    except CheckFailed as exc:
        raise CheckSkipped(f"declared not exportable to ONNX (BundleRun.onnx=False): {exc}") from exc
    raise CheckFailed(f"declared not exportable to ONNX (BundleRun.onnx=False) but the export works: {note}")
