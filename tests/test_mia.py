"""Membership-inference attacks: behaviour on a model that memorised its tiny training set vs one that never saw it.

Small MLPs trained for many epochs without weight decay memorise a few dozen digits: ``member`` is trained on
the 40 "forget" samples, ``member_plus`` on those and 40 "retain" samples (the attack's known members), and
``stranger`` on 40 disjoint digits, so it never saw the forget samples. The attacks must tell the members'
training samples from held-out ones and must not do so for the stranger.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlflow_unlearn.data import load_data
from mlflow_unlearn.metrics import collect_outputs, loss_mia, mia_efficacy, per_sample_loss
from mlflow_unlearn.models import create_model
from mlflow_unlearn.training import TrainConfig, train

N = 40


@pytest.fixture(scope="module")
def setting():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared machine
    try:
        data = load_data("digits")
        rng = np.random.default_rng(0)
        order = rng.permutation(len(data.train))
        sets = {
            "forget": data.train.subset(order[:N]),
            "retain": data.train.subset(order[N:2 * N]),
            "other": data.train.subset(order[2 * N:3 * N]),
        }
        test_order = rng.permutation(len(data.test))
        sets["heldout"] = data.test.subset(test_order[:N])
        sets["unseen"] = data.test.subset(test_order[N:2 * N])
        config = TrainConfig(epochs=50, lr=0.05, batch_size=8, weight_decay=0.0, seed=0)

        def fit(samples):
            model = create_model("mlp", in_channels=1, num_classes=10, input_size=8)
            return train(model, samples, config, device="cpu")[0]

        models = {
            "member": fit(sets["forget"]),
            "member_plus": fit(data.train.subset(order[:2 * N])),
            "stranger": fit(sets["other"]),
        }
        outputs = {
            (name, part): collect_outputs(model, sets[part], device="cpu")
            for name, model in models.items()
            for part in ("forget", "retain", "heldout", "unseen")
        }
        yield outputs
    finally:
        torch.set_num_threads(threads)


def _loss_attack(outputs, model):
    return loss_mia(per_sample_loss(*outputs[model, "forget"]), per_sample_loss(*outputs[model, "heldout"]), seed=0)


def test_loss_mia_detects_memorised_training_samples(setting):
    result = _loss_attack(setting, "member")
    assert result.accuracy >= 0.6
    assert result.auc >= 0.7


def test_loss_mia_is_near_chance_for_a_model_that_never_saw_the_samples(setting):
    member, stranger = _loss_attack(setting, "member"), _loss_attack(setting, "stranger")
    assert 0.35 <= stranger.accuracy <= 0.6
    assert 0.35 <= stranger.auc <= 0.65
    assert member.auc - stranger.auc >= 0.15


def test_mia_efficacy_low_on_training_samples_high_on_unseen(setting):
    retain, heldout = setting["member_plus", "retain"], setting["member_plus", "heldout"]
    seen = mia_efficacy(retain, heldout, setting["member_plus", "forget"], seed=0)
    unseen = mia_efficacy(retain, heldout, setting["member_plus", "unseen"], seed=0)
    assert seen <= 0.05
    assert unseen >= 0.12
    assert unseen - seen >= 0.1


@pytest.mark.parametrize("features", [("entropy",), ("confidence", "modified_entropy")])
def test_mia_efficacy_other_features_rank_seen_below_unseen(setting, features):
    retain, heldout = setting["member_plus", "retain"], setting["member_plus", "heldout"]
    seen = mia_efficacy(retain, heldout, setting["member_plus", "forget"], features=features, seed=0)
    unseen = mia_efficacy(retain, heldout, setting["member_plus", "unseen"], features=features, seed=0)
    assert seen < unseen
