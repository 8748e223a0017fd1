"""The unlearn API against a real SQLite registry: lineage tags, report, formats, chaining, idempotency, gate."""

from __future__ import annotations

import json
import logging
import os

import mlflow
import pytest
from fresh_db import migrated_sqlite
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_unlearn.data import load_data, resolve_forget
from mlflow_unlearn.tracking import lineage as lin
from mlflow_unlearn.tracking import project_dir
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.api import train_model, unlearn
from mlflow_unlearn.tracking.formats import load_trainable_module

FAST = {"epochs": 2, "lr": 0.1}
#: Where a test is about lineage rather than forgetting quality, the gate must not depend on how well a
#: two-epoch fine-tune forgets.
LENIENT = {"forget_tolerance": 100.0, "max_retain_drop": 100.0, "max_test_drop": 100.0,
           "membership_margin": 50.0}


@pytest.fixture(scope="module")
def uris(sqlite_store):
    store = sqlite_store("tracking-tests")
    return {**store.uris, "experiment": store.experiment}


@pytest.fixture(scope="module")
def base(uris):
    """An MLP trained on digits and registered as version 1 of ``digits-mlp``."""
    return train_model("digits", arch="mlp", registered_model_name="digits-mlp", config={"epochs": 5}, onnx=False,
                       device="cpu", **uris)


def _download_version(client, name, version, dst):
    return mlflow.artifacts.download_artifacts(artifact_uri=client.get_model_version_download_uri(name, version),
                                               dst_path=str(dst), tracking_uri=client.tracking_uri)


def _versions(client, name):
    return sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))


