"""Readiness that fails honestly: can the plugin write its registry database, and can it start a launcher?

:class:`Readiness` answers ``None`` (ready) or one line that says what is wrong, fit for an HTTP 503 body: no SQL, no
server path, no database address (the full error goes to the server's log).

* **The database accepts a write**: a transaction on a fresh connection (so that a file made read-only, a database
  server that went away or a revoked grant shows at once, not when a pooled connection is next renewed) updates the
  plugin's queue row to its own value, then rolls back: nothing observable changes, and the same lock that
  admission takes is taken for an instant. On PostgreSQL the probe waits at most :data:`LOCK_TIMEOUT_S` for the row.
* **A launcher can start** (cached for :data:`LAUNCHER_CHECK_S` seconds): the log directory can be created and
  written (a file is created and deleted there: file modes alone say nothing to root), and the server's Python
  finds the launcher's module (``python -c``: what :func:`mlflow_unlearn_plugins.scheduler.start_launcher` runs,
  without importing MLflow).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import sqlalchemy as sa
import sqlalchemy.exc
from mlflow_unlearn_plugins.ledger import Ledger, queue_table
from mlflow_unlearn_plugins.settings import LOG_DIR_ENV, LauncherSettings

#: Seconds a launcher check is reused (it starts a short Python process).
LAUNCHER_CHECK_S = 5.0
LAUNCHER_PROBE_TIMEOUT_S = 30.0
#: Seconds the database probe waits for a row lock on PostgreSQL before it reports the database as blocked.
LOCK_TIMEOUT_S = 5
_LAUNCHER_MODULE = "mlflow_unlearn_plugins.launcher"
_FIND_LAUNCHER = ("import importlib.util, sys; "
                  f"sys.exit(0 if importlib.util.find_spec({_LAUNCHER_MODULE!r}) else 3)")
#: Driver messages (lower case) -> what the probe answers; first match wins, else the error's class name.
_DATABASE_REASONS = (
    (("readonly", "read-only", "read only"), "{db} is read-only"),
    (("locked", "lock timeout", "lock_timeout", "could not obtain lock"), "{db} is locked by another writer"),
    (("could not connect", "connection refused", "server closed the connection", "terminating connection",
      "connection is closed", "no such host", "could not translate host", "timeout expired",
      "the database system is shutting down", "the database system is starting up"), "{db} cannot be reached"),
    (("unable to open", "disk i/o", "no such file", "permission denied", "disk is full", "database or disk is full"),
     "{db}'s files cannot be written"),
    (("does not exist", "no such table"), "{db} lacks the plugin's tables"),
)
REGISTRY_DATABASE = "the registry database"

_logger = logging.getLogger(__name__)


def database_reason(exc: BaseException, db: str = REGISTRY_DATABASE) -> str:
    """One line for a failed probe of database ``db``, from the driver's message, without the message itself (it can
    hold SQL, a file path or a host name).

    Example:
        >>> import sqlite3
        >>> database_reason(sqlite3.OperationalError("attempt to write a readonly database"))
        'the registry database is read-only'
        >>> database_reason(RuntimeError("/srv/secret/registry.db: boom"))
        'the registry database cannot be written (RuntimeError)'
    """
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).lower()
    for needles, reason in _DATABASE_REASONS:
        if any(needle in text for needle in needles):
            return reason.format(db=db)
    return f"{db} cannot be written ({type(cause).__name__})"


def probe_database(ledger: Ledger, db: str = REGISTRY_DATABASE) -> str | None:
    """Whether the ledger's database (called ``db`` in the answer) accepts a write now: None, or the reason it does
    not (see the module). The probe runs before anything is retried: a broken database is reported at once; the
    plugin's tables are created (:meth:`Ledger.ensure_schema`) only in a database that answered."""
    try:
        changed = _probe_write(ledger.engine.url)
        if changed is None:  # a database the plugin has not used yet
            ledger.ensure_schema()
            changed = _probe_write(ledger.engine.url)
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        _logger.warning("Readiness: %s cannot be written: %s", db, str(exc).splitlines()[0][:300])
        return database_reason(exc, db)
    if changed != 1:
        return f"{db} lacks the plugin's queue row"
    return None


def _probe_write(url: sa.engine.URL) -> int | None:
    """On a new connection: update the queue row to its own value and roll back; the rows it matched (None: the
    plugin's queue table does not exist)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:  # one transaction, begun by the first statement, rolled back at the end
            try:
                if not sa.inspect(conn).has_table(queue_table.name):
                    return None
                if engine.dialect.name == "postgresql":
                    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{int(LOCK_TIMEOUT_S)}s'"))
                return conn.execute(queue_table.update().where(queue_table.c.id == 1).values(
                    next_seq=queue_table.c.next_seq)).rowcount
            finally:
                conn.rollback()
    finally:
        engine.dispose()


def probe_launcher(settings: LauncherSettings, executable: str = sys.executable) -> str | None:
    """Whether a launcher can start: None, or the reason it cannot (see the module)."""
    try:
        os.makedirs(settings.log_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=settings.log_dir, prefix=".readiness-"):
            pass
    except OSError as exc:
        _logger.warning("Readiness: the launchers' log directory cannot be written: %s", exc)
        return f"the launcher cannot start: its log directory ({LOG_DIR_ENV}) cannot be written"
    try:
        found = subprocess.run([executable, "-c", _FIND_LAUNCHER], stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=LAUNCHER_PROBE_TIMEOUT_S).returncode  # the environment a launcher gets
    except (OSError, subprocess.SubprocessError) as exc:
        _logger.warning("Readiness: the server's Python cannot run a launcher: %s", exc)
        return "the launcher cannot start: the server's Python executable cannot be run"
    if found != 0:
        return f"the launcher cannot start: the server's Python does not find {_LAUNCHER_MODULE}"
    return None


class Readiness:
    """The readiness of one deployment: its database (every call) and its launcher (cached).

    Args:
        ledger: returns the ledger of the registry (or of the webhook receiver's state database); it may raise,
            e.g. when the store cannot be constructed because the database cannot be opened.
        launcher: the launcher settings.
        executable: the Python that starts launchers (this process's).
        db: what the answers call the database.
    """

    def __init__(self, ledger: Callable[[], Ledger], launcher: LauncherSettings, executable: str = sys.executable,
                 db: str = REGISTRY_DATABASE) -> None:
        self._ledger, self.launcher, self.executable, self.db = ledger, launcher, executable, db
        self._launcher_lock = threading.Lock()
        self._launcher_at, self._launcher_reason = float("-inf"), None

    def reason(self) -> str | None:
        """None when ready, else the first reason it is not."""
        try:
            ledger = self._ledger()
        except Exception as exc:  # noqa: BLE001 (MLflow wraps a database error in its own exception)
            _logger.warning("Readiness: %s cannot be opened: %s", self.db, str(exc).splitlines()[0][:300])
            cause = exc if hasattr(exc, "orig") or exc.__cause__ is None else exc.__cause__
            return database_reason(cause, self.db)
        return probe_database(ledger, self.db) or self._launcher()

    def _launcher(self) -> str | None:
        with self._launcher_lock:
            if time.monotonic() - self._launcher_at >= LAUNCHER_CHECK_S:
                self._launcher_reason = probe_launcher(self.launcher, self.executable)
                self._launcher_at = time.monotonic()
            return self._launcher_reason
