"""The table of expected misses (``expected_misses.py``) names real tests, registered methods and known models, and
the tests' docstrings and comments carry no history (dates, commit hashes): that goes to benchmarks/RESULTS.md."""

from __future__ import annotations

import ast
import io
import re
import tokenize
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


_DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
_HASH = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")  # hex digits with letters and digits


def _docstrings_and_comments(path: Path) -> list[str]:
    source = path.read_text()
    texts = [token.string for token in tokenize.generate_tokens(io.StringIO(source).readline)
             if token.type == tokenize.COMMENT]
    documented = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    texts += [doc for node in ast.walk(ast.parse(source)) if isinstance(node, documented)
              if (doc := ast.get_docstring(node))]
    return texts


def test_no_test_docstring_or_comment_carries_a_date_or_a_commit_hash():
    found = [(path.name, hit) for path in sorted(TESTS.glob("*.py")) for text in _docstrings_and_comments(path)
             for hit in _DATE.findall(text) + _HASH.findall(text)]
    assert found == [], f"history belongs in benchmarks/RESULTS.md: {found}"
