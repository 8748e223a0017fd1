"""The membership test of a forget set, on outputs already collected: the gate's membership columns, and the
per-sample losses that the audit report plots beside them.

The forget set is compared with the test samples of its own classes (the non-members that differ from it only in
membership, not in class); with a reference, each model is also compared with the reference sample by sample (see
:mod:`~mlflow_unlearn.assess.gate`). :func:`retained_test_accuracy` is the class-forgetting column the gate's test
check reads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from mlflow_unlearn.assess.gate import MEMBERSHIP_COLUMNS, PAIRED_MEMBERSHIP_COLUMNS
from mlflow_unlearn.metrics.functional import ModelOutputs, accuracy, membership_score, per_sample_loss
from mlflow_unlearn.metrics.mia import membership_auc

_logger = logging.getLogger("mlflow_unlearn")


def report_losses(outputs: Mapping[str, Mapping[str, ModelOutputs]]) -> dict[str, dict[str, np.ndarray]]:
    """Per-sample losses for the report: the forget set and the non-members the membership test compares it
    with (the test samples of the forget set's classes).

    Args:
        outputs: ``{model: {split: outputs}}`` with the whole test set.

    Returns:
        ``{model: {"forget": losses, "heldout": losses}}``.
    """
    result = {}
    for name, per_split in outputs.items():
        forget, test = per_split["forget"], per_split["test"]
        same_class = np.isin(test.labels.numpy(), forget.labels.numpy())
        result[name] = {"forget": per_sample_loss(*forget).numpy(),
                        "heldout": per_sample_loss(*test).numpy()[same_class]}
    return result


def membership_columns(outputs: Mapping[str, Mapping[str, ModelOutputs]], *, seed: int,
                       reference: str | None = None) -> pd.DataFrame:
    """Each model's membership test (:func:`mlflow_unlearn.metrics.mia.membership_auc`): the forget set against
    the test samples of its classes, as the gate's columns ``membership_auc``, ``membership_auc_low`` and
    ``membership_auc_high`` (percent), one row per model; NaN where the test cannot run (no test sample of the
    forget set's classes).

    With ``reference`` (a row of ``outputs``), also the paired test of every other model against it
    (:data:`~mlflow_unlearn.assess.gate.PAIRED_MEMBERSHIP_COLUMNS`): the same test on each sample's score under
    the model minus its score under the reference, so that what the reference also finds member-like (samples that
    are easy for any model) does not count, and what the model alone remembers does.
    """
    # the loss on a scale that does not saturate (the same order): a rank test needs no ties at 0
    scores = {name: (membership_score(*per_split["forget"]), membership_score(*per_split["test"]))
              for name, per_split in outputs.items()}
    rows = {}
    for name, per_split in outputs.items():
        forget, test = per_split["forget"], per_split["test"]
        tests = [(MEMBERSHIP_COLUMNS, scores[name])]
        if reference is not None:
            ref = scores[reference]
            tests.append((PAIRED_MEMBERSHIP_COLUMNS, (scores[name][0] - ref[0], scores[name][1] - ref[1])))
        rows[name] = {}
        for columns, (forget_scores, test_scores) in tests:
            if columns is PAIRED_MEMBERSHIP_COLUMNS and name == reference:
                rows[name].update(dict.fromkeys(columns, float("nan")))
                continue
            try:
                result = membership_auc(forget_scores, test_scores, forget_labels=forget.labels,
                                        heldout_labels=test.labels, seed=seed)
                rows[name].update(zip(columns, (100 * result.auc, 100 * result.low, 100 * result.high),
                                      strict=True))
            except ValueError as exc:
                _logger.info("Membership test skipped for %s: %s", name, exc)
                rows[name].update(dict.fromkeys(columns, float("nan")))
    return pd.DataFrame.from_dict(rows, orient="index")


def retained_test_accuracy(outputs: Mapping[str, Mapping[str, ModelOutputs]],
                           forget_classes: tuple[int, ...]) -> dict[str, float]:
    """Each model's test accuracy (percent) on the test samples of the retained classes (SalUn's convention for
    class forgetting)."""
    result = {}
    for name, per_split in outputs.items():
        test = per_split["test"]
        keep = ~np.isin(test.labels.numpy(), forget_classes)
        result[name] = 100 * accuracy(test.logits[keep], test.labels[keep]) if keep.any() else float("nan")
    return result
