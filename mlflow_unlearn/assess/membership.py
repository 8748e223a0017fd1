"""The membership test of a forget set, on outputs already collected: the gate's membership columns, and the
per-sample losses that the audit report plots beside them.

The forget set is compared with the test samples of its own classes (the non-members that differ from it only in
membership, not in class); with a reference, each model is also compared with the reference sample by sample (see
:mod:`~mlflow_unlearn.assess.gate`). :func:`retained_test_accuracy` is the class-forgetting column the gate's test
check reads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize_scalar

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
    the model, its logits first brought to the reference's temperature (:func:`aligned_temperature`), minus its
    score under the reference, so that what the reference also finds member-like (samples that are easy for any
    model) does not count, and what the model alone remembers does.
    """
    # the loss on a scale that does not saturate (the same order): a rank test needs no ties at 0
    scores = {name: (membership_score(*per_split["forget"]), membership_score(*per_split["test"]))
              for name, per_split in outputs.items()}
    aligned = {}
    if reference is not None:
        ref_split = outputs[reference]
        for name, per_split in outputs.items():
            if name != reference:
                t = aligned_temperature(per_split, ref_split)
                aligned[name] = tuple(membership_score(per_split[s].logits / t, per_split[s].labels)
                                      for s in ("forget", "test"))
    rows = {}
    for name, per_split in outputs.items():
        forget, test = per_split["forget"], per_split["test"]
        tests = [(MEMBERSHIP_COLUMNS, scores[name])]
        if reference is not None:
            ref, own = scores[reference], aligned.get(name, scores[name])
            tests.append((PAIRED_MEMBERSHIP_COLUMNS, (own[0] - ref[0], own[1] - ref[1])))
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


#: The temperatures :func:`aligned_temperature` tries first: 25 log-spaced from 1/20 to 20 (28% apart), then it
#: searches between the best one's neighbours. Each try scores every sample: 241 tries took 49 CPU-s on 10,000 samples
#: of 1,000 classes, these 25 and the search 8 (the same temperature within 2e-7 on 40 test cases).
TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 25))


def aligned_temperature(model: Mapping[str, ModelOutputs], reference: Mapping[str, ModelOutputs]) -> float:
    """The temperature ``t`` that brings a model's membership scores closest to the reference's: the least squares
    of ``membership_score(logits / t) - reference score`` over the forget and test samples together (a grid of
    :data:`TEMPERATURES`, then a bounded search between the best point's neighbours).

    A temperature on a model's logits (its overall confidence) forgets and remembers nothing, but it moves every
    score: on plain differences the original with its logits times 0.6 passed the paired test on forgetting random
    samples, and a retrained model times 0.6 failed it on mislabelled ones (benchmarks/RESULTS.md, issue 26's fourth
    sitting). Dividing by ``t`` first undoes it; the forget and test samples are fitted alike, so a model that never
    saw the forget set still passes at the test's level.

    >>> ref = {"forget": ModelOutputs(torch.tensor([[3.0, 0.0]]), torch.tensor([0])),
    ...        "test": ModelOutputs(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1]))}
    >>> hotter = {s: ModelOutputs(o.logits * 2.5, o.labels) for s, o in ref.items()}
    >>> round(aligned_temperature(hotter, ref), 2), aligned_temperature(ref, ref)
    (2.5, 1.0)
    """
    def scores(outputs: Mapping[str, ModelOutputs], t: float) -> torch.Tensor:
        return torch.cat([membership_score(outputs[s].logits.double() / t, outputs[s].labels)
                          for s in ("forget", "test")])

    target = scores(reference, 1.0)

    def error(log_t: float) -> float:
        return float(((scores(model, math.exp(log_t)) - target) ** 2).mean())

    grid = np.log(TEMPERATURES)
    best = int(np.nanargmin([error(v) for v in grid]))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    found = minimize_scalar(error, bounds=(low, high), method="bounded", options={"xatol": 1e-6}).x
    # exactly 1 when it fits as well: a search ends a hair away from it, and for a model identical to the reference
    # (``retrain`` judged against its own recipe) that hair alone would order the differences by score
    return 1.0 if error(0.0) <= error(found) else math.exp(found)


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
