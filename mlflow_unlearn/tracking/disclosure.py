"""What an unlearning run publishes about its forget set: everything, or for a small ``ids:`` request, nothing that
singles a sample out.

A figure computed on the forget set (its accuracy, a membership AUC, a loss histogram, the count of same-class
non-members it was compared with) is, for one or a few samples, a description of those samples: with the data and
the two models, a reader of the tracking store can compute the figure for every candidate sample and keep those
that match. So below :data:`MIN_DISCLOSED_FORGET_COUNT` samples, an ``ids:`` request's records (run metrics, tags,
the report and its plots, the command's output) carry only the verdict, each check's outcome and reason in words,
and the aggregate figures that no one sample moves (retain and test accuracy). The caller of
:func:`~mlflow_unlearn.tracking.api.unlearn` still gets every figure in memory. ``classes:`` and ``random:``
requests name their set in their spec, so nothing of them is withheld. docs/metrics.md states the threat model.

>>> Disclosure(withheld=("forget_accuracy",)).limited, Disclosure().limited
(True, False)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlflow_unlearn.assess.gate import MEMBERSHIP_COLUMNS, PAIRED_MEMBERSHIP_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

    from mlflow_unlearn.assess.gate import GateResult
    from mlflow_unlearn.tracking.plan import UnlearnPlan

#: The smallest ``ids:`` forget set whose own figures are published. Below it one sample moves a forget-set
#: accuracy by more than 2 percentage points, and a membership AUC of a handful of samples is little more than their
#: ranks among same-class non-members: a reader with the data and both models could match them to candidates.
MIN_DISCLOSED_FORGET_COUNT = 50
#: Metric columns computed on the forget set (withheld for a small ``ids:`` request).
FORGET_SET_COLUMNS = ("forget_accuracy", "mia_efficacy", "loss_mia_accuracy", "loss_mia_auc", "zrf", "avg_gap",
                      "js_to_reference", "activation_distance_to_reference", *MEMBERSHIP_COLUMNS,
                      *PAIRED_MEMBERSHIP_COLUMNS)
#: Gate checks decided on forget-set figures, and their outcome in words.
_CHECK_WORDS = {
    "membership": {True: "the unlearned model no longer tells the forget set from same-class non-members",
                   False: "the unlearned model still tells the forget set from same-class non-members, or separates "
                          "it more than the retrained reference",
                   None: "nothing measurable to forget, or not gated: the verdict rests on the other checks"},
    "forget": {True: "forget accuracy is within the limit of its target",
               False: "forget accuracy is outside the limit of its target", None: "not decided"},
    "mia": {True: "MIA efficacy is within the limit of the reference's", False: "MIA efficacy is outside the limit "
            "of the reference's", None: "skipped: needs reference='retrain'"},
}


@dataclass(frozen=True)
class Disclosure:
    """Which figures of one unlearning run are withheld from its records.

    Args:
        withheld: the metric columns withheld (empty: everything is published).
    """

    withheld: tuple[str, ...] = ()

    @property
    def limited(self) -> bool:
        """Whether anything is withheld (a small ``ids:`` request)."""
        return bool(self.withheld)

    @property
    def note(self) -> str:
        """Why figures are missing, for the records."""
        return (f"figures of the forget set withheld: a request by sample IDs of fewer than "
                f"{MIN_DISCLOSED_FORGET_COUNT} samples publishes none (see docs/metrics.md)")

    def metrics(self, table: pd.DataFrame) -> pd.DataFrame:
        """``table`` without the withheld columns."""
        return table.drop(columns=[c for c in self.withheld if c in table.columns])

    def gate(self, verdict: GateResult) -> GateResult:
        """``verdict`` with the checks decided on forget-set figures told in words: no value, target or limit."""
        if not self.limited:
            return verdict
        checks = verdict.checks.copy()
        for i, row in checks.iterrows():
            words = _CHECK_WORDS.get(row["check"])
            if words is not None:
                passed = None if row["passed"] is None or (isinstance(row["passed"], float)
                                                           and math.isnan(row["passed"])) else bool(row["passed"])
                checks.loc[i, ["value", "target", "limit"]] = math.nan
                checks.loc[i, "detail"] = f"{words[passed]} ({self.note})"
        return dataclasses.replace(verdict, checks=checks)


def disclosure(plan: UnlearnPlan) -> Disclosure:
    """What the records of ``plan``'s run may publish (see the module docstring)."""
    if plan.by_ids and plan.forget.count < MIN_DISCLOSED_FORGET_COUNT:
        return Disclosure(FORGET_SET_COLUMNS)
    return Disclosure()
