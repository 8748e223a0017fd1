"""Data layer: sources with stable sample IDs, streamed a batch at a time, deterministic splits, forget
specifications, digests.

The names below are loaded on first use (PEP 562), so that the grammars (the forget grammar,
:func:`~mlflow_unlearn.data.forget.parse_forget_spec`, and the source grammar,
:func:`~mlflow_unlearn.data.grammar.parse_source`) can be imported without torch: the registry plugin parses
requests inside the server's request threads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "ForgetSpec": "forget",
    "forget_by_digests": "forget",
    "forget_digest": "forget",
    "id_digests": "forget",
    "list_forget_specs": "forget",
    "parse_forget_spec": "forget",
    "resolve_forget": "forget",
    "SourceSpec": "grammar",
    "parse_source": "grammar",
    "Preprocess": "preprocess",
    "DataSplit": "samples",
    "ForgetSplit": "samples",
    "SampleSet": "samples",
    "ids_digest": "samples",
    "SPLIT_VALUES": "sources",
    "RawSamples": "sources",
    "describe": "sources",
    "list_sources": "sources",
    "load_data": "sources",
    "register_source": "sources",
    "unregister_source": "sources",
}

__all__ = [
    "DataSplit",
    "Preprocess",
    "SourceSpec",
    "ForgetSpec",
    "ForgetSplit",
    "RawSamples",
    "SPLIT_VALUES",
    "SampleSet",
    "describe",
    "forget_by_digests",
    "forget_digest",
    "id_digests",
    "ids_digest",
    "list_forget_specs",
    "list_sources",
    "load_data",
    "parse_forget_spec",
    "parse_source",
    "register_source",
    "resolve_forget",
    "unregister_source",
]

if TYPE_CHECKING:
    from mlflow_unlearn.data.forget import (
        ForgetSpec,
        forget_by_digests,
        forget_digest,
        id_digests,
        list_forget_specs,
        parse_forget_spec,
        resolve_forget,
    )
    from mlflow_unlearn.data.grammar import SourceSpec, parse_source
    from mlflow_unlearn.data.preprocess import Preprocess
    from mlflow_unlearn.data.samples import DataSplit, ForgetSplit, SampleSet, ids_digest
    from mlflow_unlearn.data.sources import (
        SPLIT_VALUES,
        RawSamples,
        describe,
        list_sources,
        load_data,
        register_source,
        unregister_source,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
