"""README "Bring your own data pipeline", the runs that need no server: ``scans.py`` (a ``Dataset`` factory) and
``scans_train.py`` are run in a project folder, then the model is unlearned from another folder without
``PYTHONPATH`` through the API and the CLI (an ``ids:`` request naming the factory's sample IDs);
``folder_train.py`` (torchvision transforms) checks that the accuracies the project logs equal the script's own
within 0.1 points. The registry request on the factory's model is in test_byo.py, beside that module's server.
(A file of its own, so that the two halves run on different pytest-xdist workers.)
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from fresh_db import migrated_sqlite
from mlflow import MlflowClient
from test_byo import (
    SCANS,
    _assert_scans_child,
    _run,
    _train_scans,
    _training_samples_of_class,
    _versions,
    pipeline_scripts,
)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("scans")
    uri = migrated_sqlite(root / "mlflow.db")
    return root, _train_scans(root, uri), uri


def test_a_dataset_factory_in_the_users_code_is_replayed_from_anywhere(scans):
    """The factory's module travels with the model: API and CLI, chained, from a folder that never saw it."""
    root, project, uri = scans
    client = MlflowClient(uri, uri)
    (v1,) = _versions(client, SCANS).values()
    run = client.get_run(v1.run_id)
    assert run.data.params["data.n_test"] == "160" and run.data.params["data.n_train"] == "640"
    assert {f.path for f in client.list_artifacts(v1.run_id, "model/code")} == {"model/code/scans.py"}

    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    # one deployment, one digest key (conftest.py's): the chained ids: step checks v2's provenance record with it
    key = {"MLFLOW_UNLEARN_DIGEST_KEY": os.environ["MLFLOW_UNLEARN_DIGEST_KEY"]}
    api = ("import mlflow_unlearn\n"
           f"print(mlflow_unlearn.unlearn('models:/{SCANS}/1', forget='classes:3', onnx=False).version.version)\n")
    assert _run([sys.executable, "-c", api], elsewhere, uri, **key).strip().splitlines()[-1] == "2"
    child = _versions(client, SCANS)["2"]
    _assert_scans_child(client, child, "1", _training_samples_of_class(project, 3))
    assert child.tags["mlflow_unlearn.verdict"] == "passed"
    assert float(client.get_run(child.run_id).data.metrics["unlearned.forget_accuracy"]) <= 15.0

    rows = [line.split(",") for line in (project / "scan-data" / "train.csv").read_text().splitlines()]
    request = elsewhere / "req-0042.csv"  # a deletion request: five of the factory's sample IDs that v2 still holds
    request.write_text("id\n" + "\n".join([i for i, label in rows if label != "3"][10:15]) + "\n")
    cli = Path(sys.executable).parent / "mlflow-unlearn"
    out = _run([str(cli), "unlearn", f"models:/{SCANS}/2", "--forget", f"ids:{request}", "--device", "cpu",
                "--no-onnx", "--force"], elsewhere, uri, **key)
    assert f"models:/{SCANS}/3" in out, out
    _assert_scans_child(client, _versions(client, SCANS)["3"], "2", 5)


def test_logged_accuracies_equal_the_users_own_for_a_model_trained_on_preprocessed_inputs(tmp_path):
    """torchvision's Resize, CenterCrop, ToTensor and Normalize in the user's script; the same as source options:
    the project's test accuracy (log_model's, which also checks the ONNX copy on those inputs, and the evaluation's
    from another folder) and its forget accuracy equal the script's own within 0.1 points."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "folder_train.py").write_text(pipeline_scripts()["folder_train.py"])
    uri = migrated_sqlite(tmp_path / "mlflow.db")
    printed = _run([sys.executable, "folder_train.py"], project, uri)
    mine_test, mine_threes = map(float, re.findall(r"[\d.]+(?=,|$)", printed.strip().splitlines()[-1]))
    client = MlflowClient(uri, uri)
    (v1,) = _versions(client, "digit-images").values()
    assert client.get_run(v1.run_id).data.params["data.source"].endswith("?size=12&crop=10&mean=0.3,0.25,0.2&"
                                                                          "std=0.4,0.3,0.25")
    assert abs(client.get_run(v1.run_id).data.metrics["test_accuracy"] - mine_test) <= 0.1
    assert client.get_run(v1.run_id).data.metrics["onnx.max_abs_diff"] <= 1e-4  # checked on the preprocessed inputs
    cli = Path(sys.executable).parent / "mlflow-unlearn"
    printed = _run([str(cli), "evaluate", "models:/digit-images/1", "--forget", "classes:3", "--device", "cpu",
                    "--json"], elsewhere, uri)
    metrics = json.loads(printed[printed.index("{"):])["model"]
    assert abs(metrics["test_accuracy"] - mine_test) <= 0.1
    assert abs(metrics["forget_accuracy"] - mine_threes) <= 0.1
    assert mine_test > 80  # a model that learned something: a wrong preprocessing would show
