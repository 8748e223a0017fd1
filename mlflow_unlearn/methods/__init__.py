"""Unlearning methods: one registry, one module per method, one signature (see ``registry``)."""

from mlflow_unlearn.methods import finetune  # noqa: F401  (each import registers a method)
from mlflow_unlearn.methods.registry import (
    MethodSpec,
    UnlearnContext,
    UnlearnResult,
    build_config,
    get_method,
    list_methods,
    register_method,
    run_method,
)

__all__ = [
    "MethodSpec",
    "UnlearnContext",
    "UnlearnResult",
    "build_config",
    "get_method",
    "list_methods",
    "register_method",
    "run_method",
]
