"""The plugin's MLflow errors that the ledger raises, in a module of their own so that the ledger imports no MLflow
(the launcher's wait for its job, :mod:`mlflow_unlearn_plugins.watch`, stays a small process)."""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_CONFLICT


class ActiveRequestError(MlflowException):
    """Another request is queued or running on this version (HTTP 409, ``RESOURCE_CONFLICT``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=RESOURCE_CONFLICT)
