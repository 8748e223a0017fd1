"""What a plugin server publishes about itself (issue 29, defect 9), against a real ``mlflow server`` with the plugin.

* A refused request's reason (the world-readable tags ``mlflow_unlearn.status`` / ``.error``, and the HTTP answer)
  never names the server's allowed-roots directory: a request that points outside it is told that it does, not
  where the roots are.
* A registry database error (a duplicate name; a database locked by another writer, MLflow's 503) is answered
  without its SQL statement and parameters.
"""

from __future__ import annotations

import os
import sqlite3

import pytest
import requests
from test_plugin_server import Server, _client

from mlflow_unlearn.tracking import vocabulary as vocab

pytestmark = pytest.mark.slow

MODEL = "public-errors"
SQL_WORDS = ("[SQL", "INSERT INTO", "UPDATE ", "SELECT ", "[parameters", "sqlalche.me")


@pytest.fixture(scope="module")
def server(plugin_server) -> Server:
    """The suite's shared plugin server (conftest.py; its settings are MLflow's and the plugin's defaults, as this
    module needs), with this module's files under its allowed root and outside it, and the model ``public-errors``
    (version 1, no files: every request here is refused before a job would load it)."""
    srv = plugin_server
    (srv.allowed / "fast.yaml").write_text("epochs: 1\n")
    outside = srv.root / "elsewhere"
    outside.mkdir(exist_ok=True)
    for name in ("c.yaml", "ids.txt", "d.npz"):
        (outside / name).write_text("x\n")
    link = srv.allowed / "link.yaml"
    if not link.is_symlink():
        link.symlink_to(outside / "c.yaml")
    client = _client(srv)
    client.create_registered_model(MODEL)
    run = client.create_run(client.create_experiment("public-errors"))
    client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id)
    return srv


def _roots(server: Server) -> tuple[str, ...]:
    return str(server.allowed), os.path.realpath(server.allowed)


@pytest.mark.parametrize("request_value", [
    "forget=classes:3; config={outside}/c.yaml",
    "forget=ids:{outside}/ids.txt",
    "forget=classes:3; data=npz:{outside}/d.npz",
    "forget=classes:3; config=/etc/passwd",
], ids=["config", "ids-file", "data", "system-file"])
def test_a_refusal_does_not_name_the_allowed_roots(server, request_value):
    value = request_value.format(outside=server.root / "elsewhere")
    answer = requests.post(f"{server.url}/api/2.0/mlflow/model-versions/set-tag",
                           json={"name": MODEL, "version": "1", "key": vocab.REQUEST_TAG, "value": value}, timeout=60)
    tags = _client(server).get_model_version(MODEL, "1").tags
    assert tags.get(vocab.STATUS_TAG) == "failed" and "outside" in tags.get(vocab.ERROR_TAG, ""), tags
    published = [answer.text] + [text for key, text in tags.items() if key != vocab.REQUEST_TAG]
    for root in _roots(server):
        assert not any(root in text for text in published), (root, published)


def test_a_symlink_out_of_the_roots_is_refused_without_naming_its_target(server):
    value = f"forget=classes:3; config={server.allowed}/link.yaml"  # the user's own path is under the root
    requests.post(f"{server.url}/api/2.0/mlflow/model-versions/set-tag",
                  json={"name": MODEL, "version": "1", "key": vocab.REQUEST_TAG, "value": value}, timeout=60)
    tags = _client(server).get_model_version(MODEL, "1").tags
    assert tags.get(vocab.STATUS_TAG) == "failed" and "outside" in tags[vocab.ERROR_TAG]
    assert "elsewhere" not in tags[vocab.ERROR_TAG]  # where the link leads is the server's business


def test_a_duplicate_name_is_answered_without_sql(server):
    answer = requests.post(f"{server.url}/api/2.0/mlflow/registered-models/create", json={"name": MODEL}, timeout=60)
    assert answer.status_code == 400 and answer.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"
    assert not any(word in answer.text for word in SQL_WORDS), answer.text


def test_a_locked_registry_database_is_answered_503_without_sql(server):
    """Another writer holds the SQLite database for longer than MLflow's 20 s busy timeout."""
    locker = sqlite3.connect(server.root / "registry.db", timeout=30, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        answer = requests.post(f"{server.url}/api/2.0/mlflow/registered-models/create", json={"name": "other"},
                               timeout=120)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert answer.status_code == 503 and answer.json()["error_code"] == "TEMPORARILY_UNAVAILABLE", answer.text
    assert "locked" in answer.json()["message"]
    assert not any(word in answer.text for word in SQL_WORDS), answer.text


@pytest.mark.parametrize(("method", "path", "payload"), [
    ("post", "model-versions/set-tag", {"key": vocab.REQUEST_TAG, "value": "forget=classes:3"}),
    ("post", "model-versions/set-tag", {"key": "team", "value": "fraud"}),
    ("post", "model-versions/transition-stage", {"stage": "Unlearn", "archive_existing_versions": False}),
    ("delete", "model-versions/delete-tag", {"key": vocab.REQUEST_TAG}),
    ("delete", "model-versions/delete", {}),
], ids=["request-tag", "other-tag", "unlearn-transition", "delete-request-tag", "delete-version"])
@pytest.mark.parametrize("version", ["abc", "1.5", ""])
def test_a_malformed_version_is_answered_400_like_stock_mlflow(server, method, path, payload, version):
    """Issue 29, defect 4: ``version: "abc"`` on the set-tag path was an HTML 500 with a traceback."""
    answer = requests.request(method, f"{server.url}/api/2.0/mlflow/{path}",
                              json={"name": MODEL, "version": version} | payload, timeout=60)
    assert answer.status_code == 400, answer.text[:500]
    assert answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "Traceback" not in answer.text and len(answer.text) < 500
