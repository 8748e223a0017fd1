"""The registry plugin parses requests inside the server's request threads: that must not import torch.

A server's first request used to wait tens of seconds for ``import torch`` under load (the shared request
helpers of the server tests time out at 30 s), because the forget grammar came in through the data layer.
"""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import sys
from mlflow_unlearn_plugins.request import SecurityPolicy, parse_request
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.data import parse_forget_spec
assert parse_forget_spec("random:100").count == 100
assert vocab.parse_forget_spec("classes:3,7").classes == (3, 7)
print("torch" in sys.modules)
"""


def test_request_parsing_and_the_forget_grammar_do_not_import_torch():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_data_layer_names_still_resolve_lazily():
    import mlflow_unlearn.data as data

    assert set(data.__all__) <= set(dir(data))
    assert callable(data.load_data) and callable(data.resolve_forget)
