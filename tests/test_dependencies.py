"""Every third-party module hpo imports is declared in pyproject.toml, and a module of an
optional extra is imported only inside functions (so `import hpo.x` works without the extra)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions

from tests.conftest import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    return {_norm(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in requirements}


def _imports() -> dict[str, list[tuple[str, bool]]]:
    """Top-level module -> [(file:line, at module level)] for every absolute import in hpo/."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted((ROOT / "hpo").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            for mod in mods:
                found.setdefault(mod.split(".")[0], []).append((where, id(node) in top_level))
    return found


def _third_party() -> dict[str, list[tuple[str, bool]]]:
    return {m: w for m, w in _imports().items()
            if m != "hpo" and m not in sys.stdlib_module_names and m != "__future__"}


#: import name -> distribution, for an optional extra that may not be installed here and whose
#: distribution is named otherwise (the `mlflow` extra installs mlflow-skinny)
NOT_INSTALLED = {"mlflow": "mlflow-skinny"}


def test_every_import_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _names(project["dependencies"])
    for reqs in project["optional-dependencies"].values():
        declared |= _names(reqs)
    dists = packages_distributions()
    modules = _third_party()
    assert {"numpy", "optuna", "tqdm", "waitress", "sklearn"} <= set(modules)  # the walk works
    missing = {}
    for mod, where in modules.items():
        # not installed here: a backport for older Pythons (tomli), declared under its own name
        names = {_norm(d) for d in dists.get(mod, [NOT_INSTALLED.get(mod, mod)])}
        if not names & declared:
            missing[mod] = (sorted(names), where[0][0])
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"


def test_extras_are_imported_only_inside_functions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _names(project["dependencies"])
    extras = set()
    for name, reqs in project["optional-dependencies"].items():
        if name != "test":
            extras |= _names(reqs) - core
    assert {"scikit-learn", "torch", "numba"} <= extras
    dists = packages_distributions()
    eager = {mod: [w for w, top in where if top]
             for mod, where in _third_party().items()
             if {_norm(d) for d in dists.get(mod, [])} & extras}
    assert "sklearn" in eager  # hpo.nn.data imports it (inside a function)
    # a module that imports an extra at its top (hpo/nn/_kernels.py: numba) must itself be
    # imported by hpo only inside functions
    lazy = {w.split(":")[0] for where in eager.values() for w in where}
    lazy_names = {f.removesuffix(".py").replace("/", ".") for f in lazy}
    eager_users = [w for mod, where in _imports().items() if mod == "hpo"
                   for w, top in where if top]
    assert lazy <= {"hpo/nn/_kernels.py"}, eager
    for name in lazy_names:
        for path in sorted((ROOT / "hpo").rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in tree.body:  # module level only
                if isinstance(node, ast.ImportFrom) and node.module and (
                        node.module == name or f"{node.module}.{node.names[0].name}" == name):
                    raise AssertionError(f"{path}:{node.lineno} imports {name} at module level")
                if isinstance(node, ast.Import) and any(a.name == name for a in node.names):
                    raise AssertionError(f"{path}:{node.lineno} imports {name} at module level")
    assert eager_users  # the walk saw hpo's own imports


def test_the_distribution_is_hpo_book_and_mlxtend_is_gone():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "hpo-book"  # "hpo" on the package index is another project
    assert project["scripts"] == {"hpo": "hpo.cli:main"}
    declared = _names(project["dependencies"])
    assert "mlxtend" not in declared and "scikit-learn" not in declared
    assert {"tqdm", "waitress"} <= declared
    assert "mlxtend" not in _imports()
