"""Data layer: sources with stable sample IDs, deterministic splits, forget specifications, digests."""

from mlflow_unlearn.data.forget import forget_digest, resolve_forget
from mlflow_unlearn.data.samples import DataSplit, ForgetSplit, SampleSet
from mlflow_unlearn.data.sources import load_data

__all__ = ["DataSplit", "ForgetSplit", "SampleSet", "forget_digest", "load_data", "resolve_forget"]
