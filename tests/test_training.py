"""The shared training recipe: accuracy bar on digits, determinism, validation, divergence guard."""

import pytest
import torch
from torch import nn

from mlflow_unlearn.data import load_data
from mlflow_unlearn.models import create_model
from mlflow_unlearn.runtime import UnlearningDivergedError
from mlflow_unlearn.training import TrainConfig, make_optimizer, train, train_epochs


def _test_accuracy(model, data):
    with torch.no_grad():
        return (model(data.to_tensors()[0]).argmax(1) == data.y).float().mean().item()


def test_smallcnn_reaches_95_percent_on_digits():
    split = load_data("digits", seed=0)
    model = create_model("smallcnn", in_channels=1, num_classes=10, input_size=8)
    model, history = train(model, split.train, TrainConfig(epochs=8), device="cpu")
    assert _test_accuracy(model, split.test) >= 0.95
    assert len(history.records) == 8
    assert history.records[-1]["loss"] < history.records[0]["loss"]
    assert history.wall_time_s > 0
    assert not model.training


def test_training_is_deterministic_for_a_seed():
    split = load_data("digits", seed=0)
    small = split.train.subset(list(range(200)))
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        model = create_model("mlp", in_channels=1, num_classes=10, input_size=8)
        model, _ = train(model, small, TrainConfig(epochs=2, seed=5), device="cpu")
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "`epochs` to be a positive int but got 0"),
        ({"batch_size": -4}, "`batch_size` to be a positive int but got -4"),
        ({"lr": 0.0}, "`lr` to be a positive float"),
        ({"optimizer": "lion"}, "Unknown optimizer 'lion'; expected one of: sgd, adam, adamw"),
        ({"label_smoothing": 1.0}, "`label_smoothing` in \\[0, 1\\)"),
    ],
)
def test_bad_recipes_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_nan_inputs_stop_training_with_a_clear_error():
    split = load_data("digits", seed=0)
    bad = split.train.subset(list(range(64)))
    bad.inputs.tensor[int(bad.positions[3])] = float("nan")  # the source's own in-memory tensor
    model = create_model("mlp", in_channels=1, num_classes=10, input_size=8)
    with pytest.raises(UnlearningDivergedError, match="loss became nan"):
        train(model, bad, TrainConfig(epochs=1), device="cpu")


def test_unknown_optimizer_and_schedule_names_list_the_registered_ones():
    with pytest.raises(ValueError, match="expected one of: sgd, adam, adamw"):
        make_optimizer([torch.zeros(1, requires_grad=True)], name="lbfgs", lr=0.1, weight_decay=0.0)
    with pytest.raises(ValueError, match="expected one of: constant, cosine, onecycle"):
        train_epochs(nn.Linear(2, 2), [], lambda net, x, y: net(x).sum(), device=torch.device("cpu"), seed=0,
                     epochs=1, lr=0.1, batch_size=1, schedule="step")


def test_a_batchnorm_model_trains_when_the_last_batch_holds_one_sample():
    split = load_data("digits", seed=0)
    data = split.train.subset(list(range(65)))  # batches of 64 and 1: BatchNorm cannot train on the second
    model = create_model("bncnn", in_channels=1, num_classes=10, input_size=8)
    stats = list(train_epochs(model, data, lambda net, x, y: nn.functional.cross_entropy(net(x), y),
                              device=torch.device("cpu"), seed=0, epochs=2, lr=0.01, batch_size=64))
    assert [s.steps for s in stats] == [1, 2] and [s.samples for s in stats] == [64, 64]
    with pytest.raises(ValueError, match="BatchNorm layers need batches of at least 2 samples.*batch size 1"):
        train(create_model("bncnn", in_channels=1, num_classes=10, input_size=8), data,
              TrainConfig(epochs=1, batch_size=1), device="cpu")
