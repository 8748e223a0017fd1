"""Cancel and deadlines of registry requests, and refusals on the tag path answered 400 (issue 29, item 2 and
defect 8).

Fast, without a server: the ledger's compare-and-set between a cancel and a job that finishes at the same moment,
a launcher that finds its request cancelled after its job registered a result (the version goes), the store's
refusal to register a stopped request's result, and a real schema-1 database (one request queued, one running)
migrated to schema 2 and recovered.

Through one real ``mlflow server`` (plugin store on SQLite, ``MLFLOW_UNLEARN_MAX_JOBS=1``,
``MLFLOW_UNLEARN_MAX_RUN_S=3600``): a refused request on the tag path answers 400 with the reason it records; a
timeout over the server's maximum is refused at submit; then one scenario of jobs that would run for hours
(``epochs: 100000``): a request with ``timeout=15s`` holds the slot while three wait; the second waiting one is
cancelled from the Python client (it leaves the queue); the first ends ``timed_out`` and the next is admitted; that
one is cancelled through the cancel tag while its job runs (its process group is gone within the grace period,
the next is admitted); the last is cancelled by the ``Cancel`` transition; cancelling twice does nothing and
cancelling a finished request is refused. No version is registered and no process is left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersionTag
from mlflow.exceptions import MlflowException
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore
from mlflow_unlearn_plugins import job, launcher, scheduler, watch
from mlflow_unlearn_plugins.ledger import SCHEMA_VERSION, V2_COLUMNS, Ledger
from mlflow_unlearn_plugins.process_group import WAKE_SIGNAL, group_members, wake_launcher
from mlflow_unlearn_plugins.registry_store import UnlearnRegistryStore
from mlflow_unlearn_plugins.request import SecurityPolicy
from mlflow_unlearn_plugins.settings import LauncherSettings, PluginSettings
from processes import request_pids
from test_plugin_server import (  # noqa: F401  (parent is a fixture used by name)
    MODEL,
    Server,
    _client,
    _new_version,
    _set_tag,
    _warm_up,
    parent,
)

import mlflow_unlearn
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.keys import read_digest_key

pytestmark = pytest.mark.slow

DEAD_PID = 2**22 + 7  # above the kernel's pid_max: no such process
GATE = "gate: {forget_tolerance: 100, max_retain_drop: 100, max_test_drop: 100}"


def _settings(tmp_path: Path) -> PluginSettings:
    return PluginSettings(policy=SecurityPolicy(allowed_roots=()), digest_key=read_digest_key(),
                          launcher=LauncherSettings(device="cpu", log_dir=str(tmp_path / "logs"), max_jobs=1))


@pytest.fixture()
def registry(tmp_path):
    """A SQLite registry with model ``m``, versions 1-3."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    stock = SqlAlchemyStore(uri)
    stock.create_registered_model("m")
    for _ in range(3):
        stock.create_model_version("m", "file:///nowhere")
    yield uri, stock
    stock.engine.dispose()


def test_a_cancel_and_a_finishing_job_race_through_one_compare_and_set(registry, tmp_path):
    uri, _ = registry
    ledger = Ledger(sa.create_engine(uri))
    for version, request_id in ((1, "r1"), (2, "r2")):
        assert ledger.open("m", version, "forget=classes:1", request_id=request_id, deadline_s=60)
    assert [s.version for s in ledger.dispatch(2)] == [1, 2]
    for version, request_id in ((1, "r1"), (2, "r2")):
        assert ledger.advance("m", version, request_id, expect=("queued",), to="running")
    # the cancel wins on version 1: the job's own final change then finds nothing to change
    stopped, before = ledger.stop("m", 1, to="cancelled", reason="cancelled by alice", by="alice")
    assert stopped and before.status == "running" and before.started_ms is not None
    assert not ledger.advance("m", 1, "r1", expect=("running",), to="succeeded", fields={"result_version": "m/9"})
    state = ledger.read("m", 1)
    assert (state.status, state.cancelled_by, state.result_version, state.lease) == ("cancelled", "alice", None, None)
    assert state.cancelled_at and state.finished_ms and state.tags()[vocab.CANCELLED_AT_TAG].endswith("Z")
    # twice: no change, the first canceller stays recorded
    assert ledger.stop("m", 1, to="cancelled", reason="again", by="bob") == (False, state)
    # the job wins on version 2: the cancel is too late
    assert ledger.advance("m", 2, "r2", expect=("running",), to="succeeded", fields={"result_version": "m/9"})
    stopped, now = ledger.stop("m", 2, to="cancelled", reason="too late", by="bob")
    assert not stopped and now.status == "succeeded" and now.cancelled_by is None
    # a new request on a cancelled version starts afresh
    assert ledger.open("m", 1, "forget=classes:2", request_id="r3")
    fresh = ledger.read("m", 1)
    assert (fresh.status, fresh.cancelled_by, fresh.cancelled_at, fresh.deadline_s) == ("queued", None, None, None)


