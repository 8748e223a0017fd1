"""Database time of one process, for ``benchmarks/load.py`` (on ``PYTHONPATH`` only when ``LOAD_DBTIME_DIR`` is set).

Times every SQL statement and every commit that SQLAlchemy sends (lock waits included: a statement or a commit
blocked on SQLite's busy timeout or a PostgreSQL row lock counts as the time it blocks), and splits the time into
the plugin's state keeping (a statement with a frame of :data:`STATE_MODULES` on its stack: the request ledger, its
queue, the tag mirror and the scheduler; the first ledger kept all of it in ``ledger``) and the rest (MLflow's own
store calls: runs, metrics, model versions, the jobs' work). Every 2 s and at exit the totals of this process go
to ``$LOAD_DBTIME_DIR/<pid>.json``, so a process killed with SIGKILL loses at most its last 2 s.
"""

import atexit
import json
import os
import sys
import threading
import time

_DIR = os.environ.get("LOAD_DBTIME_DIR")
STATE_MODULES = frozenset(f"mlflow_unlearn_plugins.{name}" for name in ("ledger", "mirror", "scheduler"))


def _install() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.engine.default import DefaultDialect

    totals = {"plugin_s": 0.0, "other_s": 0.0, "plugin_statements": 0, "other_statements": 0,
              "argv": " ".join(sys.argv)[:300]}
    lock = threading.Lock()

    def from_plugin() -> bool:
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_globals.get("__name__", "") in STATE_MODULES:
                return True
            frame = frame.f_back
        return False

    def add(seconds: float) -> None:
        kind = "plugin" if from_plugin() else "other"
        with lock:
            totals[f"{kind}_s"] += seconds
            totals[f"{kind}_statements"] += 1

    @event.listens_for(Engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany):
        conn.info.setdefault("_load_t0", []).append(time.perf_counter())

    @event.listens_for(Engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany):
        add(time.perf_counter() - conn.info["_load_t0"].pop())

    commit = DefaultDialect.do_commit

    def timed_commit(self, dbapi_connection):
        start = time.perf_counter()
        try:
            return commit(self, dbapi_connection)
        finally:
            add(time.perf_counter() - start)

    DefaultDialect.do_commit = timed_commit
    path = ""

    def flush() -> None:
        with lock:
            text = json.dumps(totals)
        with open(path + ".tmp", "w") as fh:
            fh.write(text)
        os.replace(path + ".tmp", path)

    def loop() -> None:
        while True:
            time.sleep(2)
            flush()

    def start() -> None:
        nonlocal path
        path = os.path.join(_DIR, f"{os.getpid()}.json")
        threading.Thread(target=loop, daemon=True, name="load-dbtime").start()

    def after_fork() -> None:  # a forked child counts its own statements in its own file
        for key in ("plugin_s", "other_s", "plugin_statements", "other_statements"):
            totals[key] = 0
        start()

    start()
    os.register_at_fork(after_in_child=after_fork)
    atexit.register(flush)


if _DIR:
    try:
        _install()
    except ImportError:  # a process without SQLAlchemy sends no SQL
        pass
