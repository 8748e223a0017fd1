"""The durable state of unlearning requests, kept as tags of the parent model version in the registry database.

Every state change is a compare-and-set done by one SQL ``UPDATE ... WHERE value IN (...)`` (or an ``INSERT``
that the table's primary key makes unique) inside one transaction, so that any number of server workers,
launcher processes and restarted servers agree on who owns a request:

* :func:`open_request` moves the status from "nothing active" to ``queued`` (or straight to ``failed`` for a
  refused request). While a request is ``queued`` or ``running`` a *different* request on the same version is
  refused and the *same* request (identical tag value) is a no-op, so two concurrent requests never produce
  two jobs.
* :func:`claim_lease` lets exactly one launcher process work on a request (a lease row with a heartbeat).
* :func:`advance` moves ``queued -> running -> succeeded | failed`` for one request ID only.
* :func:`dispatch` bounds the jobs running at once: a new request waits in the queue (``queued`` with a
  ``mlflow_unlearn.queue_position`` tag, 1 = next) until fewer than ``max_jobs`` requests hold a slot (queued
  without a position, i.e. admitted, or running); it then admits the waiting requests first in first out. The
  queue is the tags themselves, so it survives restarts, and every enqueue and admission runs under one lock of the
  database (:func:`_lock_queue`), so that processes sharing it never admit more than ``max_jobs``.

Lock contention (SQLite's "database is locked", a lost unique-key race) is retried with exponential backoff and
counted (:func:`contention_retries`), never raised on the first conflict.

The tags are visible in the version page of the MLflow UI, which is how a person follows a request.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_CONFLICT

from mlflow_unlearn.request import ACTIVE_STATUSES, TERMINAL_STATUSES, RequestStatus
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
    TAG_PREFIX,
)

if TYPE_CHECKING:
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

#: Tags only the plugin writes; a client that tries to set or delete them gets an error.
RESERVED_TAGS = (STATUS_TAG, ERROR_TAG, RESULT_VERSION_TAG, REQUEST_ID_TAG, REQUEST_RUN_TAG, LEASE_TAG, JOB_TAG,
                 QUEUE_POSITION_TAG)
ACTIVE = ACTIVE_STATUSES
TERMINAL = TERMINAL_STATUSES
#: A lease whose heartbeat is older than this is considered abandoned (its launcher died).
LEASE_TIMEOUT_S = 60.0
MAX_ERROR_CHARS = 2000
#: Attempts of one transaction under contention; backoff 0.05 s doubling up to 2 s, with jitter (~25 s in all).
RETRY_ATTEMPTS = 16
_retries = {"count": 0}

T = TypeVar("T")


@dataclass(frozen=True)
class RequestState:
    """The plugin's tags of one model version (``None`` where a tag is absent)."""

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

    @property
    def active(self) -> bool:
        """Whether the request is queued or running."""
        return self.status in ACTIVE

    @property
    def waiting(self) -> bool:
        """Whether the request is queued and waits for a job slot (it has a queue position)."""
        return self.status == RequestStatus.QUEUED and self.queue_position is not None