def test_a_launcher_that_finds_its_request_cancelled_deletes_the_result_it_registered(registry, tmp_path):
    """The job registered its result in the moment between the cancel's compare-and-set and the stop: the
    launcher's final change fails, and the version goes. The store refuses a stopped request's result outright."""
    uri, stock = registry
    settings = _settings(tmp_path)
    store = UnlearnRegistryStore("unlearn+" + uri, tracking_uri=uri, settings=settings)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run_id = client.create_run(client.create_experiment("requests")).info.run_id
    store.ledger.open("m", 1, "forget=classes:1", request_id="r1")
    store.ledger.dispatch(1)
    store.ledger.set_fields("m", 1, "r1", {"request_run_id": run_id})
    store.ledger.advance("m", 1, "r1", expect=("queued",), to="running")
    result = stock.create_model_version("m", "file:///result", run_id=run_id,
                                        tags=[ModelVersionTag(vocab.PARENT_TAG, "m/1")]).version
    client.set_tag(run_id, vocab.RESULT_VERSION_TAG, f"m/{result}")
    client.set_terminated(run_id, "FINISHED")
    assert store.scheduler.cancel("m", 1, by="alice").status == "cancelled"
    with pytest.raises(MlflowException, match="m/1 is cancelled; its job's result is not registered") as refused:
        store.create_model_version("m", "file:///late", run_id=run_id, tags=[ModelVersionTag(vocab.PARENT_TAG, "m/1")])
    assert refused.value.get_http_status_code() == 400

    launcher_job = job.Job(store.ledger, store.scheduler.tags, client, "m", 1, "r1", str(tmp_path / "r1.log"),
                           settings)
    launcher_job._finalize(None, run_id, True)
    assert sorted(int(mv.version) for mv in stock.search_model_versions("name='m'")) == [1, 2, 3]  # the result went
    tags = store.get_model_version("m", 1).tags
    assert tags[vocab.STATUS_TAG] == "cancelled" and tags[vocab.CANCELLED_BY_TAG] == "alice"
    assert vocab.RESULT_VERSION_TAG not in tags
    assert client.get_run(run_id).data.tags[vocab.STATUS_TAG] == "cancelled"
    # nothing to cancel: one line, HTTP 400; a version that does not exist: 404
    with pytest.raises(MlflowException, match=r"has no unlearning request to cancel$"):
        store.set_model_version_tag("m", 2, ModelVersionTag(vocab.CANCEL_TAG, "alice"))
    with pytest.raises(MlflowException, match="to name who cancels"):
        store.set_model_version_tag("m", 1, ModelVersionTag(vocab.CANCEL_TAG, "alice; drop table"))
    with pytest.raises(MlflowException, match="not found"):
        store.transition_model_version_stage("m", 99, "Cancel", False)


class _RunningJob:
    """A launched job as the launcher sees it (``mlflow.projects.SubmittedRun``): running until it is cancelled."""

    command_proc = None

    def __init__(self, run_id: str) -> None:
        self.run_id, self.cancelled = run_id, False

    def get_status(self) -> str:
        return "KILLED" if self.cancelled else "RUNNING"

    def cancel(self) -> None:
        self.cancelled = True


