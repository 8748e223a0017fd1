"""Tests generated from the method registry: every registered method is tested the moment it is registered.

One smallcnn is trained on ``digits`` once per module (a few seconds); every method then forgets class 3
and a random 10 % of the samples from a copy of it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from measure import accuracy
from torch import nn

from mlflow_unlearn.data import ForgetSplit, SampleSet, forget_digest, load_data, resolve_forget
from mlflow_unlearn.methods import UnlearnContext, build_config, get_method, list_methods, run_method
from mlflow_unlearn.methods.random_label import random_relabel
from mlflow_unlearn.methods.retrain import RetrainConfig
from mlflow_unlearn.models import create_model
from mlflow_unlearn.models.surgery import reinitialize
from mlflow_unlearn.runtime import UnlearningDivergedError
from mlflow_unlearn.training import TrainConfig, train

METHODS = list_methods()
APPROXIMATE = list_methods(include_reference=False)

# Smaller budgets where a method's default would dominate the file's runtime.
TEST_CONFIGS: dict[str, dict] = {"retrain": {"epochs": 8}}

# Class-wise forgetting on digits: forget accuracy must fall to at most this fraction of the original's.
# Documented exceptions to the default 0.5:
# - finetune and l1_sparse forget only by not revisiting the forget data; a few epochs on a converged
#   digits model leave the forgotten class almost fully recognised (measured ~0.99), so only "does not rise".
# - gradient_ascent at its small default lr: how much of the class it forgets in ~15 steps depends on how
#   saturated the original is (measured 0.41 after 8 training epochs, 0.93 after 15), so only "does not
#   rise" here, and test_gradient_ascent_raises_the_forget_loss checks the quantity it does optimise.
FORGET_RATIO: dict[str, float] = {"finetune": 1.0, "l1_sparse": 1.0, "gradient_ascent": 1.0}
RETAIN_DROP_CLASS = 0.1
# Documented exception: unsir's impair step costs 8.6-10.8 points of retain accuracy here, depending on the CPU that
# trained the original (1.000 -> 0.892 on the CI machine, -> 0.914 on an AMD EPYC; benchmarks/RESULTS.md, "Expected
# misses"), astride the default bar, so a strict xfail flipped between machines; 0.15 still catches a collapse.
RETAIN_DROP_CLASS_BY_METHOD: dict[str, float] = {"unsir": 0.15}
# Random relabelling of scattered samples costs some retain accuracy (measured >= 0.92 of 1.0).
RETAIN_DROP_SAMPLE = 0.15


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclasses.dataclass
class Setup:
    model: nn.Module
    state: dict[str, torch.Tensor]
    by_class: ForgetSplit
    by_sample: ForgetSplit


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run several times faster on one thread than on two on a shared, loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> Setup:
    torch.manual_seed(0)
    split = load_data("digits", seed=0)
    model = create_model("smallcnn", in_channels=1, num_classes=split.num_classes, input_size=8)
    model, _ = train(model, split.train, TrainConfig(epochs=8), device="cpu")
    by_class = resolve_forget(split, "classes:3")
    rng = np.random.default_rng(0)
    mask = np.zeros(len(split.train), dtype=bool)
    mask[rng.choice(len(split.train), len(split.train) // 10, replace=False)] = True
    forget, retain = split.train.subset(mask), split.train.subset(~mask)
    by_sample = ForgetSplit(forget, retain, split.test, "sample", "random:0.1", forget_digest(forget.ids), len(forget))
    return Setup(model, state_of(model), by_class, by_sample)


def unlearn(name: str, setup: Setup, split: ForgetSplit, **kwargs):
    kwargs.setdefault("config", TEST_CONFIGS.get(name))
    return run_method(name, setup.model, forget=split.forget, retain=split.retain, device="cpu",
                      forget_kind=split.kind, forget_classes=split.forget_classes, **kwargs)


@pytest.fixture(scope="module")
def class_results(digits):
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = unlearn(name, digits, digits.by_class)
        return cache[name]

    return get


def assert_untouched(setup: Setup) -> None:
    for key, value in setup.model.state_dict().items():
        assert torch.equal(value, setup.state[key]), f"the original model's {key} was modified"


def assert_same_architecture(model: nn.Module, setup: Setup) -> None:
    state = model.state_dict()
    assert type(model) is type(setup.model)
    assert list(state) == list(setup.state)
    assert all(state[k].shape == setup.state[k].shape for k in state)


@pytest.mark.parametrize("name", METHODS)
def test_method_contract(name, digits, class_results):
    result = class_results(name)
    assert_same_architecture(result.model, digits)
    assert_untouched(digits)
    assert result.method == name
    assert isinstance(result.config, get_method(name).config_cls)
    assert result.history.wall_time_s > 0
    assert len(result.history.records) > 0
    assert not result.model.training
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    changed = any(not torch.equal(v, digits.state[k]) for k, v in result.model.state_dict().items())
    assert changed, "the method returned the original weights"


@pytest.mark.parametrize("name", METHODS)
def test_classwise_forgetting(name, digits, class_results):
    split = digits.by_class
    forget_before, retain_before = accuracy(digits.model, split.forget), accuracy(digits.model, split.retain)
    assert forget_before > 0.9, "the original model should know the class to be forgotten"
    result = class_results(name)
    forget_after, retain_after = accuracy(result.model, split.forget), accuracy(result.model, split.retain)
    assert forget_after <= FORGET_RATIO.get(name, 0.5) * forget_before, (name, forget_before, forget_after)
    retain_drop = RETAIN_DROP_CLASS_BY_METHOD.get(name, RETAIN_DROP_CLASS)
    assert retain_after >= retain_before - retain_drop, (name, retain_before, retain_after)


@pytest.mark.parametrize("name", METHODS)
def test_samplewise_forgetting_keeps_the_model_useful(name, digits):
    split = digits.by_sample
    result = unlearn(name, digits, split)
    assert_same_architecture(result.model, digits)
    assert_untouched(digits)
    assert result.history.wall_time_s > 0
    retain_before, retain_after = accuracy(digits.model, split.retain), accuracy(result.model, split.retain)
    assert retain_after >= retain_before - RETAIN_DROP_SAMPLE, (name, retain_before, retain_after)
    assert accuracy(result.model, split.test) >= accuracy(digits.model, split.test) - RETAIN_DROP_SAMPLE


@pytest.mark.parametrize("name", METHODS)
def test_empty_forget_set_is_rejected(name, digits):
    split = digits.by_class
    with pytest.raises(ValueError, match="forget set is empty"):
        empty = split.forget.subset(np.zeros(0, dtype=np.int64))
        run_method(name, digits.model, forget=empty, retain=split.retain, device="cpu")


@pytest.mark.parametrize("name", METHODS)
def test_class_count_mismatch_is_rejected(name, digits):
    forget = digits.by_class.forget
    beyond = SampleSet(forget.to_tensors()[0], forget.y + 10, forget.ids, num_classes=20)
    with pytest.raises(ValueError, match="Class-count mismatch"):
        run_method(name, digits.model, forget=beyond, retain=digits.by_class.retain, device="cpu")


@pytest.mark.parametrize("name", METHODS)
def test_unknown_config_key_is_rejected(name, digits):
    with pytest.raises(ValueError, match="Unknown config key.*not_a_field"):
        build_config(name, {"not_a_field": 1})


@pytest.mark.parametrize("name", METHODS)
def test_negative_learning_rates_are_rejected(name):
    lr_fields = [f.name for f in dataclasses.fields(get_method(name).config_cls) if f.name == "lr" or
                 f.name.endswith("_lr")]
    assert lr_fields, f"method {name!r} has no learning-rate field (`lr` or `*_lr`)"
    for field in lr_fields:
        with pytest.raises(ValueError, match=field):
            build_config(name, {field: -0.1})


@pytest.mark.parametrize("name", METHODS)
def test_defaults_are_valid(name):
    config = build_config(name)
    assert dataclasses.asdict(config) == dataclasses.asdict(get_method(name).config_cls())


def test_unknown_method_lists_the_known_ones(digits):
    with pytest.raises(ValueError, match="Unknown unlearning method 'no_such_method'.*retrain"):
        run_method("no_such_method", digits.model, forget=digits.by_class.forget, retain=digits.by_class.retain)


@pytest.mark.parametrize("name", METHODS)
def test_nan_inputs_raise_diverged(name, digits):
    split = digits.by_class
    poison = [SampleSet(torch.full_like(s.to_tensors()[0], float("nan")), s.y, s.ids, s.num_classes)
              for s in (split.forget, split.retain.subset(np.arange(128)))]
    with pytest.raises(UnlearningDivergedError):
        unlearn(name, digits, dataclasses.replace(split, forget=poison[0], retain=poison[1]))
    assert_untouched(digits)


# retrain re-initialises the weights, so NaN weights do not reach it (tested on its own below).
@pytest.mark.parametrize("name", APPROXIMATE)
def test_nan_weights_raise_diverged(name, digits):
    broken = create_model("smallcnn", in_channels=1, num_classes=10, input_size=8)
    broken.load_state_dict(digits.state)
    with torch.no_grad():
        broken.head[-1].weight.fill_(float("nan"))
        # eu_k re-initialises the head, so the layers below it are poisoned too.
        broken.features[0].weight.fill_(float("nan"))
    split = digits.by_class
    with pytest.raises(UnlearningDivergedError):
        run_method(name, broken, forget=split.forget, retain=split.retain.subset(np.arange(128)), device="cpu",
                   forget_kind="class", forget_classes=split.forget_classes, config=TEST_CONFIGS.get(name))


def test_gradient_ascent_raises_the_forget_loss(digits, class_results):
    split = digits.by_class

    def forget_loss(model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(split.forget.to_tensors()[0]), split.forget.y))

    before, after = forget_loss(digits.model), forget_loss(class_results("gradient_ascent").model)
    assert after > 5 * before, (before, after)


def test_retrain_does_not_inherit_the_original_weights(digits):
    broken = create_model("smallcnn", in_channels=1, num_classes=10, input_size=8)
    with torch.no_grad():
        broken.head[-1].weight.fill_(float("nan"))
    split = digits.by_class
    result = run_method("retrain", broken, forget=split.forget, retain=split.retain.subset(np.arange(256)),
                        device="cpu", forget_kind="class", forget_classes=split.forget_classes, config={"epochs": 2})
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_retrain_config_mirrors_the_training_recipe():
    assert [f.name for f in dataclasses.fields(RetrainConfig)] == [f.name for f in dataclasses.fields(TrainConfig)]
    assert dataclasses.asdict(RetrainConfig()) == dataclasses.asdict(TrainConfig())
    with pytest.raises(ValueError, match="optimizer"):
        RetrainConfig(optimizer="lbfgs")


def test_reinitialize_resets_every_layer_and_refuses_unknown_modules(digits):
    model = create_model("smallcnn", in_channels=1, num_classes=10, input_size=8)
    model.load_state_dict(digits.state)
    reinitialize(model, seed=1)
    for key, value in model.state_dict().items():
        if value.is_floating_point() and value.numel() > 1 and "running_var" not in key:
            assert not torch.equal(value, digits.state[key]), f"{key} kept its trained value"

    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(1))

    with pytest.raises(ValueError, match="Scale.*reset_parameters"):
        reinitialize(nn.Sequential(nn.Linear(2, 2), Scale()), seed=0)


def test_random_relabel_never_keeps_the_true_or_a_forgotten_class(digits):
    by_sample = digits.by_sample.forget
    ctx = UnlearnContext(torch.device("cpu"), 10, "sample", (), seed=0)
    new = random_relabel(by_sample, context=ctx).labels
    assert not torch.any(new == by_sample.y)
    assert len(torch.unique(new)) == 10
    ctx = UnlearnContext(torch.device("cpu"), 10, "class", (3, 5), seed=0)
    new = random_relabel(digits.by_class.forget, context=ctx).labels
    assert set(torch.unique(new).tolist()) == {0, 1, 2, 4, 6, 7, 8, 9}


def test_salun_changes_only_the_salient_weights(digits):
    split = digits.by_class
    result = unlearn("salun", digits, split, config={"mask_fraction": 0.3, "epochs": 1})
    after = dict(result.model.named_parameters())
    changed = sum(int((after[k] != digits.state[k]).sum()) for k in after)
    total = sum(p.numel() for p in after.values())
    assert 0 < changed <= 0.3 * total + 1
    assert result.history.extra["mask_fraction"] == pytest.approx(0.3, abs=0.01)


def test_scrub_rejects_more_max_epochs_than_epochs():
    with pytest.raises(ValueError, match="msteps"):
        build_config("scrub", {"epochs": 2, "msteps": 3})