class ActiveRequestError(MlflowException):
    """Another request is queued or running on this version (HTTP 409, ``RESOURCE_CONFLICT``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=RESOURCE_CONFLICT)


def _tag_model():
    from mlflow.store.model_registry.dbmodels.models import SqlModelVersionTag

    return SqlModelVersionTag


def contention_retries() -> int:
    """How many ledger transactions of this process were retried after a lock conflict or a unique-key race."""
    return _retries["count"]


def _retrying(fn: Callable[[], T], attempts: int = RETRY_ATTEMPTS) -> T:
    """Run one transaction, retrying when a concurrent writer won a unique-key race or held the database lock."""
    import sqlalchemy.exc

    races = (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError)
    for attempt in range(attempts):
        try:
            return fn()
        except (MlflowException, *races) as exc:
            cause = exc if isinstance(exc, races) else exc.__cause__
            if not isinstance(cause, races) or attempt == attempts - 1:
                raise
            _retries["count"] += 1
            time.sleep(min(2.0, 0.05 * 2 ** attempt) * random.uniform(0.5, 1.0))
    raise AssertionError("unreachable")


def _lock_queue(session) -> None:
    """Take the database-wide lock that serialises enqueueing and admission, until the transaction ends.

    A no-op update of the one row of ``alembic_version`` (every MLflow database has it): a row lock on PostgreSQL,
    MySQL and SQL Server, the write lock on SQLite. Statements after it see every admission committed before.
    """
    from sqlalchemy import text

    session.execute(text("UPDATE alembic_version SET version_num = version_num"))


def _where(tag, workspace: str, name: str, version: int, key: str) -> list[Any]:
    return [tag.workspace == workspace, tag.name == name, tag.version == version, tag.key == key]


def _read(session, workspace: str, name: str, version: int) -> dict[str, str]:
    tag = _tag_model()
    rows = session.query(tag.key, tag.value).filter(
        tag.workspace == workspace, tag.name == name, tag.version == version, tag.key.like(TAG_PREFIX + "%")
    )
    return {key: value for key, value in rows}


def _put(session, workspace: str, name: str, version: int, values: dict[str, str | None]) -> None:
    tag = _tag_model()
    for key, value in values.items():
        if value is None:
            session.query(tag).filter(*_where(tag, workspace, name, version, key)).delete()
        else:
            session.merge(tag(workspace=workspace, name=name, version=version, key=key, value=value))


def _cas(session, workspace: str, name: str, version: int, key: str, new: str, *, expect: Iterable[str] | None,
         exclude: Iterable[str] = ()) -> bool:
    """Set tag ``key`` to ``new`` iff its value is in ``expect`` (``None``: absent or not in ``exclude``)."""
    from sqlalchemy import update

    tag = _tag_model()
    cond = _where(tag, workspace, name, version, key)
    cond.append(tag.value.in_(tuple(expect)) if expect is not None else tag.value.notin_(tuple(exclude)))
    if session.execute(update(tag).where(*cond).values(value=new)).rowcount == 1:
        return True
    if expect is not None or session.query(tag).filter(*_where(tag, workspace, name, version, key)).count():
        return False
    # Absent: the primary key (workspace, key, name, version) makes a concurrent insert fail; _retrying re-reads.
    session.add(tag(workspace=workspace, name=name, version=version, key=key, value=new))
    session.flush()
    return True


def _state(name: str, version: int, tags: dict[str, str]) -> RequestState:
    keys = (STATUS_TAG, REQUEST_TAG, REQUEST_ID_TAG, REQUEST_RUN_TAG, ERROR_TAG, RESULT_VERSION_TAG, LEASE_TAG, JOB_TAG,
            QUEUE_POSITION_TAG)
    return RequestState(name, int(version), *(tags.get(key) for key in keys))


def _transaction(store: SqlAlchemyStore, name: str, version: int, body: Callable[[Any, str], T], *,
                 read_only: bool = False) -> T:
    """Run ``body(session, workspace)`` in one transaction on ``name``/``version``, retried on races.

    Raises MLflow's not-found error for a missing version.
    """

    def txn() -> T:
        with store.ManagedSessionMaker(read_only=read_only) as session:
            return body(session, store._get_sql_model_version(session, name, version).workspace)

    return _retrying(txn)


def _active_request(session, ws: str, name: str, version: int, request_id: str) -> dict[str, str] | None:
    """The plugin's tags of the version if ``request_id`` is its queued or running request, else None."""
    current = _read(session, ws, name, version)
    if current.get(REQUEST_ID_TAG) != request_id or current.get(STATUS_TAG) not in ACTIVE:
        return None
    return current


def read_state(store: SqlAlchemyStore, name: str, version: int | str) -> RequestState:
    """The plugin's tags of ``name``/``version`` (raises MLflow's not-found error for a missing version)."""
    version = int(version)
    return _transaction(store, name, version,
                        lambda session, ws: _state(name, version, _read(session, ws, name, version)), read_only=True)


def read_tags(store: SqlAlchemyStore, name: str, version: int | str) -> dict[str, str]:
    """Every ``mlflow_unlearn.*`` tag of ``name``/``version`` (MLflow's not-found error for a missing version)."""
    version = int(version)
    return _transaction(store, name, version, lambda session, ws: _read(session, ws, name, version), read_only=True)


def open_request(store: SqlAlchemyStore, name: str, version: int | str, value: str | None, *, request_id: str,
                 refusal: str | None = None) -> bool:
    """Record a new request on a version: status ``queued`` at the end of the queue, or ``failed`` with ``refusal``.

    A queued request waits until :func:`dispatch` admits it.

    Args:
        store: a registry ``SqlAlchemyStore`` (stock or plugin) of the registry database.
        name: registered model name.
        version: model version.
        value: the request tag value to store (``None`` leaves the current tag as it is, ``""`` removes it).
        request_id: a fresh unique ID for this request.
        refusal: if given, the request is refused: it is recorded as ``failed`` with this reason and never runs.

    Returns:
        True if the request was recorded, False if the very same request is already queued or running.

    Raises:
        ActiveRequestError: if a different request is queued or running on this version.
        mlflow.exceptions.MlflowException: if the version does not exist.
    """
    version = int(version)

    def body(session, ws: str) -> bool:
        if not refusal:
            _lock_queue(session)
        status = RequestStatus.FAILED if refusal else RequestStatus.QUEUED
        if not _cas(session, ws, name, version, STATUS_TAG, status, expect=None, exclude=ACTIVE):
            current = _read(session, ws, name, version)
            if value is None or current.get(REQUEST_TAG) == value:
                return False
            raise ActiveRequestError(
                f"Model version {name}/{version} already has an unlearning request "
                f"{current.get(STATUS_TAG)} (request {current.get(REQUEST_ID_TAG)}); wait until its "
                f"{STATUS_TAG} tag is succeeded or failed, then submit the new request"
            )
        tags = dict.fromkeys((ERROR_TAG, RESULT_VERSION_TAG, REQUEST_RUN_TAG, LEASE_TAG, JOB_TAG, QUEUE_POSITION_TAG))
        tags[REQUEST_ID_TAG] = request_id
        if not refusal:
            tags[QUEUE_POSITION_TAG] = str(max((w[0] for w in _waiting(session)), default=0) + 1)
        if value is not None:
            tags[REQUEST_TAG] = value or None  # "" removes an oversized value instead of storing it
        if refusal:
            tags[ERROR_TAG] = refusal[:MAX_ERROR_CHARS]
        _put(session, ws, name, version, tags)
        return True

    return _transaction(store, name, version, body)


