"""Unlearning methods: one registry, one module per method, one signature (see ``registry``)."""

from mlflow_unlearn.methods import (
    bad_teacher,  # noqa: F401
    eu_k,  # noqa: F401
    finetune,  # noqa: F401  (each import registers a method)
    gradient_ascent,  # noqa: F401
    l1_sparse,  # noqa: F401
    nitc,  # noqa: F401
    random_label,  # noqa: F401
    retrain,  # noqa: F401
    salun,  # noqa: F401
    scrub,  # noqa: F401
    unsir,  # noqa: F401
)
from mlflow_unlearn.methods.registry import (
    MethodSpec,
    UnlearnContext,
    UnlearnResult,
    build_config,
    get_method,
    list_methods,
    register_method,
    run_method,
    unregister_method,
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
    "unregister_method",
]
