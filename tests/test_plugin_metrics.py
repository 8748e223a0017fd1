"""Observability without a server (issue 29, item 4): the events the ledger writes with each change, the metrics
computed from them, their folding, a dead launcher counted once, the log retention applied by the scheduler's
recovery, and the readiness probes (a read-only database, an unusable log directory or Python).

Everything runs on real SQLite files; ``tests/test_plugin_metrics_server.py`` scrapes a real ``mlflow server``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from mlflow_unlearn_plugins import errors, events, health, ledger, metrics, retention, scheduler, settings
from mlflow_unlearn_plugins.settings import LauncherSettings, PluginSettings

MODEL = "observed"
DEAD_PID = 2**22 + 7  # above the kernel's pid_max: no such process
DAY_S = 86_400
SQL_OR_PATH = ("[SQL", "SELECT", "UPDATE ", "INSERT", "sqlite://", "/tmp", "/srv", ".db")


def samples(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition, keyed ``name{label="value",...}`` (labels sorted; no braces
    without labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def _scrape(led: ledger.Ledger, max_jobs: int = 1) -> dict[str, float]:
    return samples(metrics.render(lambda: led, max_jobs).decode())


@pytest.fixture()
def led(tmp_path) -> Iterator[ledger.Ledger]:
    engine = ledger.connect(f"sqlite:///{tmp_path}/plugin.db")
    yield ledger.Ledger(engine)
    engine.dispose()


def _events(led: ledger.Ledger) -> list[tuple]:
    with led.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.select(
            events.events_table.c.request_id, events.events_table.c.event, events.events_table.c.status,
            events.events_table.c.duration_ms.is_not(None)).order_by(events.events_table.c.id))]


def test_each_ledger_change_writes_its_event_in_the_same_transaction(led):
    assert led.open(MODEL, 1, "forget=classes:1", request_id="r1")
    assert led.open(MODEL, 2, "forget=classes:2", request_id="r2")
    assert led.open(MODEL, 3, "forget=ids:/srv/alice.txt", request_id="r3", refusal="refused")
    assert not led.open(MODEL, 1, "forget=classes:1", request_id="r1-again")  # the same request: a no-op
    with pytest.raises(errors.ActiveRequestError):
        led.open(MODEL, 1, "forget=classes:9", request_id="r1-other")  # refused: its transaction rolls back
    assert [s.version for s in led.dispatch(1)] == [1]
    assert not led.advance(MODEL, 1, "r1", expect=("running",), to="succeeded")  # no change, no event
    assert led.advance(MODEL, 1, "r1", expect=("queued",), to="running")
    assert led.advance(MODEL, 1, "r1", expect=("running",), to="succeeded", fields={"result_version": f"{MODEL}/9"})
    assert _events(led) == [
        ("r1", "submitted", "queued", False),
        ("r2", "submitted", "queued", False),
        ("r3", "submitted", "failed", False),
        ("r3", "finished", "failed", False),  # refused: final at once, never ran
        ("r1", "admitted", "queued", True),  # its wait since submitted
        ("r1", "running", "running", False),
        ("r1", "finished", "succeeded", True),  # its run time since running
    ]
    with led.engine.connect() as conn:  # the request's value (an ID file's path) is not copied into the events
        rows = conn.execute(sa.select(events.events_table)).all()
    assert not any("alice" in str(value) for row in rows for value in row)


def test_metrics_show_the_ledger_as_it_is_now(led):
    for version in (1, 2, 3):
        led.open(MODEL, version, f"forget=classes:{version}", request_id=f"r{version}")
    led.open(MODEL, 4, "forget=bogus", request_id="r4", refusal="refused")
    led.dispatch(2)
    led.advance(MODEL, 1, "r1", expect=("queued",), to="running")
    now = _scrape(led, max_jobs=2)
    assert {key: now[key] for key in (
        "mlflow_unlearn_queue_depth", "mlflow_unlearn_requests_admitted", "mlflow_unlearn_requests_running",
        "mlflow_unlearn_job_slots", "mlflow_unlearn_requests_submitted_total", "mlflow_unlearn_launcher_deaths_total",
        "mlflow_unlearn_wait_seconds_count")} == {
        "mlflow_unlearn_queue_depth": 1, "mlflow_unlearn_requests_admitted": 1, "mlflow_unlearn_requests_running": 1,
        "mlflow_unlearn_job_slots": 2, "mlflow_unlearn_requests_submitted_total": 4,
        "mlflow_unlearn_launcher_deaths_total": 0, "mlflow_unlearn_wait_seconds_count": 2}
    assert now['mlflow_unlearn_requests_finished_total{status="failed"}'] == 1
    assert "mlflow_unlearn_run_seconds_count" not in str(now)  # nothing has run to its end
    led.advance(MODEL, 1, "r1", expect=("running",), to="failed", fields={"error": "x"})
    led.advance(MODEL, 2, "r2", expect=("queued",), to="failed", fields={"error": "refused by the pre-flight"})
    later = _scrape(led, max_jobs=2)
    assert later['mlflow_unlearn_requests_finished_total{status="failed"}'] == 3
    assert later['mlflow_unlearn_run_seconds_count{status="failed"}'] == 1  # only r1 ran
    assert later["mlflow_unlearn_queue_depth"] == 1 and later["mlflow_unlearn_requests_running"] == 0
    assert not any(MODEL in key or "r1" in key for key in later)  # no model, version or request labels


def test_a_new_final_status_is_a_label_without_code_changes(led):
    """Statuses are the ledger's strings: a final status this module has never heard of is counted under its name."""
    led.open(MODEL, 1, "forget=classes:1", request_id="r1")
    led.dispatch(1)
    led.advance(MODEL, 1, "r1", expect=("queued",), to="running")
    assert led.advance(MODEL, 1, "r1", expect=("running",), to="cancelled")
    now = _scrape(led)
    assert now['mlflow_unlearn_requests_finished_total{status="cancelled"}'] == 1
    assert now['mlflow_unlearn_run_seconds_count{status="cancelled"}'] == 1
    assert now["mlflow_unlearn_requests_running"] == 0


