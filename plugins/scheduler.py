"""The scheduler of unlearning requests: submit, dispatch, recover, spawn. Both triggers call it.

The registry store (:mod:`mlflow_unlearn_plugins.registry_store`: a request tag, an ``Unlearn`` transition) and the
webhook service (:mod:`mlflow_unlearn_plugins.webhook`: a stock server's ``model_version_tag.set`` webhook) hand a
request to :meth:`Scheduler.submit`; a launcher whose job ended calls :meth:`Scheduler.dispatch` for the next ones.

* :meth:`Scheduler.submit` checks the request (:func:`mlflow_unlearn_plugins.request.parse_request`), records it in
  the ledger (``queued``, or ``failed`` with the reason), mirrors the version's tags and dispatches;
* :meth:`Scheduler.cancel` cancels a queued or running request (the store's cancel tag and ``Cancel``
  transition, the webhook's cancel tag): the ledger's compare-and-set records who and when, the slot is freed and
  the next request admitted at once, and the request's launcher stops the job's process group;
* :meth:`Scheduler.dispatch` admits waiting requests into the free job slots (at most ``MLFLOW_UNLEARN_MAX_JOBS``
  hold one) and starts a launcher for each;
* :meth:`Scheduler.recover` starts a new launcher for every admitted or running request whose launcher is gone
  (a server restart, a killed launcher; the ledger records the death), redoes tag mirrors cut short, dispatches, and
  applies the log retention (:mod:`mlflow_unlearn_plugins.retention`);
* :func:`start_launcher` starts one detached launcher process (``python -m mlflow_unlearn_plugins.launcher``, its
  own session, so it outlives a server restart), which runs the request's :class:`~mlflow_unlearn_plugins.job.Job`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
from mlflow_unlearn_plugins import retention
from mlflow_unlearn_plugins.ledger import (
    ACTIVE,
    LAUNCHER_MARKER,
    Ledger,
    RequestState,
    lease_alive,
    lease_value,
    process_alive,
    utc_text,
)
from mlflow_unlearn_plugins.mirror import TagTarget, mirror, mirror_pending
from mlflow_unlearn_plugins.process_group import stop_process_group, wake_launcher
from mlflow_unlearn_plugins.request import RequestRefused, parse_request
from mlflow_unlearn_plugins.settings import MAX_RUN_ENV, PluginSettings

from mlflow_unlearn.request import RequestStatus, format_duration
from mlflow_unlearn.tracking.keys import DIGEST_KEY_ENV, DIGEST_KEY_FILE_ENV
from mlflow_unlearn.tracking.vocabulary import CANCEL_TAG

_logger = logging.getLogger(__name__)


class CancelRefused(MlflowException):
    """Nothing to cancel: the version has no request, or its request has finished (HTTP 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, INVALID_PARAMETER_VALUE)


def start_launcher(ledger_uri: str, mirror_uri: str, name: str, version: int | str, request_id: str, *,
                   settings: PluginSettings, job_tracking_uri: str, job_registry_uri: str) -> int:
    """Start a detached launcher process for one request and return its PID (does not wait).

    Args:
        ledger_uri: the database of the ledger.
        mirror_uri: where the version's tags are (the registry database, or an MLflow server's address).
        name: registered model name.
        version: model version.
        request_id: the admitted request.
        settings: the plugin's settings, given on the launcher's command line (it reads none from its environment).
        job_tracking_uri: tracking URI of the job.
        job_registry_uri: registry URI of the job.
    """
    log_dir = settings.launcher.log_dir
    os.makedirs(log_dir, exist_ok=True)
    dropped = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", DIGEST_KEY_ENV, DIGEST_KEY_FILE_ENV)
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(MLFLOW_TRACKING_URI=job_tracking_uri, MLFLOW_REGISTRY_URI=job_registry_uri)
    if settings.digest_key is not None:  # the settings' key, in the environment: never on a command line
        env[DIGEST_KEY_ENV] = settings.digest_key.secret.decode()
    log_path = os.path.join(log_dir, f"{request_id}.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", LAUNCHER_MARKER, "--ledger-uri", ledger_uri, "--mirror-uri", mirror_uri,
             "--name", name, "--version", str(version), "--request-id", request_id, "--log", log_path,
             "--settings", settings.to_json()],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    # Reap the launcher when it exits, so that no zombie stays under a long-lived server.
    threading.Thread(target=proc.wait, name=f"reap-launcher-{proc.pid}", daemon=True).start()
    return proc.pid