def test_a_watching_launcher_reads_its_row_only_when_woken_at_its_deadline_or_every_read_period(
        registry, tmp_path, monkeypatch):
    """While its job runs, a launcher polls the job every POLL_S but reads its request's row only when a cancel's
    wake signal came, when the deadline of its last read has passed, or every STOP_READ_S: the row reads were one
    per POLL_S, the launcher's largest share of database statements on SQLite."""
    uri, _ = registry
    monkeypatch.setattr(watch, "POLL_S", 0.02)
    settings = _settings(tmp_path)
    store = UnlearnRegistryStore("unlearn+" + uri, tracking_uri=uri, settings=settings)
    reads, real_read = [], store.ledger.read
    monkeypatch.setattr(store.ledger, "read", lambda *args: reads.append(args) or real_read(*args))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run_id = client.create_run(client.create_experiment("requests")).info.run_id

    def watch_job(version: int, *, read_period_s: float, cancel_at_s: float | None = None, wake: bool = False,
                  deadline_s: int | None = None) -> tuple[bool, float]:
        monkeypatch.setattr(watch, "STOP_READ_S", read_period_s)
        store.ledger.open("m", version, "forget=classes:1", request_id=f"r{version}", deadline_s=deadline_s)
        assert [state.version for state in store.ledger.dispatch(1)] == [version]
        watcher = job.Job(store.ledger, store.scheduler.tags, client, "m", version, f"r{version}",
                          str(tmp_path / "r.log"), settings)
        watcher.stops.listen()
        assert watcher._advance(("queued",), "running")
        reads.clear()

        def cancel() -> None:
            store.ledger.stop("m", version, to="cancelled", reason="cancelled by alice", by="alice")
            if wake:
                os.kill(os.getpid(), WAKE_SIGNAL)  # what the server does for a launcher on its host (wake_launcher)

        if cancel_at_s is not None:
            threading.Timer(cancel_at_s, cancel).start()
        submitted = _RunningJob(run_id)
        start = time.monotonic()
        stopped = watcher._watch(submitted, run_id, run_id)
        return stopped and submitted.cancelled, time.monotonic() - start

    try:
        # woken by the cancel: seen at the next poll, long before the read period
        stopped, took = watch_job(1, read_period_s=60, cancel_at_s=1.0, wake=True)
        assert stopped and 1.0 <= took < 10, took
        assert len(reads) <= 3, len(reads)  # the first read, the wake's, the mirror's: not one per poll (about 50)
        assert store.ledger.read("m", 1).status == "cancelled"
        # a cancel from another host (no signal): seen at the next read period
        stopped, took = watch_job(2, read_period_s=0.5, cancel_at_s=1.0)
        assert stopped and 1.0 <= took < 10, took
        assert 2 <= len(reads) <= 3 + int(took / 0.5), len(reads)
        # the deadline (1 s from admission) is known from the first read: no read until it has passed
        stopped, took = watch_job(3, read_period_s=60, deadline_s=1)
        assert stopped and 0.5 <= took < 10, took
        assert len(reads) <= 6, len(reads)  # the first, then the stop's own (recording timed_out, the mirrors)
        assert store.ledger.read("m", 3).status == "timed_out"
    finally:
        signal.signal(WAKE_SIGNAL, signal.SIG_DFL)


def test_wake_launcher_signals_only_a_launcher_on_this_host_that_claimed_its_lease(tmp_path):
    waiting = subprocess.Popen(  # the marker on its command line, like a launcher's
        [sys.executable, "-c", "import signal, sys, time\n"
         "signal.signal(signal.SIGUSR1, lambda *_: (print('woken', flush=True), sys.exit(0)))\n"
         "print('ready', flush=True)\ntime.sleep(60)", scheduler.LAUNCHER_MARKER],
        stdout=subprocess.PIPE, text=True)
    try:
        assert waiting.stdout.readline() == "ready\n"
        host, pid = socket.gethostname(), waiting.pid
        assert not wake_launcher(f"{host}|{pid}|1|spawned", scheduler.LAUNCHER_MARKER)  # no handler yet, maybe
        assert not wake_launcher(f"elsewhere|{pid}|1", scheduler.LAUNCHER_MARKER)
        assert not wake_launcher(f"{host}|{pid}|1", "another-marker")  # a reused PID is not signalled
        assert not wake_launcher(f"{host}|{DEAD_PID}|1", scheduler.LAUNCHER_MARKER)
        assert waiting.poll() is None
        assert wake_launcher(f"{host}|{pid}|1", scheduler.LAUNCHER_MARKER)
        assert waiting.stdout.readline() == "woken\n" and waiting.wait(10) == 0
    finally:
        waiting.kill()
        waiting.wait()


