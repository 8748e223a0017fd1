"""Bring your own model: a user's class loads from the model's logged ``code_paths`` (and one that cannot is
refused in one line, by the API, the CLI and the registry plugin's pre-flight, before any run or job); every bad
argument is refused before a run is created (no FAILED run, no version left behind)."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow_unlearn_plugins.job import preflight
from mlflow_unlearn_plugins.request import RequestRefused, SecurityPolicy, parse_request

import mlflow_unlearn
from mlflow_unlearn.request import UnlearnRequest
from mlflow_unlearn.tracking.api import model_code_paths
from mlflow_unlearn.tracking.cli import cli
from mlflow_unlearn.tracking.formats import ModelFormatError
from mlflow_unlearn.tracking.plan import prepare

MODEL = "byo-errors"
MODULE = "lostnet"
SOURCE = '''
from torch import nn


class LostNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden, self.out_proj = nn.Linear(64, 16), nn.Linear(16, 10)

    def forward(self, x):
        return self.out_proj(self.hidden(x.flatten(1)).relu())
'''


def _forget_module() -> None:
    sys.modules.pop(MODULE, None)


@pytest.fixture(scope="module")
def registry(sqlite_store):
    """Version 1 logged with its module (inferred ``code_paths``), version 2 without (``code_paths=[]``)."""
    store = sqlite_store("byo-errors")
    root, uri, experiment = store.root, store.uri, store.experiment
    code = root / "user_code"
    code.mkdir()
    (code / f"{MODULE}.py").write_text(SOURCE)
    sys.path.insert(0, str(code))
    try:
        import lostnet

        model = lostnet.LostNet()
        assert model_code_paths(model) == [str((code / f"{MODULE}.py").resolve())]
        kwargs = dict(data="digits", registered_model_name=MODEL, experiment=experiment, tracking_uri=uri,
                      registry_uri=uri)
        mlflow_unlearn.log_model(model, **kwargs)
        mlflow_unlearn.log_model(model, code_paths=[], **kwargs)
    finally:
        sys.path.remove(str(code))
        _forget_module()
    return uri, root, experiment


def _counts(uri: str, experiment: str) -> tuple[int, int]:
    client = MlflowClient(uri, uri)
    return len(client.search_runs([experiment])), len(client.search_model_versions(f"name='{MODEL}'"))


def test_the_class_loads_from_the_logged_code(registry):
    uri, _, _ = registry
    _forget_module()
    plan = prepare(f"models:/{MODEL}/1", UnlearnRequest("classes:3", method="finetune"), tracking_uri=uri,
                   registry_uri=uri)
    assert type(plan.model).__name__ == "LostNet"
    assert set(plan.code) == {f"{MODULE}.py"}  # carried to the unlearned version
    assert str(registry[1] / "user_code") not in sys.path
    _forget_module()


def test_a_class_that_cannot_be_imported_is_refused_in_one_line_everywhere(registry, monkeypatch):
    uri, root, experiment = registry
    _forget_module()
    before = _counts(uri, experiment)
    target = f"models:/{MODEL}/2"
    with pytest.raises(ModelFormatError) as info:
        mlflow_unlearn.unlearn(target, forget="classes:3", method="finetune", tracking_uri=uri, registry_uri=uri)
    message = str(info.value)
    assert "\n" not in message
    assert f"needs the Python module '{MODULE}'" in message and "code_paths=[" in message
    result = CliRunner().invoke(cli, ["unlearn", target, "--forget", "classes:3", "--method", "finetune"],
                                env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri})
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "Error: " in result.output and f"'{MODULE}'" in result.output
    request = parse_request("forget=classes:3; method=finetune", SecurityPolicy(allowed_roots=(root,)))
    with pytest.raises(RequestRefused, match=f"needs the Python module '{MODULE}'.*code_paths"):
        preflight(request, target, client=MlflowClient(uri, uri))  # refused before a job is launched
    assert _counts(uri, experiment) == before


BAD_ARGUMENTS = [
    ("seed", dict(seed="a"), "Expected argument `seed` to be a non-negative int but got 'a'"),
    ("negative seed", dict(seed=-1), "Expected argument `seed`"),
    ("device", dict(device="gpu"), "Expected `device` to be 'auto', 'cpu' or 'cuda"),
    ("retain_eval_size", dict(retain_eval_size=0), "Expected argument `retain_eval_size` to be a positive int"),
    ("retain_eval_size type", dict(retain_eval_size="10"), "Expected argument `retain_eval_size`"),
    ("long ids path", dict(forget="ids:" + "a" * 300 + ".txt"), "Cannot read the forget request file: File name "
                                                                  "too long"),
]


@pytest.mark.parametrize(("what", "kwargs", "message"), BAD_ARGUMENTS, ids=[b[0] for b in BAD_ARGUMENTS])
def test_bad_arguments_are_refused_before_a_run_is_created(registry, what, kwargs, message):
    uri, _, experiment = registry
    before = _counts(uri, experiment)
    arguments = {"forget": "classes:3", "method": "finetune", **kwargs}
    with pytest.raises(ValueError) as info:
        mlflow_unlearn.unlearn(f"models:/{MODEL}/1", tracking_uri=uri, registry_uri=uri, **arguments)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert "a" * 100 not in str(info.value)  # the path is not repeated
    assert _counts(uri, experiment) == before, "no run or version may be left behind"
    _forget_module()


def test_a_long_ids_path_on_the_cli_is_one_line(registry):
    uri, _, experiment = registry
    before = _counts(uri, experiment)
    result = CliRunner().invoke(cli, ["unlearn", f"models:/{MODEL}/1", "--forget", "ids:" + "b" * 300 + ".txt"],
                                env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri})
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "File name too long" in result.output and "b" * 100 not in result.output
    assert _counts(uri, experiment) == before
    _forget_module()