def test_cancels_and_deadlines_are_outcomes(led):
    """``Ledger.stop`` (a cancel, a deadline) writes its event like every other final change."""
    led.open(MODEL, 1, "forget=classes:1", request_id="r1")
    led.open(MODEL, 2, "forget=classes:2", request_id="r2")
    led.dispatch(1)
    led.advance(MODEL, 1, "r1", expect=("queued",), to="running")
    assert led.stop(MODEL, 1, to="timed_out", reason="past its deadline")[0]
    assert led.stop(MODEL, 2, to="cancelled", reason="cancelled", by="alice")[0]  # still waiting
    assert not led.stop(MODEL, 2, to="cancelled", reason="again", by="bob")[0]  # no change, no event
    now = _scrape(led)
    assert now['mlflow_unlearn_requests_finished_total{status="timed_out"}'] == 1
    assert now['mlflow_unlearn_requests_finished_total{status="cancelled"}'] == 1
    assert now['mlflow_unlearn_run_seconds_count{status="timed_out"}'] == 1  # it ran until its deadline
    assert 'mlflow_unlearn_run_seconds_count{status="cancelled"}' not in now  # it never ran
    assert now["mlflow_unlearn_queue_depth"] == 0 and now["mlflow_unlearn_requests_running"] == 0
    assert not any("alice" in key for key in now)


def test_histograms_bucket_the_measured_durations(led, monkeypatch):
    clock = {"ms": 1_000_000}
    monkeypatch.setattr(events, "_now_ms", lambda: clock["ms"])
    led.open(MODEL, 1, "forget=classes:1", request_id="r1")
    clock["ms"] += 42_000  # waited 42 s
    led.dispatch(1)
    led.advance(MODEL, 1, "r1", expect=("queued",), to="running")
    clock["ms"] += 3_700_000  # ran 1 h 1 min 40 s
    led.advance(MODEL, 1, "r1", expect=("running",), to="succeeded")
    now = _scrape(led)
    assert now['mlflow_unlearn_wait_seconds_bucket{le="30"}'] == 0
    assert now['mlflow_unlearn_wait_seconds_bucket{le="60"}'] == 1
    assert now["mlflow_unlearn_wait_seconds_sum"] == pytest.approx(42)
    assert now['mlflow_unlearn_run_seconds_bucket{le="3600",status="succeeded"}'] == 0
    assert now['mlflow_unlearn_run_seconds_bucket{le="7200",status="succeeded"}'] == 1
    assert now['mlflow_unlearn_run_seconds_bucket{le="+Inf",status="succeeded"}'] == 1
    assert now['mlflow_unlearn_run_seconds_sum{status="succeeded"}'] == pytest.approx(3700)


