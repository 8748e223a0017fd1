"""The product through the registry: a request that names only what to forget runs the default method (NITC) with
the acceptance gate on, in a job of a real ``mlflow server`` with the plugin, and the new version has forgotten.

The other registry tests use ``method=finetune`` for one epoch with a permissive gate (they are about requests,
not about forgetting). This one is small too (a ``smallcnn`` trained on ``digits`` for a few epochs) but takes
every default: the method, its config and the gate's thresholds.
"""

from __future__ import annotations

import time

import pytest
import requests
from mlflow import MlflowClient

from mlflow_unlearn.tracking import vocabulary as vocab

pytestmark = pytest.mark.slow

MODEL = "digits-smallcnn-defaults"
JOB_TIMEOUT_S = 600
#: Ten classes: a model that never saw the class scores about chance (10%) on it; the gate's default tolerance.
CHANCE_PLUS_TOLERANCE = 15.0


@pytest.fixture(scope="module")
def request_done(plugin_server):
    """Version 1 trained through the server, then the request ``forget=classes:3`` on it, run to its end."""
    from mlflow_unlearn.tracking import train_model

    train_model("digits", arch="smallcnn", registered_model_name=MODEL, config={"epochs": 8}, onnx=False,
                device="cpu", tracking_uri=plugin_server.url, registry_uri=plugin_server.url)
    response = requests.post(f"{plugin_server.url}/api/2.0/mlflow/model-versions/set-tag", timeout=60, json={
        "name": MODEL, "version": "1", "key": vocab.REQUEST_TAG, "value": "forget=classes:3"})
    assert response.status_code == 200, response.text
    client = MlflowClient(plugin_server.url, plugin_server.url)
    start, tags = time.time(), {}
    while time.time() < start + JOB_TIMEOUT_S:
        tags = client.get_model_version(MODEL, "1").tags
        if tags.get(vocab.STATUS_TAG) in ("succeeded", "failed"):
            break
        time.sleep(1)
    print(f"\ndefault request on {MODEL}/1: {tags.get(vocab.STATUS_TAG)} after {time.time() - start:.1f} s")
    return client, tags, plugin_server


def test_a_request_with_the_defaults_forgets_the_class_and_passes_the_gate(request_done):
    client, tags, server = request_done
    assert tags.get(vocab.STATUS_TAG) == "succeeded", (tags.get(vocab.ERROR_TAG), server.log_tail())
    name, _, version = tags[vocab.RESULT_VERSION_TAG].partition("/")
    child = client.get_model_version(name, version)
    assert name == MODEL and child.tags[vocab.PARENT_TAG] == f"{MODEL}/1"
    assert child.tags[vocab.METHOD_TAG] == vocab.DEFAULT_METHOD == "nitc"
    assert child.tags[vocab.VERDICT_TAG] == "passed"
    run = client.get_run(child.run_id)
    assert run.data.params["unlearn.method"] == "nitc" and run.data.tags[vocab.VERDICT_TAG] == "passed"
    # class-wise forgetting: the gate judges the accuracies; the membership test is reported, not gated
    assert run.data.tags[vocab.GATE_EVIDENCE_TAG] == "not tested"
    metrics = run.data.metrics
    assert metrics["original.forget_accuracy"] > 90  # there was something to forget
    assert metrics["unlearned.forget_accuracy"] <= CHANCE_PLUS_TOLERANCE, metrics
    assert metrics["unlearned.retain_accuracy"] >= metrics["original.retain_accuracy"] - 5, metrics
    assert metrics["unlearned.test_accuracy"] >= metrics["original.test_accuracy"] - 15, metrics  # class 3 is gone
