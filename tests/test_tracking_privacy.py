"""Privacy: after an ``ids:`` unlearning, no raw forget ID appears anywhere MLflow stores run or version data."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from mlflow_unlearn.data import load_data
from mlflow_unlearn.tracking.api import train_model, unlearn
from mlflow_unlearn.tracking.keys import read_digest_key


def _user_id(i: int) -> str:
    return f"user-{i:04d}q{(i * 7919) % 99991:05d}"


def _texts_of(client: MlflowClient, run_id: str) -> list[str]:
    run = client.get_run(run_id)
    texts = [run.info.run_name or "", *run.data.params, *run.data.params.values(), *run.data.tags,
             *run.data.tags.values(), *run.data.metrics]
    for dataset_input in run.inputs.dataset_inputs:
        dataset = dataset_input.dataset
        texts += [dataset.name, dataset.digest, dataset.source, dataset.source_type, dataset.schema or "",
                  dataset.profile or "", *(t.value for t in dataset_input.tags)]
    return texts


@pytest.mark.slow
def test_no_forget_id_in_params_tags_metrics_inputs_artifacts_or_version(tmp_path, sqlite_store):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    n = 600
    ids = np.array([_user_id(i) for i in range(n)])
    data = tmp_path / "users.npz"
    np.savez(data, x=(bunch.data[:n] / 16.0).reshape(-1, 1, 8, 8).astype(np.float32), y=bunch.target[:n], ids=ids)
    source = f"npz:{data}"
    forgotten = [str(i) for i in load_data(source).train.ids[:7]]
    request = tmp_path / "forget_request.csv"
    request.write_text("id\n" + "\n".join(forgotten) + "\n")

    store = sqlite_store("privacy")
    uri, experiment = store.uri, store.experiment
    client = MlflowClient(uri)
    train_model(source, arch="mlp", registered_model_name="users", config={"epochs": 2}, onnx=False, device="cpu",
                tracking_uri=uri, experiment=experiment)
    outcome = unlearn("models:/users/1", forget=f"ids:{request}", method="finetune", config={"epochs": 1},
                      force=True, device="cpu", tracking_uri=uri)
    assert outcome.version is not None
    version = client.get_model_version("users", outcome.version.version)
    assert version.tags["mlflow_unlearn.forget_count"] == "7"

    texts = _texts_of(client, outcome.run_id)
    texts += [*version.tags, *version.tags.values(), version.description or "", version.source,
              client.get_registered_model("users").description or ""]
    blobs = []
    local = download_artifacts(run_id=outcome.run_id, artifact_path="", dst_path=str(tmp_path / "dl"),
                               tracking_uri=uri)
    files = [p for p in (tmp_path / "dl").rglob("*") if p.is_file()]
    assert {"unlearning_report.json", "unlearning_report.md", "MLmodel", "model.pth", "model.onnx"} <= {
        p.name for p in files}, local
    blobs = [p.read_bytes() for p in files]
    joined = "\n".join(texts)
    for forget_id in forgotten:
        assert forget_id not in joined
        assert not any(forget_id.encode() in blob for blob in blobs)
    # The check is meaningful: the IDs exist in the data and retained IDs are not censored by accident.
    assert forgotten[0] in set(ids)
    # issue 17: the request file's path is not recorded either, only its keyed digest
    assert read_digest_key().spec_digest(f"ids:{request}") in joined and str(request) not in joined
