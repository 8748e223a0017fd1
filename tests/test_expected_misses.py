"""The table of expected misses (``expected_misses.py``) names real tests, registered methods and known models."""

from __future__ import annotations

import ast
from pathlib import Path

from expected_misses import EXPECTED_MISSES
from test_method_matrix import ARCHS

from mlflow_unlearn.methods import list_methods

TESTS = Path(__file__).resolve().parent


def _test_functions() -> set[str]:
    return {node.name for path in TESTS.glob("test_*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_each_row_names_a_test_of_the_suite_once():
    keys = [(miss.test, miss.case) for miss in EXPECTED_MISSES]
    assert len(keys) == len(set(keys)), "a case is listed twice"
    assert {miss.test for miss in EXPECTED_MISSES} <= _test_functions()
    assert all(miss.measured.strip() for miss in EXPECTED_MISSES), "every row says what was measured"


def test_each_row_names_a_registered_method_and_a_known_model():
    methods = set(list_methods())
    for miss in EXPECTED_MISSES:
        *model, method = miss.case
        assert method in methods, miss
        assert all(name in ARCHS for name in model), miss