class Scheduler:
    """Submits, admits and resumes the requests of one ledger.

    Args:
        ledger: the request ledger.
        tags: where the versions' tags mirror the ledger.
        settings: the plugin's settings.
        ledger_uri: the ledger's database, as a launcher opens it.
        mirror_uri: the versions' registry, as a launcher opens it (a database or an MLflow server's address).
        job_uris: returns the tracking and registry URIs of a job, when one starts (a server's address may be known
            only inside a request); it raises ValueError when they cannot be known.
    """

    def __init__(self, ledger: Ledger, tags: TagTarget, settings: PluginSettings, *, ledger_uri: str,
                 mirror_uri: str, job_uris: Callable[[], tuple[str, str]]) -> None:
        self.ledger, self.tags, self.settings = ledger, tags, settings
        self.ledger_uri, self.mirror_uri, self.job_uris = ledger_uri, mirror_uri, job_uris

    def submit(self, name: str, version: int | str, value: str) -> str | None:
        """Record a request on ``name``/``version`` and dispatch; return the refusal reason, if any.

        A refused value that may be pasted IDs is not stored, and the request tag is removed from the version.

        Raises:
            MlflowException: ``RESOURCE_DOES_NOT_EXIST`` if the version does not exist.
            ActiveRequestError: if a different request is queued or running on the version.
        """
        version = int(version)
        tags = self.tags.read(name, version)
        if tags is None:
            raise MlflowException(f"Model Version (name={name}, version={version}) not found",
                                  RESOURCE_DOES_NOT_EXIST)
        refusal, keep, deadline = None, True, None
        max_run = self.settings.launcher.max_run_s
        try:
            timeout = parse_request(value, self.settings.policy).timeout
            if timeout and max_run and timeout > max_run:
                refusal = (f"the request's timeout={format_duration(timeout)} is longer than this server allows "
                           f"({format_duration(max_run)}, {MAX_RUN_ENV}); ask for at most that")
            deadline = timeout or max_run or None
        except RequestRefused as exc:
            refusal, keep = str(exc), exc.keep_value
        if refusal is None and self.settings.digest_key is None:
            refusal = (f"this server has no digest key ({DIGEST_KEY_ENV}), so it cannot sign the provenance of a "
                       "result and would refuse to register it; the operator must set one")
        request_id = uuid.uuid4().hex
        opened = self.ledger.open(name, version, value if keep else None, request_id=request_id, refusal=refusal,
                                  deadline_s=deadline)
        mirror(self.ledger, self.tags, name, version, have=tags)
        if not opened:
            return None  # the same request is already queued or running
        if refusal:
            _logger.info("Unlearning request %s on %s/%s refused: %s", request_id, name, version, refusal)
            return refusal
        self.dispatch()
        return None

    def cancel(self, name: str, version: int | str, *, by: str | None = None) -> RequestState:
        """Cancel the queued or running request on ``name``/``version``; cancelling a cancelled one does nothing.

        The ledger's compare-and-set records ``cancelled`` with ``by`` (who, ``unknown`` if None) and the time; the
        request leaves the queue, or frees its job slot and the next waiting request is admitted now. A running
        job is stopped by its launcher (its process group: SIGTERM, then SIGKILL): within a second when the
        launcher runs on this host (it is woken by a signal), else within its row-read period
        (:data:`~mlflow_unlearn_plugins.watch.STOP_READ_S`); if that launcher is gone, the job is stopped from here.

        Returns:
            The request's state now.

        Raises:
            MlflowException: ``RESOURCE_DOES_NOT_EXIST`` if the version does not exist.
            CancelRefused: if the version has no request, or its request has already finished.
        """
        version = int(version)
        if self.tags.read(name, version) is None:
            raise MlflowException(f"Model Version (name={name}, version={version}) not found",
                                  RESOURCE_DOES_NOT_EXIST)
        who = by or "unknown"
        reason = f"cancelled by {who} at {utc_text(int(time.time() * 1000))}; nothing was registered"
        stopped, state = self.ledger.stop(name, version, to=RequestStatus.CANCELLED, reason=reason, by=who)
        if not stopped:
            if state.status == RequestStatus.CANCELLED:
                return state  # cancelling twice is a no-op
            if state.status is None:
                raise CancelRefused(f"Model version {name}/{version} has no unlearning request to cancel")
            raise CancelRefused(f"The unlearning request on {name}/{version} has already finished ({state.status}); "
                                f"there is nothing to cancel (tag {CANCEL_TAG!r} cancels a queued or running one)")
        _logger.info("Unlearning request %s on %s/%s cancelled by %s", state.request_id, name, version, who)
        mirror(self.ledger, self.tags, name, version)
        self._stop_job(state)
        if not self.dispatch():  # nothing admitted, but a queued request left: the ones behind it moved up
            self._mirror_waiting()
        return self.ledger.read(name, version)

    def _stop_job(self, state: RequestState) -> None:
        """Have the job of a stopped request stopped: a live launcher stops it itself (woken now if it runs on this
        host); a job whose launcher is gone is stopped from here (its process group, if it runs on this host), in
        a thread: SIGKILL comes only after a grace period."""
        if lease_alive(state.lease, LAUNCHER_MARKER):
            wake_launcher(state.lease, LAUNCHER_MARKER)
            return
        host, _, pid = (state.job or "").partition("|")
        if (host != os.uname().nodename or not pid.isdigit()
                or not process_alive(int(pid), state.request_run_id or "--run-id")):
            return
        threading.Thread(target=stop_process_group, args=(int(pid),), name=f"stop-job-{pid}", daemon=True).start()

    def dispatch(self) -> list[int]:
        """Admit the waiting requests that fit in the free job slots and start their launchers; return their PIDs."""
        pids = []
        admitted = self.ledger.dispatch(self.settings.launcher.max_jobs)
        for state in admitted:
            pid = self.spawn(state.name, state.version, state.request_id or "")
            if pid is not None:
                pids.append(pid)
        if admitted:  # the requests still waiting moved up
            self._mirror_waiting()
        return pids

    def _mirror_waiting(self) -> None:
        """Show the queue positions of the waiting requests whose tags lag, first in line first."""
        waiting = sorted((s for s in self.ledger.unmirrored() if s.waiting), key=lambda s: int(s.queue_position))
        for state in waiting:
            mirror(self.ledger, self.tags, state.name, state.version)

    def recover(self, *, leased_only: bool = False) -> None:
        """Resume every admitted or running request whose launcher is gone, redo tag mirrors cut short, then admit
        waiting requests into the free job slots.

        Args:
            leased_only: resume only requests whose launcher took its lease and died (the periodic check: a
                launcher just started may not hold its lease yet).
        """
        for state in self.ledger.active():
            if state.waiting or (leased_only and not state.lease):
                continue
            if not lease_alive(state.lease, LAUNCHER_MARKER):
                if state.lease and not self.ledger.release_dead_lease(state.name, state.version,
                                                                      state.request_id or "", state.lease):
                    continue  # another recovery (a worker, a server on the same database) replaced it
                _logger.info("Resuming unlearning request %s on %s/%s (%s)", state.request_id, state.name,
                             state.version, state.status)
                self.spawn(state.name, state.version, state.request_id or "")
        self._repair_planted()
        mirror_pending(self.ledger, self.tags)
        self.dispatch()
        self._retention()

    def _retention(self) -> None:
        """Expired logs and old events (:func:`mlflow_unlearn_plugins.retention.apply`); never fails a recovery."""
        try:
            retention.apply(self.ledger, self.settings.launcher.log_dir, self.settings.launcher.log_retention_days)
        except Exception as exc:  # noqa: BLE001 (a retention pass is housekeeping: the next recovery tries again)
            _logger.warning("Log and event retention failed (%s); the next recovery tries again", type(exc).__name__)

    def _repair_planted(self) -> None:
        """Make the tags that say queued or running without an active request of the ledger show the ledger's
        state again (tags planted through a stock store, behind the plugin's back); a version that never had a
        request is recorded as ``failed`` with the reason."""
        planted = getattr(self.tags, "legacy_states", None)
        if planted is None:  # a remote server: its tags are the users' to write
            return
        for state in planted():
            if self.ledger.read(state.name, state.version).active:
                continue
            self.ledger.record_planted(state.name, state.version)
            _logger.warning("Model version %s/%s had plugin tags the plugin did not write; repaired", state.name,
                            state.version)
            mirror(self.ledger, self.tags, state.name, state.version, have=self.tags.read(state.name, state.version))

    def spawn(self, name: str, version: int, request_id: str) -> int | None:
        """Start the launcher of an admitted request and write its provisional lease; a launcher that cannot start
        fails the request with the reason. Returns the launcher's PID (None if it could not start)."""
        try:
            tracking, registry = self.job_uris()
            pid = start_launcher(self.ledger_uri, self.mirror_uri, name, version, request_id, settings=self.settings,
                                 job_tracking_uri=tracking, job_registry_uri=registry)
        except (OSError, ValueError) as exc:
            if self.ledger.advance(name, version, request_id, expect=ACTIVE, to=RequestStatus.FAILED,
                                   fields={"error": f"the launcher process could not start: {exc}"}):
                mirror(self.ledger, self.tags, name, version)
            return None
        self.provisional_lease(name, version, request_id, pid)
        mirror(self.ledger, self.tags, name, version)  # admitted: no queue position, the launcher's lease
        _logger.info("Unlearning request %s on %s/%s: launcher PID %s", request_id, name, version, pid)
        return pid

    def provisional_lease(self, name: str, version: int, request_id: str, pid: int) -> None:
        """Write the lease of launcher ``pid`` just started, unless a launcher holds it already (the new one takes
        it over when it starts: :meth:`Ledger.claim_lease` accepts its own PID). A launcher killed before it claims
        its lease then looks dead to recovery instead of leaving its request admitted forever."""
        if self.ledger.read(name, version).lease is None:
            self.ledger.set_fields(name, version, request_id, {"lease": lease_value(pid)})
