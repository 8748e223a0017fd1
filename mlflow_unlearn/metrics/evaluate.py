"""Run models over the forget / retain / test sets once and turn their outputs into one metrics table.

:func:`collect_outputs` is the only place that runs a model; :func:`evaluate` calls it once per model
and split and hands the tensors to the pure functions of :mod:`mlflow_unlearn.metrics.functional` and
:mod:`mlflow_unlearn.metrics.mia`. :data:`METRIC_INFO` documents every column of the table.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.data.samples import ForgetSplit
from mlflow_unlearn.metrics.functional import (
    ModelOutputs,
    accuracy,
    activation_distance,
    js_divergence,
    per_sample_loss,
    softmax,
    zrf_score,
)
from mlflow_unlearn.metrics.mia import loss_mia, mia_efficacy

AVG_GAP_COLUMNS: tuple[str, ...] = ("forget_accuracy", "mia_efficacy", "retain_accuracy", "test_accuracy")
"""The columns averaged by :func:`avg_gap` (as in SalUn's "Avg. Gap")."""

SPLITS: tuple[str, ...] = ("forget", "retain", "test")


@dataclass(frozen=True)
class MetricInfo:
    """What a metrics column means.

    Args:
        definition: how it is computed.
        higher_is_better: ``True``/``False``, or ``None`` when the best value is the retrained reference's.
        ideal: the value an ideal unlearned model has.
        unit: ``"%"`` (0-100), ``"percentage points"``, or the range of a plain number.
        paper: where the metric comes from.
    """

    definition: str
    higher_is_better: bool | None
    ideal: str
    unit: str
    paper: str = ""

    @property
    def direction(self) -> str:
        """``"higher is better"``, ``"lower is better"`` or ``"closer to reference"``."""
        if self.higher_is_better is None:
            return "closer to reference"
        return "higher is better" if self.higher_is_better else "lower is better"


_SALUN = "Fan et al., SalUn, ICLR 2024 (https://arxiv.org/abs/2310.12508)"
_BAD_TEACHER = "Chundawat et al., Can Bad Teaching Induce Forgetting?, AAAI 2023 (https://arxiv.org/abs/2205.08096)"

METRIC_INFO: dict[str, MetricInfo] = {
    "forget_accuracy": MetricInfo(
        "Top-1 accuracy on the forget set.", None,
        "the retrained model's value (0 for forgotten classes, about the test accuracy for random samples)", "%",
        _SALUN),
    "retain_accuracy": MetricInfo(
        "Top-1 accuracy on the retain set (the training data kept).", True,
        "the retrained model's value (as high as before unlearning)", "%", _SALUN),
    "test_accuracy": MetricInfo(
        "Top-1 accuracy on the held-out test set.", True, "the retrained model's value", "%", _SALUN),
    "mia_efficacy": MetricInfo(
        "Fraction of forget samples that an RBF SVC (C=3, gamma='auto') on the true-class probability, fitted on "
        "retain samples (members) vs an equal number of test samples (non-members), predicts to be non-members.",
        None, "the retrained model's value (not 100)", "%",
        "Jia et al., Model Sparsity Can Simplify Machine Unlearning, NeurIPS 2023 "
        "(https://arxiv.org/abs/2304.04934); " + _SALUN),
    "loss_mia_accuracy": MetricInfo(
        "Stratified k-fold cross-validated accuracy of a logistic regression on per-sample cross-entropy telling "
        "forget samples from an equal number of test samples (in an unlearning run's report, for class forgetting: "
        "test samples of the forgotten classes, so that it measures membership and not the class).",
        None, "the retrained model's value (50 = chance, for random-sample forgetting)", "%",
        "NeurIPS 2023 Machine Unlearning challenge starting kit (https://github.com/unlearning-challenge/starting-kit)"),
    "loss_mia_auc": MetricInfo(
        "Cross-validated ROC AUC of the same loss-based attack.",
        None, "the retrained model's value (50 = chance, for random-sample forgetting)", "%",
        "NeurIPS 2023 Machine Unlearning challenge starting kit (https://github.com/unlearning-challenge/starting-kit)"),
    "zrf": MetricInfo(
        "Zero Retrain Forgetting: 1 - mean over forget samples of the Jensen-Shannon divergence (base 2) between "
        "the model's and a randomly initialised (incompetent) model's softmax outputs.",
        None, "the retrained model's value (1 = predicts like a random model)", "0-1", _BAD_TEACHER),
    "avg_gap": MetricInfo(
        "Mean absolute difference to the reference (retrained) model over forget accuracy, MIA-efficacy, retain "
        "accuracy and test accuracy.", False, "0", "percentage points", _SALUN),
    "js_to_reference": MetricInfo(
        "Mean per-sample Jensen-Shannon divergence (base 2) between the model's and the reference model's softmax "
        "outputs on the forget set.", False, "0", "0-1", _BAD_TEACHER),
    "activation_distance_to_reference": MetricInfo(
        "Mean L2 distance between the model's and the reference model's softmax outputs on the forget set.",
        False, "0", "0-1.414", _BAD_TEACHER),
}
"""Definition, direction and ideal value of every column :func:`evaluate` can return."""


def describe_metrics() -> pd.DataFrame:
    """:data:`METRIC_INFO` as a table (index: metric name) for reports and documentation.

    >>> describe_metrics().loc["mia_efficacy", "direction"]
    'closer to reference'
    """
    rows = {
        name: {"definition": info.definition, "direction": info.direction, "ideal": info.ideal, "unit": info.unit,
               "paper": info.paper}
        for name, info in METRIC_INFO.items()
    }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("metric")


@contextlib.contextmanager
def _inference_on(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Eval mode, on ``device``, without gradients; every module's mode and the model's device restored after."""
    net = rt.unwrap(model)
    modes = [(module, module.training) for module in net.modules()]
    first = next(itertools.chain(net.parameters(), net.buffers()), None)
    original = first.device if first is not None else device
    net.eval()
    if original != device:
        net.to(device)
    try:
        with torch.no_grad():
            yield net
    finally:
        if original != device:
            net.to(original)
        for module, training in modes:
            module.training = training


def collect_outputs(
    model: nn.Module,
    data: Dataset,
    *,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
) -> ModelOutputs:
    """Run ``model`` over ``data`` (``(x, y)`` pairs) in order and return its logits and the labels.

    The model runs in eval mode without gradients and in float32 (no bf16 autocast: the membership attacks
    read confidences close to 1, which bf16 would round); its modules' train/eval modes and its device are
    restored afterwards.

    Args:
        model: any classifier returning ``N x C`` logits.
        data: a dataset of ``(x, y)`` pairs, e.g. a :class:`~mlflow_unlearn.data.SampleSet`.
        device: ``None``/``"auto"`` (CUDA when available) or a device string.
        batch_size: samples per forward pass (default: :func:`mlflow_unlearn.runtime.inference_batch_size`).

    Returns:
        :class:`ModelOutputs` with float32 logits and int64 labels on CPU, in the order of ``data``.

    Raises:
        ValueError: for an empty dataset or a non-positive ``batch_size``.

    >>> import numpy as np
    >>> from mlflow_unlearn.data import SampleSet
    >>> data = SampleSet(torch.ones(3, 1, 2, 2), torch.tensor([0, 1, 1]), np.arange(3), num_classes=2)
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).train()
    >>> out = collect_outputs(model, data, device="cpu", batch_size=2)
    >>> out.logits.shape, out.labels.tolist(), model.training
    (torch.Size([3, 2]), [0, 1, 1], True)
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"Expected argument `batch_size` to be a positive int but got {batch_size!r}")
    if len(data) == 0:
        raise ValueError("Cannot collect outputs on an empty dataset")
    dev = rt.resolve_device(device)
    batch_size = batch_size or rt.inference_batch_size(dev)
    logits, labels = [], []
    with _inference_on(model, dev) as net:
        run = rt.InferenceRunner(net)
        # streaming: one batch in memory at a time
        for x, y in rt.inference_loader(data, batch_size=batch_size, device=dev):
            logits.append(run(rt.to_device(x, dev)).float())
            labels.append(torch.as_tensor(y))
    # One device-to-host copy at the end instead of one synchronisation per batch.
    return ModelOutputs(torch.cat(logits).cpu(), torch.cat(labels).long().cpu())


