"""Experiments by name, safe against concurrent creators (MLflow only: the registry plugin imports it too)."""

from __future__ import annotations

from collections.abc import Callable


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
    from mlflow.exceptions import MlflowException

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
