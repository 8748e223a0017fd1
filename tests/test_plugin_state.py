"""The plugin owns its state (issue 28, item 2): its own tables, MLflow's tables only through the store's public
methods, and a database of the first ledger (state in version tags) migrated with its requests resumed.

The old-ledger database is built the way the first ledger left it: the plugin's tags on the versions, written
here through MLflow's stock store (the first ledger wrote the very same keys and values in its transactions); one
request running whose launcher died after its job had registered a result, one request waiting in the queue, and
one active status that no request of the plugin wrote. The new plugin store then recovers: the running request is
finalised from its run, the waiting one is admitted when the slot frees and runs to its final status.
"""

from __future__ import annotations

import ast
import socket
import types
from pathlib import Path

import pytest
import sqlalchemy as sa
from fresh_db import migrated_sqlite
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersionTag
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore
from mlflow_unlearn_plugins import job, launcher, scheduler
from mlflow_unlearn_plugins.ledger import SCHEMA_VERSION, Ledger
from mlflow_unlearn_plugins.registry_store import UnlearnRegistryStore
from mlflow_unlearn_plugins.request import SecurityPolicy
from mlflow_unlearn_plugins.settings import LauncherSettings, PluginSettings

from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.keys import read_digest_key

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
MODEL = "old-ledger"
DEAD_PID = 2**22 + 7  # above the kernel's pid_max: no such process


def test_the_plugin_neither_locks_nor_writes_mlflow_private_tables():
    """No ``alembic_version`` anywhere in the plugin, and no import of MLflow's ORM models (``dbmodels``)."""
    for path in sorted(PLUGINS.glob("*.py")):
        text = path.read_text()
        assert "alembic_version" not in text, path.name
        for node in ast.walk(ast.parse(text)):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            assert not [n for n in names if "dbmodels" in n], (path.name, names)


