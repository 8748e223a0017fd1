"""The import graph of the library, read from the source (no import runs): no cycles, and imports run one way.

The layers, bottom to top: the engine (``data``, ``models``, ``methods``, ``metrics``, ``runtime``, ``training``,
``assess`` and the engine's top-level modules), the MLflow layer (``mlflow_unlearn.tracking``, and the package's
own entry points that hand on to it), the plugin (``mlflow_unlearn_plugins``, the repository's ``plugins/``). A
module may import from its own layer and the layers below it, never from one above; the engine never imports
MLflow. Every import counts, the ones inside functions included (they hide a dependency, they do not remove it),
except those under ``if TYPE_CHECKING:``, which never run.
"""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Import name -> the folder that holds it.
PACKAGES = {"mlflow_unlearn": ROOT / "mlflow_unlearn", "mlflow_unlearn_plugins": ROOT / "plugins"}
ENGINE, TRACKING, PLUGIN = "engine", "tracking", "plugin"
LAYERS = (ENGINE, TRACKING, PLUGIN)
#: Modules of ``mlflow_unlearn`` outside ``tracking`` that belong to the MLflow layer: the package's facade, whose
#: ``unlearn``/``verify``/``log_model`` resolve lazily to ``tracking``, and ``python -m mlflow_unlearn``.
FACADES = frozenset({"mlflow_unlearn", "mlflow_unlearn.__main__"})
#: The one edge known to point the wrong way; another change moves ``serve`` into the plugin's own console script.
KNOWN_UPWARD: set[tuple[str, str]] = set()  # none: `serve` is the plugin's own console script


def _module_name(path: Path) -> str:
    for name, folder in PACKAGES.items():
        if path.is_relative_to(folder):
            parts = (name, *path.relative_to(folder).with_suffix("").parts)
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(path)


def _modules() -> dict[str, Path]:
    modules = {}
    for folder in PACKAGES.values():
        for path in sorted(folder.rglob("*.py")):
            if "project" not in path.relative_to(folder).parts:
                modules[_module_name(path)] = path
    return modules


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path) -> set[str]:
    """Every module that ``name`` imports (an ``import`` anywhere but under ``if TYPE_CHECKING:``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # ``from pkg import module`` imports the module
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    found.discard(name)
    return found


def _layer(name: str) -> str:
    if name.startswith("mlflow_unlearn_plugins"):
        return PLUGIN
    if name in FACADES or name == "mlflow_unlearn.tracking" or name.startswith("mlflow_unlearn.tracking."):
        return TRACKING
    return ENGINE


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for name, path in MODULES.items():
        graph.add_node(name)
        for target in _imports(name, path):
            graph.add_edge(name, target)
    return graph


def _internal(graph: nx.DiGraph) -> nx.DiGraph:
    return graph.subgraph(MODULES)


def test_the_graph_is_read_from_every_module(graph: nx.DiGraph) -> None:
    assert {"mlflow_unlearn.assess.assessment", "mlflow_unlearn.tracking.api", "mlflow_unlearn_plugins.launcher",
            "mlflow_unlearn.methods.registry", "mlflow_unlearn.methods._loops"} <= set(MODULES)
    assert graph.has_edge("mlflow_unlearn.methods.nitc", "mlflow_unlearn.methods.registry")
    # a function-local import is an edge too
    assert graph.has_edge("mlflow_unlearn", "mlflow_unlearn.tracking.api")


def test_no_import_cycles(graph: nx.DiGraph) -> None:
    cycles = [sorted(component) for component in nx.strongly_connected_components(_internal(graph))
              if len(component) > 1]
    assert not cycles, f"import cycles: {cycles}"


def _upward(graph: nx.DiGraph) -> set[tuple[str, str]]:
    return {(a, b) for a, b in _internal(graph).edges if LAYERS.index(_layer(a)) < LAYERS.index(_layer(b))}


def test_imports_run_from_the_engine_to_tracking_to_the_plugin(graph: nx.DiGraph) -> None:
    assert _upward(graph) - KNOWN_UPWARD == set()


def test_the_library_never_imports_the_plugin(graph: nx.DiGraph) -> None:
    assert not _upward(graph)


def test_the_engine_never_imports_mlflow(graph: nx.DiGraph) -> None:
    offending = sorted((a, b) for a, b in graph.edges
                       if _layer(a) == ENGINE and a in MODULES and (b == "mlflow" or b.startswith("mlflow.")))
    assert not offending


def test_every_package_is_installed() -> None:
    """A new folder of modules must be listed in setup.cfg, or an installed copy cannot import it."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    packages = {_module_name(path) for folder in PACKAGES.values() for path in folder.rglob("__init__.py")
                if "project" not in path.relative_to(folder).parts}
    assert packages == listed
