"""How a launcher watches its request while the job runs, and its wait for a local job in a process without MLflow.

:class:`StopCheck` answers "was this request stopped?" (cancelled, or past its deadline, which it records) while
reading the request's row only when it may have changed: when a cancel's wake signal came
(:data:`~mlflow_unlearn_plugins.process_group.WAKE_SIGNAL`), when the deadline known from the last read has passed,
and at least every :data:`STOP_READ_S` seconds. The job itself is checked every :data:`POLL_S` seconds.

:func:`wait_for_job` is the launcher's wait for a job on the local backend. The launcher does its MLflow work (the
request run, the pre-flight, the job's start), then replaces itself with ``os.execv`` by the same launcher command
plus ``--wait-job``: the same PID (its lease and its marker stay valid, and the job stays its child), but a process
that has imported only the ledger and SQLAlchemy while the job runs (about 120 MiB instead of about 240 MiB with
MLflow). MLflow is imported again once the job has ended, to finalise the request. A launcher that resumes the job
of a launcher that died (recovery) waits for it the same way.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from mlflow_unlearn_plugins.ledger import ACTIVE, STOPPED, Ledger, RequestState, process_alive
from mlflow_unlearn_plugins.process_group import WAKE_SIGNAL, stop_process_group
from mlflow_unlearn_plugins.settings import MAX_RUN_ENV

from mlflow_unlearn.request import RequestStatus, format_duration

#: Seconds between two checks of the job (its process, or its run's status on Kubernetes).
POLL_S = 1.0
#: The longest a launcher goes without reading its request's row while the job runs: how soon a cancel taken on
#: another host is seen (a cancel on this host wakes the launcher at once; a deadline is known without a read).
STOP_READ_S = 15.0
#: Seconds between two lease heartbeats: a third of the lease timeout (``ledger.LEASE_TIMEOUT_S``).
HEARTBEAT_S = 20.0


class StopCheck:
    """Whether the request ``request_id`` on ``name``/``version`` was stopped from outside, and its heartbeat.

    Args:
        ledger: the request ledger.
        name: registered model name.
        version: model version.
        request_id: the request the launcher works on.
        on_timed_out: called after this check recorded the request's deadline (the launcher mirrors the tags).
    """

    def __init__(self, ledger: Ledger, name: str, version: int, request_id: str, on_timed_out=None) -> None:
        self.ledger, self.name, self.version, self.request_id = ledger, name, version, request_id
        self.on_timed_out = on_timed_out
        self.woken = False
        self._known: RequestState | None = None  # the row as last read
        self._last_read = 0.0
        self._last_beat = time.time()

    def listen(self) -> None:
        """Install the wake handler, then let a wake that came before it through (a launcher that replaced itself
        blocks the signal until here). Only a launcher that has claimed its lease is ever woken."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(WAKE_SIGNAL, self._on_wake)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {WAKE_SIGNAL})

    def _on_wake(self, signum, frame) -> None:  # noqa: ARG002 (a signal handler's signature)
        self.woken = True

    def beat(self) -> None:
        """Refresh the lease's heartbeat every :data:`HEARTBEAT_S` seconds."""
        if time.time() - self._last_beat >= HEARTBEAT_S:
            self.ledger.heartbeat(self.name, self.version)
            self._last_beat = time.time()

    def stopped(self, *, deadline: bool = True) -> str | None:
        """``cancelled`` or ``timed_out`` if the request was stopped from outside (or, with ``deadline``, is now past
        its deadline, which this call records), else None; reads the row. A new request on the version means this
        one was stopped before."""
        state = self._known = self.ledger.read(self.name, self.version)
        self._last_read = time.monotonic()
        if state.request_id != self.request_id:
            return RequestStatus.CANCELLED
        if state.status in STOPPED:
            return state.status
        if deadline and state.status in ACTIVE and state.past_deadline():
            reason = (f"stopped at its deadline: it held its job slot for longer than "
                      f"{format_duration(state.deadline_s)} (the request's timeout=, within the server's "
                      f"{MAX_RUN_ENV}); nothing was registered")
            moved, _ = self.ledger.stop(self.name, self.version, to=RequestStatus.TIMED_OUT, reason=reason,
                                        request_id=self.request_id)
            if moved:
                print(f"request {self.request_id} timed out after {state.deadline_s} s", flush=True)
                if self.on_timed_out is not None:
                    self.on_timed_out()
            return self.stopped(deadline=False)
        return None

    def stopped_while_running(self) -> str | None:
        """:meth:`stopped`, reading the row only when a wake signal came, the deadline of the last read has passed,
        or :data:`STOP_READ_S` has gone by since that read."""
        due = self._known is None or time.monotonic() - self._last_read >= STOP_READ_S
        if not (due or self.woken or self._known.past_deadline()):
            return None
        self.woken = False
        return self.stopped()


def wait_for_job(check: StopCheck, pid: int, run_id: str) -> tuple[str | None, int | None]:
    """Wait for the local job ``pid`` of run ``run_id`` to end, or stop it if its request is stopped.

    The job is this process's child when this launcher started it (its exit code is known), else the job of a
    launcher that died: it runs while its process, recognised by the run in its environment, is alive.

    Returns:
        ``(None, exit code)`` once the job has ended (``(None, None)``: its exit code is not known), or
        ``(status, None)`` once a ``cancelled`` or ``timed_out`` request's job has been stopped (its process group:
        SIGTERM, then SIGKILL).
    """
    ended: list[int | None] = []

    def reap() -> None:
        if ended:
            return
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not this process's child
            if not process_alive(pid, run_id):
                ended.append(None)
            return
        if done:
            ended.append(os.waitstatus_to_exitcode(status))

    while True:
        reap()
        if ended:
            return None, ended[0]
        check.beat()
        stopped = check.stopped_while_running()
        if stopped:
            members = stop_process_group(pid, reap=reap)
            reap()
            print(f"stopped the job's process group {pid} ({len(members)} processes)", flush=True)
            return stopped, None
        time.sleep(POLL_S)
