"""Data layer: sources with stable sample IDs, deterministic splits, forget specifications, digests."""

from mlflow_unlearn.data.forget import ForgetSpec, forget_digest, list_forget_specs, parse_forget_spec, resolve_forget
from mlflow_unlearn.data.samples import DataSplit, ForgetSplit, SampleSet, ids_digest
from mlflow_unlearn.data.sources import (
    SPLIT_VALUES,
    RawSamples,
    describe,
    list_sources,
    load_data,
    register_source,
)

__all__ = [
    "SPLIT_VALUES",
    "DataSplit",
    "ForgetSplit",
    "ForgetSpec",
    "RawSamples",
    "SampleSet",
    "describe",
    "forget_digest",
    "ids_digest",
    "list_forget_specs",
    "list_sources",
    "parse_forget_spec",
    "load_data",
    "register_source",
    "resolve_forget",
]
