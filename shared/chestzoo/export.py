"""``chestzoo export``: a bundle as a self-contained Model Zoo folder and zip that runs without chestzoo installed.

The chestzoo modules a bundle's configs name, with everything they import from chestzoo in turn, are copied into the
bundle's ``scripts/chestzoo/``; the configs then name ``scripts.chestzoo.<module>`` instead of ``chestzoo.<module>``.
MONAI bundles import their ``scripts`` package from the bundle folder, which ``python -m monai.bundle run`` finds on
``sys.path`` when it is started in the bundle folder (the zoo's way of running a bundle; the configs' ``bundle_root``
is ``.`` too). ``chestzoo`` leaves ``required_packages_version``; every other package the copied code imports must be
listed there (or come with MONAI and PyTorch), otherwise the export stops and names it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

PACKAGE = "chestzoo"
VENDORED = "scripts.chestzoo"  # the package's name inside an exported bundle
PACKAGE_DIR = Path(__file__).resolve().parent
# never part of an export: checkpoints unless asked for, run outputs, caches
EXCLUDED = {"models", "eval", "__pycache__", ".ipynb_checkpoints"}
# what `python -m monai.bundle run` needs besides the bundle's own required packages
RUNTIME = ("monai", "torch")

# `chestzoo` as a module name in a config expression: `$import chestzoo.data`, `$chestzoo.utils.as_bool(...)`; not
# the word inside a message or a longer name
_CONFIG_REFERENCE = re.compile(r"(?<![\w.'\"`/-])chestzoo(?=\.[A-Za-z_]|\s*$|\s+as\s|\s+import\s)")
_SOURCE_IMPORT = re.compile(r"^(\s*)(from|import)\s+chestzoo(?=[\s.])", re.MULTILINE)
_SOURCE_LITERAL = re.compile(r"""(['"])chestzoo\.(?=[A-Za-z_])""")


class ExportError(RuntimeError):
    """The bundle cannot be exported as it is; the message says what to fix."""


def _module_file(module: str) -> Path | None:
    """The source file of ``chestzoo.<...>`` (a package's ``__init__.py``), or None if it is not a module."""
    parts = module.split(".")[1:]
    base = PACKAGE_DIR.joinpath(*parts)
    if base.is_dir() and (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _longest_module(dotted: str) -> str | None:
    """``chestzoo.data.labels.NIH_LABELS`` -> ``chestzoo.data.labels``: the longest prefix that is a module."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if _module_file(".".join(parts[:end])):
            return ".".join(parts[:end])
    return None


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def config_modules(configs: list[dict]) -> set[str]:
    """The chestzoo modules that configs name in ``_target_`` values and expressions."""
    found = set()
    for config in configs:
        for text in _strings(config):
            for match in re.finditer(r"(?<![\w.])chestzoo(?:\.[A-Za-z_]\w*)*", text):
                module = _longest_module(match.group(0))
                if module:
                    found.add(module)
    return found


def _is_optional(node: ast.AST, parents: dict) -> bool:
    """An import inside ``try: ... except ImportError`` (or under ``if TYPE_CHECKING``) is not a requirement."""
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.Try) and node in parent.body:
            for handler in parent.handlers:
                names = [n.id if isinstance(n, ast.Name) else getattr(n, "attr", "") for n in
                         (handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type])] if handler.type else []
                if {"ImportError", "ModuleNotFoundError"} & set(names):
                    return True
        if isinstance(parent, ast.If) and "TYPE_CHECKING" in ast.unparse(parent.test):
            return True
        node = parent
    return False


def _in_function(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return True
    return False


def _imports(module: str) -> tuple[set[str], set[str], set[str]]:
    """(chestzoo modules, third-party top-level modules imported at module level, those imported only inside
    functions) for ``module``, relative imports resolved."""
    path = _module_file(module)
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    internal, external, lazy = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            # `from . import x` may name a submodule x
            names = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == PACKAGE:
                resolved = _longest_module(name)
                if resolved:
                    internal.add(resolved)
            elif not _is_optional(node, parents) and name == names[0]:
                (lazy if _in_function(node, parents) else external).add(name.split(".")[0])
    return internal, external, lazy


def module_closure(modules: set[str]) -> tuple[set[str], dict[str, set[str]], dict[str, set[str]]]:
    """Every chestzoo module needed to import ``modules`` (parent packages included), and for each third-party
    top-level module the chestzoo modules that import it: at module level (needed to import the code at all), and
    only inside functions (needed when those functions run)."""
    needed, todo, external, lazy = set(), list(modules), {}, {}
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for end in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            parent = ".".join(parts[:end])
            if parent not in needed and _module_file(parent):
                needed.add(parent)
                internal, third_party, in_functions = _imports(parent)
                todo += sorted(internal - needed)
                for name in third_party:
                    external.setdefault(name, set()).add(parent)
                for name in in_functions:
                    lazy.setdefault(name, set()).add(parent)
    return needed, external, lazy


def _normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _requirement_closure(distributions) -> set[str]:
    """The distributions installed with ``distributions`` (their non-extra requirements, recursively)."""
    seen, todo = set(), [_normalise(d) for d in distributions]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            if "extra ==" in requirement:
                continue
            todo.append(_normalise(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0]))
    return seen


def unlisted_imports(external: dict[str, set[str]], required: dict) -> list[str]:
    """Third-party modules the copied code imports whose distribution is neither in ``required_packages_version``
    nor installed with MONAI and PyTorch."""
    covered = _requirement_closure(list(required) + list(RUNTIME))
    owners = importlib.metadata.packages_distributions()
    problems = []
    for name, users in sorted(external.items()):
        if name in sys.stdlib_module_names or name == "__future__":
            continue
        distributions = {_normalise(d) for d in owners.get(name, [name])}
        if not distributions & covered:
            problems.append(f"{name} (distribution {', '.join(sorted(distributions))}; imported by {', '.join(sorted(users))})")
    return problems


def rewrite_config(node, key: str | None = None):
    """A config with every chestzoo module reference pointing at ``scripts.chestzoo``."""
    if isinstance(node, dict):
        return {k: rewrite_config(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [rewrite_config(v, key) for v in node]
    if isinstance(node, str) and (node.startswith("$") or key == "_target_"):
        return _CONFIG_REFERENCE.sub(VENDORED, node)
    return node


def _add_scripts_import(config: dict) -> dict:
    """``$import scripts`` first: ``import scripts.chestzoo`` binds only that dotted name in MONAI's expression
    namespace, and the rewritten expressions start from ``scripts``."""
    imports = config.get("imports")
    if isinstance(imports, list) and any(VENDORED in i for i in imports) and "$import scripts" not in imports:
        config = dict(config)
        config["imports"] = ["$import scripts"] + imports
    return config


def rewrite_source(text: str) -> str:
    """Module source with absolute chestzoo imports and dotted-name literals pointing at ``scripts.chestzoo``."""
    text = _SOURCE_IMPORT.sub(lambda m: f"{m.group(1)}{m.group(2)} {VENDORED}", text)
    return _SOURCE_LITERAL.sub(lambda m: f"{m.group(1)}{VENDORED}.", text)


def _write_json(path: Path, content) -> None:
    path.write_text(json.dumps(content, indent=4, ensure_ascii=False) + "\n")


def export_bundle(bundle: str | os.PathLike, out: str | os.PathLike, include_models: bool = False, overwrite: bool = False,
                  make_zip: bool = True) -> dict:
    """Write ``<out>/<name>/`` (the bundle with the chestzoo code it uses in ``scripts/chestzoo``) and
    ``<out>/<name>.zip``. Returns the paths, the copied modules and the packages a user installs."""
    bundle = Path(bundle).resolve()
    name = bundle.name
    if not (bundle / "configs" / "metadata.json").is_file():
        raise ExportError(f"{bundle} is not a bundle (no configs/metadata.json)")
    out = Path(out).resolve()
    dest = out / name
    if bundle == dest or bundle in dest.parents:
        raise ExportError(f"--out must lie outside the bundle {bundle}")
    if dest.exists():
        if not overwrite:
            raise ExportError(f"{dest} exists; pass --overwrite True to replace it")
        shutil.rmtree(dest)
    out.mkdir(parents=True, exist_ok=True)

    def ignore(folder, names):
        at_root = Path(folder).resolve() == bundle
        return {n for n in names if n in EXCLUDED and not (include_models and at_root and n == "models")} | {
            n for n in names if n.endswith(".pyc")}

    shutil.copytree(bundle, dest, ignore=ignore)

    config_files = sorted(p for p in (dest / "configs").glob("*.json") if p.name != "metadata.json")
    configs = {p: json.loads(p.read_text()) for p in config_files}
    modules, external, lazy = module_closure(config_modules(list(configs.values())))
    metadata_file = dest / "configs" / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    required = {k: v for k, v in metadata.get("required_packages_version", {}).items() if _normalise(k) != PACKAGE}
    unlisted = unlisted_imports(external, required)
    if unlisted:
        shutil.rmtree(dest)
        raise ExportError(f"{name}: the chestzoo code it uses imports packages that configs/metadata.json's "
                          f"required_packages_version does not list: {'; '.join(unlisted)}")

    scripts = dest / "scripts"
    scripts.mkdir(exist_ok=True)
    if not (scripts / "__init__.py").exists():
        (scripts / "__init__.py").write_text('"""Code this bundle runs: chestzoo/ is a copy of the chestzoo modules its configs use."""\n')
    for module in sorted(modules):
        source = _module_file(module)
        target = scripts / "chestzoo" / source.relative_to(PACKAGE_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rewrite_source(source.read_text()))
    for path, config in configs.items():
        _write_json(path, _add_scripts_import(rewrite_config(config)))
    if required != metadata.get("required_packages_version"):
        metadata["required_packages_version"] = required
        _write_json(metadata_file, metadata)

    zip_path = None
    if make_zip:
        zip_path = out / f"{name}.zip"
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(dest.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(out).as_posix())
    return {
        "bundle": str(dest),
        "zip": str(zip_path) if zip_path else None,
        "modules": sorted(modules),
        "required_packages_version": required,
        "install": [f"{k}=={v}" for k, v in required.items()],
        # imported only inside functions of the copied code, and not listed: needed only if the bundle calls them
        "unlisted_function_imports": unlisted_imports(lazy, required),
    }
