"""One unlearning request's job: launch, watch, finalise (the work of one launcher process).

:class:`Job` runs in the detached launcher process (:mod:`mlflow_unlearn_plugins.launcher`) that the scheduler
(:mod:`mlflow_unlearn_plugins.scheduler`) starts for an admitted request. It:

1. takes the request's lease (exactly one launcher per request, see :mod:`mlflow_unlearn_plugins.ledger`);
2. persists the request as a run in the ``unlearn-requests`` experiment (reused if it already exists);
3. checks that the run's artifact store takes a write, then prepares the request as its job will in a short-lived
   process (:mod:`mlflow_unlearn_plugins.preflight`: :func:`mlflow_unlearn.tracking.plan.prepare`, the checks of
   every door: model version and format, method, config, data and lineage, forget set); this process never imports
   the engine. A refused request is marked ``failed`` with the API's message and nothing runs;
4. moves the status to ``running`` and starts the project's ``unlearn`` entry point into that same run: on the
   ``local`` backend as one process of its own (:mod:`mlflow_unlearn_plugins.local_job`), on ``kubernetes``
   (``MLFLOW_UNLEARN_BACKEND``) with ``mlflow.projects.run(..., synchronous=False)``; its ``onnx`` parameter is the
   request's ``onnx=``, else the server's ``MLFLOW_UNLEARN_ONNX``;
5. waits (:mod:`mlflow_unlearn_plugins.watch`: on the local backend in the same process after ``os.execv``, without
   MLflow), checking the job every second, refreshing its lease heartbeat, and reading the request's row when a
   cancel wakes it, when its deadline has passed, and at least every
   :data:`~mlflow_unlearn_plugins.watch.STOP_READ_S` seconds; and finally
   moves the status to ``succeeded`` (with ``mlflow_unlearn.result_version``) or ``failed`` (with
   ``mlflow_unlearn.error``).

A request that is cancelled (:meth:`~mlflow_unlearn_plugins.scheduler.Scheduler.cancel`) or that runs past its
deadline (the request's ``timeout=``, within the server's ``MLFLOW_UNLEARN_MAX_RUN_S``, counted from when it took
its job slot; the launcher moves it to ``timed_out``) has its job stopped: the job's whole process group gets
SIGTERM, then SIGKILL after :data:`~mlflow_unlearn_plugins.process_group.STOP_GRACE_S`
(:func:`~mlflow_unlearn_plugins.process_group.stop_process_group`); on Kubernetes, MLflow's
``KubernetesSubmittedRun.cancel()`` deletes the Job. Its request run ends ``KILLED``, and a version the job
registered in the moment before it was stopped is deleted: the ledger's compare-and-set decided that the request
was stopped, so no result of it stays registered.

Every change goes to the ledger first, then to the version's tags (:func:`mlflow_unlearn_plugins.mirror.mirror`).
If the job finds the request already ``running`` (its previous launcher died), it resumes watching the job and
finalises the status from the run; a job that is gone without a result is marked ``failed`` with the reason.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from mlflow_unlearn_plugins import watch
from mlflow_unlearn_plugins.ledger import (
    ACTIVE,
    LAUNCHER_MARKER,
    MAX_ERROR_CHARS,
    Ledger,
    RequestState,
    connect,
    process_alive,
)
from mlflow_unlearn_plugins.local_job import end_orphaned_run, end_run, start_local_job
from mlflow_unlearn_plugins.mirror import StoreTags, TagTarget, mirror, tag_target
from mlflow_unlearn_plugins.preflight import (  # noqa: F401 (preflight: also imported from here)
    PREFLIGHT_WAIT_S,
    PreflightError,
    preflight,
    preflight_in_process,
    probe_artifact_store,
)
from mlflow_unlearn_plugins.process_group import stop_process_group
from mlflow_unlearn_plugins.request import RequestRefused, UnlearnRequest, parse_request
from mlflow_unlearn_plugins.settings import BACKENDS, PluginSettings
from mlflow_unlearn_plugins.watch import StopCheck

from mlflow_unlearn.request import RequestStatus
from mlflow_unlearn.tracking import vocabulary as vocab

REQUESTS_EXPERIMENT = "unlearn-requests"
_ERROR_LINE = re.compile(r"(?:^|\b)(?:Error|[A-Za-z]+(?:Error|Exception)):\s*(.+)$")


def kubernetes_project_dir(project_dir: str, image: str, out_dir: str) -> str:
    """Derive a Docker-environment copy of the project for the Kubernetes backend.

    The package's MLproject declares a conda environment; MLflow's Kubernetes backend needs ``docker_env``.
    The derived project has the same entry points (the commands call the installed package), and
    ``docker_env.image`` set to ``image`` (built from ``docker/Dockerfile``).
    """
    import yaml

    spec = yaml.safe_load(Path(project_dir, "MLproject").read_text())
    for key in ("conda_env", "python_env"):
        spec.pop(key, None)
    spec["docker_env"] = {"image": image}
    os.makedirs(out_dir, exist_ok=True)
    Path(out_dir, "MLproject").write_text(yaml.safe_dump(spec, sort_keys=False))
    return out_dir


class Job:
    """One request's job, worked on by one launcher process.

    Args:
        ledger: the request ledger.
        tags: where the version's tags mirror the ledger.
        client: the MLflow client of the job's tracking and registry URIs.
        name: registered model name.
        version: model version.
        request_id: the request this launcher was started for.
        log_path: the launcher's log file (the job's output goes there too).
        settings: the plugin's settings.
    """

    def __init__(self, ledger: Ledger, tags: TagTarget, client, name: str, version: int, request_id: str,
                 log_path: str, settings: PluginSettings) -> None:
        self.ledger, self.tags, self.client = ledger, tags, client
        self.name, self.version, self.request_id, self.log_path = name, version, request_id, log_path
        self.policy, self.settings = settings.policy, settings.launcher
        self.stops = StopCheck(ledger, name, version, request_id, on_timed_out=self._mirror)

    @classmethod
    def open(cls, ledger_uri: str, mirror_uri: str, name: str, version: int, request_id: str, log_path: str,
             settings: PluginSettings) -> Job:
        """The job of a launcher process: the ledger in ``ledger_uri``, tags mirrored to ``mirror_uri`` (a SQL
        registry database or an MLflow server), MLflow client from the environment the scheduler gave it."""
        from mlflow import MlflowClient

        tags = tag_target(mirror_uri)
        legacy = tags.legacy_states if isinstance(tags, StoreTags) and ledger_uri == mirror_uri else None
        return cls(Ledger(connect(ledger_uri), legacy), tags, MlflowClient(), name, version, request_id, log_path,
                   settings)

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def _mirror(self) -> None:
        mirror(self.ledger, self.tags, self.name, self.version)

    def _advance(self, expect: tuple[str, ...], to: str, fields: dict[str, str | None] | None = None) -> bool:
        moved = self.ledger.advance(self.name, self.version, self.request_id, expect=expect, to=to, fields=fields)
        if moved:
            self._mirror()
        return moved

    def _set_fields(self, fields: dict[str, str | None]) -> None:
        if self.ledger.set_fields(self.name, self.version, self.request_id, fields):
            self._mirror()

    def _fail(self, run_id: str | None, reason: str, expect: tuple[str, ...] = ACTIVE) -> None:
        from mlflow.entities import RunStatus

        if run_id:  # the run first: once the version says failed, everything else already does
            self.client.set_tag(run_id, vocab.STATUS_TAG, RequestStatus.FAILED)
            self.client.set_tag(run_id, vocab.ERROR_TAG, reason[:MAX_ERROR_CHARS])
            if not RunStatus.is_terminated(RunStatus.from_string(self.client.get_run(run_id).info.status)):
                self.client.set_terminated(run_id, "FAILED")
        self._advance(expect, RequestStatus.FAILED, {"error": reason, "lease": None, "job": None})

    def fail_request(self, reason: str) -> None:
        """Mark this request failed, whatever its active state, and its request run (if any) too."""
        state = self.ledger.read(self.name, self.version)
        if self.request_id == state.request_id:
            self._fail(state.request_run_id, reason)

    # -- cancel and deadline -----------------------------------------------------------------------------------
    def _stopped(self, *, deadline: bool = True) -> str | None:
        return self.stops.stopped(deadline=deadline)

    def _stop_job(self, submitted=None, job: str | None = None) -> None:
        """Stop the job's processes: its process group on this host, or the Kubernetes Job through MLflow."""
        proc = getattr(submitted, "command_proc", None)
        if proc is not None:
            members = stop_process_group(proc.pid, reap=proc.poll)
            proc.poll()
            print(f"stopped the job's process group {proc.pid} ({len(members)} processes)", flush=True)
            return
        if submitted is not None:  # Kubernetes: MLflow deletes the Job
            submitted.cancel()
            return
        host, _, pid = (job or "").partition("|")
        if host == os.uname().nodename and pid.isdigit():  # a job this launcher resumed watching
            stop_process_group(int(pid))
        elif host:
            print(f"the job ({host}) cannot be stopped from this launcher; it is no longer watched", flush=True)

    def _end_stopped(self, status: str, run_id: str | None, job_run_id: str | None = None) -> None:
        """After a stop: the request run ends KILLED with the status, and no result of this request stays."""
        from mlflow.entities import RunStatus

        self._drop_links()
        if run_id:
            self.client.set_tag(run_id, vocab.STATUS_TAG, status)
            if not RunStatus.is_terminated(RunStatus.from_string(self.client.get_run(run_id).info.status)):
                self.client.set_terminated(run_id, "KILLED")
        for run in {run_id, job_run_id} - {None}:
            for mv in self.client.search_model_versions(f"run_id = '{run}'"):
                if mv.tags.get(vocab.PARENT_TAG) == f"{self.name}/{self.version}":
                    self.client.delete_model_version(mv.name, mv.version)
                    print(f"deleted {mv.name}/{mv.version}, registered by the job of this {status} request just "
                          "before it was stopped", flush=True)
        self._mirror()

    def _drop_links(self) -> None:
        for link in Path(self.settings.log_dir, "forget-requests").glob(f"{self.request_id}.*"):
            link.unlink(missing_ok=True)  # the job is over: its neutral link to the forget file goes

    def _request_run(self, state: RequestState) -> str:
        if state.request_run_id:
            return state.request_run_id
        run_name = f"unlearn {self.name}/{self.version}"
        run = self.client.create_run(requests_experiment_id(self.client), run_name=run_name, tags={
            vocab.PARENT_TAG: f"{self.name}/{self.version}", vocab.REQUEST_ID_TAG: self.request_id,
            vocab.REQUEST_TAG: recorded_request(state.request or ""), vocab.STATUS_TAG: RequestStatus.QUEUED,
        })
        self.client.update_run(run.info.run_id, status="SCHEDULED")
        self.ledger.set_fields(self.name, self.version, self.request_id, {"request_run_id": run.info.run_id})
        # the tags show the run with the next status change (running, or failed by the pre-flight)
        return run.info.run_id

    # -- running ----------------------------------------------------------------------------------------------
    def _preflight(self, value: str, run_id: str) -> None:
        """Check, before the job starts, that its artifact store takes a write (here, within seconds), then that the
        engine accepts the request (in a short-lived process: this one never imports the engine, which it would
        hold for the whole job). Raises RequestRefused or PreflightError."""
        probe_artifact_store(self.client, run_id, wait_s=PREFLIGHT_WAIT_S, beat=self.stops.beat)
        preflight_in_process(value, vocab.model_uri(self.name, self.version),
                             PluginSettings(policy=self.policy, launcher=self.settings), beat=self.stops.beat)

    def _launch(self, request: UnlearnRequest, run_id: str):
        import mlflow.projects
        from mlflow.entities import RunTag
        from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_BACKEND

        from mlflow_unlearn.tracking import project_dir

        uri = str(project_dir())
        backend_config = None
        if self.settings.backend == "kubernetes":
            uri = kubernetes_project_dir(uri, self.settings.docker_image,
                                         os.path.join(self.settings.log_dir, "kubernetes-project"))
            backend_config = self.settings.backend_config
        model_uri = vocab.model_uri(self.name, self.version)
        tags = [RunTag(vocab.PROJECT_TAG, uri)]
        if self.settings.backend != "kubernetes":  # the job is started here, not by MLflow Projects, which sets it
            tags.append(RunTag(MLFLOW_PROJECT_BACKEND, self.settings.backend))
        self.client.log_batch(run_id, tags=tags)
        parameters = request.replace(device=self.settings.device).project_parameters(model_uri, onnx=self.settings.onnx)
        if request.forget.by_ids:  # the job's command line shows every parameter: it reads the file through a link
            parameters["forget"] = "ids:" + self._neutral_link(request.forget.path)
        entry_point = "unlearn"
        if self.settings.nproc > 1:
            entry_point, parameters["nproc"] = "unlearn_distributed", str(self.settings.nproc)
        experiment_id = self.client.get_run(run_id).info.experiment_id
        if self.settings.backend != "kubernetes":
            return start_local_job(uri, entry_point, parameters, run_id=run_id, experiment_id=experiment_id,
                                   client=self.client)
        return mlflow.projects.run(
            uri=uri, entry_point=entry_point, parameters=parameters,
            backend=self.settings.backend, backend_config=backend_config, env_manager="local", synchronous=False,
            run_id=run_id, experiment_id=experiment_id,
        )

    def _neutral_link(self, path: str) -> str:
        """A symbolic link to ``path`` named after the request ID (no part of the original path), in the log dir."""
        folder = Path(self.settings.log_dir, "forget-requests")
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / f"{self.request_id}{Path(path).suffix}"
        link.unlink(missing_ok=True)
        link.symlink_to(path)
        return str(link)

    def _job_error(self, request: UnlearnRequest | None, run_id: str) -> str:
        generic = f"the unlearn job failed; see run {run_id} in the {REQUESTS_EXPERIMENT!r} experiment"
        if request is None or request.forget.by_ids:
            return generic
        try:
            lines = Path(self.log_path).read_text(errors="replace").splitlines()
        except OSError:
            return generic
        for line in reversed(lines):
            match = _ERROR_LINE.search(line.strip())
            if match:
                return f"{match.group(0)[:500]} (run {run_id})"
        return generic

    def _finalize(self, request: UnlearnRequest | None, run_id: str, exited_ok: bool | None,
                  job_run_id: str | None = None) -> None:
        """Set the final status from the job's run (the request run itself, except on Kubernetes)."""
        from mlflow.entities import RunStatus

        self._drop_links()
        stopped = self._stopped(deadline=False)  # a job that ended before its deadline was noticed is not late
        if stopped:
            self._end_stopped(stopped, run_id, job_run_id)
            return
        run = self.client.get_run(job_run_id or run_id)
        result = run.data.tags.get(vocab.RESULT_VERSION_TAG)
        finished = run.info.status == "FINISHED"
        if (exited_ok is None or exited_ok) and finished and result:
            # the ledger first: a cancel that won the compare-and-set a moment ago means the result must go
            if not self._advance((RequestStatus.RUNNING,), RequestStatus.SUCCEEDED,
                                 {"result_version": result, "lease": None, "job": None}):
                self._end_stopped(self._stopped(deadline=False) or RequestStatus.CANCELLED, run_id, job_run_id)
                return
            self.client.set_tag(run_id, vocab.STATUS_TAG, RequestStatus.SUCCEEDED)
            if job_run_id and job_run_id != run_id:
                self.client.set_tag(run_id, vocab.RESULT_VERSION_TAG, result)
                self.client.set_terminated(run_id, "FINISHED")
            return
        gate_reason = run.data.tags.get(vocab.GATE_REASON_TAG)  # the gate's own words: numbers, never an ID
        if gate_reason:
            reason = f"the acceptance gate refused the unlearned model: {gate_reason} (run {run_id})"
        elif finished:
            verdict = run.data.tags.get(vocab.VERDICT_TAG, "unknown")
            reason = (f"the job finished but registered no version (verdict={verdict}): the acceptance gate "
                      f"refused the result; see run {run_id}")
        elif RunStatus.is_terminated(RunStatus.from_string(run.info.status)) or exited_ok is False:
            reason = self._job_error(request, run_id)
        else:
            reason = (f"the unlearn job stopped without recording a result (its process ended, e.g. the host "
                      f"restarted); set the {vocab.REQUEST_TAG!r} tag again to retry (run {run_id})")
        self._fail(run_id, reason, expect=(RequestStatus.RUNNING,))
        if request is not None and request.forget.by_ids:
            Path(self.log_path).unlink(missing_ok=True)

    def _parsed(self, state: RequestState) -> UnlearnRequest | None:
        """The request of a running job, or None if it no longer parses (its reason is then the job's own)."""
        try:
            return parse_request(state.request or "", self.policy)
        except RequestRefused:
            return None

    def _watch_orphan(self, request: UnlearnRequest | None, state: RequestState) -> None:
        """Resume a running request whose launcher died: wait for its job, then finalise from the run."""
        from mlflow.entities import RunStatus

        run_id = state.request_run_id
        if not run_id:
            self._fail(None, "the launcher stopped before the job started; set the request tag again to retry",
                       expect=(RequestStatus.RUNNING,))
            return
        job_run_id = self.client.get_run(run_id).data.tags.get(vocab.JOB_RUN_TAG, run_id)
        while not RunStatus.is_terminated(RunStatus.from_string(self.client.get_run(job_run_id).info.status)):
            if not _job_alive(state.job, job_run_id):
                end_orphaned_run(self.client, job_run_id)
                break
            self.stops.beat()
            stopped = self.stops.stopped_while_running()
            if stopped:
                self._stop_job(job=state.job)
                self._end_stopped(stopped, run_id, job_run_id)
                return
            time.sleep(watch.POLL_S)
        self._finalize(request, run_id, None, job_run_id)

    def run(self, handoff: Callable[[int, str], None] | None = None) -> int:
        """Work on the request until its final status; 0 also when another launcher holds it, 1 on an error that
        the launcher's log explains (the request is failed with the reason).

        Args:
            handoff: called with the local job's PID and the request run once the job runs (or when this launcher
                resumes a running job on this host), to wait for it in a process without MLflow (the launcher's
                ``os.execv``, which does not return); if it returns, the job is waited for here.
        """
        self.stops.listen()
        if not self.ledger.claim_lease(self.name, self.version, self.request_id, LAUNCHER_MARKER):
            return 0
        self._mirror()  # no tag write when the tags show this launcher's provisional lease already
        state = self.ledger.read(self.name, self.version)
        if state.status == RequestStatus.RUNNING:
            request = self._parsed(state)
            host, _, pid = (state.job or "").partition("|")
            if (handoff is not None and state.request_run_id and host == os.uname().nodename and pid.isdigit()
                    and _job_alive(state.job, state.request_run_id)):
                handoff(int(pid), state.request_run_id)  # returns only if the handoff failed
            self._watch_orphan(request, state)
            return 0
        run_id = self._request_run(state)
        try:
            request = parse_request(state.request or "", self.policy)
            self._preflight(state.request or "", run_id)
        except RequestRefused as exc:
            self._fail(run_id, str(exc), expect=(RequestStatus.QUEUED,))
            return 0
        except PreflightError as exc:
            self._fail(run_id, str(exc), (RequestStatus.QUEUED,))
            return 1
        stopped = self._stopped()  # cancelled, or past its deadline, during the pre-flight: nothing is launched
        if stopped or not self._advance((RequestStatus.QUEUED,), RequestStatus.RUNNING):
            stopped = stopped or self._stopped(deadline=False)
            if stopped:
                self._end_stopped(stopped, run_id)
            return 0
        self.client.set_tag(run_id, vocab.STATUS_TAG, RequestStatus.RUNNING)
        try:
            submitted = self._launch(request, run_id)
        except Exception as exc:
            self._fail(run_id, f"the job could not be launched: {type(exc).__name__}: {str(exc)[:300]}",
                       expect=(RequestStatus.RUNNING,))
            return 1
        job_run_id = submitted.run_id
        if job_run_id != run_id:  # the Kubernetes backend always creates its own run
            self.client.set_tag(run_id, vocab.JOB_RUN_TAG, job_run_id)
        job = getattr(submitted, "command_proc", None)
        job_tag = f"{os.uname().nodename}|{job.pid}" if job is not None else f"{self.settings.backend}|{job_run_id}"
        self._set_fields({"job": job_tag})
        if handoff is not None and job is not None:
            handoff(job.pid, run_id)  # returns only if the handoff failed: the job is waited for here
        if not self._watch(submitted, run_id, job_run_id):
            self._finalize(request, run_id, submitted.get_status() == "FINISHED", job_run_id)
        return 0

    def _watch(self, submitted, run_id: str, job_run_id: str) -> bool:
        """Wait for the launched job to end; True if it was stopped instead (cancelled or past its deadline)."""
        while submitted.get_status() in ("RUNNING", "SCHEDULED"):
            self.stops.beat()
            stopped = self.stops.stopped_while_running()
            if stopped:
                self._stop_job(submitted)
                self._end_stopped(stopped, run_id, job_run_id)
                return True
            time.sleep(watch.POLL_S)
        return False

    def finish_waited(self, waited: tuple[str | None, int | None] | None, run_id: str) -> int:
        """Finalise the request after :func:`~mlflow_unlearn_plugins.watch.wait_for_job` waited for its local job
        (``waited``: its outcome), in the launcher that handed its wait off; None: that wait failed, the job is
        watched from here as a job whose launcher died."""
        state = self.ledger.read(self.name, self.version)
        request = self._parsed(state)
        if waited is None:
            self._watch_orphan(request, state)
            return 0
        stopped, exit_code = waited
        if stopped:
            self._end_stopped(stopped, run_id, run_id)
            return 0
        if exit_code is not None:  # what the job's process did not record, as ``mlflow run`` would
            end_run(self.client, run_id, "FINISHED" if exit_code == 0 else "FAILED")
        else:  # a job resumed after its launcher died: its exit code is lost
            end_orphaned_run(self.client, run_id)
        self._finalize(request, run_id, None if exit_code is None else exit_code == 0, run_id)
        return 0


