"""mlflow-unlearn: make a registered PyTorch model forget data, prove it, and register the result.

The engine (``data``, ``models``, ``training``, ``methods``, ``metrics``, ``assess``, ``runtime``) never imports MLflow;
the MLflow layer lives in ``mlflow_unlearn.tracking``. ``unlearn``, ``log_model``, ``cancel_request`` (a registry
request) and the errors (``UnlearningDivergedError``) are imported lazily to keep ``import mlflow_unlearn`` cheap.
"""

from __future__ import annotations

from mlflow_unlearn._version import __version__

__all__ = ["UnlearningDivergedError", "__version__", "cancel_request", "log_model", "unlearn", "verify"]


def __getattr__(name: str):
    if name == "unlearn":
        from mlflow_unlearn.tracking.api import unlearn

        return unlearn
    if name == "verify":
        from mlflow_unlearn.tracking.verify import verify

        return verify
    if name == "cancel_request":
        from mlflow_unlearn.tracking.requests import cancel_request

        return cancel_request
    if name == "log_model":
        from mlflow_unlearn.tracking.api import log_model

        return log_model
    if name == "UnlearningDivergedError":
        from mlflow_unlearn.runtime.errors import UnlearningDivergedError

        return UnlearningDivergedError
    raise AttributeError(f"module 'mlflow_unlearn' has no attribute {name!r}")
