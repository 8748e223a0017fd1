"""The evaluation of one unlearning run, from model outputs collected once per (model, split).

:func:`mlflow_unlearn.metrics.evaluate` runs every model over the forget, retain and test sets and returns
the metrics table; the audit report also needs per-sample losses on the forget and test sets. Collecting
the outputs once (:func:`mlflow_unlearn.metrics.collect_split_outputs`) and deriving both the table
(:func:`mlflow_unlearn.metrics.evaluate_outputs`, the same columns and values as ``metrics.evaluate``) and
the report's losses (:func:`report_losses`) from them saves the second forward pass over those sets.
:func:`evaluate_models` does that for an :class:`~mlflow_unlearn.tracking.plan.UnlearnPlan`, on a seeded
subset of the retain set (:func:`evaluation_split`), with ZRF measured against a randomly re-initialised copy
of the original (:func:`incompetent_copy`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mlflow_unlearn.methods.retrain import reinitialize
from mlflow_unlearn.metrics import (
    accuracy,
    collect_outputs,
    collect_split_outputs,
    evaluate_outputs,
    membership_score,
    per_sample_loss,
)
from mlflow_unlearn.metrics.mia import membership_auc
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.gate import MEMBERSHIP_COLUMNS, PAIRED_MEMBERSHIP_COLUMNS

if TYPE_CHECKING:
    from torch import nn

    from mlflow_unlearn.data import ForgetSplit
    from mlflow_unlearn.metrics import ModelOutputs
    from mlflow_unlearn.tracking.plan import UnlearnPlan

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
    (:data:`~mlflow_unlearn.tracking.gate.PAIRED_MEMBERSHIP_COLUMNS`): the same test on each sample's score under
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


@dataclass(frozen=True)
class Evaluation:
    """The metrics table of an unlearning and what it was computed from.

    Args:
        metrics: one row per model (``original``, ``unlearned``, ``retrain``), percent.
        outputs: ``{model: {split: outputs}}``, one forward pass per (model, split).
        split: the evaluated split (the retain set cut to the plan's ``retain_eval_size``).
    """

    metrics: pd.DataFrame
    outputs: Mapping[str, Mapping[str, ModelOutputs]]
    split: ForgetSplit


def evaluate_models(plan: UnlearnPlan, models: Mapping[str, nn.Module]) -> Evaluation:
    """Evaluate ``models`` (named by :data:`~mlflow_unlearn.tracking.vocabulary.METRIC_ROWS`) on the plan's split."""
    split = evaluation_split(plan.forget, plan.retain_eval_size, plan.seed)
    outputs = collect_split_outputs(models, split, device=plan.device)
    incompetent = incompetent_copy(plan.model, plan.seed)
    class_wise = plan.forget.kind == vocab.CLASS_FORGETTING
    metrics = evaluate_outputs(
        outputs, reference=vocab.RETRAIN_ROW if vocab.RETRAIN_ROW in models else None, seed=plan.seed,
        incompetent_forget=None if incompetent is None else collect_outputs(incompetent, split.forget,
                                                                            device=plan.device),
        same_class_heldout=class_wise)
    if class_wise:
        retained = retained_test_accuracy(outputs, plan.forget.forget_classes)
        metrics.insert(metrics.columns.get_loc("test_accuracy") + 1, "test_accuracy_retained",
                       [retained[name] for name in metrics.index])
    reference = vocab.RETRAIN_ROW if vocab.RETRAIN_ROW in models else None
    metrics = metrics.join(membership_columns(outputs, seed=plan.seed, reference=reference))
    return Evaluation(metrics, outputs, split)


def incompetent_copy(model: nn.Module, seed: int) -> nn.Module | None:
    """A randomly re-initialised copy of ``model`` for ZRF, or None when a module cannot be re-initialised."""
    try:
        return reinitialize(copy.deepcopy(model), seed=seed + 1).eval()
    except ValueError:
        _logger.info("ZRF skipped: %s cannot be re-initialised", type(model).__name__)
        return None


def evaluation_split(split: ForgetSplit, retain_eval_size: int | None, seed: int) -> ForgetSplit:
    """``split`` with its retain set cut to a seeded random subset of ``retain_eval_size`` samples."""
    if retain_eval_size is None or len(split.retain) <= retain_eval_size:
        return split
    keep = np.sort(np.random.default_rng(seed).choice(len(split.retain), size=retain_eval_size, replace=False))
    return dataclasses.replace(split, retain=split.retain.subset(keep))
