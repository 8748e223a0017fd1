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


_REST_CLIENT = """
import sys
from importlib.metadata import entry_points
import mlflow
builders = {ep.name: ep.load() for ep in entry_points(group="mlflow.model_registry_store")}  # as MLflow loads them
assert callable(builders["unlearn+sqlite"]) and callable(builders["unlearn+postgresql"])
print(*(name in sys.modules for name in ("mlflow.store.model_registry.sqlalchemy_store",
                                         "mlflow_unlearn_plugins.registry_store")))
"""


def test_a_client_of_another_registry_does_not_import_the_plugins_store():
    """MLflow loads the plugin's entry points in every process that builds a registry store (a job talking to a server
    over HTTP too); they must not import the store and MLflow's SQLAlchemy store below it (0.85 s of CPU each)."""
    out = subprocess.run([sys.executable, "-c", _REST_CLIENT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