def avg_gap(metrics: pd.DataFrame, reference: str) -> pd.Series:
    """Avg Gap: mean absolute difference (percentage points) to row ``reference`` over :data:`AVG_GAP_COLUMNS`.

    Raises:
        ValueError: if ``reference`` is not a row or a column is missing.

    >>> frame = pd.DataFrame({"forget_accuracy": [0.0, 10.0], "mia_efficacy": [100.0, 90.0],
    ...                       "retain_accuracy": [99.0, 97.0], "test_accuracy": [95.0, 95.0]},
    ...                      index=["retrain", "finetune"])
    >>> avg_gap(frame, "retrain").tolist()
    [0.0, 5.5]
    """
    missing = [c for c in AVG_GAP_COLUMNS if c not in metrics.columns]
    if missing:
        raise ValueError(f"Avg Gap needs the columns {list(AVG_GAP_COLUMNS)} but {missing} are missing")
    if reference not in metrics.index:
        raise ValueError(f"Unknown reference row {reference!r}; the rows are: {', '.join(map(str, metrics.index))}")
    columns = list(AVG_GAP_COLUMNS)
    return (metrics[columns] - metrics.loc[reference, columns]).abs().mean(axis=1).rename("avg_gap")


def _model_metrics(outputs: Mapping[str, ModelOutputs], *, seed: int,
                   same_class_heldout: bool = False) -> dict[str, float]:
    forget, retain, test = outputs["forget"], outputs["retain"], outputs["test"]
    heldout = test
    if same_class_heldout:  # non-members of the forget set's classes: the attack then measures membership
        keep = torch.isin(test.labels, forget.labels)
        heldout = ModelOutputs(test.logits[keep], test.labels[keep])
    row = {
        "forget_accuracy": 100 * accuracy(*forget),
        "retain_accuracy": 100 * accuracy(*retain),
        "test_accuracy": 100 * accuracy(*test),
        "mia_efficacy": 100 * mia_efficacy(retain, test, forget, seed=seed),
        "loss_mia_accuracy": float("nan"),
        "loss_mia_auc": float("nan"),
    }
    if min(forget.num_samples, heldout.num_samples) >= 2:  # a one-sample forget set cannot be cross-validated
        attack = loss_mia(per_sample_loss(*forget), per_sample_loss(*heldout), seed=seed)
        row["loss_mia_accuracy"], row["loss_mia_auc"] = 100 * attack.accuracy, 100 * attack.auc
    return row


