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


def test_membership_auc_separates_members_and_is_class_matched():
    from mlflow_unlearn.metrics.mia import membership_auc

    rng = np.random.default_rng(1)
    members, unseen = rng.exponential(0.05, 300), rng.exponential(0.5, 300)
    test = membership_auc(members, unseen, seed=3)
    assert test.low > 0.5 and test.low <= test.auc <= test.high and test.n_forget == 300
    assert membership_auc(members, unseen, seed=3) == test  # seeded
    same = membership_auc(unseen[:150], unseen[150:])
    assert same.low <= 0.5 <= same.high  # two samples of one distribution: chance is inside the interval
    # Forget set all of class 1, which is hard for every sample: without matching it looks like a non-member
    # signal in one direction, matched to class-1 non-members it is chance.
    labels = np.array([0, 1] * 200)
    losses = np.where(labels == 1, 2.0, 0.1) + rng.random(400) * 0.01
    forget = labels == 1
    forget_idx = np.flatnonzero(forget)[:50]
    heldout = np.setdiff1d(np.arange(400), forget_idx)
    unmatched = membership_auc(losses[forget_idx], losses[heldout])
    matched = membership_auc(losses[forget_idx], losses[heldout], forget_labels=labels[forget_idx],
                             heldout_labels=labels[heldout])
    assert unmatched.high < 0.5 and matched.low <= 0.5 <= matched.high and matched.n_heldout == 150


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_bootstrap": 10}, "n_bootstrap"),
    ({"confidence": 1.0}, "confidence"),
    ({"forget_labels": np.zeros(5)}, "both"),
    ({"forget_labels": np.zeros(5), "heldout_labels": np.ones(5)}, "held-out samples of the forget set's classes"),
])
def test_membership_auc_errors(kwargs, message):
    from mlflow_unlearn.metrics.mia import membership_auc

    with pytest.raises(ValueError, match=message):
        membership_auc(np.zeros(5), np.ones(5), **kwargs)
