"""The package's layers (docs/architecture.md): imports go down, never up or around.

Every import of raytune_ft counts, at the top of a module or inside a function: a lazy import
is a dependency too. A layer imports the layers below it; imports between packages of one
layer are allowed only where `SAME_LAYER` lists them; no module imports itself through
others (no cycle, inside a package either); and no package imports another's private names
(`_module` or `_name`): what a package offers is its public API.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "raytune_ft"

# Bottom first. A name is a package (raytune_ft/<name>/) or a top-level module.
LAYERS = (
    ("raytune_ft", "errors", "storage"),  # the package root, exceptions, files and URIs
    ("config",),  # the shared sections of an experiment file and component bases
    ("plan",),  # the trial plan, computed from the sections
    ("training",),  # the loop, models, schedules: no Ray, no task named
    ("tasks", "schedulers", "tracking"),  # the three registries, one module per component
    ("schema",),  # the experiment, assembled from config and the registries
    ("experiment",),  # the experiment folder: names, the record, raw rows, ranking
    ("analysis", "tuning", "model_export", "digits", "multi30k"),  # what runs, reads, demos
    ("cli", "__main__"),
)
SAME_LAYER = {
    ("raytune_ft", "errors"),  # the root re-exports the exception hierarchy
    ("tuning", "analysis"),  # a run ends with its analysis export and report
    ("model_export", "tuning"),  # export reads a confirm run's choice
    ("__main__", "cli"),
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(modules: dict[str, Path]) -> dict[str, set[tuple[str, tuple[str, ...]]]]:
    """module -> {(imported raytune_ft module, names taken from it)}, lazy imports included."""
    found: dict[str, set] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [(alias.name, ()) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = tuple(alias.name for alias in node.names)
                targets = [(f"{base}.{n}", ()) if f"{base}.{n}" in modules else (base, (n,))
                           for n in names]
            else:
                continue
            for target, names in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found[name].add((target, names))
    return found


def _layer(group: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if group in layer)


def test_every_module_has_a_layer():
    groups = {_group(name) for name in _modules()}
    placed = {group for layer in LAYERS for group in layer}
    assert groups <= placed, f"not in LAYERS: {sorted(groups - placed)}"


def test_imports_go_down_the_layers():
    wrong = []
    for module, targets in _imports(_modules()).items():
        for target, _ in targets:
            a, b = _group(module), _group(target)
            if a == b:
                continue
            if _layer(b) > _layer(a) or (_layer(b) == _layer(a) and (a, b) not in SAME_LAYER):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle_between_modules():
    graph = {m: {t for t, _ in targets} for m, targets in _imports(_modules()).items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def test_no_package_imports_another_packages_private_names():
    wrong = []
    for module, targets in _imports(_modules()).items():
        for target, names in targets:
            if _group(target) == _group(module):
                continue
            if any(_private(p) for p in target.split(".")[1:]) or any(map(_private, names)):
                wrong.append(f"{module} -> {target} {list(names)}")
    assert not wrong, "private names imported across packages:\n" + "\n".join(sorted(wrong))


def test_the_checks_see_a_violation(tmp_path, monkeypatch):
    """The walk finds lazy imports, upward edges and cycles (a check that sees nothing
    proves nothing): config importing a task inside a function, and a registry whose entry
    imports it back, are caught."""
    fake = tmp_path / "raytune_ft"
    (fake / "config").mkdir(parents=True)
    (fake / "tasks").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "config" / "__init__.py").write_text(
        "def f():\n    from raytune_ft.tasks._base import Task\n")
    (fake / "tasks" / "__init__.py").write_text("import raytune_ft.tasks._base\n")
    (fake / "tasks" / "_base.py").write_text("from raytune_ft.tasks import TASKS\n")
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    imports = _imports(_modules())
    assert ("raytune_ft.tasks._base", ("Task",)) in imports["raytune_ft.config"]
    with pytest.raises(AssertionError, match="raytune_ft.config -> "):
        test_imports_go_down_the_layers()
    with pytest.raises(AssertionError, match="private names"):
        test_no_package_imports_another_packages_private_names()
    with pytest.raises(AssertionError, match="raytune_ft.tasks._base"):
        test_no_import_cycle_between_modules()
