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
  * :meth:`Ledger.advance` moves ``queued -> running -> succeeded | failed`` for one request ID only;
  * :meth:`Ledger.stop` moves an active request to ``cancelled`` (with who and when) or ``timed_out``. It is the
    same compare-and-set as the job's own final change, so of a cancel and a job that finishes at the same moment
    exactly one wins: the loser's launcher sees the row and acts on it (a cancelled job's result is not kept).
* ``mlflow_unlearn_queue``: one row, the queue's sequence counter. Enqueueing and admission
  (:meth:`Ledger.dispatch`) first increment it, which locks that row (a row lock on PostgreSQL, MySQL and SQL Server,
  the write lock on SQLite) until the transaction ends, so processes sharing the database never admit more than
  ``max_jobs``. A waiting request holds its sequence number; its queue position (1 = next) is counted when read.
* ``mlflow_unlearn_schema``: the schema version of these tables. Version 1 imported the state of the first ledger,
  which kept it in version tags (see :meth:`Ledger.ensure_schema`); version 2 added the request's deadline, when it
  took its job slot and when it finished, and who cancelled it and when.
* ``mlflow_unlearn_events`` (and its folded ``mlflow_unlearn_event_totals``): one row per state change, written in
  the change's own transaction (:mod:`mlflow_unlearn_plugins.events`); the plugin's metrics are computed from it.
  Created where missing like the other tables, with no schema version of its own.

