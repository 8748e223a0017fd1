"""What the suite leaves running, read from ``/proc``: zombies below a process, and processes that still use the
session's temporary folder (servers, launchers, jobs and database clusters the tests started all run there)."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

PROC = Path("/proc")


def _stat(entry: Path) -> tuple[int, str, str] | None:
    """``(parent PID, state, command name)`` of one ``/proc/<pid>``, or ``None`` once it is gone."""
    try:
        raw = (entry / "stat").read_bytes()
    except OSError:
        return None
    comm, rest = raw[raw.index(b"(") + 1:raw.rindex(b")")].decode(errors="replace"), raw[raw.rindex(b")") + 2:]
    fields = rest.split()
    return int(fields[1]), fields[0].decode(), comm


def _table() -> dict[int, tuple[int, str, str]]:
    table = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(entry)) is not None:
            table[int(entry.name)] = stat
    return table


def zombie_descendants(root: int) -> list[str]:
    """``pid (command, parent ppid)`` of every process in state Z below ``root``."""
    table = _table()
    found = []
    for pid, (parent, state, comm) in table.items():
        ancestor = parent
        while ancestor and ancestor != root:
            ancestor = table.get(ancestor, (0,))[0]
        if ancestor == root and state == "Z":
            found.append(f"{pid} ({comm}, parent {parent})")
    return found


def processes_using(folder: Path) -> dict[int, str]:
    """PID -> command line of every other live process whose working directory, command line or environment
    names ``folder`` (this process and its ancestors are left out)."""
    skip, pid = set(), os.getpid()
    while pid > 1:  # this process and the ones that started it (an xdist worker's controller, the shell)
        skip.add(pid)
        pid = (_stat(PROC / str(pid)) or (0,))[0]
    names = re.compile(re.escape(str(folder)) + r"(?![\w.-])")  # pytest-1 must not match pytest-12
    found = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            cwd = os.readlink(entry / "cwd")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:  # gone, or a zombie (no working directory): zombie_descendants counts those
            continue
        if names.search(cmdline) or names.match(cwd) or names.search(environ):
            found[int(entry.name)] = cmdline[:200]
    return found


def end(pids: list[int]) -> None:
    """SIGKILL each of ``pids`` that still runs (the suite's own leftovers, found by :func:`processes_using`)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def request_pids(registry_uri: str, name: str) -> dict[int, dict[str, int]]:
    """``{version: {"launcher": pid, "job": pid}}`` of the requests on model ``name`` as the plugin's ledger records
    them (``unlearn+<database URI>`` or the database URI; the version tags do not show these)."""
    import sqlalchemy as sa
    from mlflow_unlearn_plugins.ledger import connect, requests_table

    engine = connect(registry_uri.removeprefix("unlearn+"))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(requests_table.c.version, requests_table.c.lease, requests_table.c.job)
                                .where(requests_table.c.name == name)).all()
    finally:
        engine.dispose()
    found = {}
    for version, lease, job in rows:
        pids = {role: int(value.split("|")[1]) for role, value in (("launcher", lease), ("job", job))
                if value and value.count("|") >= 1 and value.split("|")[1].isdigit()}
        if pids:
            found[int(version)] = pids
    return found
