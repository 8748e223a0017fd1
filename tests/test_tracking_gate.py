"""The acceptance gate as a pure function of the metrics table, and its configuration."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mlflow_unlearn.assess.gate import FAILED, PASSED, GateConfig, apply_gate, build_gate_config


def _table(**rows):
    columns = ["forget_accuracy", "retain_accuracy", "test_accuracy", "mia_efficacy"]
    return pd.DataFrame({name: dict(zip(columns, values, strict=True)) for name, values in rows.items()}).T


def test_class_wise_without_reference_targets_chance_and_allows_the_forgotten_share_of_test():
    metrics = _table(original=[99, 99, 98, 5], unlearned=[3, 97, 88, 100])
    result = apply_gate(metrics, config=GateConfig(), forget_kind="class", num_classes=10, test_forget_share=0.1)
    assert result.verdict == PASSED
    checks = result.checks.set_index("check")
    assert checks.loc["forget", "target"] == 10 and checks.loc["test", "limit"] == pytest.approx(15)
    assert "max_test_drop 5 pp + 10 pp, the forgotten classes' share" in checks.loc["test", "detail"]
    assert checks.loc["mia", "passed"] is None  # no reference: skipped, not failed
    assert apply_gate(metrics, config=GateConfig(), forget_kind="class", num_classes=10).verdict == FAILED


@pytest.mark.parametrize(("unlearned", "failed"), [
    ([99, 97, 92, 50], "forget"),  # forgotten samples still recognised well above the test accuracy
    ([20, 90, 92, 50], "retain"),  # retain accuracy dropped by 9 pp
    ([20, 97, 85, 50], "test"),
])
def test_sample_wise_without_reference(unlearned, failed):
    metrics = _table(original=[99, 99, 92, 5], unlearned=unlearned)
    result = apply_gate(metrics, config=GateConfig(), forget_kind="sample", num_classes=10)
    assert result.verdict == FAILED
    assert [f.split(":")[0] for f in result.failures()] == [failed]


def test_with_reference_forget_and_mia_are_two_sided():
    base = {"original": [99, 99, 97, 5], "retrain": [95, 99, 97, 40]}
    close = apply_gate(_table(**base, unlearned=[93, 98, 96, 45]), config=GateConfig(), forget_kind="sample",
                       num_classes=10)
    assert close.verdict == PASSED
    too_low = apply_gate(_table(**base, unlearned=[70, 98, 96, 45]), config=GateConfig(), forget_kind="sample",
                         num_classes=10)
    assert [f.split(":")[0] for f in too_low.failures()] == ["forget"]
    mia_far = apply_gate(_table(**base, unlearned=[95, 98, 96, 90]), config=GateConfig(max_mia_gap=10),
                         forget_kind="sample", num_classes=10)
    assert [f.split(":")[0] for f in mia_far.failures()] == ["mia"]


def test_non_finite_metrics_fail():
    metrics = _table(original=[99, 99, 97, 5], unlearned=[math.nan, 99, 97, 5])
    assert apply_gate(metrics, config=GateConfig(), forget_kind="class", num_classes=10).verdict == FAILED


def test_config_validation_and_overrides():
    assert build_gate_config(None) == GateConfig()
    assert build_gate_config({"max_retain_drop": 1}).max_retain_drop == 1.0
    with pytest.raises(ValueError, match="Unknown gate threshold.*accepted: forget_tolerance"):
        build_gate_config({"max_drop": 1})
    with pytest.raises(ValueError, match="Expected gate threshold `max_mia_gap` to be a non-negative number"):
        GateConfig(max_mia_gap=-1)
    with pytest.raises(ValueError, match="mapping or GateConfig"):
        build_gate_config([1, 2])


def _with_membership(metrics, **tests):
    for row, (auc, low, high) in tests.items():
        metrics.loc[row, ["membership_auc", "membership_auc_low", "membership_auc_high"]] = [auc, low, high]
    return metrics


def test_membership_check_fails_a_model_that_still_separates_and_passes_one_at_chance():
    from mlflow_unlearn.assess.gate import EVIDENCE_MEASURED

    kept = _with_membership(_table(original=[99, 99, 92, 5], unlearned=[93, 99, 92, 5]),
                            original=(80, 74, 86), unlearned=(78, 71, 84))
    result = apply_gate(kept, config=GateConfig(), forget_kind="sample", num_classes=10)
    assert result.verdict == FAILED and result.evidence == EVIDENCE_MEASURED
    assert [f.split(":")[0] for f in result.failures()] == ["membership"]
    assert "still tells the forget set" in result.failures()[0]
    relaxed = apply_gate(kept, config=GateConfig(membership_margin=50), forget_kind="sample", num_classes=10)
    assert relaxed.verdict == PASSED  # the margin only relaxes the rule (50 pp switches the check off)
    forgot = _with_membership(_table(original=[99, 99, 92, 5], unlearned=[93, 99, 92, 5]),
                              original=(80, 74, 86), unlearned=(52, 45, 59))
    assert apply_gate(forgot, config=GateConfig(), forget_kind="sample", num_classes=10).verdict == PASSED


def test_membership_check_against_the_reference_and_below_chance():
    base = _table(original=[99, 99, 92, 5], retrain=[0, 99, 93, 5], unlearned=[5, 99, 92, 5])
    # Mislabelled samples: the reference's forget set looks far less member-like than non-members (AUC 5%).
    metrics = _with_membership(base.copy(), original=(80, 74, 86), retrain=(5, 2, 8), unlearned=(40, 33, 47))
    result = apply_gate(metrics, config=GateConfig(), forget_kind="sample", num_classes=10)
    assert [f.split(":")[0] for f in result.failures()] == ["membership"]
    assert "more than the retrained reference" in result.failures()[0]
    close = _with_membership(base.copy(), original=(80, 74, 86), retrain=(5, 2, 8), unlearned=(9, 5, 13))
    assert apply_gate(close, config=GateConfig(), forget_kind="sample", num_classes=10).verdict == PASSED


def test_the_reference_makes_memorised_wrong_labels_measurable():
    """Mislabelled samples that the original fits: same-class AUC at chance for the original, far below for a
    model that never saw them. Without a reference nothing is measurable; with it, an unchanged model fails."""
    from mlflow_unlearn.assess.gate import EVIDENCE_MEASURED, EVIDENCE_NONE

    base = _table(original=[100, 99, 92, 5], retrain=[4, 99, 93, 5], unlearned=[100, 99, 92, 5])
    unchanged = _with_membership(base.copy(), original=(50, 44, 56), retrain=(6, 3, 9), unlearned=(50, 44, 56))
    result = apply_gate(unchanged, config=GateConfig(), forget_kind="sample", num_classes=10)
    assert result.evidence == EVIDENCE_MEASURED and "membership" in [f.split(":")[0] for f in result.failures()]
    assert "more than the retrained reference" in result.checks.set_index("check").loc["membership", "detail"]
    refit = _with_membership(_table(original=[100, 99, 92, 5], retrain=[4, 99, 93, 5], unlearned=[6, 99, 92, 5]),
                             original=(50, 44, 56), retrain=(6, 3, 9), unlearned=(8, 4, 12))
    result = apply_gate(refit, config=GateConfig(), forget_kind="sample", num_classes=10)
    assert result.verdict == PASSED and result.evidence == EVIDENCE_MEASURED
    no_reference = _with_membership(_table(original=[100, 99, 92, 5], unlearned=[100, 99, 92, 5]),
                                    original=(50, 44, 56), unlearned=(50, 44, 56))
    result = apply_gate(no_reference, config=GateConfig(), forget_kind="sample", num_classes=10)
    assert result.evidence == EVIDENCE_NONE
    assert "reference='retrain'" in result.checks.set_index("check").loc["membership", "detail"]


def test_no_signal_in_the_original_is_nothing_measurable_to_forget():
    from mlflow_unlearn.assess.gate import EVIDENCE_NONE, sample_membership_verdict

    metrics = _with_membership(_table(original=[95, 99, 92, 5], unlearned=[93, 99, 92, 5]),
                               original=(53, 47, 59), unlearned=(56, 51, 61))
    result = apply_gate(metrics, config=GateConfig(), forget_kind="sample", num_classes=10)
    assert result.verdict == PASSED and result.evidence == EVIDENCE_NONE
    check = result.checks.set_index("check").loc["membership"]
    assert check["passed"] is None and check["detail"].startswith("nothing measurable to forget")
    from mlflow_unlearn.metrics.mia import MembershipTest

    flat = MembershipTest(0.5, 0.45, 0.55, 0.95, 40, 40)
    assert sample_membership_verdict(flat, flat).evidence == EVIDENCE_NONE


def test_class_forgetting_reports_membership_and_tests_accuracy_on_retained_classes():
    from mlflow_unlearn.assess.gate import EVIDENCE_NOT_TESTED

    metrics = _with_membership(_table(original=[99, 99, 98, 5], unlearned=[3, 97, 88, 100]),
                               original=(60, 55, 65), unlearned=(58, 53, 63))
    metrics["test_accuracy_retained"] = [98.0, 96.5]
    result = apply_gate(metrics, config=GateConfig(), forget_kind="class", num_classes=10, test_forget_share=0.1)
    assert result.verdict == PASSED and result.evidence == EVIDENCE_NOT_TESTED
    checks = result.checks.set_index("check")
    assert checks.loc["membership", "passed"] is None and "reported, not gated" in checks.loc["membership", "detail"]
    assert checks.loc["test", "limit"] == 5 and checks.loc["test", "value"] == 96.5
    assert "retained classes" in checks.loc["test", "detail"] and "98.00% -> 88.00%" in checks.loc["test", "detail"]