# -- schema version 1 -> 2 ----------------------------------------------------------------------------------------
def _v1_requests_table(metadata: sa.MetaData) -> sa.Table:
    """``mlflow_unlearn_requests`` as schema version 1 created it."""
    return sa.Table(
        "mlflow_unlearn_requests", metadata,
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("request", sa.Text), sa.Column("request_run_id", sa.String(64)), sa.Column("error", sa.Text),
        sa.Column("result_version", sa.String(32)), sa.Column("lease", sa.String(256)),
        sa.Column("job", sa.String(256)), sa.Column("queue_seq", sa.BigInteger),
        sa.Column("row_version", sa.Integer, nullable=False), sa.Column("mirrored_version", sa.Integer, nullable=False),
        sa.Column("mirrored_tags", sa.Text), sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Index("mlflow_unlearn_requests_status", "status"),
    )


def test_a_schema_1_database_is_migrated_and_its_requests_recovered(registry, tmp_path, monkeypatch):
    """Schema 1 tables with one request running (its launcher died after its job registered a result) and one
    waiting: the new store adds the columns of schema 2, finalises the first and admits and runs the second."""
    uri, stock = registry
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.create_run(client.create_experiment(job.REQUESTS_EXPERIMENT),
                            tags={vocab.RESULT_VERSION_TAG: "m/3"})
    client.set_terminated(run.info.run_id, "FINISHED")
    engine = sa.create_engine(uri)
    metadata = sa.MetaData()
    requests_v1 = _v1_requests_table(metadata)
    queue = sa.Table("mlflow_unlearn_queue", metadata, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("next_seq", sa.BigInteger, nullable=False))
    schema = sa.Table("mlflow_unlearn_schema", metadata, sa.Column("id", sa.Integer, primary_key=True),
                      sa.Column("version", sa.Integer, nullable=False))
    metadata.create_all(engine)
    host, now = socket.gethostname(), int(time.time() * 1000)
    common = {"name": "m", "row_version": 1, "mirrored_version": 0, "updated_ms": now}
    with engine.begin() as conn:
        conn.execute(schema.insert().values(id=1, version=1))
        conn.execute(queue.insert().values(id=1, next_seq=5))
        conn.execute(requests_v1.insert().values(
            version=1, request_id="v1-running", status="running", request="forget=classes:1; method=finetune",
            request_run_id=run.info.run_id, lease=f"{host}|{DEAD_PID}|1", job=f"{host}|{DEAD_PID}", **common))
        conn.execute(requests_v1.insert().values(
            version=2, request_id="v1-queued", status="queued", request="forget=classes:2; method=finetune",
            queue_seq=5, **common))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what start_launcher gives a launcher process
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    launched = []

    def launcher_in_this_process(ledger_uri, mirror_uri, name, version, request_id, *, settings, **_):
        launched.append((int(version), request_id))
        launcher.main(["--ledger-uri", ledger_uri, "--mirror-uri", mirror_uri, "--name", name, "--version",
                       str(version), "--request-id", request_id, "--log", str(tmp_path / f"{request_id}.log"),
                       "--settings", settings.to_json()])
        return DEAD_PID

    def project_job(self, request, run_id):
        MlflowClient().set_tag(run_id, vocab.RESULT_VERSION_TAG, "m/3")
        MlflowClient().set_terminated(run_id, "FINISHED")
        return types.SimpleNamespace(run_id=run_id, get_status=lambda: "FINISHED")

    monkeypatch.setattr(scheduler, "start_launcher", launcher_in_this_process)
    monkeypatch.setattr(job.Job, "_preflight", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(job.Job, "_launch", project_job)
    store = UnlearnRegistryStore("unlearn+" + uri, tracking_uri=uri, settings=_settings(tmp_path))
    store.get_registered_model("m")  # the first registry call migrates and recovers

    with engine.connect() as conn:
        assert conn.execute(sa.select(schema.c.version)).scalar_one() == SCHEMA_VERSION == 2
    assert set(V2_COLUMNS) <= {c["name"] for c in sa.inspect(engine).get_columns("mlflow_unlearn_requests")}
    assert launched == [(1, "v1-running"), (2, "v1-queued")]
    first, second = (store.ledger.read("m", v) for v in (1, 2))
    assert (first.status, first.result_version, first.deadline_s) == ("succeeded", "m/3", None)
    assert (second.status, second.request_id) == ("succeeded", "v1-queued")
    assert second.started_ms is not None and second.finished_ms >= second.started_ms
    assert store.get_model_version("m", 2).tags[vocab.STATUS_TAG] == "succeeded"
    engine.dispose()


# -- through a real server ----------------------------------------------------------------------------------------
MAX_RUN_S = 3600


@pytest.fixture(scope="module")
def server(tmp_path_factory, installed_site) -> Iterator[Server]:  # noqa: F811
    srv = Server(tmp_path_factory.mktemp("cancel-server"), installed_site, max_jobs=1)
    srv.env["MLFLOW_UNLEARN_MAX_RUN_S"] = str(MAX_RUN_S)
    (srv.allowed / "slow.yaml").write_text(f"epochs: 100000\n{GATE}\n")  # hours: stopped long before
    srv.start()
    _warm_up(srv)
    yield srv
    srv.stop()


def _slow(server: Server, extra: str = "") -> str:
    return f"forget=classes:3; method=finetune; onnx=false; config={server.allowed}/slow.yaml{extra}"


def _tags(server: Server, version: str) -> dict[str, str]:
    return _client(server).get_model_version(MODEL, version).tags


def _wait(server: Server, version: str, done, what: str, timeout: float = 300) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        tags = _tags(server, version)
        if done(tags):
            return tags
        time.sleep(0.3)
    pytest.fail(f"{MODEL}/{version}: not {what} after {timeout} s: {tags}\n{server.log_tail()}")


def _cancel_tag(server: Server, version: str, value: str) -> requests.Response:
    return requests.post(f"{server.url}/api/2.0/mlflow/model-versions/set-tag", timeout=60, json={
        "name": MODEL, "version": version, "key": vocab.CANCEL_TAG, "value": value})


def _processes_naming(markers: set[str]) -> dict[int, str]:
    """PID -> command line of every live process whose command line holds one of ``markers``."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and any(m in cmdline for m in markers):
            found[int(entry.name)] = cmdline[:200]
    return found


def _unlearn_job_in(members: dict[int, int]) -> bool:
    """Whether one of ``members`` is the project's ``unlearn`` entry point (``python -m mlflow_unlearn unlearn``)."""
    for pid in members:
        try:
            if b"mlflow_unlearn\0unlearn" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            pass
    return False


def test_a_refused_request_on_the_tag_path_answers_400_with_the_reason_it_records(server, parent):  # noqa: F811
    """Defect 8: the tag path answered HTTP 200 ``{}``; the create and transition paths answer 400."""
    version = _new_version(server, parent)
    response = _set_tag(server, version, "forget=classes:x; method=finetune")
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    tags = _tags(server, version)  # still recorded for the UI
    assert tags[vocab.STATUS_TAG] == "failed"
    assert body["message"] == f"Unlearning request refused: {tags[vocab.ERROR_TAG]}"
    assert "\n" not in body["message"]
    # cancelling a finished (refused) request is a one-line refusal
    refused = _cancel_tag(server, version, "alice")
    assert refused.status_code == 400 and refused.json()["message"].endswith(
        f"has already finished (failed); there is nothing to cancel (tag {vocab.CANCEL_TAG!r} cancels a queued or "
        "running one)"), refused.text


def test_a_timeout_over_the_servers_maximum_is_refused_at_submit(server, parent):  # noqa: F811
    version = _new_version(server, parent)
    response = _set_tag(server, version, _slow(server, "; timeout=2h"))
    assert response.status_code == 400, response.text
    assert response.json()["message"] == ("Unlearning request refused: the request's timeout=2h is longer than this "
                                          "server allows (1h, MLFLOW_UNLEARN_MAX_RUN_S); ask for at most that")
    assert _tags(server, version)[vocab.STATUS_TAG] == "failed"


@pytest.fixture(scope="module")
def scenario(server, parent):  # noqa: F811
    """One deadline and three cancels on a cap of one job slot (see the module docstring); what was seen."""
    late, first, second, third = (_new_version(server, parent) for _ in range(4))
    seen: dict = {"versions": (late, first, second, third)}
    assert _set_tag(server, late, _slow(server, "; timeout=15s")).status_code == 200
    for version in (first, second, third):
        assert _set_tag(server, version, _slow(server)).status_code == 200
    seen["positions"] = [_tags(server, v).get(vocab.QUEUE_POSITION_TAG) for v in (first, second, third)]

    # the Python client cancels a queued request: it leaves the queue at once
    seen["client"] = mlflow_unlearn.cancel_request(f"models:/{MODEL}/{second}", by="alice", tracking_uri=server.url,
                                                   registry_uri=server.url)
    seen["second"] = _tags(server, second)
    seen["third_position"] = _tags(server, third).get(vocab.QUEUE_POSITION_TAG)

    # the deadline: timed_out, and the next request takes the slot
    seen["late"] = _wait(server, late, lambda t: t.get(vocab.STATUS_TAG) == "timed_out", "timed out")

    # a running job cancelled through the tag: its process group goes
    _wait(server, first, lambda t: t.get(vocab.STATUS_TAG) == "running"
          and "job" in request_pids(server.registry_uri, MODEL).get(int(first), {}), "running")
    job_pid = request_pids(server.registry_uri, MODEL)[int(first)]["job"]
    deadline = time.time() + 120
    while not _unlearn_job_in(group_members(job_pid)) and time.time() < deadline:  # mlflow run started the job
        time.sleep(0.2)
    seen["group_before"] = group_members(job_pid)
    seen["job_seen"] = _unlearn_job_in(seen["group_before"])
    start = time.time()
    seen["cancel_answer"] = _cancel_tag(server, first, "bob")
    seen["first"] = _tags(server, first)
    while group_members(job_pid) and time.time() - start < 30:
        time.sleep(0.2)
    seen["group_after"], seen["stopped_in_s"] = group_members(job_pid), time.time() - start
    seen["again"] = _cancel_tag(server, first, "carol")
    seen["first_again"] = _tags(server, first)

    # the last one, admitted now, is cancelled by the transition
    _wait(server, third, lambda t: vocab.QUEUE_POSITION_TAG not in t, "admitted")
    seen["transition"] = requests.post(f"{server.url}/api/2.0/mlflow/model-versions/transition-stage", timeout=60,
                                       json={"name": MODEL, "version": third, "stage": "Cancel",
                                             "archive_existing_versions": False})
    seen["third"] = _tags(server, third)
    seen["late_again"] = _cancel_tag(server, late, "dave")

    # nothing of the four requests is left running: no launcher, no job
    markers = {t[key] for v in (late, first, second, third) for t in [_tags(server, v)]
               for key in (vocab.REQUEST_ID_TAG, vocab.REQUEST_RUN_TAG) if key in t}
    deadline = time.time() + 60
    while (left := _processes_naming(markers)) and time.time() < deadline:
        time.sleep(0.5)
    seen["left"] = left
    seen["children"] = [mv.version for mv in _client(server).search_model_versions(f"name='{MODEL}'")
                        if mv.tags.get(vocab.PARENT_TAG) in {f"{MODEL}/{v}" for v in seen["versions"]}]
    return seen


def test_a_queued_request_cancelled_from_python_leaves_the_queue(scenario):
    assert scenario["positions"] == ["1", "2", "3"]
    assert scenario["client"] == "cancelled"
    second = scenario["second"]
    assert second[vocab.STATUS_TAG] == "cancelled" and second[vocab.CANCELLED_BY_TAG] == "alice"
    assert vocab.QUEUE_POSITION_TAG not in second and second[vocab.CANCELLED_AT_TAG].endswith("Z")
    assert second[vocab.ERROR_TAG].startswith("cancelled by alice at ")
    assert scenario["third_position"] == "2"  # moved up


def test_a_request_past_its_deadline_ends_timed_out_and_frees_its_slot(scenario, server):
    late = scenario["late"]
    assert late[vocab.ERROR_TAG].startswith("stopped at its deadline: it held its job slot for longer than 15s")
    assert not {vocab.LEASE_TAG, vocab.JOB_TAG, vocab.CANCELLED_BY_TAG} & set(late)
    run = _client(server).get_run(late[vocab.REQUEST_RUN_TAG])
    assert run.info.status == "KILLED" and run.data.tags[vocab.STATUS_TAG] == "timed_out"
    assert scenario["late_again"].status_code == 400 and "already finished (timed_out)" in scenario[
        "late_again"].json()["message"]


def test_a_running_job_is_cancelled_through_the_tag_and_its_process_group_stops(scenario, server):
    assert scenario["cancel_answer"].status_code == 200, scenario["cancel_answer"].text
    assert scenario["job_seen"]  # the unlearn job (the group's leader, started by the launcher) was in the group
    assert scenario["group_after"] == {}, f"left: {scenario['group_after']}"
    print(f"\njob process group ({len(scenario['group_before'])} processes) gone {scenario['stopped_in_s']:.1f} s "
          "after the cancel")
    first = scenario["first"]
    assert first[vocab.STATUS_TAG] == "cancelled" and first[vocab.CANCELLED_BY_TAG] == "bob"
    assert not {vocab.LEASE_TAG, vocab.JOB_TAG, vocab.RESULT_VERSION_TAG} & set(first)
    assert scenario["again"].status_code == 200 and scenario["first_again"] == first  # twice: a no-op
    run = _client(server).get_run(first[vocab.REQUEST_RUN_TAG])
    assert run.info.status == "KILLED" and run.data.tags[vocab.STATUS_TAG] == "cancelled"


def test_the_cancel_transition_cancels_and_nothing_is_registered_or_left_running(scenario):
    assert scenario["transition"].status_code == 200, scenario["transition"].text
    third = scenario["third"]
    assert third[vocab.STATUS_TAG] == "cancelled" and third[vocab.CANCELLED_BY_TAG] == "unknown"
    assert scenario["children"] == []
    assert scenario["left"] == {}


def test_the_webhook_receiver_cancels_from_the_cancel_tag_and_removes_it(registry, tmp_path):
    """A stock server stores the cancel tag and sends its webhook; the receiver cancels and removes the tag."""
    from mlflow_unlearn_plugins.mirror import StoreTags
    from mlflow_unlearn_plugins.webhook import WebhookService

    uri, stock = registry
    service = WebhookService("secret", "http://127.0.0.1:9", tmp_path / "state.db")  # the server: the registry
    service.tags = service.scheduler.tags = StoreTags(stock)
    service.ledger.open("m", 1, "forget=classes:1", request_id="r1")
    stock.set_model_version_tag("m", 1, ModelVersionTag(vocab.CANCEL_TAG, "alice"))  # what the stock server stored
    assert service._cancel("m", 1, "alice") == (200, "cancelled by alice")
    tags = stock.get_model_version("m", 1).tags
    assert vocab.CANCEL_TAG not in tags and tags[vocab.STATUS_TAG] == "cancelled"
    assert tags[vocab.CANCELLED_BY_TAG] == "alice"
    assert service._cancel("m", 1, "bob") == (200, "cancelled by alice")  # twice: nothing changes
    status, message = service._cancel("m", 2, "bob")
    assert status == 409 and message == "Model version m/2 has no unlearning request to cancel"
    assert service._cancel("m", 1, "not a name!")[0] == 400
