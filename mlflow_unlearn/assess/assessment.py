"""One assessment of unlearned models: the metrics table, the membership test and the acceptance gate's verdicts.

Every model runs once over the forget, retain and test sets (:func:`mlflow_unlearn.metrics.collect_split_outputs`);
the table (:func:`mlflow_unlearn.metrics.evaluate_outputs`), the membership columns
(:func:`~mlflow_unlearn.assess.membership.membership_columns`), the per-sample losses of the audit report and the
gate's verdict on each unlearned model (:func:`~mlflow_unlearn.assess.gate.apply_gate`) all come from those outputs.
``unlearn``, ``evaluate_version`` and the benchmarks call :func:`assess`, so that a model is judged the same way
wherever it is measured.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.assess.gate import GateConfig, GateResult, apply_gate, build_gate_config
from mlflow_unlearn.assess.membership import membership_columns, retained_test_accuracy
from mlflow_unlearn.assess.rows import METRIC_ROWS, ORIGINAL_ROW, RETRAIN_ROW, UNLEARNED_ROW
from mlflow_unlearn.data.forget import CLASS_FORGETTING
from mlflow_unlearn.data.samples import ForgetSplit
from mlflow_unlearn.metrics.evaluate import SPLITS, collect_outputs, collect_split_outputs, evaluate_outputs
from mlflow_unlearn.metrics.functional import ModelOutputs
from mlflow_unlearn.models.surgery import reinitialize

_logger = logging.getLogger("mlflow_unlearn")


@dataclass(frozen=True)
class Assessment:
    """What :func:`assess` measured and decided.

    Args:
        metrics: one row per model, in percent (see :data:`mlflow_unlearn.metrics.METRIC_INFO`), with the membership
            columns and, for class forgetting, ``test_accuracy_retained``.
        outputs: ``{model: {split: outputs}}``, one forward pass per (model, split).
        split: the forget, retain and test sets measured.
        verdicts: the acceptance gate's verdict on each unlearned model, by row.
    """

    metrics: pd.DataFrame
    outputs: Mapping[str, Mapping[str, ModelOutputs]]
    split: ForgetSplit
    verdicts: Mapping[str, GateResult] = field(default_factory=dict)

    def verdict(self, name: str = UNLEARNED_ROW) -> GateResult:
        """The gate's verdict on model ``name``.

        Raises:
            ValueError: the gate did not judge that model (listing the ones it judged).
        """
        if name not in self.verdicts:
            raise ValueError(f"The gate judged no model {name!r}; it judged: {', '.join(self.verdicts) or 'none'} "
                             f"(it judges models against an {ORIGINAL_ROW!r} row)")
        return self.verdicts[name]


def assess(
    models: Mapping[str, nn.Module],
    split: ForgetSplit,
    *,
    original: str = ORIGINAL_ROW,
    reference: str | None = RETRAIN_ROW,
    candidates: Sequence[str] | None = None,
    gate: GateConfig | Mapping[str, Any] | None = None,
    incompetent: nn.Module | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> Assessment:
    """Measure ``models`` on ``split`` and judge each unlearned one with the acceptance gate.

    The table has the columns of :func:`mlflow_unlearn.metrics.evaluate_outputs` (for class forgetting the loss
    attack compares the forget set with test samples of its own classes, and ``test_accuracy_retained`` follows
    ``test_accuracy``), then the membership test's (:func:`~mlflow_unlearn.assess.membership.membership_columns`,
    paired against the reference when there is one).

    Args:
        models: name -> model, e.g. ``{"original": m0, "unlearned": m1, "retrain": m2}``.
        split: the forget, retain and test sets (cut a large retain set first: :func:`evaluation_split`).
        original: the row of the model before unlearning; without it, nothing is judged.
        reference: the row of the reference retrained without the forget set (gap columns, the paired membership
            test and the gate's reference checks); ignored when no model has that name.
        candidates: the rows the gate judges (default: every model but ``original`` and ``reference``).
        gate: the gate's thresholds (a :class:`~mlflow_unlearn.assess.gate.GateConfig`, a mapping of overrides, or
            None for the defaults).
        incompetent: a randomly initialised model of the same architecture, for ZRF (see :func:`incompetent_copy`);
            None leaves the ``zrf`` column out.
        device: ``None``/``"auto"`` or a device string.
        seed: seeds the attacks and the membership test's intervals (the same for every model).
        batch_size: samples per forward pass.

    Returns:
        An :class:`Assessment`.

    Raises:
        ValueError: no models, a value that is not a module, an empty forget, retain or test set, a candidate that
            names no model, or bad gate thresholds.

    >>> from mlflow_unlearn.data import DataSplit, load_data, resolve_forget
    >>> full = load_data("digits")
    >>> small = DataSplit(full.train.subset(np.arange(300)), full.test.subset(np.arange(200)), "digits", 0, 0.2)
    >>> split = resolve_forget(small, "classes:3")
    >>> _ = torch.manual_seed(0)
    >>> nets = {name: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)) for name in ("original", "unlearned")}
    >>> result = assess(nets, split, device="cpu")
    >>> list(result.metrics.index), list(result.verdicts), result.verdict().verdict in ("passed", "failed")
    (['original', 'unlearned'], ['unlearned'], True)
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("Expected argument `models` to be a non-empty mapping of name -> nn.Module")
    for name, model in models.items():
        if not isinstance(model, nn.Module):
            raise ValueError(f"Expected model {name!r} to be a torch.nn.Module but got {type(model).__name__}")
    for part in SPLITS:
        if len(getattr(split, part)) == 0:
            raise ValueError(f"Cannot assess on an empty {part} set")
    config = build_gate_config(gate)
    reference = reference if reference in models else None
    judged = [n for n in models if n not in (original, reference)] if candidates is None else list(candidates)
    unknown = [n for n in judged if n not in models]
    if unknown:
        raise ValueError(f"Unknown candidate(s) {', '.join(map(repr, unknown))}; the models are: {', '.join(models)}")
    dev = rt.resolve_device(device)

    outputs = collect_split_outputs(models, split, device=dev, batch_size=batch_size)
    class_wise = split.kind == CLASS_FORGETTING
    metrics = evaluate_outputs(
        outputs, reference=reference, seed=seed, same_class_heldout=class_wise,
        incompetent_forget=None if incompetent is None else collect_outputs(incompetent, split.forget, device=dev,
                                                                            batch_size=batch_size))
    if class_wise:
        retained = retained_test_accuracy(outputs, split.forget_classes)
        metrics.insert(metrics.columns.get_loc("test_accuracy") + 1, "test_accuracy_retained",
                       [retained[name] for name in metrics.index])
    metrics = metrics.join(membership_columns(outputs, seed=seed, reference=reference))

    verdicts: dict[str, GateResult] = {}
    if original in models:
        share = float(np.isin(split.test.y.numpy(), split.forget_classes).mean())
        for name in judged:
            rows = [original, name] + ([reference] if reference is not None else [])
            verdicts[name] = apply_gate(metrics.loc[rows].set_axis(list(METRIC_ROWS[:len(rows)])), config=config,
                                        forget_kind=split.kind, num_classes=split.num_classes,
                                        test_forget_share=share, forget_count=len(split.forget))
    return Assessment(metrics, outputs, split, verdicts)


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
