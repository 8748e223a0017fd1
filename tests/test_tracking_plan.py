"""prepare(): one frozen plan for every door; evaluate_version reads ids: specs the way unlearn records them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from mlflow_unlearn.request import UnlearnRequest
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.api import evaluate_version, train_model, unlearn
from mlflow_unlearn.tracking.cli import cli
from mlflow_unlearn.tracking.configs import ConfigError
from mlflow_unlearn.tracking.keys import read_digest_key
from mlflow_unlearn.tracking.plan import UnlearnPlan, prepare

FAST = {"epochs": 2, "lr": 0.1}
LENIENT = {"forget_tolerance": 100.0, "max_retain_drop": 100.0, "max_test_drop": 100.0,
           "membership_margin": 50.0}


@pytest.fixture(scope="module")
def registry(sqlite_store):
    store = sqlite_store("plan-tests")
    train_model("digits", arch="mlp", registered_model_name="plan-mlp", config={"epochs": 3}, onnx=False,
                device="cpu", experiment=store.experiment, **store.uris)
    return {**store.uris, "experiment": store.experiment}


def _runs(registry) -> int:
    return len(MlflowClient(registry["tracking_uri"]).search_runs([registry["experiment"]]))


def test_prepare_returns_one_frozen_plan_with_everything_checked(registry):
    request = UnlearnRequest("classes:7,3", method="finetune", config=FAST, reference="retrain", seed=4, device="cpu")
    plan = prepare("models:/plan-mlp/1", request, gate={"max_test_drop": 30}, tracking_uri=registry["tracking_uri"],
                   registry_uri=registry["registry_uri"])
    assert isinstance(plan, UnlearnPlan)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.method = "nitc"
    assert (plan.parent.name, str(plan.parent.version), plan.method, plan.seed) == ("plan-mlp", "1", "finetune", 4)
    assert plan.forget_spec == request.forget  # the one parsed spec travels on, not its text
    assert plan.forget.kind == vocab.CLASS_FORGETTING and plan.forget.forget_classes == (3, 7)
    assert plan.lineage.source == "digits" and plan.new_lineage.chain[-1].digest == plan.forget.digest
    assert plan.config.epochs == 2 and plan.gate.max_test_drop == 30 and plan.retrain_config.epochs == 3
    assert plan.recipe["model.arch"] == "mlp" and len(plan.config_hash) == 16
    params = plan.params(register=True)
    assert params["forget.spec"] == "classes:7,3" and params["unlearn.register"] is True
    assert params["data.retain_eval_count"] == min(1000, len(plan.forget.retain))
    assert 0 < plan.test_forget_share < 1
    assert _runs(registry) == 1  # preparing logs nothing


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"distributed": True, "method": "eu_k"}, ValueError, "does not run under torchrun"),
    ({"forget": "ids:1,2,3"}, ValueError, "not a file name"),
    ({"forget": "random:100:x"}, ValueError, "seed in random:<amount>:<seed>"),
    ({"config": {"nope": 1}}, ConfigError, "Unknown config key"),
    ({"reference": "oracle"}, ValueError, "Unknown reference 'oracle'"),
    ({"retain_eval_size": 0}, ValueError, "`retain_eval_size` to be a positive int"),
])
def test_prepare_refuses_bad_input_before_anything_runs(registry, kwargs, error, message):
    fields = {"forget": "classes:3", "method": "finetune", "device": "cpu", **kwargs}
    options = {k: fields.pop(k) for k in ("distributed", "retain_eval_size") if k in fields}
    with pytest.raises(error, match=message) as info:  # the grammar's errors come from the request itself
        prepare("models:/plan-mlp/1", UnlearnRequest(**fields), tracking_uri=registry["tracking_uri"],
                registry_uri=registry["registry_uri"], **options)
    assert "1,2,3" not in str(info.value)
    assert _runs(registry) == 1


@pytest.mark.slow
def test_evaluate_version_matches_a_relative_ids_spec_with_the_recorded_absolute_one(registry, tmp_path,
                                                                                       monkeypatch):
    plan = prepare("models:/plan-mlp/1", UnlearnRequest("classes:3", method="finetune", device="cpu"),
                   tracking_uri=registry["tracking_uri"], registry_uri=registry["registry_uri"])
    chosen = np.random.default_rng(0).choice(plan.split.train.ids, size=40, replace=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "request.txt").write_text("\n".join(map(str, chosen)))
    uris = {"tracking_uri": registry["tracking_uri"], "registry_uri": registry["registry_uri"]}
    outcome = unlearn("models:/plan-mlp/1", forget="ids:request.txt", method="finetune", config=FAST, gate=LENIENT,
                      onnx=False, device="cpu", experiment=registry["experiment"], **uris)
    uri = f"models:/plan-mlp/{outcome.version.version}"
    run = MlflowClient(registry["tracking_uri"]).get_run(outcome.run_id)
    # issue 17: the keyed digest of the absolute spec is recorded, never the path
    assert run.data.params["forget.spec"] == read_digest_key().spec_digest(f"ids:{tmp_path / 'request.txt'}")
    assert "request.txt" not in json.dumps(run.data.params)
    relative = evaluate_version(uri, forget="ids:request.txt", device="cpu", **uris)
    absolute = evaluate_version(uri, forget=f"ids:{tmp_path / 'request.txt'}", device="cpu", **uris)
    assert list(relative.index) == [vocab.MODEL_ROW]
    assert relative.equals(absolute)
    assert relative.loc[vocab.MODEL_ROW, "forget_accuracy"] == pytest.approx(
        outcome.metrics.loc[vocab.UNLEARNED_ROW, "forget_accuracy"])


@pytest.mark.slow
def test_the_seed_reaches_the_run_through_the_api_and_the_cli(registry, tmp_path):
    """``seed`` is a request field at every door (issue 28): here the API and the CLI; ``mlflow run -P seed=``
    in test_tracking_project.py, a registry request's ``seed=`` in test_plugin_server.py."""
    uri, experiment = registry["tracking_uri"], registry["experiment"]
    outcome = unlearn("models:/plan-mlp/1", forget="classes:3", method="finetune", config=FAST, gate=LENIENT,
                      onnx=False, register=False, device="cpu", seed=5, experiment=experiment,
                      tracking_uri=uri, registry_uri=registry["registry_uri"])
    assert MlflowClient(uri).get_run(outcome.run_id).data.params["unlearn.seed"] == "5"
    config = tmp_path / "fast.yaml"
    config.write_text(json.dumps({**FAST, "gate": LENIENT}))  # JSON is YAML
    result = CliRunner().invoke(cli, [
        "unlearn", "models:/plan-mlp/1", "--forget", "classes:3", "--method", "finetune", "--config", str(config),
        "--seed", "6", "--register", "no", "--onnx-copy", "false", "--device", "cpu", "--experiment", experiment],
        env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": registry["registry_uri"]})
    assert result.exit_code == 0, result.output
    runs = MlflowClient(uri).search_runs([experiment], filter_string="params.`unlearn.seed` = '6'")
    assert len(runs) == 1 and runs[0].data.params["unlearn.register"] == "False"
