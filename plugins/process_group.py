"""Stopping a request's job: its whole process group, then whatever it started outside it.

On the local backend the launcher starts the job with ``mlflow.projects.run(..., synchronous=False)``, which runs
``mlflow run ... --run-id <run>`` with ``preexec_fn=os.setsid``: the job is the leader of its own session and
process group (its PID is the group's ID), and the entry point (``bash -c "python -m mlflow_unlearn unlearn ..."``),
its data-loader workers and a ``torchrun`` all belong to that group. ``torchrun`` starts its workers in sessions of
their own and stops them itself when it gets SIGTERM; any of them still alive after the grace period is found as a
descendant recorded before the first signal, and killed too.

:func:`stop_process_group` sends SIGTERM to the group, waits up to the grace period, then SIGKILL to what is left.
Linux only (``/proc``), like the rest of the launcher's process checks.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from mlflow_unlearn_plugins.ledger import process_alive

#: Seconds between SIGTERM and SIGKILL: time for the job to end its run and for torchrun to stop its workers.
STOP_GRACE_S = 10.0
#: The signal that tells a launcher to read its request's row now (a cancel); sent only to a launcher that has
#: claimed its lease, i.e. that has installed its handler (the default action of SIGUSR1 would end the process).
WAKE_SIGNAL = signal.SIGUSR1
_PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, int, str, int] | None:
    """``(parent PID, process group, state, start time)`` of ``pid``, or None once it is gone."""
    try:
        raw = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    return int(fields[1]), int(fields[2]), fields[0].decode(), int(fields[19])


def _alive(pid: int, started: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[2] != "Z" and stat[3] == started


def group_members(pgid: int) -> dict[int, int]:
    """PID -> start time of every live process of process group ``pgid`` and of their descendants."""
    table = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None and stat[2] != "Z":
            table[int(entry.name)] = stat
    found = {pid: stat[3] for pid, stat in table.items() if stat[1] == pgid}
    grew = True
    while grew:  # children that left the group (torchrun's workers) are still its descendants
        new = {pid: stat[3] for pid, stat in table.items() if stat[0] in found and pid not in found}
        found.update(new)
        grew = bool(new)
    found.pop(os.getpid(), None)
    return found


def stop_process_group(pgid: int, *, grace_s: float = STOP_GRACE_S, reap=None) -> dict[int, int]:
    """SIGTERM process group ``pgid``, wait up to ``grace_s`` for it (and its descendants) to end, then SIGKILL
    whatever is left. The caller's own process is never signalled.

    Args:
        pgid: the job's process group (the PID of its ``mlflow run``).
        grace_s: seconds between SIGTERM and SIGKILL.
        reap: called while waiting (the parent's ``Popen.poll``, so that the job does not stay a zombie).

    Returns:
        The processes found when the stop began (PID -> start time); none of them runs when this returns.
    """
    members = group_members(pgid)
    if not members:
        return {}
    _signal(members, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not any(_alive(pid, started) for pid, started in members.items()):
            return members
        time.sleep(0.1)
    members.update(group_members(pgid))  # anything it started during the grace period
    _signal(members, signal.SIGKILL)
    end = time.monotonic() + 5.0
    while time.monotonic() < end and any(_alive(pid, started) for pid, started in members.items()):
        if reap is not None:
            reap()
        time.sleep(0.05)
    return members


def _signal(members: dict[int, float], sig: int) -> None:
    """Send ``sig`` to every member still alive (a process that ended meanwhile is skipped)."""
    for pid, started in members.items():
        if _alive(pid, started):
            try:
                os.kill(pid, sig)
            except OSError:
                pass


def wake_launcher(lease: str | None, marker: str) -> bool:
    """Send :data:`WAKE_SIGNAL` to the launcher holding ``lease`` if it runs on this host and has claimed its lease
    (``host|pid|heartbeat``; a provisional ``...|spawned`` lease belongs to a launcher that may not have its handler
    yet). True if the signal was sent; a launcher on another host reads its row on its own within its read period.
    """
    host, pid, *rest = (lease or "").split("|")
    if host != socket.gethostname() or not pid.isdigit() or rest[1:] == ["spawned"]:
        return False
    if not process_alive(int(pid), marker):
        return False
    try:
        os.kill(int(pid), WAKE_SIGNAL)
    except OSError:
        return False
    return True
