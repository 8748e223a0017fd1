"""Experiments by name, safe against concurrent creators, and the environment's MLflow settings (:class:`TrackingEnv`).

The registry plugin's launcher and the CLI import this module before anything heavy: it imports MLflow only when a
function needs it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass


def get_or_create_experiment(client, name: str, *, deleted_message: Callable[[str], str] | None = None) -> str:
    """The ID of experiment ``name``, created on first use.

    Jobs (and launchers) started together race to create it: when another one created it between our look-up and
    our create, the create fails with RESOURCE_ALREADY_EXISTS and the experiment is looked up again.

    Args:
        client: an ``MlflowClient``.
        name: the experiment's name.
        deleted_message: the error message for a deleted experiment, given its ID (default: how to restore it).

    Raises:
        MlflowException: if the experiment was deleted (its name stays taken until it is restored or purged).
    """
    from mlflow.exceptions import MlflowException  # lazy: the CLI and the launcher import this module first

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            experiment_id = found.experiment_id
            raise MlflowException(
                deleted_message(experiment_id) if deleted_message is not None else
                f"Experiment {name!r} (ID {experiment_id}) is deleted; restore it (mlflow experiments restore "
                f"--experiment-id {experiment_id}) or name another one"
            )
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


@dataclass(frozen=True)
class TrackingEnv:
    """The MLflow settings of the environment, read once by :meth:`read`.

    Args:
        run_id: ``MLFLOW_RUN_ID``: the run to log into (``mlflow run`` sets it), or None.
        experiment_id: ``MLFLOW_EXPERIMENT_ID``, or None.
        experiment_name: ``MLFLOW_EXPERIMENT_NAME``, or None.

    >>> TrackingEnv.read({"MLFLOW_RUN_ID": "abc", "MLFLOW_EXPERIMENT_NAME": ""})
    TrackingEnv(run_id='abc', experiment_id=None, experiment_name=None)
    """

    run_id: str | None = None
    experiment_id: str | None = None
    experiment_name: str | None = None

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> TrackingEnv:
        """Read the settings from ``environ`` (default: ``os.environ``); empty values count as unset."""
        environ = os.environ if environ is None else environ
        return cls(run_id=environ.get("MLFLOW_RUN_ID") or None,
                   experiment_id=environ.get("MLFLOW_EXPERIMENT_ID") or None,
                   experiment_name=environ.get("MLFLOW_EXPERIMENT_NAME") or None)
