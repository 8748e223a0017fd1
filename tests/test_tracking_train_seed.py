"""One seed gives one trained model: the initial weights are seeded too, not only the training loop."""

from __future__ import annotations

import torch
from mlflow import MlflowClient

from mlflow_unlearn.tracking.api import train_model


def _weights(tmp_path, seed: int) -> list[torch.Tensor]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = MlflowClient(uri).create_experiment(f"seed-{seed}-{len(list(tmp_path.iterdir()))}",
                                                     artifact_location=str(tmp_path / "artifacts"))
    outcome = train_model("digits", arch="mlp", config={"epochs": 1}, seed=seed, onnx=False, device="cpu",
                          tracking_uri=uri, registry_uri=uri, experiment=experiment)
    return [t.detach().clone() for t in outcome.model.state_dict().values()]


def test_train_model_is_a_function_of_its_seed(tmp_path):
    torch.manual_seed(123)  # global RNG state left by earlier work must not matter
    first = _weights(tmp_path, seed=3)
    torch.rand(17)
    again = _weights(tmp_path, seed=3)
    other = _weights(tmp_path, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
