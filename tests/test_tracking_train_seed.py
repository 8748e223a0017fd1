"""One seed gives one trained model: the initial weights are seeded too, not only the training loop."""

from __future__ import annotations

import torch

from mlflow_unlearn.tracking.api import train_model


def _weights(store, seed: int) -> list[torch.Tensor]:
    outcome = train_model("digits", arch="mlp", config={"epochs": 1}, seed=seed, onnx=False, device="cpu",
                          experiment=store.experiment, **store.uris)
    return [t.detach().clone() for t in outcome.model.state_dict().values()]


def test_train_model_is_a_function_of_its_seed(sqlite_store):
    store = sqlite_store("seed")
    torch.manual_seed(123)  # global RNG state left by earlier work must not matter
    first = _weights(store, seed=3)
    torch.rand(17)
    again = _weights(store, seed=3)
    other = _weights(store, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
