"""The durable state of unlearning requests: the plugin's own tables in the registry database.

The plugin creates and migrates its tables itself (:meth:`Ledger.ensure_schema`, SQLAlchemy Core, any dialect of
MLflow's SQL stores) and never reads or locks MLflow's tables: MLflow sees the state only as version tags, written
by :mod:`mlflow_unlearn_plugins.mirror` through the registry store's public methods, for the UI.

* ``mlflow_unlearn_requests``: one row per model version that has had a request (the latest request), with a
  ``row_version`` counter that every change increments. Every state change is one ``UPDATE ... WHERE`` on that row
  (a compare-and-set on the request ID and the status, or on the lease), or an ``INSERT`` that the primary key
  makes unique, so any number of server workers, launcher processes and restarted servers agree on who owns a
  request:

  * :meth:`Ledger.open` moves a version from "nothing active" to ``queued`` (or straight to ``failed`` for a refused
    request). While a request is ``queued`` or ``running`` a *different* request on the same version is refused and
    the *same* request (identical value) is a no-op, so two concurrent requests never produce two jobs;
  * :meth:`Ledger.claim_lease` lets exactly one launcher process work on an admitted request (a lease with a
    heartbeat);
  * :meth:`Ledger.advance` moves ``queued -> running -> succeeded | failed`` for one request ID only.
* ``mlflow_unlearn_queue``: one row, the queue's sequence counter. Enqueueing and admission
  (:meth:`Ledger.dispatch`) first increment it, which locks that row (a row lock on PostgreSQL, MySQL and SQL Server,
  the write lock on SQLite) until the transaction ends, so processes sharing the database never admit more than
  ``max_jobs``. A waiting request holds its sequence number; its queue position (1 = next) is counted when read.
* ``mlflow_unlearn_schema``: the schema version of these tables. Version 1 imported the state of the first ledger,
  which kept it in version tags (see :meth:`Ledger.ensure_schema`).

Lock contention (SQLite's "database is locked", a lost unique-key race) is retried with exponential backoff and
counted (:func:`contention_retries`), never raised on the first conflict.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import sqlalchemy as sa
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_CONFLICT

from mlflow_unlearn.request import RequestStatus
from mlflow_unlearn.tracking.vocabulary import (
    ERROR_TAG,
    JOB_TAG,
    LEASE_TAG,
    QUEUE_POSITION_TAG,
    REQUEST_ID_TAG,
    REQUEST_RUN_TAG,
    REQUEST_TAG,
    RESULT_VERSION_TAG,
    STATUS_TAG,
)

#: Tags only the plugin writes; a client that tries to set or delete them gets an error.
RESERVED_TAGS = (STATUS_TAG, ERROR_TAG, RESULT_VERSION_TAG, REQUEST_ID_TAG, REQUEST_RUN_TAG, LEASE_TAG, JOB_TAG,
                 QUEUE_POSITION_TAG)
ACTIVE = (RequestStatus.QUEUED, RequestStatus.RUNNING)
TERMINAL = (RequestStatus.SUCCEEDED, RequestStatus.FAILED)
#: A lease whose heartbeat is older than this is considered abandoned (its launcher died).
LEASE_TIMEOUT_S = 60.0
MAX_ERROR_CHARS = 2000
#: Attempts of one transaction under contention; backoff 0.05 s doubling up to 2 s, with jitter (~25 s in all).
RETRY_ATTEMPTS = 16
#: The schema version this code writes; :meth:`Ledger.ensure_schema` migrates older tables up to it.
SCHEMA_VERSION = 1
_retries = {"count": 0}
PLANTED_ERROR = ("the plugin's tags on this version were not written by the plugin (no request of the plugin); they "
                 f"were cleared by recovery. Set {REQUEST_TAG!r} to submit a request")

T = TypeVar("T")

metadata = sa.MetaData()
requests_table = sa.Table(
    "mlflow_unlearn_requests", metadata,
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("request", sa.Text),
    sa.Column("request_run_id", sa.String(64)),
    sa.Column("error", sa.Text),
    sa.Column("result_version", sa.String(32)),
    sa.Column("lease", sa.String(256)),
    sa.Column("job", sa.String(256)),
    sa.Column("queue_seq", sa.BigInteger),
    sa.Column("row_version", sa.Integer, nullable=False),
    sa.Column("mirrored_version", sa.Integer, nullable=False),
    sa.Column("mirrored_tags", sa.Text),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    sa.Index("mlflow_unlearn_requests_status", "status"),
)
queue_table = sa.Table(
    "mlflow_unlearn_queue", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("next_seq", sa.BigInteger, nullable=False),
)
schema_table = sa.Table(
    "mlflow_unlearn_schema", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, nullable=False),
)
_FIELDS = ("request_run_id", "error", "result_version", "lease", "job")
#: The tag of each field of a request row that the version's tags mirror.
FIELD_TAGS = {"status": STATUS_TAG, "request": REQUEST_TAG, "request_id": REQUEST_ID_TAG,
              "request_run_id": REQUEST_RUN_TAG, "error": ERROR_TAG, "result_version": RESULT_VERSION_TAG,
              "lease": LEASE_TAG, "job": JOB_TAG, "queue_position": QUEUE_POSITION_TAG}
_TAG_FIELDS = {tag: field for field, tag in FIELD_TAGS.items()}


@dataclass(frozen=True)
class RequestState:
    """The latest request on one model version (``None`` where a field is unset; ``status`` None: no request)."""

    name: str
    version: int
    status: str | None
    request: str | None
    request_id: str | None
    request_run_id: str | None
    error: str | None
    result_version: str | None
    lease: str | None
    job: str | None
    queue_position: str | None = None
    row_version: int = 0
    mirrored_version: int = 0
    mirrored_tags: str | None = None

    @property
    def active(self) -> bool:
        """Whether the request is queued or running."""
        return self.status in ACTIVE

    @property
    def waiting(self) -> bool:
        """Whether the request is queued and waits for a job slot (it has a queue position)."""
        return self.status == RequestStatus.QUEUED and self.queue_position is not None

    def tags(self) -> dict[str, str | None]:
        """The version tags that show this state in the UI (``None``: the tag is absent).

        The lease shows its holder (``host|pid``), not its heartbeat, so that a heartbeat is no tag write.
        """
        tags = {tag: getattr(self, field) for field, tag in FIELD_TAGS.items()}
        if self.lease:
            tags[LEASE_TAG] = "|".join(self.lease.split("|")[:2])
        return tags

    @classmethod
    def from_tags(cls, name: str, version: int, tags: dict[str, str]) -> RequestState:
        """The state that the first ledger kept in the version's tags (how :meth:`Ledger.ensure_schema` imports it)."""
        return cls(name, int(version), **{field: tags.get(tag) for tag, field in _TAG_FIELDS.items()})


