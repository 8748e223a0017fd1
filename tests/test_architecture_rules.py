"""The rules of docs/architecture.md ("Rules that keep this shape") that a reading of the source can check.

The import rules are checked by ``tests/test_import_layers.py`` and the doors' fields by
``tests/test_request_doors.py``; this module checks the others that can be read from the syntax tree: tag keys are
spelled only in the vocabulary, no code outside the forget grammar tests a spec's ``ids:`` prefix, constructors start
no process and write no environment, and the ``MLFLOW_UNLEARN_*`` settings of the MLflow layer and the plugin are
read by their settings readers only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mlflow_unlearn.tracking import vocabulary

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "mlflow_unlearn").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")])
#: Every tag key the vocabulary defines.
TAG_KEYS = frozenset(value for name, value in vars(vocabulary).items()
                     if name.endswith("_TAG") and isinstance(value, str))


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _docstrings(tree: ast.AST) -> set[int]:
    """``id()`` of every docstring constant (what a module, class or function documents is not code)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _strings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip]


def test_the_vocabulary_defines_the_tag_keys():
    assert {vocabulary.STATUS_TAG, vocabulary.REQUEST_TAG, vocabulary.PARENT_TAG} <= TAG_KEYS
    assert len(TAG_KEYS) > 20


@pytest.mark.parametrize("path", SOURCES, ids=_relative)
def test_a_tag_key_is_spelled_only_in_the_vocabulary(path):
    if path == ROOT / "mlflow_unlearn" / "tracking" / "vocabulary.py":
        return
    spelled = [(line, text) for line, text in _strings(path) if text in TAG_KEYS]
    assert not spelled, f"import these keys from tracking/vocabulary.py: {spelled}"


def _prefix_tests(tree: ast.AST) -> list[int]:
    """Lines that test or strip an ``ids:`` prefix: ``x.startswith("ids:")``, ``x.removeprefix("ids:")``,
    ``x[:4] == "ids:"``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "startswith", "removeprefix", "partition") and node.args:
            arg = node.args[0]
            values = arg.elts if isinstance(arg, ast.Tuple) else [arg]
            if any(isinstance(v, ast.Constant) and isinstance(v.value, str) and v.value.startswith("ids")
                   for v in values):
                found.append(node.lineno)
        if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value == "ids:"
                                                 for c in node.comparators):
            found.append(node.lineno)
    return found


@pytest.mark.parametrize("path", SOURCES, ids=_relative)
def test_only_the_forget_grammar_reads_an_ids_prefix(path):
    if path == ROOT / "mlflow_unlearn" / "data" / "forget.py":
        return
    assert not _prefix_tests(ast.parse(path.read_text())), "use the parsed ForgetSpec (by_ids, path)"


#: Calls that are more than constructing: starting a process or a thread, network I/O, writing the environment.
EFFECTS = {("subprocess", "Popen"), ("subprocess", "run"), ("subprocess", "call"), ("subprocess", "check_call"),
           ("subprocess", "check_output"), ("os", "putenv"), ("os", "fork"), ("socket", "create_connection"),
           ("requests", "get"), ("requests", "post"), ("urllib.request", "urlopen")}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _effects(function: ast.FunctionDef) -> list[str]:
    found = []
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            module, _, attr = name.rpartition(".")
            if (module, attr) in EFFECTS or name.endswith((".start", "os.environ.update", "os.environ.setdefault")):
                found.append(f"{node.lineno}: {name}()")
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AugAssign) else [])
        for target in targets:
            if isinstance(target, ast.Subscript) and _dotted(target.value) == "os.environ":
                found.append(f"{node.lineno}: os.environ[...] =")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=_relative)
def test_constructors_construct(path):
    inits = [node for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.FunctionDef) and node.name in ("__init__", "__post_init__")]
    assert not [effect for init in inits for effect in _effects(init)]


def test_the_effects_check_sees_an_effect():
    bad = ast.parse("class A:\n    def __init__(self):\n        os.environ['X'] = '1'\n"
                    "        subprocess.Popen(['true'])\n        self.thread.start()\n")
    init = next(node for node in ast.walk(bad) if isinstance(node, ast.FunctionDef))
    assert len(_effects(init)) == 3
    assert _prefix_tests(ast.parse("spec.startswith('ids:')\nx[:4] == 'ids:'\n")) == [1, 2]


#: The settings readers: the plugin's (read once at start-up, passed on) and the MLflow layer's.
SETTINGS_READERS = {"plugins/settings.py", "mlflow_unlearn/tracking/keys.py", "mlflow_unlearn/tracking/experiments.py"}
MLFLOW_LAYER = [p for p in SOURCES if _relative(p).startswith(("plugins/", "mlflow_unlearn/tracking/"))]


def _environment_reads(path: Path) -> list[int]:
    """Lines that read an ``MLFLOW_UNLEARN_*`` variable from ``os.environ`` / ``os.getenv`` by its literal name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and _dotted(node.func) in ("os.environ.get", "os.getenv") and node.args:
            key = node.args[0]
        elif isinstance(node, ast.Subscript) and _dotted(node.value) == "os.environ":
            key = node.slice
        else:
            continue
        if isinstance(key, ast.Constant) and str(key.value).startswith("MLFLOW_UNLEARN_"):
            found.append(node.lineno)
        elif isinstance(key, ast.Name) and key.id.endswith("_ENV"):
            found.append(node.lineno)
    return found


@pytest.mark.parametrize("path", MLFLOW_LAYER, ids=_relative)
def test_settings_are_read_by_their_readers_only(path):
    if _relative(path) in SETTINGS_READERS:
        return
    assert not _environment_reads(path), "read the setting in plugins/settings.py or the tracking settings readers"
