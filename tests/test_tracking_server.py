"""Train, unlearn and read the report through a real ``mlflow server`` subprocess on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from fresh_db import migrated_sqlite
from mlflow import MlflowClient
from test_plugin_server import MLFLOW_JOBS_OFF

from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.api import train_model, unlearn


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} not healthy after {timeout} s")


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", migrated_sqlite(tmp_path / "server.db"),
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
        env={**os.environ, **MLFLOW_JOBS_OFF},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow
def test_unlearn_through_a_tracking_server(server, tmp_path):
    client = MlflowClient(server)
    trained = train_model("digits", arch="mlp", registered_model_name="served", config={"epochs": 3}, onnx=False,
                          device="cpu", tracking_uri=server)
    outcome = unlearn("models:/served/1", forget="classes:3", method="finetune", config={"epochs": 2, "lr": 0.1},
                      gate={"max_test_drop": 100}, device="cpu", tracking_uri=server)
    assert str(outcome.version.version) == "2" and outcome.verdict == "passed"
    assert outcome.report_uri.startswith("mlflow-artifacts:/")
    version = client.get_model_version("served", "2")
    assert set(version.tags) == set(vocab.VERSION_TAG_KEYS) and version.tags[vocab.PARENT_TAG] == "served/1"
    assert version.run_id == outcome.run_id != trained.run_id
    assert client.get_run(outcome.run_id).data.tags[vocab.RESULT_VERSION_TAG] == "served/2"
    assert 0 <= client.get_run(outcome.run_id).data.metrics["onnx.max_abs_diff"] <= 1e-4
    report = client.download_artifacts(outcome.run_id, "report/unlearning_report.md", str(tmp_path))
    assert "Verdict: PASSED" in open(report).read()
