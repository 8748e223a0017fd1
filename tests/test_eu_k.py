"""EU-k specifics: only the classifier module is retrained, found by name, and misuse is refused clearly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlflow_unlearn.data import load_data, resolve_forget
from mlflow_unlearn.methods import run_method
from mlflow_unlearn.methods.eu_k import EuKConfig
from mlflow_unlearn.models import create_model
from mlflow_unlearn.training import TrainConfig, train


@pytest.fixture(scope="module")
def data():
    return load_data("digits", seed=0)


@pytest.fixture(scope="module")
def split(data):
    return resolve_forget(data, "classes:3")


@pytest.fixture(scope="module")
def smallcnn(data):
    torch.manual_seed(0)
    model = create_model("smallcnn", in_channels=1, num_classes=10, input_size=8)
    return train(model, data.train, TrainConfig(epochs=3), device="cpu")[0].eval()


def unlearn(model, split, **config):
    return run_method("eu_k", model, forget=split.forget, retain=split.retain, device="cpu", forget_kind="class",
                      forget_classes=split.forget_classes, config=config or None)


def test_only_the_classifier_is_retrained(smallcnn, split):
    result = unlearn(smallcnn, split, epochs=3)
    before, after = smallcnn.state_dict(), result.model.state_dict()
    for key in before:
        same = torch.equal(before[key], after[key])
        assert same != key.startswith("head."), key  # the body (weights and BatchNorm statistics) is untouched
    assert result.history.extra["module"] == "head"
    assert 0.8 < result.history.extra["module_weight_fraction"] < 0.95  # smallcnn's head holds most weights
    with torch.no_grad():
        predicted = result.model(split.forget.to_tensors()[0]).argmax(1)
    assert not (predicted == 3).any(), "a classifier trained without the class must never predict it"


def test_a_named_module_of_any_model(data, split):
    torch.manual_seed(0)
    mlp = train(create_model("mlp", in_channels=1, num_classes=10, input_size=8), data.train,
                TrainConfig(epochs=2), device="cpu")[0].eval()
    for config in ({"module": "net.5", "epochs": 2}, {"epochs": 2}):  # named, or found: the last Linear's output
        result = unlearn(mlp, split, **config)
        changed = {k for k, v in result.model.state_dict().items() if not torch.equal(v, mlp.state_dict()[k])}
        assert changed == {"net.5.weight", "net.5.bias"}
        assert result.history.extra["module"] == "net.5"


class _OddlyNamed(nn.Module):
    """A user's class: a hidden layer named ``fc`` (not the output) and the classifier named ``out_proj``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.out_proj = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x):
        return self.out_proj(self.fc(x.flatten(1)).relu())


class _NoLinearOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(64, 10)

    def forward(self, x):
        return self.body(x.flatten(1)) * 2


def test_the_classifier_is_found_by_what_returns_the_output(data, split):
    torch.manual_seed(0)
    model = train(_OddlyNamed(), data.train, TrainConfig(epochs=2), device="cpu")[0].eval()
    result = unlearn(model, split, epochs=2)
    assert result.history.extra["module"] == "out_proj"  # not `fc`, a hidden layer despite its name
    with pytest.raises(ValueError, match="no nn.Linear returns the model's output.*set config `module`"):
        unlearn(_NoLinearOutput(), split)


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        self.fc = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fc(self.body(x)))


class AfterHead(Twice):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x)) * 2


@pytest.mark.parametrize(("model", "config", "message"), [
    (Twice(), {}, "called once; it was called 2 time"),
    (AfterHead(), {"module": "fc"}, "its output is not the model's output"),
    (AfterHead(), {}, "found no classifier in AfterHead: .* no nn.Linear returns the model's output"),
])
def test_a_classifier_that_is_not_the_last_step_is_refused(split, model, config, message):
    with pytest.raises(ValueError, match=message):
        unlearn(model, split, **config)


@pytest.mark.parametrize(("module", "message"), [
    ("heads", "has no submodule 'heads'.*features, head"),
    ("head.0", "no parameters"),  # the Flatten
], ids=["unknown-submodule", "no-parameters"])
def test_bad_module_names_are_refused(smallcnn, split, module, message):
    with pytest.raises(ValueError, match=message):
        unlearn(smallcnn, split, module=module)


def test_an_empty_module_name_is_refused_and_points_to_retrain():
    with pytest.raises(ValueError, match="retrain"):
        EuKConfig(module="")