@pytest.mark.slow
def test_train_logs_recipe_dataset_input_and_a_trainable_version(uris, base, tmp_path):
    client = MlflowClient(uris["tracking_uri"], uris["registry_uri"])
    assert str(base.version.version) == "1" and base.test_accuracy > 80
    run = client.get_run(base.run_id)
    params = run.data.params
    assert params["model.arch"] == "mlp" and params["model.num_classes"] == "10" and params["data.source"] == "digits"
    assert params["train.epochs"] == "5" and params["data.test_fraction"] == "0.2"
    assert run.data.tags[vocab.RESULT_VERSION_TAG] == "digits-mlp/1"
    assert lin.lineage_from_run(run) == lin.DataLineage("digits", 0, 0.2)
    contexts = sorted({t.value for d in run.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"})
    assert contexts == ["test", "train"]
    local = _download_version(client, "digits-mlp", 1, tmp_path)
    model = load_trainable_module(local)
    assert all(p.requires_grad for p in model.parameters())
    model.train()  # a pickled nn.Module, not a pt2 graph: it can go back to training mode
    requirements = open(os.path.join(local, "requirements.txt")).read()
    assert "torch==" in requirements and "mlflow-unlearn==" in requirements


@pytest.mark.slow
def test_unlearn_registers_next_version_with_exact_lineage_tags_report_and_onnx(uris, base, tmp_path):
    client = MlflowClient(uris["tracking_uri"], uris["registry_uri"])
    parent_tags = dict(client.get_model_version("digits-mlp", "1").tags)
    outcome = unlearn("models:/digits-mlp/1", forget="classes:3", method="finetune", config=FAST, device="cpu",
                      **uris)
    assert outcome.verdict == "passed" and not outcome.reused
    version = outcome.version
    assert version.name == "digits-mlp" and int(version.version) > 1
    tags = client.get_model_version("digits-mlp", version.version).tags
    assert set(tags) == set(vocab.VERSION_TAG_KEYS)
    assert tags[vocab.PROVENANCE_TAG] == client.get_run(outcome.run_id).data.tags[vocab.PROVENANCE_TAG]
    assert tags[vocab.PARENT_TAG] == "digits-mlp/1" and tags[vocab.METHOD_TAG] == "finetune"
    assert tags[vocab.RUN_ID_TAG] == outcome.run_id and tags[vocab.VERDICT_TAG] == "passed"
    expected = resolve_forget(load_data("digits"), "classes:3")
    assert tags[vocab.FORGET_COUNT_TAG] == str(expected.count) and tags[vocab.FORGET_DIGEST_TAG] == expected.digest
    assert dict(client.get_model_version("digits-mlp", "1").tags) == parent_tags

    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[vocab.VERDICT_TAG] == "passed"
    assert run.data.tags[vocab.RESULT_VERSION_TAG] == f"digits-mlp/{version.version}"
    assert run.data.params["config.epochs"] == "2" and run.data.params["forget.kind"] == "class"
    assert run.data.params["model.arch"] == "mlp"  # the recipe is inherited for later retrain references
    # The method made the model forget class 3 while keeping the rest.
    metrics = outcome.metrics
    assert metrics.loc["original", "forget_accuracy"] > 80 > 20 > metrics.loc["unlearned", "forget_accuracy"]
    assert run.data.metrics["unlearned.forget_accuracy"] == pytest.approx(metrics.loc["unlearned", "forget_accuracy"])
    assert 0 <= outcome.onnx_max_abs_diff <= 1e-4
    assert run.data.metrics["onnx.max_abs_diff"] == pytest.approx(outcome.onnx_max_abs_diff)

    files = {f.path for f in client.list_artifacts(outcome.run_id, "report")}
    assert files == {"report/unlearning_report.json", "report/unlearning_report.md",
                     "report/accuracy_per_split.png", "report/loss_histograms.png"}
    local = mlflow.artifacts.download_artifacts(run_id=outcome.run_id, artifact_path="report",
                                                dst_path=str(tmp_path), tracking_uri=uris["tracking_uri"])
    report = json.load(open(os.path.join(local, "unlearning_report.json")))
    assert report["parent"]["version"] == "1" and report["result"]["version"] == str(version.version)
    assert report["method"] == "finetune" and report["config"]["epochs"] == 2 and report["verdict"] == "passed"
    assert report["forget"]["digest"] == tags[vocab.FORGET_DIGEST_TAG]
    assert str(report["forget"]["count"]) == tags[vocab.FORGET_COUNT_TAG]
    assert report["code_version"]["mlflow_unlearn"] and report["started_at"] <= report["finished_at"]
    assert set(report["metrics"]) == {"original", "unlearned"}
    markdown = open(os.path.join(local, "unlearning_report.md")).read()
    assert "Verdict: PASSED" in markdown and "digits-mlp/1" in markdown
    assert open(os.path.join(local, "accuracy_per_split.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    model_dir = _download_version(client, "digits-mlp", version.version, tmp_path / "v")
    assert any(p.requires_grad for p in load_trainable_module(model_dir).parameters())
    onnx_files = {f.path for f in client.list_artifacts(outcome.run_id, "onnx_model")}
    assert "onnx_model/model.onnx" in onnx_files and "onnx_model/MLmodel" in onnx_files


@pytest.mark.slow
def test_chained_unlearning_replays_the_forget_chain(uris, base):
    client = MlflowClient(uris["tracking_uri"], uris["registry_uri"])
    first = unlearn("models:/digits-mlp/1", forget="classes:5", method="finetune", config=FAST, onnx=False,
                    gate=LENIENT, device="cpu", **uris)
    second = unlearn(f"models:/digits-mlp/{first.version.version}", forget="classes:6", method="finetune",
                     config=FAST, onnx=False, gate=LENIENT, device="cpu", **uris)
    third = unlearn(f"models:/digits-mlp/{second.version.version}", forget="classes:7", method="finetune",
                    config=FAST, onnx=False, gate=LENIENT, device="cpu", **uris)
    assert int(first.version.version) < int(second.version.version) < int(third.version.version)
    tags = client.get_model_version("digits-mlp", third.version.version).tags
    assert tags[vocab.PARENT_TAG] == f"digits-mlp/{second.version.version}"
    run = client.get_run(third.run_id)
    chain = lin.lineage_from_run(run).chain
    assert [step.spec.text for step in chain] == ["classes:5", "classes:6", "classes:7"]
    # The retain set of v3 excludes everything forgotten on the way, and earlier forgotten classes stay forgotten.
    assert run.data.params["data.forget_steps_before"] == "2"
    assert third.metrics.loc["unlearned", "forget_accuracy"] < third.metrics.loc["original", "forget_accuracy"]
    retain = next(d for d in run.inputs.dataset_inputs if {t.value for t in d.tags} == {"retain"})
    count = int(json.loads(retain.dataset.source)["tags"]["mlflow_unlearn.count"])
    first_retain = next(d for d in client.get_run(first.run_id).inputs.dataset_inputs
                        if {t.value for t in d.tags} == {"retain"})
    assert count < int(json.loads(first_retain.dataset.source)["tags"]["mlflow_unlearn.count"]) - 200
    # The recipe travels down the chain.
    assert run.data.params["model.arch"] == "mlp" and run.data.params["train.epochs"] == "5"


@pytest.mark.slow
def test_same_request_returns_the_existing_version(uris, base):
    client = MlflowClient(uris["tracking_uri"], uris["registry_uri"])
    first = unlearn("models:/digits-mlp/1", forget="classes:8", method="finetune", config=FAST, onnx=False,
                    gate=LENIENT, device="cpu", **uris)
    before = _versions(client, "digits-mlp")
    again = unlearn("models:/digits-mlp/1", forget="classes:8", method="finetune", config=dict(FAST),
                    onnx=False, gate=LENIENT, device="cpu", **uris)
    assert again.reused and str(again.version.version) == str(first.version.version) and again.run_id == first.run_id
    assert _versions(client, "digits-mlp") == before
    assert again.metrics.loc["unlearned", "forget_accuracy"] == pytest.approx(
        first.metrics.loc["unlearned", "forget_accuracy"])
    other_seed = unlearn("models:/digits-mlp/1", forget="classes:8", method="finetune", config=FAST, seed=1,
                         onnx=False, gate=LENIENT, device="cpu", **uris)
    assert not other_seed.reused and str(other_seed.version.version) != str(first.version.version)


@pytest.mark.slow
def test_alias_gate_failure_force_and_no_register(uris, base):
    client = MlflowClient(uris["tracking_uri"], uris["registry_uri"])
    client.set_registered_model_alias("digits-mlp", "champion", "1")
    weak = {"epochs": 1, "lr": 1e-6}
    strict = {"forget_tolerance": 0.0}
    before = _versions(client, "digits-mlp")
    refused = unlearn("models:/digits-mlp@champion", forget="classes:2", method="finetune", config=weak, gate=strict,
                      onnx=False, device="cpu", **uris)
    assert refused.version is None and refused.verdict == "failed" and not refused.gate.passed
    assert any(f.startswith("forget:") for f in refused.gate.failures())
    assert _versions(client, "digits-mlp") == before
    run = client.get_run(refused.run_id)
    assert run.data.tags[vocab.VERDICT_TAG] == "failed" and vocab.RESULT_VERSION_TAG not in run.data.tags
    assert not client.list_artifacts(refused.run_id, "model")  # a refused model is not logged
    forced = unlearn("models:/digits-mlp@champion", forget="classes:2", method="finetune", config=weak, gate=strict,
                     force=True, onnx=False, device="cpu", **uris)
    assert forced.version is not None and forced.verdict == "failed"
    assert client.get_model_version("digits-mlp", forced.version.version).tags[vocab.VERDICT_TAG] == "failed"
    assert client.get_model_version("digits-mlp", forced.version.version).tags[vocab.PARENT_TAG] == "digits-mlp/1"
    unregistered = unlearn("models:/digits-mlp/1", forget="classes:4", method="finetune", config=FAST,
                           gate=LENIENT, register=False, onnx=False, device="cpu", **uris)
    assert unregistered.version is None and unregistered.verdict == "passed"
    assert _versions(client, "digits-mlp") == [*before, int(forced.version.version)]


@pytest.mark.slow
def test_retrain_reference_uses_the_parent_recipe(uris, base):
    outcome = unlearn("models:/digits-mlp/1", forget="classes:1", method="finetune", config=FAST, reference="retrain",
                      register=False, onnx=False, device="cpu", **uris)
    metrics = outcome.metrics
    assert list(metrics.index) == ["original", "unlearned", "retrain"]
    assert metrics.loc["retrain", "forget_accuracy"] < 5 and metrics.loc["retrain", "avg_gap"] == 0
    mia = outcome.gate.checks.set_index("check").loc["mia"]
    assert mia["passed"] is not None and mia["target"] == pytest.approx(metrics.loc["retrain", "mia_efficacy"])
    run = MlflowClient(uris["tracking_uri"]).get_run(outcome.run_id)
    assert run.data.metrics["time.reference_s"] > 0 and "retrain.test_accuracy" in run.data.metrics


@pytest.mark.slow
def test_current_tracking_uri_is_used_and_no_global_state_changes(uris, base, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uris["tracking_uri"])
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uris["registry_uri"])
    pytorch_level = logging.getLogger("mlflow.pytorch").level
    outcome = unlearn("models:/digits-mlp/1", forget="classes:0", method="finetune", config=FAST, register=False,
                      onnx=False, device="cpu", experiment=uris["experiment"])
    assert MlflowClient(uris["tracking_uri"]).get_run(outcome.run_id).info.status == "FINISHED"
    assert mlflow.active_run() is None
    assert logging.getLogger("mlflow.pytorch").level == pytorch_level
    with mlflow.start_run(experiment_id=uris["experiment"]) as outer:
        nested = unlearn("models:/digits-mlp/1", forget="classes:0", method="finetune", config=FAST, register=False,
                         onnx=False, device="cpu")
        assert mlflow.active_run().info.run_id == outer.info.run_id
    child = MlflowClient(uris["tracking_uri"]).get_run(nested.run_id)
    assert child.data.tags["mlflow.parentRunId"] == outer.info.run_id


def test_jobs_started_together_share_a_named_experiment(tmp_path, late_lookup_client):
    """A job that looked its experiment up just before a concurrent job created it uses that experiment."""
    from mlflow_unlearn.tracking.runlog import experiment_id

    client = MlflowClient(tracking_uri=migrated_sqlite(tmp_path / "tracking.db"))
    first = experiment_id(client, "deletion-requests", None)
    assert experiment_id(late_lookup_client(client), "deletion-requests", None) == first
    assert [e.name for e in client.search_experiments()].count("deletion-requests") == 1
    client.delete_experiment(first)
    with pytest.raises(MlflowException, match=f"'deletion-requests' \\(ID {first}\\) is deleted; restore it"):
        experiment_id(client, "deletion-requests", None)


def test_project_dir_holds_the_mlproject_and_the_root_links_to_it():
    assert (project_dir() / "MLproject").is_file() and (project_dir() / "conda.yaml").is_file()
    root = project_dir().parent.parent
    for name in ("MLproject", "conda.yaml"):
        assert (root / name).resolve() == (project_dir() / name).resolve()
    text = (project_dir() / "MLproject").read_text()
    for entry in ("main:", "train:", "unlearn:", "evaluate:"):
        assert entry in text


def test_metrics_from_collected_outputs_equal_metrics_evaluate_and_feed_the_report_losses():
    import numpy as np
    import pandas as pd
    import torch
    from torch import nn

    from mlflow_unlearn.assess import report_losses
    from mlflow_unlearn.data import DataSplit
    from mlflow_unlearn.metrics import (
        collect_outputs,
        collect_split_outputs,
        evaluate,
        evaluate_outputs,
        per_sample_loss,
    )

    full = load_data("digits")
    small = DataSplit(full.train.subset(np.arange(400)), full.test.subset(np.arange(150)), "digits", 0, 0.2)
    split = resolve_forget(small, "classes:3")
    torch.manual_seed(0)
    nets = {name: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)) for name in ("unlearned", "retrain")}
    incompetent = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    expected = evaluate(nets, split, reference="retrain", incompetent=incompetent, device="cpu", seed=3)
    outputs = collect_split_outputs(nets, split, device=torch.device("cpu"))
    got = evaluate_outputs(outputs, reference="retrain", seed=3,
                           incompetent_forget=collect_outputs(incompetent, split.forget, device="cpu"))
    pd.testing.assert_frame_equal(got, expected)
    with pytest.raises(ValueError, match="Unknown reference"):
        evaluate_outputs(outputs, reference="nope", incompetent_forget=None, seed=3)

    losses = report_losses(outputs)
    forget_loss = per_sample_loss(*collect_outputs(nets["unlearned"], split.forget, device="cpu")).numpy()
    np.testing.assert_allclose(losses["unlearned"]["forget"], forget_loss, rtol=1e-6)
    # The non-members the membership test (and its plot) compares with: the test samples of the forgotten class.
    test_loss = per_sample_loss(*collect_outputs(nets["retrain"], split.test, device="cpu")).numpy()
    np.testing.assert_allclose(losses["retrain"]["heldout"], test_loss[split.test.y.numpy() == 3], rtol=1e-6)


@pytest.mark.slow
def test_flat_feature_data_trains_an_mlp_and_unlearns_with_nitc(uris, tmp_path):
    """Tabular samples (N x F, here digits' 64 pixels as features with non-image IDs) through the whole slice."""
    import numpy as np

    digits = load_data("digits").train
    features = np.concatenate([digits.to_tensors()[0].flatten(1).numpy(),
                               load_data("digits").test.to_tensors()[0].flatten(1).numpy()])
    labels = np.concatenate([digits.y.numpy(), load_data("digits").test.y.numpy()])
    path = tmp_path / "flat.npz"
    np.savez(path, x=features, y=labels, ids=np.array([f"row-{i}" for i in range(len(labels))]))
    data = f"npz:{path}"
    assert load_data(data).train.input_shape == (64,)
    with pytest.raises(ValueError, match="use 'mlp' for flat feature vectors"):
        train_model(data, arch="smallcnn", registered_model_name="flat-cnn", config=FAST, device="cpu", **uris)
    client = MlflowClient(uris["tracking_uri"], uris["registry_uri"])
    assert not client.search_registered_models("name='flat-cnn'")

    base = train_model(data, arch="mlp", registered_model_name="flat-mlp", config={"epochs": 5}, device="cpu",
                       **uris)
    assert base.test_accuracy > 80
    outcome = unlearn("models:/flat-mlp/1", forget="classes:4", method="nitc", device="cpu", **uris)
    assert outcome.verdict == "passed" and outcome.version is not None
    assert outcome.metrics.loc["unlearned", "forget_accuracy"] < 10 < 80 < outcome.metrics.loc["original",
                                                                                                "forget_accuracy"]
    assert 0 <= outcome.onnx_max_abs_diff <= 1e-4
