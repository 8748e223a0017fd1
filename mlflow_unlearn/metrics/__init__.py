"""Unlearning metrics: accuracy, membership-inference attacks, ZRF, divergences and Avg Gap to a reference.

Pure functions on collected outputs live in :mod:`~mlflow_unlearn.metrics.functional` and
:mod:`~mlflow_unlearn.metrics.mia`; :func:`collect_outputs` runs a model once over a set and
:func:`evaluate` returns the whole table (one row per model, see :data:`METRIC_INFO`);
:func:`evaluate_outputs` builds the same table from outputs already collected (:func:`collect_split_outputs`).
"""

from mlflow_unlearn.metrics.evaluate import (
    AVG_GAP_COLUMNS,
    METRIC_INFO,
    MetricInfo,
    avg_gap,
    collect_outputs,
    collect_split_outputs,
    describe_metrics,
    evaluate,
    evaluate_outputs,
)
from mlflow_unlearn.metrics.functional import (
    ModelOutputs,
    accuracy,
    activation_distance,
    confidence,
    entropy,
    js_divergence,
    js_divergence_per_sample,
    membership_score,
    modified_entropy,
    per_sample_loss,
    softmax,
    zrf_score,
)
from mlflow_unlearn.metrics.mia import MIA_FEATURES, LossMIAResult, loss_mia, mia_efficacy, mia_features

__all__ = [
    "AVG_GAP_COLUMNS",
    "METRIC_INFO",
    "MIA_FEATURES",
    "LossMIAResult",
    "MetricInfo",
    "ModelOutputs",
    "accuracy",
    "activation_distance",
    "avg_gap",
    "collect_outputs",
    "collect_split_outputs",
    "confidence",
    "describe_metrics",
    "entropy",
    "evaluate",
    "evaluate_outputs",
    "js_divergence",
    "js_divergence_per_sample",
    "loss_mia",
    "mia_efficacy",
    "membership_score",
    "mia_features",
    "modified_entropy",
    "per_sample_loss",
    "softmax",
    "zrf_score",
]
