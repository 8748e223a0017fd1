"""Token-ID models and dict outputs, end to end: README "Text models, dict outputs and other model types" is the
script this test runs.

The README's ``textmodels.py`` (a transformer classifier on token IDs that returns a tensor, a convolutional one
that returns a dict with ``logits``) and ``train_text.py`` (int64 token IDs in an npz with string IDs and a split,
``mlflow_unlearn.log_model``) run in a project folder; then, from another folder and without ``PYTHONPATH``, the
README's ``unlearn_text.py`` (the API, with the ONNX copy), the CLI (chained), and registry requests on both models
through a real ``mlflow server`` with the plugin over the same store.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import mlflow
import pytest
import requests
import torch
from mlflow import MlflowClient
from test_byo import TIMEOUT_S, _run, readme_scripts
from test_plugin_server import Server

from mlflow_unlearn.tracking.formats import ONNX_TOLERANCE, load_trainable_module
from mlflow_unlearn.tracking.runlog import ONNX_DIFF_METRIC

pytestmark = pytest.mark.slow

SECTION = "Text models, dict outputs and other model types"
SCRIPTS = ("textmodels.py", "train_text.py", "unlearn_text.py")
MODELS = {"text-clf": ("TextClassifier", torch.Tensor), "cnn-clf": ("TokenCNN", dict)}
#: Four classes: chance (25%) plus the gate's five points.
FORGET_LIMIT = 30.0


def _train(root: Path, tracking_uri: str) -> Path:
    """The user's project: README's textmodels.py and train_text.py, run there."""
    project = root / "project"
    project.mkdir(parents=True)
    scripts = readme_scripts(SECTION, SCRIPTS)
    for name in SCRIPTS[:2]:
        (project / name).write_text(scripts[name])
    _run([sys.executable, "train_text.py"], project, tracking_uri)
    return project


def _assert_child(client: MlflowClient, name: str, version: str, parent: str, forgot_class: int) -> None:
    child = client.get_model_version(name, version)
    assert child.tags["mlflow_unlearn.parent"] == f"{name}/{parent}"
    assert child.tags["mlflow_unlearn.verdict"] == "passed"
    run = client.get_run(child.run_id)
    assert run.data.params["data.split"] == "explicit" and run.data.params["forget.classes"] == str(forgot_class)
    assert float(run.data.metrics["unlearned.forget_accuracy"]) <= FORGET_LIMIT
    assert float(run.data.metrics["unlearned.retain_accuracy"]) >= 90.0
    assert {f.path for f in client.list_artifacts(child.run_id, "model/code")} == {"model/code/textmodels.py"}
    assert "doc-" not in str(run.data.params) + str(run.data.tags)  # no sample ID anywhere


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo-text")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    project = _train(root, uri)
    return root, project, uri


def test_token_models_unlearn_through_the_api_and_the_cli_from_another_folder(local, tmp_path):
    root, _, uri = local
    client = MlflowClient(uri, uri)
    mlflow.set_tracking_uri(uri)  # for get_model_info (conftest restores it)
    for name in MODELS:
        (v1,) = client.search_model_versions(f"name='{name}'")
        signature = mlflow.models.get_model_info(f"runs:/{v1.run_id}/model").signature
        assert str(signature.inputs.inputs[0].type) == "int64"  # token IDs, not floats

    elsewhere = root / "elsewhere"  # not the project: textmodels is importable only from the logged code
    elsewhere.mkdir()
    (elsewhere / "unlearn_text.py").write_text(readme_scripts(SECTION, SCRIPTS)["unlearn_text.py"])
    printed = _run([sys.executable, "unlearn_text.py"], elsewhere, uri).strip().splitlines()
    assert [line.split()[0] for line in printed[-2:]] == ["models:/text-clf/2", "models:/cnn-clf/2"]
    for name, (cls, output_type) in MODELS.items():
        _assert_child(client, name, "2", "1", 1)
        run = client.get_run(client.get_model_version(name, "2").run_id)
        assert float(run.data.metrics[ONNX_DIFF_METRIC]) <= ONNX_TOLERANCE  # the ONNX copy of int64 inputs
        local_dir = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model", dst_path=str(tmp_path / name),
                                                        tracking_uri=uri)
        model = load_trainable_module(local_dir)
        assert type(model).__name__ == cls and type(model).__module__ == "textmodels"  # the user's class, no wrapper
        assert isinstance(model(torch.zeros(2, 16, dtype=torch.long)), output_type)
        sys.modules.pop("textmodels", None)

    cli = Path(sys.executable).parent / "mlflow-unlearn"
    out = _run([str(cli), "unlearn", "models:/cnn-clf/2", "--forget", "classes:2", "--device", "cpu", "--no-onnx"],
               elsewhere, uri)
    assert "models:/cnn-clf/3" in out, out
    _assert_child(client, "cnn-clf", "3", "2", 2)


@pytest.fixture(scope="module")
def server(local, installed_site):
    """A server with the plugin over the store that ``train_text.py`` logged into (no second training)."""
    root, _, uri = local
    srv = Server(root / "server", installed_site, backend_uri=uri, registry_uri=f"unlearn+{uri}")
    srv.start()
    yield srv
    srv.stop()


def test_registry_requests_unlearn_both_token_models(server):
    """Both requests at once, each run by the server's job in a process that never saw the project."""
    client = MlflowClient(server.url, server.url)
    for name in MODELS:
        response = requests.post(f"{server.url}/api/2.0/mlflow/model-versions/set-tag", timeout=60, json={
            "name": name, "version": "1", "key": "mlflow_unlearn.request", "value": "forget=classes:3"})
        assert response.status_code == 200, response.text
    deadline = time.time() + TIMEOUT_S
    tags = {}
    while time.time() < deadline:
        tags = {name: client.get_model_version(name, "1").tags for name in MODELS}
        if all(t.get("mlflow_unlearn.status") in ("succeeded", "failed") for t in tags.values()):
            break
        time.sleep(1)
    for name in MODELS:
        assert tags[name].get("mlflow_unlearn.status") == "succeeded", (tags[name], server.log_tail())
        result_name, _, result_version = tags[name]["mlflow_unlearn.result_version"].partition("/")
        assert result_name == name
        _assert_child(client, name, result_version, "1", 3)