Lock contention (SQLite's "database is locked", a lost unique-key race) is retried with exponential backoff and
counted (:func:`contention_retries`), never raised on the first conflict.
"""

from __future__ import annotations

import json
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
from mlflow_unlearn_plugins import events

from mlflow_unlearn.request import RequestStatus
from mlflow_unlearn.tracking.vocabulary import (
    CANCEL_TAG,
    CANCELLED_AT_TAG,
    CANCELLED_BY_TAG,
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

#: Present in every launcher's command line (its module); recovery uses it to recognise a live launcher by its PID.
LAUNCHER_MARKER = "mlflow_unlearn_plugins.launcher"
#: Tags only the plugin writes; a client that tries to set or delete them gets an error.
RESERVED_TAGS = (STATUS_TAG, ERROR_TAG, RESULT_VERSION_TAG, REQUEST_ID_TAG, REQUEST_RUN_TAG, LEASE_TAG, JOB_TAG,
                 QUEUE_POSITION_TAG, CANCELLED_BY_TAG, CANCELLED_AT_TAG)
ACTIVE = (RequestStatus.QUEUED, RequestStatus.RUNNING)
#: Stopped from outside the job: cancelled by someone, or past the request's deadline.
STOPPED = (RequestStatus.CANCELLED, RequestStatus.TIMED_OUT)
TERMINAL = (RequestStatus.SUCCEEDED, RequestStatus.FAILED, *STOPPED)
#: A lease whose heartbeat is older than this is considered abandoned (its launcher died).
LEASE_TIMEOUT_S = 60.0
MAX_ERROR_CHARS = 2000
#: A request that has ended still holds its job slot while its version's tags show it admitted or running (its
#: mirror not done yet), so that the UI never shows more slot holders than the cap; for at most this long, so that a
#: mirror that keeps failing does not hold the slot.
SLOT_RELEASE_GRACE_S = 30.0
#: Attempts of one transaction under contention; backoff 0.05 s doubling up to 2 s, with jitter (~25 s in all).
RETRY_ATTEMPTS = 16
#: Attempts of a metrics read: a scrape of a database that fails is answered at once, not after ~25 s of backoff.
METRICS_ATTEMPTS = 3
#: The schema version this code writes; :meth:`Ledger.ensure_schema` migrates older tables up to it.
SCHEMA_VERSION = 2
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
    # schema version 2
    sa.Column("deadline_s", sa.Integer),
    sa.Column("started_ms", sa.BigInteger),
    sa.Column("finished_ms", sa.BigInteger),
    sa.Column("cancelled_by", sa.String(256)),
    sa.Column("cancelled_at", sa.BigInteger),
    sa.Index("mlflow_unlearn_requests_status", "status"),
)
#: The columns that schema version 2 added to ``mlflow_unlearn_requests`` (:meth:`Ledger._migrate_to_2`).
V2_COLUMNS = ("deadline_s", "started_ms", "finished_ms", "cancelled_by", "cancelled_at")
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
#: What a new request on a version starts without (the previous request's times and canceller).
_FRESH = dict.fromkeys(("started_ms", "finished_ms", "cancelled_by", "cancelled_at"))
#: The tag of each field of a request row that the version's tags mirror (``cancelled_at`` too, as UTC text).
FIELD_TAGS = {"status": STATUS_TAG, "request": REQUEST_TAG, "request_id": REQUEST_ID_TAG,
              "request_run_id": REQUEST_RUN_TAG, "error": ERROR_TAG, "result_version": RESULT_VERSION_TAG,
              "queue_position": QUEUE_POSITION_TAG, "cancelled_by": CANCELLED_BY_TAG}
#: Fields the ledger keeps for itself and the tags never show: the launcher's lease (with its heartbeat) and the job's
#: process are bookkeeping for recovery, and each tag write is a transaction of its own on the registry database.
#: The first ledger kept them in these tags, which the mirror removes from a version it shows.
UNMIRRORED_TAGS = {"lease": LEASE_TAG, "job": JOB_TAG}
_TAG_FIELDS = {tag: field for field, tag in (FIELD_TAGS | UNMIRRORED_TAGS).items()}


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
    deadline_s: int | None = None
    started_ms: int | None = None
    finished_ms: int | None = None
    cancelled_by: str | None = None
    cancelled_at: int | None = None

    @property
    def active(self) -> bool:
        """Whether the request is queued or running."""
        return self.status in ACTIVE

    @property
    def waiting(self) -> bool:
        """Whether the request is queued and waits for a job slot (it has a queue position)."""
        return self.status == RequestStatus.QUEUED and self.queue_position is not None

    def tags(self) -> dict[str, str | None]:
        """The version tags that show this state in the UI (``None``: the tag is absent; the lease and job tags of
        the first ledger always are)."""
        shown = {tag: getattr(self, field) for field, tag in FIELD_TAGS.items()}
        shown[CANCELLED_AT_TAG] = utc_text(self.cancelled_at) if self.cancelled_at else None
        return shown | dict.fromkeys(UNMIRRORED_TAGS.values())

    def past_deadline(self, now_ms: int | None = None) -> bool:
        """Whether the request has held its job slot for longer than its deadline (never without one)."""
        if not self.deadline_s or self.started_ms is None:
            return False
        return (_now_ms() if now_ms is None else now_ms) - self.started_ms > self.deadline_s * 1000

    @classmethod
    def from_tags(cls, name: str, version: int, tags: dict[str, str]) -> RequestState:
        """The state that the first ledger kept in the version's tags (how :meth:`Ledger.ensure_schema` imports it)."""
        return cls(name, int(version), **{field: tags.get(tag) for tag, field in _TAG_FIELDS.items()})


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


def utc_text(ms: int) -> str:
    """Milliseconds since the epoch as UTC ISO 8601 text, to the second.

    >>> utc_text(0)
    '1970-01-01T00:00:00Z'
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


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
            if self._ready or self._current():
                self._ready = True
                return
            _retrying(self._create_tables)
            if self._schema_version() < 1:
                legacy = list(self._legacy()) if self._legacy is not None else []
                _retrying(lambda: self._migrate_to_1(legacy))
            if self._schema_version() < 2:
                _retrying(self._migrate_to_2)
            self._ready = True

    def _create_tables(self) -> None:
        try:
            metadata.create_all(self.engine, checkfirst=True)
            events.create_tables(self.engine)
        except (sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.IntegrityError):
            # a concurrent process created a table between the check and the CREATE: check again
            metadata.create_all(self.engine, checkfirst=True)
            events.create_tables(self.engine)
        for table, row in ((queue_table, {"id": 1, "next_seq": 0}), (schema_table, {"id": 1, "version": 0})):
            with self.engine.begin() as conn:
                if conn.execute(sa.select(table.c.id)).first() is None:
                    conn.execute(table.insert().values(**row))  # a concurrent insert fails; _retrying re-reads

    def _current(self) -> bool:
        """Whether the tables exist at :data:`SCHEMA_VERSION` already: one statement, where creating and checking
        them is about a dozen (every launcher, and every server worker, asks once)."""
        try:
            with self.engine.connect() as conn:
                exist = [sa.select(sa.func.count()).select_from(table).where(sa.literal_column("1") == 0)
                         .scalar_subquery() for table in (events.events_table, events.totals_table)]
                return conn.execute(sa.select(schema_table.c.version, *exist).where(
                    schema_table.c.id == 1)).scalar() == SCHEMA_VERSION
        except sqlalchemy.exc.DBAPIError:  # no such table: create them
            return False

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

    def _migrate_to_2(self) -> None:
        """Add the columns of :data:`V2_COLUMNS` that the table lacks (a table created by version 1 code). Requests
        of version 1 keep working: no deadline, no start time (their launcher takes the time it resumes them)."""
        with self.engine.begin() as conn:
            self._lock_queue(conn)  # one migration at a time
            moved = conn.execute(schema_table.update().where(schema_table.c.id == 1, schema_table.c.version == 1)
                                 .values(version=2)).rowcount
            if moved != 1:
                return  # another process migrated
            have = {column["name"] for column in sa.inspect(conn).get_columns(requests_table.name)}
            for name in V2_COLUMNS:
                if name not in have:
                    column = requests_table.c[name]
                    conn.execute(sa.text(f"ALTER TABLE {requests_table.name} ADD COLUMN {name} "
                                         f"{column.type.compile(dialect=conn.dialect)}"))

    @staticmethod
    def _lock_queue(conn) -> int:
        """Increment the queue's sequence counter, which locks its row until the transaction ends; return it."""
        conn.execute(queue_table.update().where(queue_table.c.id == 1).values(next_seq=queue_table.c.next_seq + 1))
        return conn.execute(sa.select(queue_table.c.next_seq).where(queue_table.c.id == 1)).scalar_one()

    def _run(self, body: Callable[[Any], T], *, write: bool = True, attempts: int = RETRY_ATTEMPTS) -> T:
        """``body(connection)`` in one transaction (after :meth:`ensure_schema`), tried up to ``attempts`` times on
        races."""
        self.ensure_schema()

        def txn() -> T:
            if not write:
                with self.engine.connect() as conn:
                    return body(conn)
            with self.engine.begin() as conn:
                return body(conn)

        return _retrying(txn, attempts)

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
                            row.row_version, row.mirrored_version, row.mirrored_tags, deadline_s=row.deadline_s,
                            started_ms=row.started_ms, finished_ms=row.finished_ms, cancelled_by=row.cancelled_by,
                            cancelled_at=row.cancelled_at)

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

    def occupancy(self) -> dict[str, int]:
        """How many requests are active, by state: ``waiting`` (queued, no job slot yet), ``admitted`` (queued, holding
        a slot: its launcher prepares it), and every other active status (``running``) under its own name."""
        def body(conn) -> dict[str, int]:
            counts = dict.fromkeys(("waiting", "admitted", *(str(getattr(s, "value", s)) for s in ACTIVE
                                                             if s != RequestStatus.QUEUED)), 0)
            waits = requests_table.c.queue_seq.is_not(None)
            rows = conn.execute(sa.select(requests_table.c.status, waits, sa.func.count()).where(
                requests_table.c.status.in_(ACTIVE)).group_by(requests_table.c.status, waits)).all()
            for status, waiting, count in rows:
                key = status if status != RequestStatus.QUEUED else ("waiting" if waiting else "admitted")
                counts[key] = counts.get(key, 0) + int(count)
            return counts

        return self._run(body, write=False, attempts=METRICS_ATTEMPTS)

    def event_tallies(self) -> list[events.Tally]:
        """Every event recorded in this database, tallied (:func:`mlflow_unlearn_plugins.events.aggregate`)."""
        return self._run(events.aggregate, write=False, attempts=METRICS_ATTEMPTS)

    def fold_events(self, now_ms: int | None = None) -> int:
        """Fold the events older than :data:`~mlflow_unlearn_plugins.events.KEEP_DAYS` into their totals, in one
        transaction (:func:`mlflow_unlearn_plugins.events.fold`); return how many were folded."""
        return self._run(lambda conn: events.fold(conn, now_ms=now_ms))

    def unmirrored(self) -> list[RequestState]:
        """Requests whose latest change the version tags may not show yet (a mirror cut short by a crash)."""
        def body(conn) -> list[RequestState]:
            rows = conn.execute(sa.select(requests_table).where(
                requests_table.c.mirrored_version < requests_table.c.row_version)).all()
            return [self._state(conn, row) for row in rows]

        return self._run(body, write=False)

    # -- changes --------------------------------------------------------------------------------------------------
    def open(self, name: str, version: int | str, value: str | None, *, request_id: str,
             refusal: str | None = None, deadline_s: int | None = None) -> bool:
        """Record a new request on a version: status ``queued`` at the end of the queue, or ``failed`` with ``refusal``.

        A queued request waits until :meth:`dispatch` admits it.

        Args:
            name: registered model name.
            version: model version.
            value: the request's value (``None``: not stored, e.g. a refused value that may hold pasted IDs).
            request_id: a fresh unique ID for this request.
            refusal: if given, the request is refused: it is recorded as ``failed`` with this reason and never runs.
            deadline_s: the request's longest run time from admission (None: none).

        Returns:
            True if the request was recorded, False if the very same request is already queued or running.

        Raises:
            ~mlflow_unlearn_plugins.errors.ActiveRequestError: if a different request is queued or running on this
                version.
        """
        version = int(version)

        def body(conn) -> bool:
            seq = None if refusal else self._lock_queue(conn)
            status = RequestStatus.FAILED if refusal else RequestStatus.QUEUED
            row = {"request_id": request_id, "status": status, "request": value, "deadline_s": deadline_s,
                   "queue_seq": seq, "updated_ms": _now_ms(), **dict.fromkeys(_FIELDS), **_FRESH}
            if refusal:
                row.update(error=refusal[:MAX_ERROR_CHARS], finished_ms=row["updated_ms"])
            moved = conn.execute(requests_table.update().where(
                *_key(name, version), requests_table.c.status.notin_(ACTIVE)).values(
                row_version=requests_table.c.row_version + 1, **row)).rowcount
            if moved == 1:
                _opened_events(conn, name, version, request_id, status)
                return True
            current = self._read(conn, name, version)
            if current is None:  # never requested: a concurrent insert fails on the key, and _retrying re-reads
                conn.execute(requests_table.insert().values(name=name, version=version, row_version=1,
                                                            mirrored_version=0, **row))
                _opened_events(conn, name, version, request_id, status)
                return True
            if current.request == value:
                return False
            from mlflow_unlearn_plugins.errors import ActiveRequestError  # MLflow's exception: imported to refuse

            raise ActiveRequestError(
                f"Model version {name}/{version} already has an unlearning request {current.status} (request "
                f"{current.request_id}); wait until it has finished, or cancel it (tag {CANCEL_TAG!r}), then submit "
                "the new request")

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
            values.update(queue_seq=None, finished_ms=_now_ms())
        if values.get("error"):
            values["error"] = values["error"][:MAX_ERROR_CHARS]
        return self._update(name, version, values | {"status": to},
                            requests_table.c.request_id == request_id, requests_table.c.status.in_(tuple(expect)),
                            event=_advance_event(request_id, to))

    def stop(self, name: str, version: int | str, *, to: str, reason: str, by: str | None = None,
             request_id: str | None = None) -> tuple[bool, RequestState]:
        """Stop the active request of a version: ``to`` is ``cancelled`` (``by`` whom, now) or ``timed_out``.

        One compare-and-set on the row (status queued or running, and ``request_id`` if given), like the job's own
        final change: whichever comes first wins. The request leaves the queue (or frees its job slot) at once; its
        launcher, which reads the row while it watches the job, stops the job's processes.

        Returns:
            ``(True, state before the change)`` if this call stopped it, else ``(False, current state)`` (no
            request, a finished one, or one that was stopped already).
        """
        version = int(version)

        def body(conn) -> tuple[bool, RequestState]:
            before = self._read(conn, name, version)
            if before is None or before.status not in ACTIVE or (request_id and before.request_id != request_id):
                return False, before or RequestState(name, version, *([None] * 9))
            now = _now_ms()
            values = {"status": to, "error": reason[:MAX_ERROR_CHARS], "queue_seq": None, "finished_ms": now,
                      "lease": None, "job": None, "updated_ms": now, "row_version": requests_table.c.row_version + 1}
            if to == RequestStatus.CANCELLED:
                values.update(cancelled_by=(by or "unknown")[:256], cancelled_at=now)
            moved = conn.execute(requests_table.update().where(
                *_key(name, version), requests_table.c.request_id == before.request_id,
                requests_table.c.status.in_(ACTIVE)).values(**values)).rowcount
            if moved:
                events.record(conn, name=name, version=version, **_advance_event(before.request_id or "", to))
            if moved and before.waiting:  # it left the queue: the positions behind it moved up, their tags are due
                conn.execute(requests_table.update().where(
                    requests_table.c.status.in_(ACTIVE), requests_table.c.queue_seq.is_not(None)).values(
                    row_version=requests_table.c.row_version + 1))
            return moved == 1, before

        return self._run(body)

    def set_fields(self, name: str, version: int | str, request_id: str, fields: dict[str, str | None]) -> bool:
        """Set bookkeeping ``fields`` of the active request ``request_id``; False if it is no longer the active one.

        A change of fields the tags do not show (the lease, the job) leaves the row's mirror up to date."""
        return self._update(name, version, dict(fields), requests_table.c.request_id == request_id,
                            requests_table.c.status.in_(ACTIVE), mirrored=bool(set(fields) & set(FIELD_TAGS)))

    def _update(self, name: str, version: int | str, values: dict[str, Any], *where, mirrored: bool = True,
                event: dict[str, Any] | None = None) -> bool:
        """One compare-and-set ``UPDATE`` of the row of ``name``/``version``; ``mirrored``: the tags show the change;
        ``event``: the arguments of :func:`events.record`, recorded in the same transaction if the row changed."""
        extra = {"row_version": requests_table.c.row_version + 1} if mirrored else {}
        statement = requests_table.update().where(*_key(name, version), *where).values(
            updated_ms=_now_ms(), **extra, **values)

        def body(conn) -> bool:
            changed = conn.execute(statement).rowcount == 1
            if changed and event is not None:
                events.record(conn, name=name, version=int(version), **event)
            return changed

        return self._run(body)

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
                lease=lease_value(), updated_ms=_now_ms())).rowcount == 1  # no tag shows the lease

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

    def release_dead_lease(self, name: str, version: int | str, request_id: str, lease: str) -> bool:
        """Clear the lease ``lease`` of a launcher that recovery found dead, so that a new launcher can be started,
        and record the launcher's death; False (and nothing changes) if the lease changed meanwhile, e.g. another
        worker's recovery got there first: exactly one recovery replaces a dead launcher."""
        return self._update(name, version, {"lease": None}, requests_table.c.request_id == request_id,
                            requests_table.c.status.in_(ACTIVE), requests_table.c.lease == lease, mirrored=False,
                            event={"request_id": request_id, "event": events.LAUNCHER_REPLACED, "status": None})

    def dispatch(self, max_jobs: int) -> list[RequestState]:
        """Admit waiting requests, first in first out, while fewer than ``max_jobs`` requests hold a job slot.

        A request holds a slot from its admission (it leaves the queue) until it has finished (any final status)
        and its tags show it (at most :data:`SLOT_RELEASE_GRACE_S` after it finished). Runs under the queue's row
        lock, so concurrent calls (server workers, launchers, servers sharing the database) never admit more than
        ``max_jobs``.

        Returns:
            The requests admitted now; the caller starts a launcher for each.
        """
        active = requests_table.c.status.in_(ACTIVE)
        if not self._run(lambda conn: self._may_admit(conn, max_jobs), write=False):
            return []  # no write lock when nothing waits or no slot is free (every recovery and submission asks)

        def body(conn) -> list[RequestState]:
            self._lock_queue(conn)
            holders = conn.execute(sa.select(sa.func.count()).select_from(requests_table).where(
                _slot_holder())).scalar_one()
            free = max_jobs - holders
            if free <= 0:
                return []
            rows = conn.execute(sa.select(requests_table).where(active, requests_table.c.queue_seq.is_not(None))
                                .order_by(requests_table.c.queue_seq).limit(free)).all()
            for row in rows:  # its deadline runs from here: it holds a slot from admission on
                conn.execute(requests_table.update().where(*_key(row.name, row.version)).values(
                    queue_seq=None, row_version=requests_table.c.row_version + 1, updated_ms=_now_ms(),
                    started_ms=_now_ms()))
                events.record(conn, request_id=row.request_id, name=row.name, version=row.version,
                              event=events.ADMITTED, status=row.status, since=events.SUBMITTED)
            if rows:  # the positions of the requests still waiting moved up: their tags are due a mirror
                conn.execute(requests_table.update().where(active, requests_table.c.queue_seq.is_not(None)).values(
                    row_version=requests_table.c.row_version + 1))
            return [replace(self._state(conn, row), queue_position=None, row_version=row.row_version + 1,
                            started_ms=_now_ms()) for row in rows]

        return self._run(body)

    @staticmethod
    def _may_admit(conn, max_jobs: int) -> bool:
        """Whether a request waits and a job slot is free, as of this read (the locked admission checks again)."""
        waiting, holders = conn.execute(sa.select(
            sa.func.count().filter(requests_table.c.status.in_(ACTIVE), requests_table.c.queue_seq.is_not(None)),
            sa.func.count().filter(_slot_holder()))).one()
        return waiting > 0 and holders < max_jobs

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