def advance(store: SqlAlchemyStore, name: str, version: int | str, request_id: str, *, expect: Iterable[str], to: str,
            tags: dict[str, str | None] | None = None) -> bool:
    """Move request ``request_id`` from a status in ``expect`` to ``to`` and write ``tags`` in the same transaction.

    Returns:
        False (and changes nothing) if the version now holds another request or another status.
    """
    version, expect = int(version), tuple(expect)

    def body(session, ws: str) -> bool:
        if _read(session, ws, name, version).get(REQUEST_ID_TAG) != request_id:
            return False
        if not _cas(session, ws, name, version, STATUS_TAG, to, expect=expect):
            return False
        extra = dict(tags or {})
        if to in TERMINAL:
            extra[QUEUE_POSITION_TAG] = None
        if extra.get(ERROR_TAG):
            extra[ERROR_TAG] = extra[ERROR_TAG][:MAX_ERROR_CHARS]
        _put(session, ws, name, version, extra)
        return True

    return _transaction(store, name, version, body)


def repair_foreign(store: SqlAlchemyStore, name: str, version: int | str) -> bool:
    """Mark ``failed`` a version whose status says queued or running although no request of the plugin is on it
    (no request ID: tags planted outside the plugin, e.g. before it was switched on), so that it can be used,
    re-requested or deleted again. Its other plugin tags are removed.

    Returns:
        True if the version was repaired.
    """
    version = int(version)

    def body(session, ws: str) -> bool:
        current = _read(session, ws, name, version)
        if current.get(REQUEST_ID_TAG) or current.get(STATUS_TAG) not in ACTIVE:
            return False
        tags: dict[str, str | None] = dict.fromkeys(k for k in RESERVED_TAGS if k != STATUS_TAG)
        tags[STATUS_TAG] = RequestStatus.FAILED
        tags[ERROR_TAG] = ("the plugin's tags on this version were not written by the plugin (no request ID); "
                           f"they were cleared by recovery. Set {REQUEST_TAG!r} to submit a request")
        _put(session, ws, name, version, tags)
        return True

    return _transaction(store, name, version, body)


def set_fields(store: SqlAlchemyStore, name: str, version: int | str, request_id: str,
               tags: dict[str, str | None]) -> bool:
    """Write bookkeeping ``tags`` for an active request ``request_id``; False if it is no longer the active one."""
    version = int(version)

    def body(session, ws: str) -> bool:
        if _active_request(session, ws, name, version, request_id) is None:
            return False
        _put(session, ws, name, version, tags)
        return True

    return _transaction(store, name, version, body)


def lease_value(spawned: int | None = None) -> str:
    """``host|pid|heartbeat-ms`` for this process, now; or ``host|pid|ms|spawned`` for a launcher just started here.

    A launcher's starter writes the launcher's lease at once, so that a launcher killed before it claims its lease
    is seen as dead (and replaced) like any other; the launcher itself takes that lease over.
    """
    now = int(time.time() * 1000)
    if spawned is not None:
        return f"{socket.gethostname()}|{spawned}|{now}|spawned"
    return f"{socket.gethostname()}|{os.getpid()}|{now}"


def _spawned_for_me(lease: str) -> bool:
    host, pid, *_ = lease.split("|") + [""]
    return host == socket.gethostname() and pid == str(os.getpid()) and lease.endswith("|spawned")


