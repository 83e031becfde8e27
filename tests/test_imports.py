"""How psyrun's modules import each other, and what ``import psyrun`` costs.

Every job imports psyrun, so importing it must not drag in heavy libraries.
The import graph of psyrun's own modules (read from the source with ``ast``:
module-level and function-level imports, ``importlib.import_module("...")``
literals, and the lazy name tables such as ``psyrun.scheduler._LAZY``) must
have no cycle, and no module may import another package's private module.
How long the import takes is measured by the benchmarks, not here.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import psyrun

HEAVY = ("numba", "tables", "zarr", "joblib", "pandas", "xarray", "dask", "h5py", "scipy")

ROOT = Path(psyrun.__file__).parent
#: A string that names a psyrun module (optionally ``module:attribute``), as lazy tables hold.
MODULE_NAME = re.compile(r"^psyrun(\.\w+)*(:\w+)?$")


@pytest.mark.parametrize(
    "statement",
    [
        "import psyrun",
        "import psyrun, psyrun.pspace; psyrun.Param",
        "import psyrun.store; psyrun.store.H5Store(); psyrun.store.ZarrStore()",
        "import psyrun.mapper",
        "import psyrun.scheduler, psyrun.backend, psyrun.tasks, psyrun.worker",
        "import psyrun.run.runner, psyrun.jobs, psyrun.results.merge, psyrun.run.snapshot",
        "import psyrun.cli",
        "import psyrun.scheduler; psyrun.scheduler.Dask; psyrun.scheduler.LocalPool",
    ],
)
def test_import_keeps_heavy_libraries_out(statement):
    code = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    assert loaded == []


def test_import_psyrun_loads_only_its_own_package():
    # The cheap `import psyrun` every job pays: no submodule and no third-party library.
    code = (
        "import sys; before = set(sys.modules); import psyrun; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    new = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    assert [m for m in new if m.startswith("psyrun")] == ["psyrun"]
    assert "numpy" not in new
    assert "click" not in new


def test_public_names_resolve():
    for name in psyrun.__all__:
        assert getattr(psyrun, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        psyrun.nonexistent  # noqa: B018


# -- the import graph ---------------------------------------------------------


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of psyrun."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = module_files()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve(name: str) -> str | None:
    """The psyrun module `name` names, or its longest prefix that is one (None: not psyrun)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def parents(name: str) -> list[str]:
    """The packages importing `name` also runs, below the top-level ``psyrun``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def imports_of(name: str) -> set[str]:
    """The psyrun modules that module `name` imports, wherever in the module."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"), str(MODULES[name]))
    package = name if is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()

    own = set(parents(name)) | ({name} if is_package(name) else set())

    def add(target: str) -> None:
        module = resolve(target)
        if module is not None:
            # Packages above `name` itself are initialised before it: not an import of it.
            found.update([module, *(p for p in parents(module) if p not in own)])

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            submodules = [f"{source}.{a.name}" for a in node.names]
            submodules = [m for m in submodules if m in MODULES]
            # `from psyrun.x import y` imports the module psyrun.x.y when there is one;
            # it needs psyrun.x's own names only when some y is not a submodule.
            if len(submodules) < len(node.names) or source not in own:
                add(source)
            for module in submodules:
                add(module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(node.args[0].value)
    # Lazy tables: module-level dicts whose strings name psyrun modules (psyrun._EXPORTS,
    # psyrun.scheduler._LAZY, the store table, ...) are imports made on first use.
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if isinstance(value, ast.Dict):
            for const in ast.walk(value):
                if (
                    isinstance(const, ast.Constant)
                    and isinstance(const.value, str)
                    and MODULE_NAME.match(const.value)
                ):
                    add(const.value.partition(":")[0])
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    return {name: imports_of(name) for name in MODULES}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete cycle through the modules of `component`, for the message."""
    members = set(component)
    start = component[0]
    path, seen = [start], {start}
    while True:
        nxt = sorted(graph[path[-1]] & members)
        if start in nxt and len(path) > 1:
            return [*path, start]
        step = next((m for m in nxt if m not in seen), None)
        if step is None:
            return [*path, "..."]
        path.append(step)
        seen.add(step)


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "psyrun.scheduler.slurm" in graph["psyrun.scheduler"]  # the _LAZY table
    assert "psyrun.pspace" in graph["psyrun"]  # psyrun's lazy exports
    assert "psyrun.run.runner" in graph["psyrun.cli"]  # a function-level import
    assert "psyrun.backend.base" in graph["psyrun.run.runner"]  # `from psyrun.backend.base import`
    assert "psyrun.backend" in graph["psyrun.run.runner"]  # ... runs psyrun/backend/__init__.py
    assert "psyrun.scheduler" in graph["psyrun.cli"]  # `from psyrun import scheduler as ...`
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# Packages whose __init__ imports nothing at module level and resolves its public
# names on first access: importing one of their submodules runs no other code.
LAZY_FACADES = {"psyrun", "psyrun.results"}


@pytest.mark.parametrize("package", sorted(LAZY_FACADES))
def test_lazy_facades_import_nothing_of_psyrun_when_imported(package):
    code = (
        f"import sys, {package}; print(sorted(m for m in sys.modules if m.startswith('psyrun')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    parents = {package.rsplit(".", 1)[0] if "." in package else package, package}
    assert set(ast.literal_eval(out.stdout)) <= parents


def test_no_import_cycle():
    graph = import_graph()
    # A lazy facade (psyrun, psyrun.results) resolves its names from every corner
    # of its package on first access, and every submodule also "imports" it as its
    # parent; importing it runs nothing else (checked above). Leave them out.
    graph = {k: v - LAZY_FACADES for k, v in graph.items() if k not in LAZY_FACADES}
    cycles = [" -> ".join(a_cycle(graph, c)) for c in find_cycles(graph)]
    assert cycles == []


def test_no_module_imports_another_packages_private_module():
    def package_of(module: str) -> str:
        return module if is_package(module) else module.rpartition(".")[0]

    bad = []
    for name, targets in import_graph().items():
        for target in sorted(targets):
            private = target.rpartition(".")[2].startswith("_")
            # Private to a package means private to its subtree: psyrun.results.merge
            # may use psyrun._kernels, psyrun.scheduler may not use psyrun.store._x.
            inside = f"{name}.".startswith(f"{package_of(target)}.")
            if private and not inside:
                bad.append(f"{name} imports {target}")
    assert bad == []