def evaluate(
    models: Mapping[str, nn.Module],
    split: ForgetSplit,
    *,
    reference: str | None = "retrain",
    incompetent: nn.Module | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> pd.DataFrame:
    """All metrics of each model on a forget split, one row per model (see :data:`METRIC_INFO`).

    Each model runs once over the forget, retain and test sets. Columns, in percent (0-100):
    ``forget_accuracy``, ``retain_accuracy``, ``test_accuracy``, ``mia_efficacy``, ``loss_mia_accuracy``,
    ``loss_mia_auc`` (NaN when the forget set has a single sample); ``zrf`` (0-1) on the forget set when
    ``incompetent`` is given; and, when ``reference`` names one of ``models``, ``avg_gap`` (percentage points),
    ``js_to_reference`` and ``activation_distance_to_reference`` on the forget set.

    Args:
        models: name -> model, e.g. ``{"original": m0, "retrain": m1, "nitc": m2}``.
        split: the forget / retain / test sets.
        reference: the row the gap columns compare to; the default ``"retrain"`` is skipped when no model has
            that name, ``None`` skips them.
        incompetent: a randomly initialised model of the same architecture, for ZRF.
        device: ``None``/``"auto"`` or a device string.
        seed: seeds the attacks' subsampling and folds (the same for every model).
        batch_size: samples per forward pass.

    Returns:
        A DataFrame indexed by model name.

    Raises:
        ValueError: for no models, a non-module value, an empty forget/retain/test set, or a ``reference`` other
            than ``"retrain"`` that names no model.

    >>> import numpy as np
    >>> from mlflow_unlearn.data import DataSplit, load_data, resolve_forget
    >>> full = load_data("digits")
    >>> small = DataSplit(full.train.subset(np.arange(300)), full.test.subset(np.arange(100)), "digits", 0, 0.2)
    >>> split = resolve_forget(small, "classes:3")
    >>> _ = torch.manual_seed(0)
    >>> nets = {name: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)) for name in ("linear", "retrain")}
    >>> table = evaluate(nets, split, device="cpu")
    >>> float(table.loc["retrain", "avg_gap"]), list(table.columns[:3])
    (0.0, ['forget_accuracy', 'retain_accuracy', 'test_accuracy'])
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("Expected argument `models` to be a non-empty mapping of name -> nn.Module")
    for name, model in models.items():
        if not isinstance(model, nn.Module):
            raise ValueError(f"Expected model {name!r} to be a torch.nn.Module but got {type(model).__name__}")
    if incompetent is not None and not isinstance(incompetent, nn.Module):
        raise ValueError(
            f"Expected argument `incompetent` to be a torch.nn.Module but got {type(incompetent).__name__}"
        )
    for part in SPLITS:
        if len(getattr(split, part)) == 0:
            raise ValueError(f"Cannot evaluate on an empty {part} set")
    if reference is not None and reference not in models:
        if reference != "retrain":
            raise ValueError(f"Unknown reference {reference!r}; the models are: {', '.join(models)}")
        reference = None
    dev = rt.resolve_device(device)

    outputs = collect_split_outputs(models, split, device=dev, batch_size=batch_size)
    random_forget = None
    if incompetent is not None:
        random_forget = collect_outputs(incompetent, split.forget, device=dev, batch_size=batch_size)
    return evaluate_outputs(outputs, reference=reference, incompetent_forget=random_forget, seed=seed)


def collect_split_outputs(
    models: Mapping[str, nn.Module],
    split: ForgetSplit,
    *,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
) -> dict[str, dict[str, ModelOutputs]]:
    """Each model's outputs on the forget, retain and test sets, ``{model: {set: ModelOutputs}}``: one pass
    per model and set, for :func:`evaluate_outputs` and for callers that need the outputs too.

    Raises:
        ValueError: for an empty set (see :func:`collect_outputs`).
    """
    dev = rt.resolve_device(device)
    outputs: dict[str, dict[str, ModelOutputs]] = {}
    for name, model in rt.progress(models.items(), desc="evaluate", total=len(models)):
        with _inference_on(model, dev):
            outputs[name] = {part: collect_outputs(model, getattr(split, part), device=dev, batch_size=batch_size)
                             for part in SPLITS}
    return outputs


def evaluate_outputs(
    outputs: Mapping[str, Mapping[str, ModelOutputs]],
    *,
    reference: str | None = None,
    incompetent_forget: ModelOutputs | None = None,
    seed: int = 0,
    same_class_heldout: bool = False,
) -> pd.DataFrame:
    """The table of :func:`evaluate` from outputs already collected (one forward pass per model and set).

    For callers that also need the outputs themselves (e.g. loss histograms in a report).

    Args:
        outputs: ``{model: {"forget"|"retain"|"test": ModelOutputs}}`` (see :func:`collect_outputs`).
        reference: the row the gap columns compare to, or None.
        incompetent_forget: a randomly initialised model's outputs on the forget set, for ``zrf``.
        seed: seeds the attacks' subsampling and folds.
        same_class_heldout: the loss attack (``loss_mia_*``) compares the forget set with the test samples of
            its own classes only (for class forgetting: otherwise it measures the class, not membership).

    Raises:
        ValueError: for no models, a missing set, or a ``reference`` that names no model.
    """
    if not outputs:
        raise ValueError("Expected argument `outputs` to be a non-empty mapping of model -> outputs per set")
    for name, per_split in outputs.items():
        missing = [part for part in SPLITS if part not in per_split]
        if missing:
            raise ValueError(f"Outputs of model {name!r} lack the {', '.join(missing)} set(s)")
    if reference is not None and reference not in outputs:
        raise ValueError(f"Unknown reference {reference!r}; the models are: {', '.join(outputs)}")
    rows = {name: _model_metrics(per_split, seed=seed, same_class_heldout=same_class_heldout)
            for name, per_split in outputs.items()}
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