def process_alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` runs on this host, is not a zombie, and its command line contains ``marker``.

    The marker guards against PID reuse after a restart.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return False
    return state != b"Z" and marker in cmdline


def lease_alive(lease: str | None, marker: str, *, now: float | None = None) -> bool:
    """Whether the launcher holding ``lease`` is still alive (same host: its process; else: its heartbeat)."""
    if not lease:
        return False
    host, _, rest = lease.partition("|")
    pid, _, beat = rest.partition("|")
    if host == socket.gethostname() and pid.isdigit():
        return process_alive(int(pid), marker)
    now = time.time() if now is None else now
    return beat.isdigit() and now - int(beat) / 1000 < LEASE_TIMEOUT_S


def claim_lease(store: SqlAlchemyStore, name: str, version: int | str, request_id: str, marker: str) -> bool:
    """Make this process the only launcher of request ``request_id`` (steals a lease whose holder is dead)."""
    version = int(version)

    def body(session, ws: str) -> bool:
        current = _active_request(session, ws, name, version, request_id)
        if current is None:
            return False
        old = current.get(LEASE_TAG)
        if old is not None and lease_alive(old, marker) and not _spawned_for_me(old):
            return False
        if old is None:  # insert only: a lease committed since the read makes the insert fail; the retry re-reads
            session.add(_tag_model()(workspace=ws, name=name, version=version, key=LEASE_TAG, value=lease_value()))
            session.flush()
            return True
        return _cas(session, ws, name, version, LEASE_TAG, lease_value(), expect=(old,))

    return _transaction(store, name, version, body)


def heartbeat(store: SqlAlchemyStore, name: str, version: int | str) -> None:
    """Refresh this process's lease heartbeat."""
    version = int(version)
    mine = lease_value().rsplit("|", 1)[0] + "|"

    def body(session, ws: str) -> None:
        from sqlalchemy import update

        tag = _tag_model()
        cond = [*_where(tag, ws, name, version, LEASE_TAG), tag.value.like(mine + "%")]
        session.execute(update(tag).where(*cond).values(value=lease_value()))

    _transaction(store, name, version, body)


def active_requests(store: SqlAlchemyStore) -> list[RequestState]:
    """All versions whose request is queued or running (what start-up recovery looks at)."""

    def txn() -> list[RequestState]:
        with store.ManagedSessionMaker() as session:
            return [_state(name, version, _read(session, ws, name, version))
                    for ws, name, version in _active_keys(session)]

    return _retrying(txn)


def _active_keys(session) -> list[tuple[str, str, int]]:
    """(workspace, name, version) of every live version whose request is queued or running."""
    from mlflow.entities.model_registry.model_version_stages import STAGE_DELETED_INTERNAL
    from mlflow.store.model_registry.dbmodels.models import SqlModelVersion

    tag = _tag_model()
    return session.query(tag.workspace, tag.name, tag.version).join(
        SqlModelVersion, (SqlModelVersion.name == tag.name) & (SqlModelVersion.version == tag.version)
    ).filter(tag.key == STATUS_TAG, tag.value.in_(ACTIVE),
             SqlModelVersion.current_stage != STAGE_DELETED_INTERNAL).all()


def _waiting(session) -> list[tuple[int, str, str, int]]:
    """(position, workspace, name, version) of every waiting request, in queue order."""
    tag = _tag_model()
    rows = session.query(tag.value, tag.workspace, tag.name, tag.version).filter(tag.key == QUEUE_POSITION_TAG).all()
    return sorted((int(pos) if pos.isdigit() else 0, ws, name, int(version)) for pos, ws, name, version in rows)


def dispatch(store: SqlAlchemyStore, max_jobs: int) -> list[RequestState]:
    """Admit waiting requests, first in first out, while fewer than ``max_jobs`` requests hold a job slot.

    A request holds a slot from its admission (its queue position is removed) until it is ``succeeded`` or
    ``failed``. The positions of the requests still waiting are renumbered from 1. Runs under the queue lock, so
    concurrent calls (server workers, launchers, servers sharing the database) never admit more than ``max_jobs``.

    Args:
        store: a registry ``SqlAlchemyStore`` of the registry database.
        max_jobs: the most requests that may hold a slot at once.

    Returns:
        The requests admitted now; the caller starts a launcher for each.
    """
    tag = _tag_model()

    def txn() -> list[RequestState]:
        with store.ManagedSessionMaker(read_only=False) as session:
            _lock_queue(session)
            active = {(ws, name, int(version)) for ws, name, version in _active_keys(session)}
            waiting = [w for w in _waiting(session) if w[1:] in active]
            holders = len(active) - len(waiting)
            admitted = []
            for i, (pos, ws, name, version) in enumerate(waiting):
                if holders < max_jobs:
                    _put(session, ws, name, version, {QUEUE_POSITION_TAG: None})
                    admitted.append(_state(name, version, _read(session, ws, name, version)))
                    holders += 1
                elif pos != i + 1 - len(admitted):
                    session.query(tag).filter(*_where(tag, ws, name, version, QUEUE_POSITION_TAG)).update(
                        {tag.value: str(i + 1 - len(admitted))})
            return admitted

    return _retrying(txn)
