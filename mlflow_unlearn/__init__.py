"""mlflow-unlearn: make a registered PyTorch model forget data, prove it, and register the result.

The engine (``data``, ``models``, ``training``, ``methods``, ``metrics``) never imports MLflow; the MLflow
layer lives in ``mlflow_unlearn.tracking``. ``unlearn`` is imported lazily to keep ``import
mlflow_unlearn`` cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "unlearn"]


def __getattr__(name: str):
    if name == "unlearn":
        from mlflow_unlearn.tracking.api import unlearn

        return unlearn
    raise AttributeError(f"module 'mlflow_unlearn' has no attribute {name!r}")
