"""Metric functions against hand-computed values and scikit-learn; collect_outputs / evaluate behaviour."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import jensenshannon
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import SVC
from torch import nn
from torch.utils.data import TensorDataset

from mlflow_unlearn.data import DataSplit, ForgetSplit, load_data, resolve_forget
from mlflow_unlearn.metrics import (
    AVG_GAP_COLUMNS,
    METRIC_INFO,
    accuracy,
    activation_distance,
    avg_gap,
    collect_outputs,
    confidence,
    describe_metrics,
    entropy,
    evaluate,
    evaluate_outputs,
    js_divergence,
    js_divergence_per_sample,
    loss_mia,
    mia_efficacy,
    modified_entropy,
    per_sample_loss,
    softmax,
    zrf_score,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def _random_probs(n: int, c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(n, c, generator=g, dtype=torch.float64), dim=1)


# --- accuracy and losses -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accuracy_matches_sklearn(seed):
    g = torch.Generator().manual_seed(seed)
    logits, labels = torch.randn(97, 5, generator=g), torch.randint(0, 5, (97,), generator=g)
    assert accuracy(logits, labels) == pytest.approx(accuracy_score(labels.numpy(), logits.argmax(1).numpy()))


@pytest.mark.parametrize(("rows", "logit_shape", "message"), [
    (2, (3, 2), "one label per row"),
    (3, (3,), "2-D"),
    (0, (0, 2), "empty"),
], ids=["labels-short", "logits-1d", "empty"])
def test_accuracy_rejects_bad_shapes(rows, logit_shape, message):
    with pytest.raises(ValueError, match=message):
        accuracy(torch.zeros(*logit_shape), torch.zeros(rows, dtype=torch.long))


def test_per_sample_loss_hand_computed_and_matches_sklearn_log_loss():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    losses = per_sample_loss(logits, torch.tensor([0, 2]))
    expected = [math.log(math.e + math.e**2 + math.e**3) - 1.0, math.log(3.0)]
    assert losses.tolist() == pytest.approx(expected)
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 4, generator=g), torch.randint(0, 4, (50,), generator=g)
    reference = log_loss(labels.numpy(), softmax(logits).numpy(), labels=[0, 1, 2, 3])
    assert float(per_sample_loss(logits, labels).mean()) == pytest.approx(reference)


def test_confidence_entropy_and_modified_entropy_hand_computed():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    assert confidence(probs, labels).tolist() == pytest.approx([0.7, 0.1])
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert entropy(probs).tolist() == pytest.approx([h, h])
    correct = -(0.3 * math.log(0.7)) - (0.2 * math.log(0.8) + 0.1 * math.log(0.9))
    wrong = -(0.9 * math.log(0.1)) - (0.7 * math.log(0.3) + 0.2 * math.log(0.8))
    assert modified_entropy(probs, labels).tolist() == pytest.approx([correct, wrong])


def test_entropy_features_are_finite_with_exact_zeros():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0])
    assert torch.isfinite(entropy(probs)).all()
    values = modified_entropy(probs, labels)
    assert torch.isfinite(values).all() and values[0] == 0 and values[1] > 20


# --- divergences and ZRF -------------------------------------------------------------------------------------------

def test_js_divergence_hand_computed():
    p = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    kl_pm = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_qm = math.log2(1 / 0.75)
    assert js_divergence(p, q) == pytest.approx((kl_pm + kl_qm) / 2)
    assert js_divergence(p, q) == pytest.approx(0.311278, abs=1e-6)


def test_js_divergence_matches_scipy_is_symmetric_and_zero_for_identical():
    p, q = _random_probs(40, 6, 0), _random_probs(40, 6, 1)
    expected = np.mean([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p.numpy(), q.numpy(), strict=True)])
    assert js_divergence(p, q) == pytest.approx(expected, rel=1e-9)
    assert torch.allclose(js_divergence_per_sample(p, q), js_divergence_per_sample(q, p))
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert 0 <= js_divergence_per_sample(p, q).min() and js_divergence_per_sample(p, q).max() <= 1


def test_js_divergence_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        js_divergence(torch.ones(2, 3) / 3, torch.ones(2, 4) / 4)


def test_zrf_hand_computed_including_exact_zeros():
    model = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    incompetent = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.0, 0.0, 1.0]], dtype=torch.float64)
    # m = (p + q) / 2 = [5/12, 5/12, 1/6]
    kl_pm = 2 * 0.5 * math.log2(0.5 / (5 / 12))
    kl_qm = (1 / 3) * (2 * math.log2((1 / 3) / (5 / 12)) + math.log2((1 / 3) / (1 / 6)))
    js_first = (kl_pm + kl_qm) / 2
    js_second = 1.0  # disjoint supports
    expected = 1 - (js_first + js_second) / 2
    score = zrf_score(model, incompetent)
    assert math.isfinite(score)
    assert score == pytest.approx(expected)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")  # the published code's reduction, kept on purpose
def test_zrf_is_finite_where_the_published_formula_is_not():
    logits = torch.tensor([[200.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    probs = torch.softmax(logits, dim=1)  # float32 underflows to exact zeros in the first row
    random_probs = torch.tensor([[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    m = (probs + random_probs) / 2
    published = 1 - (0.5 * F.kl_div(torch.log(probs), m) + 0.5 * F.kl_div(torch.log(random_probs), m))
    assert not torch.isfinite(published)
    score = zrf_score(probs, random_probs)
    assert math.isfinite(score) and score == pytest.approx(0.5)  # JS = 1 on the first row, 0 on the second


def test_zrf_of_identical_outputs_is_one():
    p = _random_probs(10, 4, 3)
    assert zrf_score(p, p) == pytest.approx(1.0)


def test_activation_distance_hand_computed():
    p = torch.tensor([[1.0, 0.0], [0.6, 0.4]])
    q = torch.tensor([[0.0, 1.0], [0.6, 0.4]])
    assert activation_distance(p, q) == pytest.approx(math.sqrt(2) / 2)
    assert activation_distance(p, p) == 0.0
    assert activation_distance(p, q) == pytest.approx(activation_distance(q, p))


# --- attacks against a manual scikit-learn computation --------------------------------------------------------------

def test_loss_mia_matches_manual_sklearn_cross_validation():
    rng = np.random.default_rng(0)
    forget, test = rng.gamma(1.0, 0.3, size=50), rng.gamma(2.0, 0.5, size=50)
    result = loss_mia(forget, test, n_splits=5, seed=3)
    x = np.concatenate([test, forget])[:, None]
    y = np.concatenate([np.zeros(50, dtype=int), np.ones(50, dtype=int)])
    accs, aucs = [], []
    for train_idx, eval_idx in StratifiedKFold(5, shuffle=True, random_state=3).split(x, y):
        attack = LogisticRegression().fit(x[train_idx], y[train_idx])
        accs.append(accuracy_score(y[eval_idx], attack.predict(x[eval_idx])))
        aucs.append(roc_auc_score(y[eval_idx], attack.predict_proba(x[eval_idx])[:, 1]))
    assert result.accuracy == pytest.approx(np.mean(accs))
    assert result.auc == pytest.approx(np.mean(aucs))
    assert result.auc > 0.6


def test_loss_mia_balances_a_larger_forget_set_and_is_seeded():
    rng = np.random.default_rng(1)
    forget, test = rng.normal(1.0, 0.1, size=600), rng.normal(1.0, 0.1, size=20)
    # Unbalanced, always answering "forget" would score 97%; balanced, identical distributions give chance.
    result = loss_mia(forget, test, seed=0)
    assert result.accuracy < 0.75
    assert loss_mia(forget, test, seed=0) == result
    assert loss_mia(forget, test, seed=1) != result


@pytest.mark.parametrize(("members", "others", "kwargs", "message"), [
    ([0.1], [0.5, 0.6], {}, "at least 2"),
    ([1.0] * 5, [1.0] * 5, {"n_splits": 1}, "n_splits"),
    ([0.1, np.inf], [0.5, 0.6], {}, "finite"),
], ids=["one-member", "one-split", "infinite"])
def test_loss_mia_rejects_bad_input(members, others, kwargs, message):
    with pytest.raises(ValueError, match=message):
        loss_mia(np.array(members), np.array(others), **kwargs)


def _outputs_with_confidence(conf: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class logits whose true-class (class 0) probability is ``conf``."""
    conf = torch.as_tensor(conf, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    logits = torch.stack([torch.log(conf / (1 - conf)), torch.zeros_like(conf)], dim=1).float()
    return logits, torch.zeros(len(conf), dtype=torch.long)


def test_mia_efficacy_matches_manual_svc():
    rng = np.random.default_rng(0)
    retain, test, forget = rng.beta(8, 1, 60), rng.beta(2, 2, 60), rng.beta(4, 2, 30)
    outputs = [_outputs_with_confidence(c) for c in (retain, test, forget)]
    features = [softmax(o[0])[:, :1].numpy() for o in outputs]
    svc = SVC(C=3, gamma="auto", kernel="rbf").fit(np.concatenate(features[:2]), np.r_[np.ones(60), np.zeros(60)])
    expected = 1 - svc.predict(features[2]).mean()
    assert mia_efficacy(*outputs) == pytest.approx(expected)
    assert 0 < expected < 1


def test_mia_efficacy_balances_members_and_non_members():
    rng = np.random.default_rng(0)
    same = [_outputs_with_confidence(rng.beta(2, 2, n)) for n in (2000, 50, 400)]
    # 2000 members vs 50 non-members from one distribution: unbalanced, the SVC would call nearly all "member".
    assert 0.2 < mia_efficacy(*same, seed=0) < 0.8


def test_mia_efficacy_rejects_unknown_features_and_empty_sets():
    out = _outputs_with_confidence(np.array([0.9, 0.8]))
    with pytest.raises(ValueError, match="confidence, entropy, modified_entropy"):
        mia_efficacy(out, out, out, features=("loss",))
    empty = (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="non-empty `forget`"):
        mia_efficacy(out, out, empty)


# --- Avg Gap ------------------------------------------------------------------------------------------------------

def test_avg_gap_on_hand_made_frame():
    frame = pd.DataFrame(
        {"forget_accuracy": [0.0, 12.0, 100.0], "mia_efficacy": [100.0, 80.0, 1.0],
         "retain_accuracy": [99.0, 95.0, 100.0], "test_accuracy": [97.0, 93.0, 98.0],
         "loss_mia_auc": [50.0, 90.0, 99.0]},
        index=["retrain", "method", "original"],
    )
    gaps = avg_gap(frame, "retrain")
    assert gaps.to_dict() == pytest.approx({"retrain": 0.0, "method": (12 + 20 + 4 + 4) / 4,
                                            "original": (100 + 99 + 1 + 1) / 4})
    assert tuple(AVG_GAP_COLUMNS) == ("forget_accuracy", "mia_efficacy", "retain_accuracy", "test_accuracy")
    with pytest.raises(ValueError, match="Unknown reference row 'nope'"):
        avg_gap(frame, "nope")
    with pytest.raises(ValueError, match="missing"):
        avg_gap(frame.drop(columns="mia_efficacy"), "retrain")


# --- collect_outputs and evaluate ------------------------------------------------------------------------------------

class CountingNet(nn.Module):
    """A linear classifier that counts the samples it has seen and keeps a dropout layer to check modes."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(64, 10)
        self.samples_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.samples_seen += x.shape[0]
        return self.fc(self.drop(x.flatten(1)))


@pytest.fixture(scope="module")
def small_split() -> ForgetSplit:
    full = load_data("digits")
    small = DataSplit(full.train.subset(np.arange(240)), full.test.subset(np.arange(80)), "digits", 0, 0.2)
    return resolve_forget(small, "classes:3")


def test_collect_outputs_is_ordered_deterministic_and_restores_modes(small_split):
    net = CountingNet(0)
    net.train()
    net.drop.eval()  # a mixed-mode model must come back exactly as it was
    out = collect_outputs(net, small_split.retain, device="cpu", batch_size=7)
    assert net.training and not net.drop.training
    assert out.logits.dtype == torch.float32 and out.labels.dtype == torch.int64
    assert torch.equal(out.labels, small_split.retain.y)
    with torch.no_grad():
        expected = net.fc(small_split.retain.to_tensors()[0].flatten(1))
    assert torch.allclose(out.logits, expected, atol=1e-6)  # eval mode: dropout off
    generic = TensorDataset(small_split.retain.to_tensors()[0], small_split.retain.y)
    assert torch.allclose(collect_outputs(net, generic, device="cpu", batch_size=64).logits, out.logits, atol=1e-6)


def test_collect_outputs_rejects_bad_input(small_split):
    with pytest.raises(ValueError, match="batch_size"):
        collect_outputs(CountingNet(0), small_split.retain, batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        collect_outputs(CountingNet(0), small_split.retain.subset(np.array([], dtype=int)))


def test_evaluate_table(small_split):
    models = {"original": CountingNet(0), "retrain": CountingNet(1), "method": CountingNet(2)}
    table = evaluate(models, small_split, incompetent=CountingNet(3), device="cpu", seed=0)
    assert list(table.index) == ["original", "retrain", "method"]
    assert list(table.columns) == [
        "forget_accuracy", "retain_accuracy", "test_accuracy", "mia_efficacy", "loss_mia_accuracy", "loss_mia_auc",
        "zrf", "avg_gap", "js_to_reference", "activation_distance_to_reference",
    ]
    n_total = len(small_split.forget) + len(small_split.retain) + len(small_split.test)
    assert all(m.samples_seen == n_total for m in models.values())  # one pass per split, no repeats
    retain_out = collect_outputs(models["method"], small_split.retain, device="cpu")
    assert table.loc["method", "retain_accuracy"] == pytest.approx(100 * accuracy(*retain_out))
    percent = ["forget_accuracy", "retain_accuracy", "test_accuracy", "mia_efficacy", "loss_mia_accuracy",
               "loss_mia_auc"]
    assert ((table[percent] >= 0) & (table[percent] <= 100)).all().all()
    assert table["loss_mia_auc"].gt(1).any()  # percent, not a fraction
    assert ((table["zrf"] >= 0) & (table["zrf"] <= 1)).all()
    assert table.loc["retrain", ["avg_gap", "js_to_reference", "activation_distance_to_reference"]].eq(0).all()
    assert table.loc["method", "avg_gap"] == pytest.approx(avg_gap(table, "retrain")["method"])
    assert table.loc["method", "js_to_reference"] > 0
    assert set(table.columns) <= set(METRIC_INFO)
    again = evaluate({"method": models["method"]}, small_split, device="cpu", seed=0)
    pd.testing.assert_frame_equal(table.loc[["method"], again.columns], again)  # seeded: same numbers again


def test_evaluate_outputs_gives_the_table_of_evaluate_from_collected_outputs(small_split):
    models = {"original": CountingNet(0), "retrain": CountingNet(1)}
    table = evaluate(models, small_split, incompetent=CountingNet(3), device="cpu", seed=4)
    outputs = {name: {part: collect_outputs(net, getattr(small_split, part), device="cpu")
                      for part in ("forget", "retain", "test")} for name, net in models.items()}
    random_forget = collect_outputs(CountingNet(3), small_split.forget, device="cpu")
    from_outputs = evaluate_outputs(outputs, reference="retrain", incompetent_forget=random_forget, seed=4)
    pd.testing.assert_frame_equal(from_outputs, table)
    with pytest.raises(ValueError, match="Unknown reference 'gold'"):
        evaluate_outputs(outputs, reference="gold")
    with pytest.raises(ValueError, match="lack the test set"):
        evaluate_outputs({"original": {k: v for k, v in outputs["original"].items() if k != "test"}})
    with pytest.raises(ValueError, match="non-empty mapping"):
        evaluate_outputs({})


def test_evaluate_optional_columns_and_single_sample_forget(small_split):
    single = ForgetSplit(small_split.forget.subset([0]), small_split.retain, small_split.test, "sample", "ids",
                         "digest", 1)
    table = evaluate({"model": CountingNet(0)}, single, device="cpu")  # default reference "retrain" absent: skipped
    assert "zrf" not in table.columns and "avg_gap" not in table.columns
    assert table[["loss_mia_accuracy", "loss_mia_auc"]].isna().all().all()
    assert table.loc["model", "forget_accuracy"] in (0.0, 100.0)


def _empty_forget(split: ForgetSplit) -> ForgetSplit:
    return ForgetSplit(split.forget.subset(np.array([], dtype=int)), split.retain, split.test, "sample", "ids",
                       "digest", 0)


@pytest.mark.parametrize(("call", "message"), [
    (lambda net, split: evaluate({"model": net}, split, reference="gold"), "Unknown reference 'gold'"),
    (lambda net, split: evaluate({}, split), "non-empty mapping"),
    (lambda net, split: evaluate({"model": "not a model"}, split), "torch.nn.Module"),
    (lambda net, split: evaluate({"model": net}, _empty_forget(split)), "empty forget set"),
], ids=["unknown-reference", "no-models", "not-a-model", "empty-forget-set"])
def test_evaluate_validates_before_running(small_split, call, message):
    net = CountingNet(0)
    with pytest.raises(ValueError, match=message):
        call(net, small_split)
    assert net.samples_seen == 0


# --- documentation ------------------------------------------------------------------------------------------------

def test_every_metric_is_documented():
    table = describe_metrics()
    assert set(table.index) == set(METRIC_INFO)
    assert table["direction"].isin(["higher is better", "lower is better", "closer to reference"]).all()
    assert "retrained" in METRIC_INFO["mia_efficacy"].ideal
    documented = set(re.findall(r"^\| `(\w+)` \|", DOCS.read_text(), flags=re.MULTILINE))
    assert documented == set(METRIC_INFO)