def _opened_events(conn, name: str, version: int, request_id: str, status: str) -> None:
    """The events of a request just recorded: submitted, and finished too when it was refused."""
    events.record(conn, request_id=request_id, name=name, version=version, event=events.SUBMITTED, status=status)
    if status not in ACTIVE:
        events.record(conn, request_id=request_id, name=name, version=version, event=events.FINISHED, status=status)


def _advance_event(request_id: str, to: str) -> dict[str, Any]:
    """The event of a move to status ``to``: ``running`` (the job started), ``finished`` for any status that is not
    active (labelled by the status, so a new final status needs no change here), else the status itself."""
    if to == RequestStatus.RUNNING:
        return {"request_id": request_id, "event": events.RUNNING, "status": to}
    if to not in ACTIVE:
        return {"request_id": request_id, "event": events.FINISHED, "status": to, "since": events.RUNNING}
    return {"request_id": request_id, "event": getattr(to, "value", to), "status": to}


def connect(db_uri: str) -> sa.engine.Engine:
    """A SQLAlchemy engine for a ledger outside a registry store (a launcher, the webhook's state database)."""
    return sa.create_engine(db_uri, pool_pre_ping=True)


def _slot_holder():
    """The rows that hold a job slot: admitted and active, or ended less than :data:`SLOT_RELEASE_GRACE_S` ago with
    tags that still show them admitted or running (the tags' JSON in ``mirrored_tags``, see :func:`mirror`)."""
    table = requests_table.c
    shown = table.mirrored_tags

    def showing(status: RequestStatus):  # the JSON pair '"mlflow_unlearn.status": "running"', as mirror() writes it
        return shown.contains(json.dumps({STATUS_TAG: status.value})[1:-1], autoescape=True)

    shown_holding = sa.or_(showing(RequestStatus.RUNNING), sa.and_(
        showing(RequestStatus.QUEUED), sa.not_(shown.contains(QUEUE_POSITION_TAG, autoescape=True))))
    return sa.or_(sa.and_(table.status.in_(ACTIVE), table.queue_seq.is_(None)),
                  sa.and_(table.status.notin_(ACTIVE), table.mirrored_version < table.row_version,
                          table.updated_ms > _now_ms() - int(SLOT_RELEASE_GRACE_S * 1000), shown_holding))


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