class ActiveRequestError(MlflowException):
    """Another request is queued or running on this version (HTTP 409, ``RESOURCE_CONFLICT``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=RESOURCE_CONFLICT)


def contention_retries() -> int:
    """How many ledger transactions of this process were retried after a lock conflict or a unique-key race."""
    return _retries["count"]


def _retrying(fn: Callable[[], T], attempts: int = RETRY_ATTEMPTS) -> T:
    """Run one transaction, retrying when a concurrent writer won a unique-key race or held the database lock."""
    races = (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError)
    for attempt in range(attempts):
        try:
            return fn()
        except races:
            if attempt == attempts - 1:
                raise
            _retries["count"] += 1
            time.sleep(min(2.0, 0.05 * 2 ** attempt) * random.uniform(0.5, 1.0))
    raise AssertionError("unreachable")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _key(name: str, version: int) -> list:
    return [requests_table.c.name == name, requests_table.c.version == int(version)]


class Ledger:
    """The request ledger in the plugin's own tables of one database.

    Args:
        engine: a SQLAlchemy engine of the database (the registry store's own engine, or one from :func:`connect`).
        legacy: returns the states that the first ledger kept in version tags; called once, by the migration to
            schema version 1 (default: nothing to import).

    The constructor only constructs; the tables are created or migrated at the first call (:meth:`ensure_schema`).
    """

    def __init__(self, engine: sa.engine.Engine,
                 legacy: Callable[[], Iterable[RequestState]] | None = None) -> None:
        self.engine, self._legacy = engine, legacy
        self._ready, self._schema_lock = False, threading.Lock()

    # -- schema ---------------------------------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create the plugin's tables if absent and migrate them to :data:`SCHEMA_VERSION` (once per process).

        Version 1 imports every request that the first ledger (state in version tags) left queued or running, with
        its request ID, run, lease and job, so that recovery resumes or finalises it; waiting requests keep their
        order. Tags that say queued or running without a request ID (not written by the plugin) are imported as
        ``failed`` with a reason. Concurrent migrations are safe: only the one that moves the schema version imports.
        """
        if self._ready:
            return
        with self._schema_lock:
            if self._ready:
                return
            _retrying(self._create_tables)
            if self._schema_version() < 1:
                legacy = list(self._legacy()) if self._legacy is not None else []
                _retrying(lambda: self._migrate_to_1(legacy))
            self._ready = True

    def _create_tables(self) -> None:
        try:
            metadata.create_all(self.engine, checkfirst=True)
        except (sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.IntegrityError):
            # a concurrent process created a table between the check and the CREATE: check again
            metadata.create_all(self.engine, checkfirst=True)
        for table, row in ((queue_table, {"id": 1, "next_seq": 0}), (schema_table, {"id": 1, "version": 0})):
            with self.engine.begin() as conn:
                if conn.execute(sa.select(table.c.id)).first() is None:
                    conn.execute(table.insert().values(**row))  # a concurrent insert fails; _retrying re-reads

    def _schema_version(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(schema_table.c.version).where(schema_table.c.id == 1)).scalar_one()

    def _migrate_to_1(self, legacy: list[RequestState]) -> None:
        with self.engine.begin() as conn:
            seq = self._lock_queue(conn)  # one migration at a time, and queue numbers after every legacy one
            moved = conn.execute(schema_table.update().where(schema_table.c.id == 1, schema_table.c.version == 0)
                                 .values(version=1)).rowcount
            if moved != 1:
                return  # another process migrated
            waiting = sorted((s for s in legacy if s.waiting and s.request_id),
                             key=lambda s: int(s.queue_position) if s.queue_position.isdigit() else 0)
            order = {(s.name, s.version): seq + i for i, s in enumerate(waiting)}
            for state in legacy:
                if not state.active or conn.execute(sa.select(requests_table.c.name).where(
                        *_key(state.name, state.version))).first() is not None:
                    continue
                row = {"name": state.name, "version": state.version, "status": state.status,
                       "request_id": state.request_id, "request": state.request,
                       "queue_seq": order.get((state.name, state.version)), "row_version": 1,
                       "mirrored_version": 0, "updated_ms": _now_ms(), **{f: getattr(state, f) for f in _FIELDS}}
                if not state.request_id:  # tags planted outside the plugin, e.g. before it was switched on
                    row.update(dict.fromkeys(_FIELDS), status=RequestStatus.FAILED, request_id="", queue_seq=None,
                               error=PLANTED_ERROR)
                conn.execute(requests_table.insert().values(**row))
            if order:
                conn.execute(queue_table.update().where(queue_table.c.id == 1)
                             .values(next_seq=seq + len(order)))

    @staticmethod
    def _lock_queue(conn) -> int:
        """Increment the queue's sequence counter, which locks its row until the transaction ends; return it."""
        conn.execute(queue_table.update().where(queue_table.c.id == 1).values(next_seq=queue_table.c.next_seq + 1))
        return conn.execute(sa.select(queue_table.c.next_seq).where(queue_table.c.id == 1)).scalar_one()

    def _run(self, body: Callable[[Any], T], *, write: bool = True) -> T:
        """``body(connection)`` in one transaction (after :meth:`ensure_schema`), retried on races."""
        self.ensure_schema()

        def txn() -> T:
            if not write:
                with self.engine.connect() as conn:
                    return body(conn)
            with self.engine.begin() as conn:
                return body(conn)

        return _retrying(txn)

    # -- reads ----------------------------------------------------------------------------------------------------
    @staticmethod
    def _state(conn, row) -> RequestState:
        position = None
        if row.status == RequestStatus.QUEUED and row.queue_seq is not None:
            ahead = conn.execute(sa.select(sa.func.count()).select_from(requests_table).where(
                requests_table.c.status == RequestStatus.QUEUED,
                requests_table.c.queue_seq < row.queue_seq)).scalar_one()
            position = str(ahead + 1)
        return RequestState(row.name, int(row.version), row.status, row.request, row.request_id or None,
                            row.request_run_id, row.error, row.result_version, row.lease, row.job, position,
                            row.row_version, row.mirrored_version, row.mirrored_tags)

    @classmethod
    def _read(cls, conn, name: str, version: int) -> RequestState | None:
        row = conn.execute(sa.select(requests_table).where(*_key(name, version))).first()
        return None if row is None else cls._state(conn, row)

    def read(self, name: str, version: int | str) -> RequestState:
        """The latest request on ``name``/``version`` (all fields None if it never had one)."""
        version = int(version)
        state = self._run(lambda conn: self._read(conn, name, version), write=False)
        return state or RequestState(name, version, *([None] * 9))

    def active(self) -> list[RequestState]:
        """Every request that is queued or running (what recovery looks at)."""
        def body(conn) -> list[RequestState]:
            rows = conn.execute(sa.select(requests_table).where(requests_table.c.status.in_(ACTIVE))).all()
            return [self._state(conn, row) for row in rows]

        return self._run(body, write=False)

    def unmirrored(self) -> list[RequestState]:
        """Requests whose latest change the version tags may not show yet (a mirror cut short by a crash)."""
        def body(conn) -> list[RequestState]:
            rows = conn.execute(sa.select(requests_table).where(
                requests_table.c.mirrored_version < requests_table.c.row_version)).all()
            return [self._state(conn, row) for row in rows]

        return self._run(body, write=False)

    # -- changes --------------------------------------------------------------------------------------------------
    def open(self, name: str, version: int | str, value: str | None, *, request_id: str,
             refusal: str | None = None) -> bool:
        """Record a new request on a version: status ``queued`` at the end of the queue, or ``failed`` with ``refusal``.

        A queued request waits until :meth:`dispatch` admits it.

        Args:
            name: registered model name.
            version: model version.
            value: the request's value (``None``: not stored, e.g. a refused value that may hold pasted IDs).
            request_id: a fresh unique ID for this request.
            refusal: if given, the request is refused: it is recorded as ``failed`` with this reason and never runs.

        Returns:
            True if the request was recorded, False if the very same request is already queued or running.

        Raises:
            ActiveRequestError: if a different request is queued or running on this version.
        """
        version = int(version)

        def body(conn) -> bool:
            seq = None if refusal else self._lock_queue(conn)
            status = RequestStatus.FAILED if refusal else RequestStatus.QUEUED
            row = {"request_id": request_id, "status": status, "request": value,
                   "queue_seq": seq, "updated_ms": _now_ms(), **dict.fromkeys(_FIELDS)}
            if refusal:
                row["error"] = refusal[:MAX_ERROR_CHARS]
            moved = conn.execute(requests_table.update().where(
                *_key(name, version), requests_table.c.status.notin_(ACTIVE)).values(
                row_version=requests_table.c.row_version + 1, **row)).rowcount
            if moved == 1:
                return True
            current = self._read(conn, name, version)
            if current is None:  # never requested: a concurrent insert fails on the key, and _retrying re-reads
                conn.execute(requests_table.insert().values(name=name, version=version, row_version=1,
                                                            mirrored_version=0, **row))
                return True
            if current.request == value:
                return False
            raise ActiveRequestError(
                f"Model version {name}/{version} already has an unlearning request {current.status} (request "
                f"{current.request_id}); wait until its {STATUS_TAG} tag is succeeded or failed, then submit the new "
                "request")

        return self._run(body)

    def advance(self, name: str, version: int | str, request_id: str, *, expect: Iterable[str], to: str,
                fields: dict[str, str | None] | None = None) -> bool:
        """Move request ``request_id`` from a status in ``expect`` to ``to`` and set ``fields`` in the same change.

        Args:
            fields: columns of the request row (``error``, ``result_version``, ``lease``, ``job``, ...).

        Returns:
            False (and changes nothing) if the version now holds another request or another status.
        """
        values = dict(fields or {})
        if to in TERMINAL:
            values["queue_seq"] = None
        if values.get("error"):
            values["error"] = values["error"][:MAX_ERROR_CHARS]
        return self._update(name, version, values | {"status": to},
                            requests_table.c.request_id == request_id, requests_table.c.status.in_(tuple(expect)))

    def set_fields(self, name: str, version: int | str, request_id: str, fields: dict[str, str | None]) -> bool:
        """Set bookkeeping ``fields`` of the active request ``request_id``; False if it is no longer the active one."""
        return self._update(name, version, dict(fields), requests_table.c.request_id == request_id,
                            requests_table.c.status.in_(ACTIVE))

    def _update(self, name: str, version: int | str, values: dict[str, Any], *where, mirrored: bool = True) -> bool:
        """One compare-and-set ``UPDATE`` of the row of ``name``/``version``; ``mirrored``: the tags show the change."""
        extra = {"row_version": requests_table.c.row_version + 1} if mirrored else {}
        statement = requests_table.update().where(*_key(name, version), *where).values(
            updated_ms=_now_ms(), **extra, **values)
        return self._run(lambda conn: conn.execute(statement).rowcount == 1)

    def claim_lease(self, name: str, version: int | str, request_id: str, marker: str) -> bool:
        """Make this process the only launcher of the admitted request ``request_id`` (steals a lease whose holder
        is dead). A request still waiting for a slot cannot be claimed."""
        version = int(version)

        def body(conn) -> bool:
            claimable, old = self._lease_of(conn, name, version, request_id)
            if not claimable:
                return False
            if old is not None and lease_alive(old, marker) and not _spawned_for_me(old):
                return False
            held = requests_table.c.lease.is_(None) if old is None else requests_table.c.lease == old
            return conn.execute(requests_table.update().where(*_key(name, version), held).values(
                lease=lease_value(), row_version=requests_table.c.row_version + 1,
                updated_ms=_now_ms())).rowcount == 1

        return self._run(body)

    @staticmethod
    def _lease_of(conn, name: str, version: int, request_id: str) -> tuple[bool, str | None]:
        """Whether ``request_id`` is the admitted, active request of the version, and its current lease."""
        row = conn.execute(sa.select(requests_table.c.lease).where(
            *_key(name, version), requests_table.c.request_id == request_id, requests_table.c.status.in_(ACTIVE),
            requests_table.c.queue_seq.is_(None))).first()
        return (False, None) if row is None else (True, row.lease)

    def heartbeat(self, name: str, version: int | str) -> None:
        """Refresh this process's lease heartbeat (the tags show the holder only: no mirror needed)."""
        mine = lease_value().rsplit("|", 1)[0] + "|"
        self._update(name, version, {"lease": lease_value()}, requests_table.c.lease.like(mine + "%"),
                     mirrored=False)

    def dispatch(self, max_jobs: int) -> list[RequestState]:
        """Admit waiting requests, first in first out, while fewer than ``max_jobs`` requests hold a job slot.

        A request holds a slot from its admission (it leaves the queue) until it is ``succeeded`` or ``failed``.
        Runs under the queue's row lock, so concurrent calls (server workers, launchers, servers sharing the
        database) never admit more than ``max_jobs``.

        Returns:
            The requests admitted now; the caller starts a launcher for each.
        """
        def body(conn) -> list[RequestState]:
            self._lock_queue(conn)
            active = requests_table.c.status.in_(ACTIVE)
            holders = conn.execute(sa.select(sa.func.count()).select_from(requests_table).where(
                active, requests_table.c.queue_seq.is_(None))).scalar_one()
            free = max_jobs - holders
            if free <= 0:
                return []
            rows = conn.execute(sa.select(requests_table).where(active, requests_table.c.queue_seq.is_not(None))
                                .order_by(requests_table.c.queue_seq).limit(free)).all()
            for row in rows:
                conn.execute(requests_table.update().where(*_key(row.name, row.version)).values(
                    queue_seq=None, row_version=requests_table.c.row_version + 1, updated_ms=_now_ms()))
            if rows:  # the positions of the requests still waiting moved up: their tags are due a mirror
                conn.execute(requests_table.update().where(active, requests_table.c.queue_seq.is_not(None)).values(
                    row_version=requests_table.c.row_version + 1))
            return [replace(self._state(conn, row), queue_position=None, row_version=row.row_version + 1)
                    for row in rows]

        return self._run(body)

    def mark_mirrored(self, name: str, version: int | str, row_version: int, tags: str) -> bool:
        """Record that the tags show ``row_version`` (``tags``: their JSON); False if the row changed since."""
        return self._update(name, version, {"mirrored_version": row_version, "mirrored_tags": tags},
                            requests_table.c.row_version == row_version, mirrored=False)

    def record_planted(self, name: str, version: int | str) -> bool:
        """Record as ``failed`` a version that has never had a request, whose tags nevertheless say one is queued or
        running (planted behind the plugin's back); False if the version has a row already."""
        row = {"name": name, "version": int(version), "request_id": "", "status": RequestStatus.FAILED,
               "row_version": 1,
               "mirrored_version": 0, "updated_ms": _now_ms(), "error": PLANTED_ERROR}

        def body(conn) -> bool:
            if self._read(conn, name, int(version)) is not None:
                return False
            conn.execute(requests_table.insert().values(**row))
            return True

        return self._run(body)

    def forget_version(self, name: str, version: int | str | None = None) -> None:
        """Drop the rows of a deleted version (``version`` None: of every version of a deleted model)."""
        where = _key(name, version) if version is not None else [requests_table.c.name == name]
        self._run(lambda conn: conn.execute(requests_table.delete().where(*where)))

    def rename(self, name: str, new_name: str) -> None:
        """Follow a registered model's rename."""
        self._run(lambda conn: conn.execute(requests_table.update().where(requests_table.c.name == name).values(
            name=new_name)))


def connect(db_uri: str) -> sa.engine.Engine:
    """A SQLAlchemy engine for a ledger outside a registry store (a launcher, the webhook's state database)."""
    return sa.create_engine(db_uri, pool_pre_ping=True)


def lease_value(spawned: int | None = None) -> str:
    """``host|pid|heartbeat-ms`` for this process, now; or ``host|pid|ms|spawned`` for a launcher just started here.

    A launcher's starter writes the launcher's lease at once, so that a launcher killed before it claims its lease
    is seen as dead (and replaced) like any other; the launcher itself takes that lease over.
    """
    now = _now_ms()
    if spawned is not None:
        return f"{socket.gethostname()}|{spawned}|{now}|spawned"
    return f"{socket.gethostname()}|{os.getpid()}|{now}"


def _spawned_for_me(lease: str) -> bool:
    host, pid, *_ = lease.split("|") + [""]
    return host == socket.gethostname() and pid == str(os.getpid()) and lease.endswith("|spawned")


def process_alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` runs on this host, is not a zombie, and its command line or its environment contains
    ``marker`` (a job is recognised by the ``MLFLOW_RUN_ID`` of its run in its environment).

    The marker guards against PID reuse after a restart.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            found = marker in fh.read().replace(b"\0", b" ").decode(errors="replace")
        if not found and state != b"Z":
            with open(f"/proc/{pid}/environ", "rb") as fh:
                found = marker.encode() in fh.read()
    except (OSError, IndexError):
        return False
    return state != b"Z" and found


def lease_alive(lease: str | None, marker: str, *, now: float | None = None) -> bool:
    """Whether the launcher holding ``lease`` is still alive (same host: its process; else: its heartbeat)."""
    if not lease:
        return False
    host, _, rest = lease.partition("|")
    pid, _, beat = rest.partition("|")
    if host == socket.gethostname() and pid.isdigit():
        return process_alive(int(pid), marker)
    beat = beat.partition("|")[0]
    now = time.time() if now is None else now
    return beat.isdigit() and now - int(beat) / 1000 < LEASE_TIMEOUT_S
