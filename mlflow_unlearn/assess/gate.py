"""The acceptance gate: decide from the metrics whether an unlearned model may be registered.

:func:`~mlflow_unlearn.assess.assess` applies it to every unlearned model it measures. All values are in percent
(the metrics table's unit); all thresholds are in percentage points and can be set per call
(``unlearn(..., gate={...})``, or a ``gate:`` section in the config YAML). The checks:

``membership`` (sample-wise forgetting: the evidence)
    A membership test of the forget set against held-out samples of the same classes: the class-matched
    AUC of the per-sample loss with its 95% interval (:func:`mlflow_unlearn.metrics.mia.membership_auc`,
    columns ``membership_auc``, ``membership_auc_low``, ``membership_auc_high``), for the original, the
    unlearned model and the reference. The interval is widened to the spread of the AUC under exchangeability, so
    "it lies above chance" is a permutation test at 2.5% that holds for a forget set of any size (one sample
    included). With a reference, each model is also compared with it sample by sample: the same test on the
    difference of the two models' per-sample losses, the model's logits first brought to the reference's
    temperature (``membership.aligned_temperature``: a model's overall confidence is no memory; columns
    ``membership_vs_reference_auc``, ``_low``, ``_high``): above chance, the model finds the forget set more
    member-like than the reference does, relative to same-class non-members. Decided by
    :func:`sample_membership_verdict`; the rule uses only the intervals' position against chance (50) and against
    each other, so by default it has no threshold and no scale (``membership_margin``, 0 by default, only relaxes it:
    a lenient gate for tests of other things):

    * with the paired columns (a reference was trained): the evidence is measured when the original is more
      member-like than the reference (its paired interval lies above chance), and the check fails when the
      unlearned model still is. A retrained model passes it in at most 2.5% of runs, whatever the size; a model
      left unchanged fails it whenever the original memorised what the reference never saw.

    Without them, the intervals alone:

    * the original's interval includes or lies below chance and, with ``reference="retrain"``, does not lie
      wholly above the reference's interval: it shows no membership signal, so there is *nothing measurable to
      forget*. The check is not decided (``evidence=none``): the verdict rests on the
      other checks and the report says that it proves nothing about forgetting.
    * otherwise (``evidence=measured``) it fails when the unlearned model's interval still lies wholly above
      chance (it still tells the forget set from non-members, on the side where the original did), and, with
      ``reference="retrain"``, when its interval lies wholly above the reference's (it separates them more
      than a model that never saw the forget set). An interval below chance is not a failure of this check
      (e.g. mislabelled samples that the model no longer fits look *less* member-like than unseen data, as
      they do for the retrained model).
    * The reference alone can make the signal measurable: mislabelled samples that the original fits have
      losses like same-class non-members (an interval at chance), while a model that never saw them gives them
      high losses (an interval far below chance). An original whose interval lies wholly above the
      reference's has memorised them, and an unlearned model must come down to the reference's interval.

    For class-wise forgetting the same test (non-members = test samples of the forgotten classes) is reported
    but not gated: forget accuracy against chance or the reference decides there.
``forget``
    Forget accuracy must be near its target: the ``retrain`` reference's forget accuracy when a reference
    was trained (two-sided, ``|forget - reference| <= forget_tolerance``); otherwise, for class-wise
    forgetting, at most chance (``100 / num_classes``) + ``forget_tolerance``; for sample-wise
    forgetting, at most the unlearned model's test accuracy + ``forget_tolerance`` (forgotten samples
    should look like unseen ones). A forget accuracy is a proportion of ``forget_count`` samples: where its
    sampling spread exceeds the tolerance (a small forget set: one sample is 0% or 100%), the limit is that
    spread instead (:func:`sampling_allowance`), so that a retrained model is not refused for the luck of a few
    samples.
``retain``
    Retain accuracy may drop by at most ``max_retain_drop`` against the original model.
``test``
    Test accuracy may drop by at most ``max_test_drop`` against the original model. For class-wise
    forgetting it is the accuracy on the test samples of the retained classes (SalUn's convention, column
    ``test_accuracy_retained``; the whole-test figure is reported beside it); when that column is absent, the
    whole test set is used and the forgotten classes' share of it (in percent) is added to the allowance,
    since the unlearned model should now get those samples wrong.
``mia``
    With a reference only: ``|mia_efficacy - reference mia_efficacy| <= max_mia_gap`` (or the sampling spread of
    the two proportions, when larger).

A model passes when every applicable check passes; skipped checks are reported as such.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binom

from mlflow_unlearn.assess.rows import ORIGINAL_ROW, RETRAIN_ROW, UNLEARNED_ROW
from mlflow_unlearn.data.forget import CLASS_FORGETTING
from mlflow_unlearn.metrics.mia import MembershipTest

PASSED = "passed"
FAILED = "failed"

#: What the membership check could show: ``measured`` (the original separated the forget set from non-members,
#: so forgetting was tested), ``none`` (nothing measurable to forget), ``not tested`` (no membership columns,
#: or class-wise forgetting, where the test is reported but not gated).
EVIDENCE = (EVIDENCE_MEASURED, EVIDENCE_NONE, EVIDENCE_NOT_TESTED) = ("measured", "none", "not tested")
#: The metrics columns of the membership test (percent).
MEMBERSHIP_COLUMNS = ("membership_auc", "membership_auc_low", "membership_auc_high")
#: The columns of the paired membership test against the reference (percent; NaN in the reference's own row).
PAIRED_MEMBERSHIP_COLUMNS = ("membership_vs_reference_auc", "membership_vs_reference_auc_low",
                             "membership_vs_reference_auc_high")
CHANCE_AUC = 0.5
#: One-sided level of the sampling allowance of the forget and MIA checks (1%: with the membership test's 2.5%, a
#: retrained model fails any check in well under 5% of runs).
ALLOWANCE_LEVEL = 0.01


def sampling_allowance(count: int | None, share: float, *, paired: bool = False) -> float:
    """How far (percentage points) a proportion of ``count`` samples plausibly lies from its expected ``share``
    (percent) by chance alone: the upper ``1 - ALLOWANCE_LEVEL`` quantile of a binomial proportion minus its mean;
    with ``paired``, the ``1 - 2 * ALLOWANCE_LEVEL`` quantile of the absolute difference of two independent such
    proportions (the unlearned model's and the reference's, two-sided). 0 without a count.

    >>> sampling_allowance(1, 88.0)  # one sample: right or wrong, both plausible for an unseen sample
    12.0
    >>> sampling_allowance(1, 50.0, paired=True), round(sampling_allowance(144, 88.0), 1), sampling_allowance(None, 8)
    (100.0, 5.8, 0.0)
    """
    if not count:
        return 0.0

    p = min(max(share / 100.0, 0.0), 1.0)
    if not paired:
        return 100.0 * (float(binom.ppf(1.0 - ALLOWANCE_LEVEL, count, p)) / count - p)
    pmf = binom.pmf(np.arange(count + 1), count, p)
    difference = np.convolve(pmf, pmf[::-1])  # P(X - Y = k - count) for independent X, Y ~ Bin(count, p)
    by_gap = difference[count:].copy()
    by_gap[1:] += difference[:count][::-1]  # P(|X - Y| = d)
    gap = int(np.searchsorted(np.cumsum(by_gap), 1.0 - 2 * ALLOWANCE_LEVEL - 1e-12))
    return 100.0 * gap / count


@dataclass
class GateConfig:
    """Thresholds of the acceptance gate, in percentage points.

    Args:
        forget_tolerance: allowed distance of the forget accuracy from its target (see module docstring).
        max_retain_drop: allowed retain-accuracy drop against the original model.
        max_test_drop: allowed test-accuracy drop against the original model (plus, for class-wise
            forgetting, the forgotten classes' share of the test set).
        max_mia_gap: allowed |MIA efficacy - reference MIA efficacy| (only with a reference).
        membership_margin: how far (AUC percentage points) the unlearned model's membership interval may lie
            above chance, or above the reference's interval, before the membership check fails; 0 (the default)
            is the threshold-free rule, 50 switches the check off.
    """

    forget_tolerance: float = 5.0
    max_retain_drop: float = 5.0
    max_test_drop: float = 5.0
    max_mia_gap: float = 15.0
    membership_margin: float = 0.0

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
    """The verdict (``passed``/``failed``), a table of checks (check, value, target, limit, passed, detail), and
    the evidence of the membership check (:data:`EVIDENCE`)."""

    verdict: str
    checks: pd.DataFrame
    config: GateConfig
    evidence: str = EVIDENCE_NOT_TESTED

    @property
    def passed(self) -> bool:
        return self.verdict == PASSED

    def failures(self) -> list[str]:
        """One short sentence per failed check."""
        bad = self.checks[self.checks["passed"] == False]  # noqa: E712 (column holds True/False/None)
        return [f"{r.check}: {r.detail}" for r in bad.itertuples()]


@dataclass(frozen=True)
class MembershipVerdict:
    """The decision of :func:`sample_membership_verdict`.

    Args:
        passed: True or False, or None when undecided (nothing measurable to forget).
        evidence: :data:`EVIDENCE_MEASURED` or :data:`EVIDENCE_NONE`.
        reason: one sentence in plain words, numbers in percent (no sample, no ID).
    """

    passed: bool | None
    evidence: str
    reason: str


def _interval(test: Any) -> str:
    return f"AUC {100 * test.auc:.1f}% (95% CI {100 * test.low:.1f}-{100 * test.high:.1f}%)"


def paired_membership_verdict(original: Any, unlearned: Any, *, margin: float = 0.0) -> MembershipVerdict:
    """Decide the membership check from the paired tests against the reference (see the module docstring): each
    argument is the test of a model's per-sample losses minus the reference's (above chance: more member-like than
    the reference on the forget set, relative to same-class non-members).

    >>> from mlflow_unlearn.metrics.mia import MembershipTest
    >>> kept, chance = MembershipTest(0.97, 0.9, 1.0, 0.95, 1, 150), MembershipTest(0.5, 0.03, 0.97, 0.95, 1, 150)
    >>> paired_membership_verdict(kept, kept).passed, paired_membership_verdict(kept, chance).passed
    (False, True)
    >>> paired_membership_verdict(chance, chance).evidence
    'none'
    """
    if not original.low > CHANCE_AUC:
        return MembershipVerdict(None, EVIDENCE_NONE, (
            f"nothing measurable to forget: compared sample by sample with the retrained reference, the original "
            f"model does not find the forget set more member-like than same-class non-members "
            f"({_interval(original)} includes or lies below chance, 50%), so this test cannot show forgetting"))
    if unlearned.low > CHANCE_AUC + margin:
        return MembershipVerdict(False, EVIDENCE_MEASURED, (
            f"the unlearned model still finds the forget set more member-like than the retrained reference does, "
            f"relative to same-class non-members: {_interval(unlearned)} lies above chance (50%), as the "
            f"original's {_interval(original)} did"))
    return MembershipVerdict(True, EVIDENCE_MEASURED, (
        f"the original found the forget set more member-like than the retrained reference did "
        f"({_interval(original)}); the unlearned model no longer does: its {_interval(unlearned)} reaches chance "
        f"(50%)"))


def sample_membership_verdict(original: Any, unlearned: Any, reference: Any | None = None, *,
                              margin: float = 0.0) -> MembershipVerdict:
    """Decide the membership check of a sample-wise request from the three models' membership tests.

    The rule (see the module docstring) compares only confidence intervals with chance (0.5) and with each
    other, so it needs no threshold and holds at any scale: nothing measurable to forget when the original's
    interval does not lie wholly above chance; otherwise failed when the unlearned model's interval still lies
    wholly above chance, or wholly above the reference's interval.

    Args:
        original: the original model's :class:`~mlflow_unlearn.metrics.mia.MembershipTest` (or anything with
            ``auc``, ``low`` and ``high`` as fractions).
        unlearned: the unlearned model's test.
        reference: the retrained reference's test, or None.
        margin: tolerance (fraction of AUC) above chance and above the reference's interval; 0: none.

    Returns:
        A :class:`MembershipVerdict`.

    >>> from mlflow_unlearn.metrics.mia import MembershipTest
    >>> memorised = MembershipTest(0.9, 0.85, 0.95, 0.95, 100, 300)
    >>> chance = MembershipTest(0.5, 0.44, 0.56, 0.95, 100, 300)
    >>> sample_membership_verdict(memorised, memorised).passed
    False
    >>> sample_membership_verdict(memorised, chance, reference=chance).passed
    True
    >>> sample_membership_verdict(chance, chance).evidence
    'none'

    Mislabelled samples that the original fits look like same-class non-members (chance), while the reference,
    which never saw them, gives them high losses (far below chance): the reference makes the original's
    memorisation measurable, and a model left unchanged fails.

    >>> refit = MembershipTest(0.1, 0.05, 0.15, 0.95, 100, 300)
    >>> sample_membership_verdict(chance, chance, reference=refit).passed
    False
    >>> sample_membership_verdict(chance, refit, reference=refit).passed
    True
    """
    above_chance = original.low > CHANCE_AUC
    above_reference = reference is not None and original.low > reference.high
    if not (above_chance or above_reference):
        against = (f", nor from the retrained reference's {_interval(reference)}" if reference is not None else
                   "; a retrained reference (reference='retrain') can show what a model that never saw them does")
        return MembershipVerdict(None, EVIDENCE_NONE, (
            f"nothing measurable to forget: the original model does not tell the forget set from same-class "
            f"non-members ({_interval(original)} includes or lies below chance, 50%){against}, so this test "
            f"cannot show forgetting"))
    if above_chance and unlearned.low > CHANCE_AUC + margin:
        return MembershipVerdict(False, EVIDENCE_MEASURED, (
            f"the unlearned model still tells the forget set from same-class non-members by their loss: "
            f"{_interval(unlearned)} lies above chance (50%), as the original's {_interval(original)} did"))
    if reference is not None and unlearned.low > reference.high + margin:
        return MembershipVerdict(False, EVIDENCE_MEASURED, (
            f"the unlearned model separates the forget set from same-class non-members more than the retrained "
            f"reference: {_interval(unlearned)} lies above the reference's {_interval(reference)} (the "
            f"original's: {_interval(original)})"))
    if above_chance:
        told = f"the original told the forget set from same-class non-members ({_interval(original)})"
    else:
        told = (f"the original treated the forget set as more member-like ({_interval(original)}) than the retrained "
                f"reference ({_interval(reference)})")
    if reference is None:
        reached = "reaches chance (50%)"
    elif above_chance:
        reached = f"reaches chance (50%) and does not exceed the reference's {_interval(reference)}"
    else:
        reached = f"does not lie above the reference's {_interval(reference)}"
    return MembershipVerdict(True, EVIDENCE_MEASURED, f"{told}; the unlearned model no longer does: its "
                             f"{_interval(unlearned)} {reached}")


def _membership(row: pd.Series, columns: tuple[str, ...] = MEMBERSHIP_COLUMNS) -> Any:
    auc, low, high = (float(row[c]) / 100 for c in columns)
    return MembershipTest(auc, low, high, math.nan, 0, 0)


def _membership_check(new: pd.Series, old: pd.Series, ref: pd.Series | None, class_wise: bool,
                      margin: float) -> tuple[dict, str]:
    """The membership check row and the evidence it gives (``margin`` in percentage points)."""
    paired = ref is not None and all(c in new.index and math.isfinite(float(new[c])) and math.isfinite(float(old[c]))
                                     for c in PAIRED_MEMBERSHIP_COLUMNS)
    if paired:
        decision = paired_membership_verdict(_membership(old, PAIRED_MEMBERSHIP_COLUMNS),
                                             _membership(new, PAIRED_MEMBERSHIP_COLUMNS), margin=margin / 100)
        value, limit = float(new[PAIRED_MEMBERSHIP_COLUMNS[0]]), CHANCE_AUC * 100 + margin
    else:
        decision = sample_membership_verdict(_membership(old), _membership(new),
                                             None if ref is None else _membership(ref), margin=margin / 100)
        value = float(new["membership_auc"])
        limit = CHANCE_AUC * 100 if ref is None else min(CHANCE_AUC * 100, float(ref["membership_auc_high"]))
        limit += margin
    if class_wise:
        return _check("membership", value, CHANCE_AUC * 100, limit, None,
                      f"reported, not gated (class forgetting is judged by forget accuracy): "
                      f"{decision.reason}"), EVIDENCE_NOT_TESTED
    return _check("membership", value, CHANCE_AUC * 100, limit, decision.passed, decision.reason), decision.evidence


def _limit(tolerance: float, allowance: float, count: int | None) -> tuple[float, str]:
    """The larger of a threshold and the sampling allowance, and the words that say which it is."""
    if allowance > tolerance:
        return allowance, f": the sampling spread of {count} forget samples, above the tolerance {tolerance:g} pp"
    return tolerance, ""


def _check(name: str, value: float, target: float, limit: float, ok: bool | None, detail: str) -> dict:
    return {"check": name, "value": value, "target": target, "limit": limit, "passed": ok, "detail": detail}


def apply_gate(metrics: pd.DataFrame, *, config: GateConfig, forget_kind: str, num_classes: int,
               test_forget_share: float = 0.0, forget_count: int | None = None) -> GateResult:
    """Apply the gate to the metrics table (rows ``original``, ``unlearned`` and optionally ``retrain``).

    Args:
        metrics: the evaluation table in percent.
        config: thresholds.
        forget_kind: the forgetting kind, ``"class"`` or ``"sample"`` (``data.forget.FORGETTING_KINDS``).
        num_classes: the number of classes (for the chance level).
        test_forget_share: fraction of the test set in the forgotten classes (class-wise forgetting).
        forget_count: the number of forget samples the accuracies were measured on; the forget and MIA checks
            then allow the sampling spread of a proportion of that many samples (see :func:`sampling_allowance`).

    Returns:
        The verdict and the table of checks.
    """
    class_wise = forget_kind == CLASS_FORGETTING
    new, old = metrics.loc[UNLEARNED_ROW], metrics.loc[ORIGINAL_ROW]
    ref = metrics.loc[RETRAIN_ROW] if RETRAIN_ROW in metrics.index else None
    rows = []
    forget = float(new["forget_accuracy"])
    count = None if class_wise else forget_count
    if ref is not None:
        target = float(ref["forget_accuracy"])
        gap = abs(forget - target)
        limit, why = _limit(config.forget_tolerance, sampling_allowance(count, (forget + target) / 2, paired=True),
                            count)
        rows.append(_check("forget", forget, target, limit, gap <= limit,
                           f"forget accuracy {forget:.2f}% is {gap:.2f} pp from the reference's {target:.2f}% "
                           f"(limit {limit:.3g} pp{why})"))
    else:
        if class_wise:
            target, what = 100.0 / num_classes, "chance"
        else:
            target, what = float(new["test_accuracy"]), "its test accuracy"
        limit, why = _limit(config.forget_tolerance, sampling_allowance(count, target), count)
        rows.append(_check("forget", forget, target, limit, forget <= target + limit,
                           f"forget accuracy {forget:.2f}% vs {what} {target:.2f}% (limit +{limit:.3g} pp{why})"))
    before, after = float(old["retain_accuracy"]), float(new["retain_accuracy"])
    rows.append(_check("retain", after, before, config.max_retain_drop, before - after <= config.max_retain_drop,
                       f"retain accuracy fell {before - after:.2f} pp from {before:.2f}% "
                       f"(limit max_retain_drop={config.max_retain_drop:g} pp)"))
    rows.append(_test_check(new, old, config=config, class_wise=class_wise, test_forget_share=test_forget_share))
    if ref is not None and "mia_efficacy" in metrics.columns:
        mia, target = float(new["mia_efficacy"]), float(ref["mia_efficacy"])
        limit, why = _limit(config.max_mia_gap, sampling_allowance(count, (mia + target) / 2, paired=True), count)
        rows.append(_check("mia", mia, target, limit, abs(mia - target) <= limit,
                           f"MIA efficacy {mia:.2f}% is {abs(mia - target):.2f} pp from the reference's "
                           f"{target:.2f}% (limit {limit:.3g} pp{why})"))
    else:
        rows.append(_check("mia", float(new.get("mia_efficacy", math.nan)), math.nan, config.max_mia_gap, None,
                           "skipped: needs reference='retrain'"))
    evidence = EVIDENCE_NOT_TESTED
    if all(c in metrics.columns for c in MEMBERSHIP_COLUMNS):
        row, evidence = _membership_check(new, old, ref, class_wise, config.membership_margin)
        rows.insert(0, row)
    checks = pd.DataFrame(rows)
    decided = checks["passed"].dropna()
    finite = all(math.isfinite(float(v)) for v in new[["forget_accuracy", "retain_accuracy", "test_accuracy"]])
    verdict = PASSED if finite and bool(decided.astype(bool).all()) else FAILED
    return GateResult(verdict, checks, config, evidence)


def _test_check(new: pd.Series, old: pd.Series, *, config: GateConfig, class_wise: bool,
                test_forget_share: float) -> dict:
    """The test-accuracy check; its detail says which test samples count and where the limit comes from."""
    whole_before, whole_after = float(old["test_accuracy"]), float(new["test_accuracy"])
    limit = config.max_test_drop
    if class_wise and "test_accuracy_retained" in new.index:
        before, after = float(old["test_accuracy_retained"]), float(new["test_accuracy_retained"])
        detail = (f"test accuracy on the retained classes fell {before - after:.2f} pp from {before:.2f}% (limit "
                  f"max_test_drop={limit:g} pp); on the whole test set, forgotten classes included, "
                  f"{whole_before:.2f}% -> {whole_after:.2f}%")
    elif class_wise:
        share = 100.0 * test_forget_share
        before, after, limit = whole_before, whole_after, limit + share
        detail = (f"test accuracy fell {before - after:.2f} pp from {before:.2f}% (limit {limit:.3g} pp = "
                  f"max_test_drop {config.max_test_drop:g} pp + {share:.3g} pp, the forgotten classes' share of "
                  f"the test set, which the unlearned model should now get wrong)")
    else:
        before, after = whole_before, whole_after
        detail = f"test accuracy fell {before - after:.2f} pp from {before:.2f}% (limit max_test_drop={limit:g} pp)"
    return _check("test", after, before, limit, before - after <= limit, detail)
