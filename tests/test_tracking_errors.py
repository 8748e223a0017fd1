"""Bad inputs to ``unlearn``: each is a clear error, registers nothing, starts no run, leaves the parent alone."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow import MlflowClient

from mlflow_unlearn.tracking.api import ConfigError, DataResolutionError, train_model, unlearn
from mlflow_unlearn.tracking.formats import ModelFormatError
from mlflow_unlearn.tracking.lineage import LineageError
from mlflow_unlearn.tracking.vocabulary import ModelResolutionError


@pytest.fixture(scope="module")
def registry(sqlite_store):
    """A SQLite registry with a trained version, an sklearn model, a pt2 model and a model without lineage."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    from mlflow_unlearn.models import create_model

    store = sqlite_store("errors")
    root, uri, experiment = store.root, store.uri, store.experiment
    train_model("digits", arch="mlp", registered_model_name="digits-mlp", config={"epochs": 2}, onnx=False,
                device="cpu", tracking_uri=uri, experiment=experiment)
    with pytest.MonkeyPatch.context() as patch:
        # The fluent API reads the environment, so nothing global has to be set or restored.
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        x = np.random.default_rng(0).random((20, 64)).astype(np.float32)
        with mlflow.start_run(experiment_id=experiment):
            mlflow.sklearn.log_model(LogisticRegression().fit(x, np.arange(20) % 2), name="model",
                                     registered_model_name="sk-model", pip_requirements=["scikit-learn"])
        net = create_model("mlp", in_channels=1, num_classes=10, input_size=8).eval()
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pytorch.log_model(net, name="model", serialization_format="pt2", registered_model_name="pt2-model",
                                     input_example=np.zeros((2, 1, 8, 8), np.float32), pip_requirements=["torch"])
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pytorch.log_model(net, name="model", serialization_format="pickle",
                                     registered_model_name="bare-model", pip_requirements=["torch"])
    files = root / "files"
    files.mkdir()
    (files / "unknown_ids.txt").write_text("99999\n100000\n")
    (files / "bad.yaml").write_text("epochs: [1, 2\nlr: 0.1\n")
    rng = np.random.default_rng(0)
    np.savez(files / "three_classes.npz", x=rng.random((60, 1, 8, 8)).astype(np.float32), y=np.arange(60) % 3)
    return {"uri": uri, "experiment": experiment, "files": files}


def _snapshot(client: MlflowClient, experiment: str):
    versions = {(v.name, str(v.version)): dict(v.tags) for m in client.search_registered_models()
                for v in client.search_model_versions(f"name='{m.name}'")}
    runs = len(client.search_runs([experiment]))
    return versions, runs


BAD_INPUTS = [
    ("unknown model", dict(model_uri="models:/no-such-model/1"), ModelResolutionError, "'no-such-model' not found"),
    ("unknown version", dict(model_uri="models:/digits-mlp/42"), ModelResolutionError, "no version 42; versions: 1"),
    ("unknown alias", dict(model_uri="models:/digits-mlp@nope"), ModelResolutionError, "no alias 'nope'"),
    ("malformed uri", dict(model_uri="runs:/abc/model"), ModelResolutionError, "models:/<name>/<version>"),
    ("wrong flavor", dict(model_uri="models:/sk-model/1"), ModelFormatError, "sklearn model.*serialization_format"),
    ("pt2 model", dict(model_uri="models:/pt2-model/1"), ModelFormatError, "'pt2'.*cannot be trained.*pickle"),
    ("no lineage", dict(model_uri="models:/bare-model/1"), LineageError, "Pass the data explicitly"),
    ("unknown forget ids", dict(forget="ids:{files}/unknown_ids.txt"), ValueError, "not in the training split"),
    ("empty forget set", dict(forget="random:0"), ValueError, "empty forget set"),
    ("malformed forget spec", dict(forget="classes:x"), ValueError, "Malformed class list"),
    ("missing data source", dict(data="npz:{files}/missing.npz"), DataResolutionError, "Cannot load the data source"),
    ("class-count mismatch", dict(data="npz:{files}/three_classes.npz", forget="classes:1"), DataResolutionError,
     "Class-count mismatch: the model outputs 10 classes but the data"),
    ("malformed config yaml", dict(config="{files}/bad.yaml"), ConfigError, "Malformed config YAML.*line"),
    ("missing config file", dict(config="{files}/none.yaml"), ConfigError, "not found"),
    ("unknown config key", dict(config={"nope": 1}), ConfigError, "Unknown config key.*nope"),
    ("unknown method", dict(method="forgetful"), ValueError, "Unknown unlearning method 'forgetful'"),
    ("unknown reference", dict(reference="maybe"), ValueError, "Unknown reference 'maybe'"),
    ("bad gate threshold", dict(gate={"forget_tolerance": -1}), ValueError, "non-negative"),
]


@pytest.mark.parametrize(("case", "kwargs", "error", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_clear_error_and_changes_nothing(registry, case, kwargs, error, message):
    client = MlflowClient(registry["uri"])
    before = _snapshot(client, registry["experiment"])
    args = {"model_uri": "models:/digits-mlp/1", "forget": "classes:3", "method": "finetune"}
    args.update({k: v.format(files=registry["files"]) if isinstance(v, str) else v for k, v in kwargs.items()})
    with pytest.raises(error, match=message):
        unlearn(args.pop("model_uri"), **args, device="cpu", onnx=False, tracking_uri=registry["uri"],
                experiment=registry["experiment"])
    assert _snapshot(client, registry["experiment"]) == before

