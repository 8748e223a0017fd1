"""The user's script, end to end: README "Bring your own model" is the script this test runs.

The README's ``mymodel.py`` and ``train.py`` are written to a project folder and ``train.py`` is run there (its
own class, its own npz with string IDs and a ``split`` array, ``mlflow_unlearn.log_model``); then, from another
folder and without ``PYTHONPATH`` (the user's module comes from the model's logged ``code_paths``), the README's
``unlearn.py`` (API, chained), the CLI (chained again, in a fresh process), and a registry request through a real
``mlflow server`` with the plugin.

README "Bring your own data pipeline": ``scans.py`` (a ``Dataset`` factory) and ``scans_train.py`` logged to this
module's server, then unlearned by a registry request whose job never saw the project; the API, CLI and
preprocessing runs of that section are in test_byo_pipeline.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from test_plugin_server import Server

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"
MODEL = "byo"
TIMEOUT_S = 900


def readme_scripts(section: str = "Bring your own model",
                   names: tuple[str, ...] = ("mymodel.py", "train.py", "unlearn.py")) -> dict[str, str]:
    """The python blocks of the README's ``section``, by the file name on their first line (exactly ``names``)."""
    text = README.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    scripts = {block.splitlines()[0].removeprefix("# ").strip(): block for block in blocks}
    assert set(scripts) == set(names), scripts.keys()
    return scripts


def pipeline_scripts() -> dict[str, str]:
    """README "Bring your own data pipeline": the preprocessing example and the Dataset factory."""
    return readme_scripts("Bring your own data pipeline", ("folder_train.py", "scans.py", "scans_train.py"))


def _env(tracking_uri: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "_MLFLOW_")) and k != "PYTHONPATH"}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_UNLEARN_DEVICE="cpu", **extra)
    return env


