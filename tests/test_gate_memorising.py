"""Done-when "Gate" of issue 17: on a memorising task, a method that returns the model unchanged fails the gate
and retraining passes it, through the public ``mlflow_unlearn.unlearn`` API on a SQLite registry.

The task: scikit-learn's digits with an explicit train/test split (300 training samples), 10% of the training
samples relabelled to a wrong class, an MLP trained long enough to fit them; the forget set is exactly those
samples (an ``ids:`` file).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

import mlflow_unlearn
from mlflow_unlearn.methods import registry
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.api import train_model

#: Enough to fit the wrong labels (an MLP memorises them), small enough for a few seconds on a CPU.
RECIPE = {"epochs": 100, "lr": 0.01, "optimizer": "adam", "weight_decay": 0.0, "batch_size": 32}
#: Training samples (the rest of digits is the test split): few, so that the MLP fits their wrong labels quickly.
N_TRAIN = 300
UNCHANGED = "unchanged-for-gate-test"


@dataclass
class _NoConfig:
    pass


def _unchanged(model, *, forget, retain, config, context):
    """Return the model as it is (a method that forgets nothing)."""
    from mlflow_unlearn.runtime import History

    return model, History()


@pytest.fixture(scope="module")
def unchanged_method():
    registry.register_method(UNCHANGED, _NoConfig)(_unchanged)
    yield UNCHANGED
    registry.unregister_method(UNCHANGED)  # registered for this module only: tests over the registry stay as they are


@pytest.fixture(scope="module")
def memorised(sqlite_store):
    """A version trained on digits with 10% wrong labels, and the ``ids:`` file of exactly those samples."""
    from sklearn.datasets import load_digits

    store = sqlite_store("gate")
    root = store.root
    digits = load_digits()
    rng = np.random.default_rng(0)
    n = len(digits.target)
    split = np.full(n, "test", dtype="<U5")
    split[rng.choice(n, size=N_TRAIN, replace=False)] = "train"
    labels = digits.target.copy()
    train_idx = np.flatnonzero(split == "train")
    wrong = np.sort(rng.choice(train_idx, size=len(train_idx) // 10, replace=False))
    labels[wrong] = (labels[wrong] + rng.integers(1, 10, size=len(wrong))) % 10
    ids = np.array([f"d{i:04d}" for i in range(n)])
    np.savez(root / "noisy.npz", x=(digits.images / 16.0).astype(np.float32), y=labels, ids=ids, split=split)
    (root / "wrong.txt").write_text("\n".join(ids[wrong]) + "\n")
    trained = train_model(f"npz:{root / 'noisy.npz'}", arch="mlp", registered_model_name="noisy-mlp", config=RECIPE,
                          onnx=False, device="cpu", experiment=store.experiment, **store.uris)
    return {"uris": store.uris, "experiment": store.experiment, "forget": f"ids:{root / 'wrong.txt'}", "root": root,
            "model_uri": f"models:/noisy-mlp/{trained.version.version}", "count": len(wrong)}


@pytest.fixture(autouse=True)
def _digest_key(monkeypatch):
    monkeypatch.setenv("MLFLOW_UNLEARN_DIGEST_KEY", "gate-test-key-0123456789abcdef")


def _unlearn(memorised, method, **kwargs):
    return mlflow_unlearn.unlearn(memorised["model_uri"], forget=memorised["forget"], method=method, device="cpu",
                                  onnx=False, experiment=memorised["experiment"], **memorised["uris"], **kwargs)


@pytest.mark.slow
def test_a_method_that_changes_nothing_fails_on_membership_and_retrain_passes(memorised, unchanged_method, tmp_path):
    client = MlflowClient(**memorised["uris"])
    # Without a reference the original's wrong-label fits look like clean same-class test samples (their losses
    # are as low): nothing measurable, and the report says so rather than claiming proof.
    blind = _unlearn(memorised, unchanged_method, register=False)
    # 30 samples classified as memorised (100%) are within the sampling spread of unseen ones (test accuracy about
    # 90%): without a reference nothing here tells them from unseen samples, and the gate says it proves nothing
    assert blind.gate.evidence == "none"
    assert "nothing measurable to forget" in blind.gate.checks.set_index("check").loc["membership", "detail"]

    noop = _unlearn(memorised, unchanged_method, reference="retrain")
    assert noop.verdict == "failed" and noop.version is None
    assert noop.gate.evidence == "measured"
    checks = noop.gate.checks.set_index("check")
    verdict = checks.loc["membership", "passed"]
    assert verdict is not None and not verdict  # the gate's own membership test failed it, not only accuracy
    original, reference = noop.metrics.loc["original"], noop.metrics.loc["retrain"]
    # the memorised wrong labels are measurably more member-like for the original than for a model without them
    assert original["membership_auc_low"] > reference["membership_auc_high"]
    assert noop.metrics.loc["unlearned", "membership_auc_low"] > reference["membership_auc_high"]
    run = client.get_run(noop.run_id)
    assert run.data.tags[vocab.GATE_EVIDENCE_TAG] == "measured"
    # the caller's own table holds every figure; the records of a 30-ID request hold the outcome in words only
    assert "more member-like than the retrained reference" in checks.loc["membership", "detail"]
    reason = run.data.tags[vocab.GATE_REASON_TAG]
    assert reason.startswith("membership: the unlearned model still tells the forget set") and "withheld" in reason
    assert "d0" not in reason and "AUC" not in reason and "%" not in reason  # no ID, no figure of the forget set
    assert not any(key.endswith(("membership_auc", "forget_accuracy")) for key in run.data.metrics)

    local = mlflow.artifacts.download_artifacts(run_id=noop.run_id, artifact_path="report", dst_path=str(tmp_path),
                                                tracking_uri=memorised["uris"]["tracking_uri"])
    markdown = open(os.path.join(local, "unlearning_report.md")).read()
    assert markdown.index("## Evidence") < markdown.index("## Metrics")
    assert "What was tested" in markdown and "95% bootstrap interval" in markdown and "still tells" in markdown
    report = json.load(open(os.path.join(local, "unlearning_report.json")))
    assert report["evidence"]["evidence"] == "measured" and report["evidence"]["models"] == {}
    assert "membership_auc" in report["withheld"]["columns"] and not os.path.exists(
        os.path.join(local, "loss_histograms.png"))

    retrained = _unlearn(memorised, "retrain", config=RECIPE, reference="retrain")
    assert retrained.verdict == "passed" and retrained.version is not None, retrained.gate.failures()
    assert retrained.gate.evidence == "measured"
    assert retrained.metrics.loc["unlearned", "membership_auc_low"] <= noop.metrics.loc["retrain",
                                                                                      "membership_auc_high"]
