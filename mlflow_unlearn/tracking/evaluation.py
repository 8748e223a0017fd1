"""The evaluation of one unlearning run, from model outputs collected once per (model, split).

:func:`mlflow_unlearn.metrics.evaluate` runs every model over the forget, retain and test sets and returns
the metrics table; the audit report also needs per-sample losses on the forget and test sets. Collecting
the outputs once (:func:`collect_split_outputs`) and deriving both the table (:func:`metrics_from_outputs`,
the same columns and values as ``metrics.evaluate``) and the report's losses (:func:`report_losses`) from
them saves the second forward pass over those sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch
    from torch import nn

    from mlflow_unlearn.data import ForgetSplit
    from mlflow_unlearn.metrics import ModelOutputs

SPLITS = ("forget", "retain", "test")
#: Samples per forward pass of the evaluation.
EVAL_BATCH_SIZE = 512
#: Fewest test samples in the report's loss histograms (the forget set's size when it is larger).
MIN_REPORT_TEST_SAMPLES = 200


def collect_split_outputs(models: Mapping[str, nn.Module], split: ForgetSplit, *, device: torch.device,
                          batch_size: int = EVAL_BATCH_SIZE) -> dict[str, dict[str, ModelOutputs]]:
    """Each model's logits and labels on the forget, retain and test sets (``{model: {split: outputs}}``).

    Raises:
        ValueError: for an empty set.
    """
    from mlflow_unlearn import _runtime as rt
    from mlflow_unlearn.metrics import collect_outputs

    return {name: {part: collect_outputs(model, getattr(split, part), device=device, batch_size=batch_size)
                   for part in SPLITS}
            for name, model in rt.progress(models.items(), desc="evaluate", total=len(models))}


def metrics_from_outputs(outputs: Mapping[str, Mapping[str, ModelOutputs]], *, reference: str | None,
                         incompetent_forget: ModelOutputs | None, seed: int) -> pd.DataFrame:
    """The table of :func:`mlflow_unlearn.metrics.evaluate` from outputs collected by :func:`collect_split_outputs`.

    Args:
        outputs: ``{model: {"forget"|"retain"|"test": outputs}}``.
        reference: the row the gap columns (``avg_gap``, ``js_to_reference``,
            ``activation_distance_to_reference``) compare to, or None.
        incompetent_forget: a randomly initialised model's outputs on the forget set, for ``zrf`` (None: no
            ``zrf`` column).
        seed: seeds the membership attacks (the same for every model).

    Returns:
        One row per model, the columns of :data:`mlflow_unlearn.metrics.METRIC_INFO`.

    Raises:
        ValueError: if ``reference`` names no model.
    """
    import pandas as pd

    from mlflow_unlearn.metrics import activation_distance, avg_gap, js_divergence, softmax, zrf_score
    from mlflow_unlearn.metrics.evaluate import _model_metrics

    if reference is not None and reference not in outputs:
        raise ValueError(f"Unknown reference {reference!r}; the models are: {', '.join(outputs)}")
    rows = {name: _model_metrics(per_split, seed=seed) for name, per_split in outputs.items()}
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")
    forget_probs = {name: softmax(per_split["forget"].logits) for name, per_split in outputs.items()}
    if incompetent_forget is not None:
        random_probs = softmax(incompetent_forget.logits)
        table["zrf"] = [zrf_score(forget_probs[name], random_probs) for name in table.index]
    if reference is not None:
        table["avg_gap"] = avg_gap(table, reference)
        table["js_to_reference"] = [js_divergence(forget_probs[n], forget_probs[reference]) for n in table.index]
        table["activation_distance_to_reference"] = [
            activation_distance(forget_probs[n], forget_probs[reference]) for n in table.index
        ]
    return table


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
