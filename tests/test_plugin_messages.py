"""One bad input, one message: the Python API, the ``mlflow-unlearn`` CLI and a registry request (the plugin's
store and launcher, run in this process) refuse a bad forget spec and an unknown method with the same words.

The registry path is the real one up to the job: the request tag is set on the plugin's store, which parses it
(grammar refusals are recorded at once) and starts a launcher; here the launcher runs in-process instead of as a
detached process, prepares the request (:func:`mlflow_unlearn.tracking.plan.prepare`) and records the refusal.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersionTag
from mlflow.exceptions import MlflowException
from mlflow_unlearn_plugins import job, scheduler
from mlflow_unlearn_plugins.registry_store import UnlearnRegistryStore
from mlflow_unlearn_plugins.request import SecurityPolicy
from mlflow_unlearn_plugins.settings import PluginSettings

from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.api import train_model, unlearn
from mlflow_unlearn.tracking.cli import cli
from mlflow_unlearn.tracking.keys import read_digest_key

MODEL = "messages-mlp"
BAD = [
    ("forget spec", dict(forget="classes:x", method="finetune")),
    ("method", dict(forget="classes:3", method="mystery")),
]


@pytest.fixture(scope="module")
def registry(sqlite_store):
    """A SQLite tracking store and registry with one trained version (no lineage problem, a real model)."""
    store = sqlite_store("messages")
    out = train_model("digits", arch="mlp", registered_model_name=MODEL, config={"epochs": 1}, onnx=False,
                      device="cpu", tracking_uri=store.uri, experiment=store.experiment)
    return store.uri, store.root, out.version


def _api_message(uri: str, version, kwargs: dict) -> str:
    with pytest.raises(ValueError) as info:
        unlearn(vocab.model_uri(MODEL, version.version), device="cpu", tracking_uri=uri, registry_uri=uri, **kwargs)
    return str(info.value)


def _cli_output(uri: str, version, kwargs: dict) -> str:
    args = ["unlearn", vocab.model_uri(MODEL, version.version), "--forget", kwargs["forget"], "--method",
            kwargs["method"], "--device", "cpu"]
    result = CliRunner().invoke(cli, args, env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri})
    assert result.exit_code == 1, result.output
    return result.output


def _registry_error(uri: str, root, version, kwargs: dict, monkeypatch) -> str:
    """Set the request tag on a fresh version through the plugin's store; the launcher runs in this process."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what spawn() gives a launcher process
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    settings = PluginSettings(policy=SecurityPolicy(allowed_roots=(root,)), digest_key=read_digest_key())

    def run_launcher(ledger_uri, mirror_uri, name, number, request_id, **_):
        log = root / f"{request_id}.log"
        return job.Job.open(ledger_uri, mirror_uri, name, int(number), request_id, str(log), settings).run()

    monkeypatch.setattr(scheduler, "start_launcher", run_launcher)
    store = UnlearnRegistryStore("unlearn+" + uri, tracking_uri=uri, settings=settings)
    target = MlflowClient(uri).create_model_version(MODEL, version.source, version.run_id).version
    value = f"forget={kwargs['forget']}; method={kwargs['method']}"
    try:
        store.set_model_version_tag(MODEL, target, ModelVersionTag(vocab.REQUEST_TAG, value))
        answered = None
    except MlflowException as exc:  # refused in the request thread: 400 with the reason (issue 29)
        assert exc.get_http_status_code() == 400
        answered = exc.message
    tags = store.get_model_version(MODEL, target).tags
    assert tags[vocab.STATUS_TAG] == "failed"
    assert answered is None or answered == f"Unlearning request refused: {tags[vocab.ERROR_TAG]}"
    return tags[vocab.ERROR_TAG]


@pytest.mark.parametrize(("case", "kwargs"), BAD, ids=[case for case, _ in BAD])
def test_the_same_bad_input_gets_the_same_message_from_every_door(registry, case, kwargs, monkeypatch):
    uri, root, version = registry
    message = _api_message(uri, version, kwargs)
    assert message and "\n" not in message
    assert f"Error: {message}" in _cli_output(uri, version, kwargs)
    assert _registry_error(uri, root, version, kwargs, monkeypatch) == message


def test_a_registry_refusal_never_quotes_forget_ids(registry, monkeypatch):
    """Whatever the engine's message for unknown IDs says, the refusal stored in a tag quotes no ID."""
    uri, root, version = registry
    ids_file = root / "unknown_ids.txt"
    ids_file.write_text("99999\n100000\n")
    kwargs = dict(forget=f"ids:{ids_file}", method="finetune")
    error = _registry_error(uri, root, version, kwargs, monkeypatch)
    assert "forget ID file" in error and "99999" not in error and "100000" not in error
