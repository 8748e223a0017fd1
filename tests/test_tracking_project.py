"""``mlflow run . -e unlearn --env-manager local`` as a subprocess, logging into the run it creates."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from mlflow_unlearn.tracking import project_dir
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.api import train_model

REPO = project_dir().parent.parent


@pytest.mark.slow
def test_mlflow_run_unlearn_entry_point(tmp_path, sqlite_store):
    store = sqlite_store("project")
    uri, experiment = store.uri, store.experiment
    client = MlflowClient(uri)
    train_model("digits", arch="mlp", registered_model_name="proj", config={"epochs": 3}, onnx=False, device="cpu",
                tracking_uri=uri, experiment=experiment)
    config = tmp_path / "finetune.yaml"
    config.write_text("epochs: 2\nlr: 0.1\ngate:\n  max_test_drop: 100\n  forget_tolerance: 100\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_UNLEARN_QUIET": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "unlearn", "--env-manager", "local",
         "--experiment-id", experiment, "-P", "model_uri=models:/proj/1", "-P", "forget=classes:3",
         "-P", "method=finetune", "-P", f"config={config}", "-P", "device=cpu", "-P", "seed=7"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Registered models:/proj/2" in proc.stdout
    runs = client.search_runs([experiment], filter_string="tags.`mlflow.project.entryPoint` = 'unlearn'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags[vocab.VERDICT_TAG] == "passed" and run.data.tags[vocab.RESULT_VERSION_TAG] == "proj/2"
    assert run.data.params["model_uri"] == "models:/proj/1" and run.data.params["unlearn.method"] == "finetune"
    assert run.data.params["unlearn.seed"] == "7"  # -P seed= reached the request (issue 28)
    version = client.get_model_version("proj", "2")
    assert version.run_id == run.info.run_id and set(version.tags) == set(vocab.VERSION_TAG_KEYS)
    assert {f.path for f in client.list_artifacts(run.info.run_id)} >= {"model", "onnx_model", "report"}  # onnx: "true"


@pytest.mark.slow
def test_mlflow_run_unlearn_distributed_entry_point_registers_once(tmp_path, sqlite_store):
    """``-e unlearn_distributed -P nproc=2 -P onnx=false``: two gloo processes, one run, one new version, no ONNX
    copy."""
    store = sqlite_store("project-ddp")
    uri, experiment = store.uri, store.experiment
    client = MlflowClient(uri)
    train_model("digits", arch="smallcnn", registered_model_name="ddp", config={"epochs": 3}, onnx=False,
                device="cpu", tracking_uri=uri, experiment=experiment)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_UNLEARN_QUIET": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "unlearn_distributed", "--env-manager", "local",
         "--experiment-id", experiment, "-P", "model_uri=models:/ddp/1", "-P", "forget=classes:3",
         "-P", "nproc=2", "-P", "device=cpu", "-P", "onnx=false"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Registered models:/ddp/2") == 1
    runs = client.search_runs([experiment], filter_string="tags.`mlflow.project.entryPoint` = 'unlearn_distributed'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.params["unlearn.method"] == "nitc" and run.data.tags[vocab.RESULT_VERSION_TAG] == "ddp/2"
    assert sorted(int(v.version) for v in client.search_model_versions("name='ddp'")) == [1, 2]
    version = client.get_model_version("ddp", "2")
    assert version.run_id == run.info.run_id and set(version.tags) == set(vocab.VERSION_TAG_KEYS)
    assert version.tags["mlflow_unlearn.verdict"] == "passed" and run.data.metrics["unlearned.forget_accuracy"] < 10
    assert len(client.search_runs([experiment], filter_string="params.`unlearn.method` = 'nitc'")) == 1  # not rank 1
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert "model" in artifacts and "onnx_model" not in artifacts  # -P onnx=false became --onnx-copy false