def _run(args: list[str], cwd: Path, tracking_uri: str, **extra_env: str) -> str:
    done = subprocess.run(args, cwd=cwd, env=_env(tracking_uri, **extra_env), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _run_project(project: Path, scripts: dict[str, str], tracking_uri: str) -> Path:
    """Write the README's ``scripts`` (name -> text) into a new ``project`` folder and run the last one there."""
    project.mkdir(parents=True)
    for name, text in scripts.items():
        (project / name).write_text(text)
    _run([sys.executable, list(scripts)[-1]], project, tracking_uri)
    return project


def _train(root: Path, tracking_uri: str) -> Path:
    """The user's project: README's mymodel.py and train.py, run there."""
    scripts = readme_scripts()
    return _run_project(root / "project", {name: scripts[name] for name in ("mymodel.py", "train.py")}, tracking_uri)


def _versions(client: MlflowClient, model: str = MODEL) -> dict[str, object]:
    return {str(v.version): v for v in client.search_model_versions(f"name='{model}'")}


def _assert_child(client: MlflowClient, child, parent: str, forgot_class: int) -> None:
    assert child.tags["mlflow_unlearn.parent"] == f"{MODEL}/{parent}"
    assert child.tags["mlflow_unlearn.verdict"] == "passed"
    run = client.get_run(child.run_id)
    assert run.data.params["data.split"] == "explicit"  # the user's own split, recorded
    assert run.data.params["forget.classes"] == str(forgot_class)
    assert float(run.data.metrics["unlearned.forget_accuracy"]) <= 15.0  # chance (10%) + the gate's 5 points
    files = {f.path for f in client.list_artifacts(child.run_id, "model/code")}
    assert files == {"model/code/mymodel.py"}, files  # the code travels with every version


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    project = _train(root, uri)
    return root, project, uri


def test_training_script_logs_a_model_that_unlearn_needs_only_the_uri_of(local):
    root, project, uri = local
    client = MlflowClient(uri, uri)
    (v1,) = _versions(client).values()
    run = client.get_run(v1.run_id)
    assert run.data.params["data.split"] == "explicit" and run.data.params["data.n_test"] == "360"
    contexts = sorted(t.value for i in run.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context")
    assert contexts == ["test", "train"]
    assert "user-" not in str(run.data.params) + str([i.dataset.source for i in run.inputs.dataset_inputs])
    assert {f.path for f in client.list_artifacts(v1.run_id, "model/code")} == {"model/code/mymodel.py"}

    elsewhere = root / "elsewhere"  # not the project: mymodel is importable only from the logged code
    elsewhere.mkdir()
    (elsewhere / "unlearn.py").write_text(readme_scripts()["unlearn.py"])
    printed = _run([sys.executable, "unlearn.py"], elsewhere, uri)
    assert printed.strip().splitlines()[-1] == f"models:/{MODEL}/3"
    versions = _versions(client)
    _assert_child(client, versions["2"], "1", 3)
    _assert_child(client, versions["3"], "2", 5)

    cli = Path(sys.executable).parent / "mlflow-unlearn"
    out = _run([str(cli), "unlearn", f"models:/{MODEL}/3", "--forget", "classes:7", "--device", "cpu",
                "--no-onnx"], elsewhere, uri)
    assert f"models:/{MODEL}/4" in out, out
    _assert_child(client, _versions(client)["4"], "3", 7)


@pytest.fixture(scope="module")
def server(plugin_server):
    """The suite's shared plugin server (conftest.py): this module's models are ``byo`` and ``scans``."""
    return plugin_server


def _request(srv: Server, version: str, value: str, model: str = MODEL) -> dict[str, str]:
    response = requests.post(f"{srv.url}/api/2.0/mlflow/model-versions/set-tag",
                             json={"name": model, "version": version, "key": "mlflow_unlearn.request", "value": value},
                             timeout=60)
    assert response.status_code == 200, response.text
    client = MlflowClient(srv.url, srv.url)
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline:
        tags = client.get_model_version(model, version).tags
        if tags.get("mlflow_unlearn.status") in ("succeeded", "failed"):
            return tags
        time.sleep(1)
    pytest.fail(f"request on {model}/{version} not finished after {TIMEOUT_S} s: {tags}\n{srv.log_tail()}")


def test_a_registry_request_unlearns_the_users_model(server):
    """One request through the server's job: the user's class comes from the version's logged code in a process
    that never saw the project. (Children carry that code on: the CLI above loads a child in a fresh process.)"""
    _train(server.allowed, server.url)  # the same script, logging to the server
    client = MlflowClient(server.url, server.url)
    tags = _request(server, "1", "forget=classes:3")
    assert tags["mlflow_unlearn.status"] == "succeeded", tags.get("mlflow_unlearn.error")
    assert tags["mlflow_unlearn.result_version"] == f"{MODEL}/2"
    _assert_child(client, _versions(client)["2"], "1", 3)


# ----------------------------------------------------------------------------------- README: your data pipeline

SCANS = "scans"


def _train_scans(root: Path, tracking_uri: str) -> Path:
    """README's scans.py (the user's Dataset factory) and scans_train.py, run in a project folder."""
    scripts = pipeline_scripts()
    return _run_project(root / "scans-project", {name: scripts[name] for name in ("scans.py", "scans_train.py")},
                        tracking_uri)


def _assert_scans_child(client: MlflowClient, child, parent: str, count: int) -> None:
    assert child.tags["mlflow_unlearn.parent"] == f"{SCANS}/{parent}"
    assert child.tags["mlflow_unlearn.forget_count"] == str(count)
    run = client.get_run(child.run_id)
    assert run.data.params["data.source"].startswith("factory:scans:make_datasets?root=")
    assert run.data.params["data.split"] == "explicit"
    assert {f.path for f in client.list_artifacts(child.run_id, "model/code")} == {"model/code/scans.py"}
    recorded = str(run.data.params) + str(run.data.tags) + str([i.dataset.source for i in run.inputs.dataset_inputs])
    assert "scan-0" not in recorded  # the factory's sample IDs: digests only


def _training_samples_of_class(project: Path, label: int) -> int:
    rows = (project / "scan-data" / "train.csv").read_text().splitlines()
    return sum(row.split(",")[1] == str(label) for row in rows)


def test_a_registry_request_replays_the_users_dataset_factory(server):
    """The job's process never saw the project: the factory comes from the version's logged code."""
    project = _train_scans(server.allowed, server.url)
    client = MlflowClient(server.url, server.url)
    tags = _request(server, "1", "forget=classes:3", model=SCANS)
    assert tags["mlflow_unlearn.status"] == "succeeded", tags.get("mlflow_unlearn.error")
    assert tags["mlflow_unlearn.result_version"] == f"{SCANS}/2"
    _assert_scans_child(client, _versions(client, SCANS)["2"], "1", _training_samples_of_class(project, 3))
