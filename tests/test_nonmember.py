"""Non-member samples: the carve-out from the test side, its hand-over to methods, and no metric on it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from fresh_db import migrated_sqlite
from mlflow import MlflowClient

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.data import SampleSet, load_data, resolve_forget
from mlflow_unlearn.data.nonmember import NONMEMBER_SHARE, carve_out_mask, hold_out_nonmembers
from mlflow_unlearn.methods import registry, run_method
from mlflow_unlearn.models import create_model


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", seed=0)


def test_the_carve_out_is_a_seeded_share_of_each_class_that_leaves_every_class_on_the_test_side(digits):
    fsplit = resolve_forget(digits, "random:0.1:0")
    kept, nonmember = hold_out_nonmembers(fsplit, seed=0)
    test_ids, kept_ids, nm_ids = (set(s.ids.tolist()) for s in (fsplit.test, kept.test, nonmember))
    assert kept_ids | nm_ids == test_ids and not kept_ids & nm_ids
    for label in range(10):
        n = int((fsplit.test.y == label).sum())
        assert int((nonmember.y == label).sum()) == max(1, round(NONMEMBER_SHARE * n))
        assert int((kept.test.y == label).sum()) >= 1
    assert (kept.forget, kept.retain) == (fsplit.forget, fsplit.retain)  # only the test side changes
    again, same = hold_out_nonmembers(fsplit, seed=0)
    other = hold_out_nonmembers(fsplit, seed=1)[1]
    assert same.ids.tolist() == nonmember.ids.tolist() and set(other.ids.tolist()) != nm_ids
    # a sample's side depends on its ID and the seed, not on where the source lists it
    order = np.random.default_rng(0).permutation(len(fsplit.test))
    shuffled = dataclasses.replace(fsplit, test=fsplit.test.subset(order))
    assert set(hold_out_nonmembers(shuffled, seed=0)[1].ids.tolist()) == nm_ids


def test_a_class_with_one_test_sample_keeps_it_for_the_metrics():
    mask = carve_out_mask(np.array([0, 1, 1, 2, 2, 2]), np.arange(6), seed=0, share=0.5)
    assert not mask[0] and int(mask[1:3].sum()) == 1 and int(mask[3:].sum()) == 2  # never all: 1 of 2, 2 of 3
    with pytest.raises(ValueError, match="share"):
        hold_out_nonmembers(resolve_forget(load_data("digits", seed=0), "classes:1"), seed=0, share=1.0)


def test_a_validation_part_named_by_the_source_is_preferred_and_the_test_side_stays_whole(tmp_path):
    n = 60
    split = np.array(["train"] * 40 + ["val"] * 8 + ["test"] * 12)
    np.savez(tmp_path / "own.npz", x=(np.arange(n * 16).reshape(n, 4, 4) % 256).astype(np.uint8),
             y=np.arange(n) % 2, ids=np.arange(n), split=split)
    data = load_data(f"npz:{tmp_path / 'own.npz'}", seed=0)
    fsplit = resolve_forget(data, "classes:1")
    kept, nonmember = hold_out_nonmembers(fsplit, seed=0, split=data)
    assert kept is fsplit and sorted(nonmember.ids.tolist()) == list(range(40, 48))
    whole = load_data(f"npz:{tmp_path / 'own.npz'}", seed=0)
    no_val = dataclasses.replace(whole, val=None)
    kept, carved = hold_out_nonmembers(resolve_forget(no_val, "classes:1"), seed=0, split=no_val)
    assert len(carved) == 2 and set(carved.ids.tolist()) <= set(range(48, 60))  # one per class from the test side


@dataclasses.dataclass
class _SpyConfig:
    pass


def test_run_method_hands_the_non_members_to_the_method_and_checks_them(digits):
    seen = []

    def spy(model, *, forget, retain, config, context):
        seen.append(context.nonmember)
        return model, rt.History()

    registry.register_method("nonmember_spy_for_test", _SpyConfig)(spy)
    try:
        fsplit, nonmember = hold_out_nonmembers(resolve_forget(digits, "random:0.1:0"), seed=0)
        model = create_model("mlp", in_channels=1, num_classes=10, input_size=8)
        kwargs = dict(forget=fsplit.forget, retain=fsplit.retain, device="cpu")
        run_method("nonmember_spy_for_test", model, nonmember=nonmember, **kwargs)
        run_method("nonmember_spy_for_test", model, **kwargs)
        run_method("nonmember_spy_for_test", model, nonmember=nonmember.subset(np.arange(0)), **kwargs)
        assert seen[0] is nonmember and seen[1] is None and seen[2] is None  # an empty set is no set
        x, y = nonmember.to_tensors()
        flat = SampleSet(x.flatten(1), y, nonmember.ids, 10)
        with pytest.raises(ValueError, match="non-member samples have shape"):
            run_method("nonmember_spy_for_test", model, nonmember=flat, **kwargs)
        bad = SampleSet(x, torch.full_like(y, 12), nonmember.ids, 13)
        with pytest.raises(ValueError, match="Class-count mismatch"):
            run_method("nonmember_spy_for_test", model, nonmember=bad, **kwargs)
    finally:
        registry.unregister_method("nonmember_spy_for_test")


def test_an_unlearning_run_gives_the_method_non_members_that_no_metric_sees(tmp_path, monkeypatch):
    """The plan carves the non-members out of the test side; the method gets them; evaluation never does."""
    from mlflow_unlearn import assess as assessing
    from mlflow_unlearn.request import UnlearnRequest
    from mlflow_unlearn.tracking import steps
    from mlflow_unlearn.tracking.api import train_model
    from mlflow_unlearn.tracking.plan import prepare

    uri = migrated_sqlite(tmp_path / "mlflow.db")
    experiment = MlflowClient(uri).create_experiment("nonmember", artifact_location=str(tmp_path / "artifacts"))
    train_model("digits", arch="mlp", registered_model_name="nm-mlp", config={"epochs": 1}, onnx=False,
                device="cpu", experiment=experiment, tracking_uri=uri, registry_uri=uri)
    finetune = registry.get_method("finetune")  # the same method, registered as one that reads non-members
    registry.register_method("finetune_nonmember_for_test", finetune.config_cls, uses_nonmember=True)(finetune.fn)
    try:
        plain = prepare("models:/nm-mlp/1", UnlearnRequest("random:0.1:0", method="finetune", device="cpu"),
                        tracking_uri=uri, registry_uri=uri)
        request = UnlearnRequest("random:0.1:0", method="finetune_nonmember_for_test", config={"epochs": 1},
                                 device="cpu")
        plan = prepare("models:/nm-mlp/1", request, tracking_uri=uri, registry_uri=uri)
    finally:
        registry.unregister_method("finetune_nonmember_for_test")
    # a method that does not read them gets none, and its metrics see the whole test side
    assert plain.nonmember is None and len(plain.forget.test) == len(plain.split.test)
    nm_ids, test_ids = set(plan.nonmember.ids.tolist()), set(plan.forget.test.ids.tolist())
    assert nm_ids and not nm_ids & test_ids
    assert nm_ids | test_ids == set(plan.split.test.ids.tolist())
    seen = {}
    real = steps.run_engine_method

    def spy(*args, nonmember=None, **kwargs):
        seen["nonmember"] = nonmember
        return real(*args, nonmember=nonmember, **kwargs)

    monkeypatch.setattr(steps, "run_engine_method", spy)
    result = steps.run_method(plan, "finetune", plan.config)
    assert seen["nonmember"] is plan.nonmember
    evaluation = assessing.assess({"original": plan.model, "unlearned": result.model},
                                  assessing.evaluation_split(plan.forget, plan.retain_eval_size, plan.seed),
                                  original="original", device=plan.device, seed=plan.seed)
    assert len(evaluation.outputs["unlearned"]["test"].labels) == len(test_ids)
    assert set(evaluation.split.test.ids.tolist()) == test_ids
    # nitc reads them when it forgets samples only: a class request's metrics keep the whole test side
    by_kind = {spec: prepare("models:/nm-mlp/1", UnlearnRequest(spec, method="nitc", device="cpu"),
                             tracking_uri=uri, registry_uri=uri) for spec in ("classes:1", "random:0.1:0")}
    assert by_kind["classes:1"].nonmember is None
    assert len(by_kind["classes:1"].forget.test) == len(by_kind["classes:1"].split.test)
    assert set(by_kind["random:0.1:0"].nonmember.ids.tolist()) == nm_ids
