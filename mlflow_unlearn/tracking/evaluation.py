"""The evaluation of one unlearning run, from model outputs collected once per (model, split).

:func:`mlflow_unlearn.metrics.evaluate` runs every model over the forget, retain and test sets and returns
the metrics table; the audit report also needs per-sample losses on the forget and test sets. Collecting
the outputs once (:func:`mlflow_unlearn.metrics.collect_split_outputs`) and deriving both the table
(:func:`mlflow_unlearn.metrics.evaluate_outputs`, the same columns and values as ``metrics.evaluate``) and
the report's losses (:func:`report_losses`) from them saves the second forward pass over those sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from mlflow_unlearn.metrics import ModelOutputs

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
