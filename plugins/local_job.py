"""A request's job on the local backend: the project's entry point, started as one process by the launcher.

``mlflow.projects.run(..., backend="local", synchronous=False)`` starts ``mlflow run`` in a subprocess, which then
starts the entry point's command and waits for it: a second Python process (~260 MiB, MLflow imported) for the whole
job, whose one other task is to end the run (``FINISHED`` or ``FAILED`` by the command's exit code) if the command
did not, as the project's ``unlearn`` command does not end a run it was given. The launcher starts the command
itself instead, the way that ``mlflow run`` does: the entry point's command from MLflow Projects' own parameter
handling (:func:`mlflow.projects.utils.load_project`, values shell-quoted), in the project's folder, with MLflow
Projects' run variables (``MLFLOW_RUN_ID``, ``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_ID``), under
``bash -c "exec ..."`` so that the job is that one process; and :class:`LocalJob` ends the run when it sees the
command exit. The job leads a process group of its own (a cancel stops it and its ``torchrun`` workers together) in
a session of its own: it outlives its launcher, whose replacement finds it by the ``MLFLOW_RUN_ID`` in its
environment and ends its run from what the run recorded (:func:`end_orphaned_run`).
"""

from __future__ import annotations

import os
import subprocess

from mlflow.projects.submitted_run import LocalSubmittedRun

from mlflow_unlearn.tracking import vocabulary as vocab


class LocalJob(LocalSubmittedRun):
    """The job's process and its run; :meth:`get_status` ends the run once the process has exited (as ``mlflow run``
    did: ``FINISHED`` on exit code 0, else ``FAILED``; a run the job ended itself is left as it is)."""

    def __init__(self, run_id: str, command_proc: subprocess.Popen, client) -> None:
        super().__init__(run_id, command_proc)
        self._client, self._ended = client, False

    def get_status(self) -> str:
        status = super().get_status()
        if status != "RUNNING" and not self._ended:
            end_run(self._client, self.run_id, status)
            self._ended = True
        return status


def end_run(client, run_id: str, status: str) -> None:
    """End run ``run_id`` with ``status`` (``FINISHED``, ``FAILED``) unless it has ended already."""
    from mlflow.entities import RunStatus

    if not RunStatus.is_terminated(RunStatus.from_string(client.get_run(run_id).info.status)):
        client.set_terminated(run_id, status)


def end_orphaned_run(client, run_id: str) -> None:
    """End the run of a job that ended while no launcher watched it (its exit code is lost): ``FINISHED`` if the job
    tagged its result, which it does last, once the run is complete; otherwise the run is left for the launcher to
    fail with a reason."""
    if client.get_run(run_id).data.tags.get(vocab.RESULT_VERSION_TAG):
        end_run(client, run_id, "FINISHED")


def start_local_job(project_uri: str, entry_point: str, parameters: dict[str, str], *, run_id: str,
                    experiment_id: str, client) -> LocalJob:
    """Start ``entry_point`` of the project in ``project_uri`` with ``parameters`` into run ``run_id``; do not wait.

    Args:
        project_uri: the project's folder.
        entry_point: the entry point's name.
        parameters: its parameters.
        run_id: the run the job logs into (it exists).
        experiment_id: the run's experiment.
        client: the MLflow client that ends the run when the job exits.

    Returns:
        The job (:class:`LocalJob`, a :class:`mlflow.projects.submitted_run.LocalSubmittedRun` of the job's process,
        ``command_proc``), as ``mlflow.projects.run(..., synchronous=False)`` returns one.

    Raises:
        ExecutionException: for a missing entry point or parameter (MLflow Projects' own checks).
    """
    from mlflow.projects.utils import fetch_and_validate_project, get_run_env_vars, load_project

    work_dir = fetch_and_validate_project(project_uri, None, entry_point, parameters)
    # storage_dir=None: no parameter of the project is a `path` to download
    command = load_project(work_dir).get_entry_point(entry_point).compute_command(parameters, None)
    env = {**os.environ, **get_run_env_vars(run_id, experiment_id)}
    proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=work_dir, env=env, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    return LocalJob(run_id, proc, client)
