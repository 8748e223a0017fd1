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

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlflow_unlearn.tracking import vocabulary as vocab

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from torch import nn

    from mlflow_unlearn.data import ForgetSplit
    from mlflow_unlearn.metrics import ModelOutputs
    from mlflow_unlearn.tracking.plan import UnlearnPlan

_logger = logging.getLogger("mlflow_unlearn")

#: Fewest test samples in the report's loss histograms (the forget set's size when it is larger).
MIN_REPORT_TEST_SAMPLES = 200


def report_losses(outputs: Mapping[str, Mapping[str, ModelOutputs]], *, num_test: int,
                  seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Per-sample losses for the report: the whole forget set, and a seeded test subset of comparable size.

    Args:
        outputs: ``{model: {split: outputs}}`` with the whole test set.
        num_test: the size of the test set.
        seed: seeds the test subset (the same samples for every model).

    Returns:
        ``{model: {"forget": losses, "test": losses}}``.
    """
    import numpy as np

    from mlflow_unlearn.metrics import per_sample_loss

    num_forget = len(next(iter(outputs.values()))["forget"].labels)
    size = min(num_test, max(num_forget, MIN_REPORT_TEST_SAMPLES))
    keep = np.sort(np.random.default_rng(seed).choice(num_test, size=size, replace=False))
    return {name: {"forget": per_sample_loss(*per_split["forget"]).numpy(),
                   "test": per_sample_loss(*per_split["test"]).numpy()[keep]}
            for name, per_split in outputs.items()}


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
    from mlflow_unlearn.metrics import collect_outputs, collect_split_outputs, evaluate_outputs

    split = evaluation_split(plan.forget, plan.retain_eval_size, plan.seed)
    outputs = collect_split_outputs(models, split, device=plan.device)
    incompetent = incompetent_copy(plan.model, plan.seed)
    metrics = evaluate_outputs(
        outputs, reference=vocab.RETRAIN_ROW if vocab.RETRAIN_ROW in models else None, seed=plan.seed,
        incompetent_forget=None if incompetent is None else collect_outputs(incompetent, split.forget,
                                                                            device=plan.device))
    return Evaluation(metrics, outputs, split)


def incompetent_copy(model: nn.Module, seed: int) -> nn.Module | None:
    """A randomly re-initialised copy of ``model`` for ZRF, or None when a module cannot be re-initialised."""
    import copy

    from mlflow_unlearn.methods.retrain import reinitialize

    try:
        return reinitialize(copy.deepcopy(model), seed=seed + 1).eval()
    except ValueError:
        _logger.info("ZRF skipped: %s cannot be re-initialised", type(model).__name__)
        return None


def evaluation_split(split: ForgetSplit, retain_eval_size: int | None, seed: int) -> ForgetSplit:
    """``split`` with its retain set cut to a seeded random subset of ``retain_eval_size`` samples."""
    import numpy as np

    if retain_eval_size is None or len(split.retain) <= retain_eval_size:
        return split
    keep = np.sort(np.random.default_rng(seed).choice(len(split.retain), size=retain_eval_size, replace=False))
    return dataclasses.replace(split, retain=split.retain.subset(keep))
