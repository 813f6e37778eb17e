"""The package's shape: imports point down through the layers, never up, never in a circle.

Every import is read from the source (module level and inside functions alike), so a lazy
import cannot hide an upward dependency. docs/architecture.md draws the same layers.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hpo"

#: Bottom to top. A module may import modules of its own layer or below (no circle), never above.
LAYERS: list[tuple[str, ...]] = [
    ("hpo.errors", "hpo.catalog"),
    ("hpo.nn", "hpo.signals"),
    ("hpo.spec", "hpo.spec_checks"),
    ("hpo.db",),
    ("hpo.samplers",),
    ("hpo.objectives",),
    ("hpo.report",),
    ("hpo.logs",),
    ("hpo.engine",),
    ("hpo.commands",),
    ("hpo.cli",),
    ("hpo.__main__", "hpo"),
]

#: Optuna's private names; only hpo/db/optuna_private.py may use them.
PRIVATE_OPTUNA = ("_storage", "_study_id", "_trial_id", "_backend", "_get_trials",
                  "_pop_waiting_trial_id", "_is_multi_objective", "_filter_study",
                  "_raise_error_if_multi_objective", "_CachedStorage")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    """The layer of a module: the longest listed prefix that names it or its package."""
    best, found = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), i
    if found is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and to "
                             "docs/architecture.md")
    return found


def resolve(name: str) -> str:
    """The hpo module an imported name lives in (a module, else its package)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports(module: str) -> set[str]:
    """The hpo modules ``module`` imports, anywhere in its code."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {resolve(n) for n in names if n == "hpo" or n.startswith("hpo.")}
    found.discard(module)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    mine = layer_of(module)
    up = sorted(m for m in GRAPH[module] if layer_of(m) > mine)
    assert not up, f"{module} (layer {mine}) imports upward: {up}"


def test_no_import_circle():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_only_main_imports_the_cli():
    users = sorted(m for m, deps in GRAPH.items() if "hpo.cli" in deps)
    assert users == ["hpo.__main__"]


def _third_party(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_the_model_and_the_data_know_nothing_of_optuna():
    for module in MODULES:
        if module.startswith(("hpo.nn", "hpo.catalog", "hpo.errors")):
            assert "optuna" not in _third_party(module), module
            assert not any(m.startswith(("hpo.spec", "hpo.db")) for m in GRAPH[module])


def test_samplers_know_nothing_of_the_model():
    for module in MODULES:
        if module.startswith("hpo.samplers"):
            assert not any(m.startswith(("hpo.nn", "hpo.objectives")) for m in GRAPH[module])


def _private_uses(module: str) -> list[str]:
    """Optuna's private names in a module's code (docstrings and comments may name them)."""
    uses = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_OPTUNA:
            uses.append(node.attr)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names]
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{n}" for n in names]
            uses += [n for n in names if n.startswith("optuna") and re.search(r"\._|^_", n)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            uses += re.findall(r"^optuna(?:\.\w+)*\._\w+$", node.value)
    return uses


def test_private_optuna_names_only_in_the_adapter():
    users = {m: _private_uses(m) for m in MODULES if m != "hpo.db.optuna_private"}
    assert {m: u for m, u in users.items() if u} == {}
    assert _private_uses("hpo.db.optuna_private")  # the check sees them where they are


def test_no_module_over_500_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}


def test_architecture_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = []
    for path in MODULES.values():
        rel = path.relative_to(ROOT).as_posix()
        if path.name == "__init__.py":  # a package's face: the package is named
            continue
        short = rel.removeprefix("hpo/")
        folder = short.rsplit("/", 1)[0] + "/" if "/" in short else None
        named = rel in text or f"`{short}`" in text or (
            folder is not None and f"`{folder}`" in text and f"`{path.name}`" in text)
        if not named:
            missing.append(rel)
    assert missing == []


def test_at_most_16_modules_and_wings_directly_in_hpo():
    """The top of the package stays small: modules and folders directly in hpo/ (package data
    such as hpo/datasets/, which holds no Python, is not a module)."""
    top = sorted(p.name for p in PACKAGE.iterdir()
                 if (p.suffix == ".py") or (p.is_dir() and (p / "__init__.py").exists()))
    assert len(top) <= 16, top


def test_each_wing_is_a_folder_of_its_own():
    for wing in ("db", "engine", "objectives", "report", "samplers", "commands", "nn"):
        assert (PACKAGE / wing / "__init__.py").is_file(), wing
        assert not (PACKAGE / f"{wing}.py").exists(), wing