def recorded_request(value: str) -> str:
    """A request as the request run records it: an ``ids:`` file's path replaced (paths can reveal whose data it is).

    >>> recorded_request("forget=ids:/srv/erasure-alice.txt; method=nitc")
    'forget=ids:<file, not recorded>; method=nitc'
    """
    return re.sub(r"ids:[^;]*", "ids:<file, not recorded>", value)


def requests_experiment_id(client) -> str:
    """The ID of the requests experiment, created on first use (safe when launchers start together).

    Raises:
        MlflowException: if the experiment was deleted (its name stays taken until it is restored or purged).
    """
    from mlflow_unlearn.tracking.experiments import get_or_create_experiment

    return get_or_create_experiment(client, REQUESTS_EXPERIMENT, deleted_message=lambda experiment_id: (
        f"the {REQUESTS_EXPERIMENT!r} experiment (ID {experiment_id}) that records unlearning requests is deleted; "
        f"restore it (mlflow experiments restore --experiment-id {experiment_id}) and set the request tag again"))


def _job_alive(job: str | None, run_id: str) -> bool:
    """Whether the job recorded in ``mlflow_unlearn.job`` still runs (local backend, same host only)."""
    host, _, pid = (job or "").partition("|")
    if host != os.uname().nodename or not pid.isdigit():
        return host in BACKENDS  # a remote (Kubernetes) job: rely on its run status
    return process_alive(int(pid), run_id)

