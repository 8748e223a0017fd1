"""The acceptance gate: decide from the metrics whether an unlearned model may be registered.

All values are in percent (the metrics table's unit); all thresholds are in percentage points and can be
set per call (``unlearn(..., gate={...})``, or a ``gate:`` section in the config YAML). The checks:

``forget``
    Forget accuracy must be near its target: the ``retrain`` reference's forget accuracy when a reference
    was trained (two-sided, ``|forget - reference| <= forget_tolerance``); otherwise, for class-wise
    forgetting, at most chance (``100 / num_classes``) + ``forget_tolerance``; for sample-wise
    forgetting, at most the unlearned model's test accuracy + ``forget_tolerance`` (forgotten samples
    should look like unseen ones).
``retain``
    Retain accuracy may drop by at most ``max_retain_drop`` against the original model.
``test``
    Test accuracy may drop by at most ``max_test_drop`` against the original model; for class-wise
    forgetting the test set still holds the forgotten classes, which the unlearned model should now get
    wrong, so their share of the test set (in percent) is added to the allowance.
``mia``
    With a reference only: ``|mia_efficacy - reference mia_efficacy| <= max_mia_gap``.

A model passes when every applicable check passes; skipped checks are reported as such.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import pandas as pd

from mlflow_unlearn.tracking.vocabulary import ORIGINAL_ROW, RETRAIN_ROW, UNLEARNED_ROW

PASSED = "passed"
FAILED = "failed"



@dataclass
class GateConfig:
    """Thresholds of the acceptance gate, in percentage points.

    Args:
        forget_tolerance: allowed distance of the forget accuracy from its target (see module docstring).
        max_retain_drop: allowed retain-accuracy drop against the original model.
        max_test_drop: allowed test-accuracy drop against the original model (plus, for class-wise
            forgetting, the forgotten classes' share of the test set).
        max_mia_gap: allowed |MIA efficacy - reference MIA efficacy| (only with a reference).
    """

    forget_tolerance: float = 5.0
    max_retain_drop: float = 5.0
    max_test_drop: float = 5.0
    max_mia_gap: float = 15.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"Expected gate threshold `{f.name}` to be a non-negative number but got {value!r}")
            setattr(self, f.name, float(value))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def build_gate_config(gate: GateConfig | Mapping[str, Any] | None) -> GateConfig:
    """Resolve ``None`` / a mapping of overrides / a :class:`GateConfig` to a validated config.

    Raises:
        ValueError: unknown keys (the accepted ones are listed) or invalid values.
    """
    if gate is None:
        return GateConfig()
    if isinstance(gate, GateConfig):
        return gate
    if not isinstance(gate, Mapping):
        raise ValueError(f"Expected `gate` to be a mapping or GateConfig but got {type(gate).__name__}")
    known = {f.name for f in fields(GateConfig)}
    unknown = sorted(set(gate) - known)
    if unknown:
        raise ValueError(f"Unknown gate threshold(s): {', '.join(unknown)}; accepted: {', '.join(sorted(known))}")
    return GateConfig(**dict(gate))


@dataclass(frozen=True)
class GateResult:
    """The verdict (``passed``/``failed``) and a table of checks (check, value, target, limit, passed)."""

    verdict: str
    checks: pd.DataFrame
    config: GateConfig

    @property
    def passed(self) -> bool:
        return self.verdict == PASSED

    def failures(self) -> list[str]:
        """One short sentence per failed check."""
        bad = self.checks[self.checks["passed"] == False]  # noqa: E712 (column holds True/False/None)
        return [f"{r.check}: {r.detail}" for r in bad.itertuples()]


def _check(name: str, value: float, target: float, limit: float, ok: bool | None, detail: str) -> dict:
    return {"check": name, "value": value, "target": target, "limit": limit, "passed": ok, "detail": detail}


def apply_gate(metrics: pd.DataFrame, *, config: GateConfig, forget_kind: str, num_classes: int,
               test_forget_share: float = 0.0) -> GateResult:
    """Apply the gate to the metrics table (rows ``original``, ``unlearned`` and optionally ``retrain``).

    Args:
        metrics: the evaluation table in percent.
        config: thresholds.
        forget_kind: the forgetting kind, ``"class"`` or ``"sample"`` (``vocabulary.FORGETTING_KINDS``).
        num_classes: the number of classes (for the chance level).
        test_forget_share: fraction of the test set in the forgotten classes (class-wise forgetting).

    Returns:
        The verdict and the table of checks.
    """
    from mlflow_unlearn.tracking.vocabulary import CLASS_FORGETTING

    class_wise = forget_kind == CLASS_FORGETTING
    new, old = metrics.loc[UNLEARNED_ROW], metrics.loc[ORIGINAL_ROW]
    ref = metrics.loc[RETRAIN_ROW] if RETRAIN_ROW in metrics.index else None
    rows = []
    forget = float(new["forget_accuracy"])
    if ref is not None:
        target = float(ref["forget_accuracy"])
        gap = abs(forget - target)
        rows.append(_check("forget", forget, target, config.forget_tolerance, gap <= config.forget_tolerance,
                           f"forget accuracy {forget:.2f}% is {gap:.2f} pp from the reference's {target:.2f}% "
                           f"(limit {config.forget_tolerance:g} pp)"))
    else:
        if class_wise:
            target, what = 100.0 / num_classes, "chance"
        else:
            target, what = float(new["test_accuracy"]), "its test accuracy"
        rows.append(_check("forget", forget, target, config.forget_tolerance,
                           forget <= target + config.forget_tolerance,
                           f"forget accuracy {forget:.2f}% vs {what} {target:.2f}% "
                           f"(limit +{config.forget_tolerance:g} pp)"))
    test_limit = config.max_test_drop + (100.0 * test_forget_share if class_wise else 0.0)
    for split, limit in (("retain", config.max_retain_drop), ("test", test_limit)):
        before, after = float(old[f"{split}_accuracy"]), float(new[f"{split}_accuracy"])
        rows.append(_check(split, after, before, limit, before - after <= limit,
                           f"{split} accuracy fell {before - after:.2f} pp from {before:.2f}% (limit {limit:.3g} pp)"))
    if ref is not None and "mia_efficacy" in metrics.columns:
        mia, target = float(new["mia_efficacy"]), float(ref["mia_efficacy"])
        rows.append(_check("mia", mia, target, config.max_mia_gap, abs(mia - target) <= config.max_mia_gap,
                           f"MIA efficacy {mia:.2f}% is {abs(mia - target):.2f} pp from the reference's "
                           f"{target:.2f}% (limit {config.max_mia_gap:g} pp)"))
    else:
        rows.append(_check("mia", float(new.get("mia_efficacy", math.nan)), math.nan, config.max_mia_gap, None,
                           "skipped: needs reference='retrain'"))
    checks = pd.DataFrame(rows)
    decided = checks["passed"].dropna()
    finite = all(math.isfinite(float(v)) for v in new[["forget_accuracy", "retain_accuracy", "test_accuracy"]])
    verdict = PASSED if finite and bool(decided.astype(bool).all()) else FAILED
    return GateResult(verdict, checks, config)