def test_the_library_never_imports_the_plugin_and_serve_is_the_plugins_own_program():
    """Imports run one way (``mlflow_unlearn`` -> ``mlflow_unlearn_plugins``), so the webhook receiver is the
    plugin's console script, not a command of ``mlflow-unlearn``."""
    from configparser import ConfigParser

    from mlflow_unlearn.tracking.cli import cli

    library = PLUGINS.parent / "mlflow_unlearn"
    for path in sorted(library.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            assert not [n for n in names if n.startswith("mlflow_unlearn_plugins")], path
    assert "serve" not in cli.commands
    config = ConfigParser()
    config.read(PLUGINS.parent / "setup.cfg")
    scripts = dict(line.split(" = ") for line in config["options.entry_points"]["console_scripts"].split("\n") if line)
    assert scripts["mlflow-unlearn-serve"] == "mlflow_unlearn_plugins.webhook:main"


def _old_ledger_tags(request_id: str, value: str, status: str, **extra: str) -> dict[str, str]:
    return {vocab.STATUS_TAG: status, vocab.REQUEST_TAG: value, vocab.REQUEST_ID_TAG: request_id, **extra}


@pytest.fixture()
def old_ledger_db(tmp_path):
    """A registry (and tracking) database as the first ledger left it after its server and launcher died."""
    uri = migrated_sqlite(tmp_path / "mlflow.db")
    stock = SqlAlchemyStore(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    stock.create_registered_model(MODEL)
    for _ in range(4):
        stock.create_model_version(MODEL, "file:///nowhere")
    experiment = client.create_experiment(job.REQUESTS_EXPERIMENT)
    run = client.create_run(experiment, tags={vocab.RESULT_VERSION_TAG: f"{MODEL}/4"})  # its job registered m/4
    client.set_terminated(run.info.run_id, "FINISHED")
    host = socket.gethostname()
    tags = {
        1: _old_ledger_tags("old-running", "forget=classes:1; method=finetune", "running",
                            **{vocab.REQUEST_RUN_TAG: run.info.run_id, vocab.LEASE_TAG: f"{host}|{DEAD_PID}|1",
                               vocab.JOB_TAG: f"{host}|{DEAD_PID}"}),
        2: _old_ledger_tags("old-queued", "forget=classes:2; method=finetune", "queued",
                            **{vocab.QUEUE_POSITION_TAG: "1"}),
        3: {vocab.STATUS_TAG: "running"},  # no request ID: not written by the plugin
    }
    for version, values in tags.items():
        for key, value in values.items():
            stock.set_model_version_tag(MODEL, str(version), ModelVersionTag(key, value))
    stock.engine.dispose()
    return uri, run.info.run_id


def test_an_old_ledger_database_is_migrated_and_its_requests_resumed(old_ledger_db, tmp_path, monkeypatch):
    uri, old_run = old_ledger_db
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what start_launcher gives a launcher process
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    settings = PluginSettings(policy=SecurityPolicy(allowed_roots=()), digest_key=read_digest_key(),
                              launcher=LauncherSettings(device="cpu", log_dir=str(tmp_path / "logs"), max_jobs=1))
    launched: list[tuple[int, str]] = []

    def launcher_in_this_process(ledger_uri, mirror_uri, name, version, request_id, *, settings, **_):
        """The launcher's own main(), in this process: its job, then the next waiting requests."""
        launched.append((int(version), request_id))
        log = tmp_path / "logs" / f"{request_id}.log"
        log.parent.mkdir(exist_ok=True)
        launcher.main(["--ledger-uri", ledger_uri, "--mirror-uri", mirror_uri, "--name", name, "--version",
                       str(version), "--request-id", request_id, "--log", str(log), "--settings", settings.to_json()])
        return DEAD_PID

    def project_job(self, request, run_id):
        """The MLflow Projects job of a request, as a run that ends with a registered result (the job itself runs
        in test_plugin_server.py): the launcher's own steps around it are what this test is about."""
        client = MlflowClient()
        client.set_tag(run_id, vocab.RESULT_VERSION_TAG, f"{MODEL}/5")
        client.set_terminated(run_id, "FINISHED")
        return types.SimpleNamespace(run_id=run_id, get_status=lambda: "FINISHED")

    monkeypatch.setattr(scheduler, "start_launcher", launcher_in_this_process)
    monkeypatch.setattr(job.Job, "_preflight", lambda *args, **kwargs: None)
    monkeypatch.setattr(job.Job, "_launch", project_job)

    store = UnlearnRegistryStore("unlearn+" + uri, tracking_uri=uri, settings=settings)
    store.get_registered_model(MODEL)  # the first registry call recovers

    assert launched == [(1, "old-running"), (2, "old-queued")]  # the running one first, then the queue
    first, second, foreign = (store.get_model_version(MODEL, v).tags for v in (1, 2, 3))
    assert first[vocab.STATUS_TAG] == "succeeded" and first[vocab.RESULT_VERSION_TAG] == f"{MODEL}/4"
    assert first[vocab.REQUEST_RUN_TAG] == old_run and first[vocab.REQUEST_ID_TAG] == "old-running"
    assert MlflowClient(uri).get_run(old_run).data.tags[vocab.STATUS_TAG] == "succeeded"
    assert second[vocab.STATUS_TAG] == "succeeded" and second[vocab.RESULT_VERSION_TAG] == f"{MODEL}/5"
    assert second[vocab.REQUEST_ID_TAG] == "old-queued" and second[vocab.REQUEST_TAG].startswith("forget=classes:2")
    for tags in (first, second):  # nothing of the request's work is left behind on the version
        assert not {vocab.LEASE_TAG, vocab.JOB_TAG, vocab.QUEUE_POSITION_TAG} & set(tags)
    assert foreign[vocab.STATUS_TAG] == "failed" and "not written by the plugin" in foreign[vocab.ERROR_TAG]
    # the state lives in the plugin's own tables now, at the current schema version
    engine = sa.create_engine(uri)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM mlflow_unlearn_schema")).scalar_one() == SCHEMA_VERSION
        rows = dict(conn.execute(sa.text("SELECT version, status FROM mlflow_unlearn_requests")).all())
    assert rows == {1: "succeeded", 2: "succeeded", 3: "failed"}
    # a second plugin process migrates nothing again, and sees the same state
    again = Ledger(engine, legacy=lambda: pytest.fail("the migration ran twice"))
    assert again.read(MODEL, 2).status == "succeeded" and again.active() == []
    engine.dispose()