def test_folding_old_events_bounds_the_table_and_keeps_every_count(led):
    for version in (1, 2, 3):
        led.open(MODEL, version, f"forget=classes:{version}", request_id=f"r{version}")
    led.dispatch(2)
    for version in (1, 2):
        led.advance(MODEL, version, f"r{version}", expect=("queued",), to="running")
    led.advance(MODEL, 1, "r1", expect=("running",), to="succeeded")
    before = _scrape(led)
    assert led.fold_events(now_ms=int(time.time() * 1000)) == 0  # nothing is old yet
    later_ms = int((time.time() + (events.KEEP_DAYS + 1) * DAY_S) * 1000)
    recorded = len(_events(led))  # 3 submitted, 2 admitted, 2 running, 1 finished
    assert led.fold_events(now_ms=later_ms) == recorded == 8
    assert _events(led) == []
    assert _scrape(led) == before  # the counters and histograms did not move
    # the admission and run time of requests whose earlier events were folded are still counted
    led.advance(MODEL, 2, "r2", expect=("running",), to="succeeded")
    after = _scrape(led)
    assert after['mlflow_unlearn_requests_finished_total{status="succeeded"}'] == 2
    assert after['mlflow_unlearn_run_seconds_count{status="succeeded"}'] == 1  # r2's running event was folded
    assert led.fold_events(now_ms=later_ms + DAY_S * 1000 * 8) == 1
    assert _scrape(led) == after


def test_a_dead_launchers_lease_is_released_once(led):
    """Two recoveries (two server workers) that both saw the same dead lease: one replaces the launcher."""
    led.open(MODEL, 1, "forget=classes:1", request_id="r1")
    led.dispatch(1)
    dead = ledger.lease_value(DEAD_PID)
    led.set_fields(MODEL, 1, "r1", {"lease": dead})
    assert led.release_dead_lease(MODEL, 1, "r1", dead) is True
    assert led.release_dead_lease(MODEL, 1, "r1", dead) is False
    assert led.read(MODEL, 1).lease is None
    assert _scrape(led)["mlflow_unlearn_launcher_deaths_total"] == 1


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """One SQLite registry of MLflow (the versions whose tags the scheduler mirrors), shared by the module."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    root = tmp_path_factory.mktemp("metrics-registry")
    store = SqlAlchemyStore(f"sqlite:///{root}/registry.db")
    store.create_registered_model(MODEL)
    for _ in range(6):
        store.create_model_version(MODEL, "file:///nowhere")
    yield store
    store.engine.dispose()


def _scheduler(store, log_dir: Path, retention_days: int = 30) -> scheduler.Scheduler:
    from mlflow_unlearn_plugins.mirror import StoreTags

    uri = str(store.engine.url)
    plugin_settings = PluginSettings(launcher=LauncherSettings(log_dir=str(log_dir), max_jobs=1,
                                                               log_retention_days=retention_days))
    return scheduler.Scheduler(ledger.Ledger(store.engine), StoreTags(store), plugin_settings, ledger_uri=uri,
                               mirror_uri=uri, job_uris=lambda: (uri, uri))


def test_recovery_replaces_a_dead_launcher_and_counts_it(registry, tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(scheduler, "start_launcher", lambda *args, **kwargs: started.append(args[3]) or DEAD_PID)
    sched = _scheduler(registry, tmp_path / "logs")
    led = sched.ledger
    led.open(MODEL, 1, "forget=classes:1", request_id="dead-launcher")
    sched.dispatch()  # admitted: its launcher (a dead PID here) holds the provisional lease
    assert started == [1] and not ledger.lease_alive(led.read(MODEL, 1).lease, scheduler.LAUNCHER_MARKER)
    before = _scrape(led)["mlflow_unlearn_launcher_deaths_total"]
    sched.recover()
    assert started == [1, 1]  # a new launcher for the request
    assert _scrape(led)["mlflow_unlearn_launcher_deaths_total"] == before + 1
    led.advance(MODEL, 1, "dead-launcher", expect=ledger.ACTIVE, to="failed", fields={"error": "x"})


def _log(folder: Path, request_id: str, age_days: float) -> Path:
    path = folder / f"{request_id}.log"
    path.write_text("launcher output\n")
    stamp = time.time() - age_days * DAY_S
    os.utime(path, (stamp, stamp))
    return path


def test_recovery_deletes_the_expired_logs_of_requests_that_are_not_active(registry, tmp_path, monkeypatch):
    monkeypatch.setattr(scheduler, "start_launcher", lambda *args, **kwargs: DEAD_PID)
    monkeypatch.setattr(retention, "_last", {})
    logs = tmp_path / "logs"
    logs.mkdir()
    sched = _scheduler(registry, logs, retention_days=30)
    led = sched.ledger
    active_id, final_id = "a" * 32, "f" * 32
    led.open(MODEL, 2, "forget=classes:2", request_id=active_id)  # queued, active however old its log
    led.open(MODEL, 3, "forget=classes:3", request_id=final_id)
    led.dispatch(1)
    led.advance(MODEL, 3, final_id, expect=ledger.ACTIVE, to="failed", fields={"error": "x"})
    kept = [_log(logs, active_id, 45), _log(logs, "b" * 32, 29), logs / "notes.log", logs / "forget-requests"]
    kept[2].write_text("not a request's log")
    os.utime(kept[2], (0, 0))
    kept[3].mkdir()
    expired = [_log(logs, final_id, 31), _log(logs, "c" * 32, 400)]  # final; a request no longer in the ledger
    sched.recover()
    assert [p.exists() for p in kept] == [True] * 4
    assert [p.exists() for p in expired] == [False, False]
    # a pass at most every EVERY_S per process; 0 days keeps every log
    again = _log(logs, "d" * 32, 90)
    sched.recover()
    assert again.exists()
    assert retention.apply(led, logs, 0, force=True) == retention.Pruned(0, 0)
    assert again.exists()
    assert retention.apply(led, logs, 30, force=True).logs == 1 and not again.exists()
    led.advance(MODEL, 2, active_id, expect=ledger.ACTIVE, to="failed", fields={"error": "x"})


@pytest.mark.parametrize("value", ["-1", "thirty", "1.5", "true"])
def test_a_bad_log_retention_is_refused_in_one_line(value):
    with pytest.raises(ValueError, match="MLFLOW_UNLEARN_LOG_RETENTION_DAYS") as info:
        settings.read_settings({"MLFLOW_UNLEARN_LOG_RETENTION_DAYS": value})
    assert "\n" not in str(info.value) and "non-negative int" in str(info.value)


def test_the_log_retention_setting():
    assert settings.read_settings({}).launcher.log_retention_days == 30
    assert settings.read_settings({"MLFLOW_UNLEARN_LOG_RETENTION_DAYS": " 0 "}).launcher.log_retention_days == 0
    loaded = settings.read_settings({"MLFLOW_UNLEARN_LOG_RETENTION_DAYS": "7"})
    assert PluginSettings.from_json(loaded.to_json()).launcher.log_retention_days == 7


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[str]:
    """Make the SQLite file ``path`` refuse writes to new connections, as root too (root ignores file modes: the
    file is made immutable); yields how. A directory in place of the database's journal refuses every connection
    where ``chattr`` is not allowed."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o444)
        try:
            yield "mode 0444"
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        try:
            yield "immutable"
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        return
    journal = Path(f"{path}-journal")
    journal.mkdir()
    try:
        yield "journal"
    finally:
        journal.rmdir()


