"""The acceptance gate as a pure function of the metrics table, and its configuration."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mlflow_unlearn.tracking.gate import FAILED, PASSED, GateConfig, apply_gate, build_gate_config


def _table(**rows):
    columns = ["forget_accuracy", "retain_accuracy", "test_accuracy", "mia_efficacy"]
    return pd.DataFrame({name: dict(zip(columns, values, strict=True)) for name, values in rows.items()}).T


def test_class_wise_without_reference_targets_chance_and_allows_the_forgotten_share_of_test():
    metrics = _table(original=[99, 99, 98, 5], unlearned=[3, 97, 88, 100])
    result = apply_gate(metrics, config=GateConfig(), forget_kind="class", num_classes=10, test_forget_share=0.1)
    assert result.verdict == PASSED
    checks = result.checks.set_index("check")
    assert checks.loc["forget", "target"] == 10 and checks.loc["test", "limit"] == pytest.approx(15)
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
