"""Every registered method must forget individual samples that the model memorised.

The toy task: 400 ``digits`` training samples, 10% of them relabelled wrongly (uniform over the other classes),
and a small CNN trained until it fits those wrong labels too (memorisation: no other sample supports them). The
forget set is exactly the mislabelled samples. A model that never saw them agrees with their wrong labels about
as rarely as with wrong labels of unseen samples: that is the *held-out level* of forget accuracy, measured on
the test samples relabelled the same way.

The check (:data:`MARGIN`): after unlearning, the forget accuracy (against the wrong labels) must have moved at
least half of the way from the original's level to the held-out level. A method that returns the model
unchanged fails it (asserted below with an identity method registered for this test only).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from expected_misses import mark_expected_miss
from measure import accuracy
from torch import nn

from mlflow_unlearn.data import ForgetSplit, SampleSet, forget_digest, load_data
from mlflow_unlearn.methods import list_methods, registry, run_method
from mlflow_unlearn.models import create_model
from mlflow_unlearn.training import TrainConfig, train

MARGIN = 0.5
"""Share of the way from the original's forget accuracy to the held-out level that a method must cover."""

# Smaller budgets where a method's default would dominate the file's runtime (the reference only).
TEST_CONFIGS: dict[str, dict] = {"retrain": {"epochs": 40}}

def wrong_labels(y: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    shift = torch.randint(1, num_classes, (len(y),), generator=torch.Generator().manual_seed(seed))
    return (y + shift) % num_classes


@dataclass
class Toy:
    model: nn.Module
    split: ForgetSplit
    original_forget: float
    held_out: float

    def bound(self) -> float:
        """The highest forget accuracy that passes: ``MARGIN`` of the way to the held-out level."""
        return self.original_forget - MARGIN * (self.original_forget - self.held_out)


@pytest.fixture(scope="module")
def toy() -> Iterator[Toy]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only wait on each other
    try:
        yield build_toy()
    finally:
        torch.set_num_threads(threads)


def build_toy() -> Toy:
    torch.manual_seed(0)
    full = load_data("digits", seed=0)
    train_set = full.train.subset(np.arange(400))
    mislabelled = np.zeros(len(train_set), dtype=bool)
    mislabelled[np.random.default_rng(0).permutation(len(train_set))[:40]] = True
    labels = train_set.y.clone()
    index = torch.as_tensor(mislabelled)
    labels[index] = wrong_labels(labels[index], full.num_classes, seed=1)
    train_set = SampleSet(train_set.to_tensors()[0], labels, train_set.ids, train_set.num_classes)
    forget, retain = train_set.subset(mislabelled), train_set.subset(~mislabelled)
    split = ForgetSplit(forget, retain, full.test, "sample", "toy", forget_digest(forget.ids), len(forget))
    model = create_model("smallcnn", in_channels=1, num_classes=full.num_classes, input_size=8, width=16)
    model, _ = train(model, train_set, TrainConfig(epochs=40, seed=0), device="cpu")
    model.eval()
    original_forget = accuracy(model, forget)
    held_out = accuracy(model, full.test, wrong_labels(full.test.y, full.num_classes, seed=2))
    assert original_forget >= 0.9, f"the toy original must fit the wrong labels (fits {original_forget:.2f})"
    assert held_out <= 0.1
    return Toy(model, split, original_forget, held_out)


def forget_accuracy_after(name: str, toy: Toy) -> float:
    result = run_method(name, toy.model, forget=toy.split.forget, retain=toy.split.retain,
                        config=TEST_CONFIGS.get(name), device="cpu", forget_kind="sample", seed=0)
    return accuracy(result.model, toy.split.forget)


@pytest.mark.parametrize("name", list_methods())
def test_method_moves_forget_accuracy_towards_the_held_out_level(name: str, toy: Toy, request) -> None:
    mark_expected_miss(request, name)  # tests/expected_misses.py: methods whose defaults miss, measured
    after = forget_accuracy_after(name, toy)
    assert after <= toy.bound(), (
        f"{name}: forget accuracy {after:.3f} (original {toy.original_forget:.3f}, held-out level "
        f"{toy.held_out:.3f}) did not move {MARGIN:.0%} of the way to the held-out level (<= {toy.bound():.3f})")


@dataclass
class IdentityConfig:
    pass


def test_a_method_that_returns_the_model_unchanged_fails_the_check(toy: Toy) -> None:
    def identity(model, *, forget, retain, config, context):
        from mlflow_unlearn import runtime as rt

        return model, rt.History()

    registry.register_method("identity_for_test", IdentityConfig)(identity)
    try:
        after = forget_accuracy_after("identity_for_test", toy)
    finally:
        registry.unregister_method("identity_for_test")
    assert after == pytest.approx(toy.original_forget)
    assert after > toy.bound()  # the check above rejects it