def test_readiness_fails_in_one_line_when_the_database_cannot_be_written(led, tmp_path):
    ready = health.Readiness(lambda: led, LauncherSettings(log_dir=str(tmp_path / "logs")))
    assert ready.reason() is None
    with unwritable(tmp_path / "plugin.db") as how:
        reason = ready.reason()
    expected = "the registry database's files cannot be written" if how == "journal" else \
        "the registry database is read-only"
    assert reason == expected, how
    assert ready.reason() is None  # writable again
    assert _events(led) == []  # the probe changed nothing


def test_readiness_of_a_database_that_cannot_be_opened(tmp_path):
    (tmp_path / "gone.db").mkdir()  # a directory where the database file should be
    engine = ledger.connect(f"sqlite:///{tmp_path}/gone.db")
    reason = health.Readiness(lambda: ledger.Ledger(engine), LauncherSettings(log_dir=str(tmp_path))).reason()
    assert reason == "the registry database's files cannot be written"

    def store_that_cannot_open():
        raise RuntimeError(f"cannot open {tmp_path}/registry.db: [SQL: SELECT 1]")

    reason = health.Readiness(store_that_cannot_open, LauncherSettings(log_dir=str(tmp_path))).reason()
    assert reason == "the registry database cannot be written (RuntimeError)"
    assert not any(word in reason for word in SQL_OR_PATH)


def test_readiness_fails_when_a_launcher_cannot_start(led, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    assert health.probe_launcher(LauncherSettings(log_dir=str(blocker / "logs"))) == (
        "the launcher cannot start: its log directory (MLFLOW_UNLEARN_LOG_DIR) cannot be written")
    logs = LauncherSettings(log_dir=str(tmp_path / "logs"))
    assert health.probe_launcher(logs, executable=str(tmp_path / "no-python")) == (
        "the launcher cannot start: the server's Python executable cannot be run")
    assert health.probe_launcher(logs, executable="/bin/false") == (
        "the launcher cannot start: the server's Python does not find mlflow_unlearn_plugins.launcher")
    assert health.probe_launcher(logs, executable=sys.executable) is None
    assert list((tmp_path / "logs").iterdir()) == []  # the probe file is gone
    # the launcher check is reused for LAUNCHER_CHECK_S seconds, then made again
    ready = health.Readiness(lambda: led, logs, executable=sys.executable)
    assert ready.reason() is None
    ready.executable = "/bin/false"
    assert ready.reason() is None
    monkeypatch.setattr(health, "LAUNCHER_CHECK_S", 0.0)
    assert ready.reason() == "the launcher cannot start: the server's Python does not find " \
                             "mlflow_unlearn_plugins.launcher"


@pytest.mark.parametrize(("message", "reason"), [
    ("(sqlite3.OperationalError) attempt to write a readonly database\n[SQL: UPDATE mlflow_unlearn_queue ...]",
     "the registry database is read-only"),
    ("(psycopg2.OperationalError) connection to server at \"db.internal\" (10.0.0.5), port 5432 failed: Connection "
     "refused", "the registry database cannot be reached"),
    ("(psycopg.errors.ReadOnlySqlTransaction) cannot execute UPDATE in a read-only transaction",
     "the registry database is read-only"),
    ("(sqlite3.OperationalError) database is locked", "the registry database is locked by another writer"),
    ("(sqlite3.OperationalError) unable to open database file /srv/mlflow/registry.db",
     "the registry database's files cannot be written"),
    ("(psycopg2.errors.UndefinedTable) relation \"mlflow_unlearn_queue\" does not exist",
     "the registry database lacks the plugin's tables"),
], ids=["sqlite-read-only", "postgres-down", "postgres-read-only", "locked", "file", "no-table"])
def test_database_reasons_carry_no_sql_path_or_host(message, reason):
    error = sa.exc.OperationalError("UPDATE mlflow_unlearn_queue SET next_seq=?", (1,), Exception(message))
    assert health.database_reason(error) == reason
    assert not any(word in reason for word in (*SQL_OR_PATH, "db.internal", "10.0.0.5"))


def test_events_metrics_and_readiness_on_postgresql(tmp_path):
    """The same on a private PostgreSQL cluster: events, metrics, a read-only database (a real PostgreSQL setting)
    and a stopped server, which the readiness probe reports at once."""
    from pg_cluster import PostgresCluster, binaries_or_skip

    cluster = PostgresCluster(binaries_or_skip())
    cluster.start()
    engine = None
    try:
        uri = cluster.create_database("observed")
        engine = ledger.connect(uri)
        led = ledger.Ledger(engine)
        ready = health.Readiness(lambda: led, LauncherSettings(log_dir=str(tmp_path / "logs")))
        assert ready.reason() is None  # the plugin's tables are created by the first check
        led.open(MODEL, 1, "forget=classes:1", request_id="r1")
        led.open(MODEL, 2, "forget=classes:2", request_id="r2")
        led.dispatch(1)
        led.advance(MODEL, 1, "r1", expect=("queued",), to="running")
        led.advance(MODEL, 1, "r1", expect=("running",), to="succeeded")
        now = _scrape(led)
        assert now["mlflow_unlearn_queue_depth"] == 1 and now["mlflow_unlearn_requests_submitted_total"] == 2
        assert now['mlflow_unlearn_run_seconds_count{status="succeeded"}'] == 1
        assert led.fold_events(now_ms=int((time.time() + 8 * DAY_S) * 1000)) == 5
        assert _scrape(led) == now
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER DATABASE observed SET default_transaction_read_only = on"))
        assert ready.reason() == "the registry database is read-only"  # a new connection sees the setting
        with engine.begin() as conn:
            conn.execute(sa.text("SET TRANSACTION READ WRITE"))
            conn.execute(sa.text("ALTER DATABASE observed SET default_transaction_read_only = off"))
        assert ready.reason() is None
        cluster.stop()
        started = time.monotonic()
        assert ready.reason() == "the registry database cannot be reached"
        assert time.monotonic() - started < 10  # no retries before the answer
    finally:
        if engine is not None:
            engine.dispose()
        cluster.stop()
