"""Metrics and readiness against real servers (issue 29, item 4): ``mlflow server --app-name unlearn`` with two
workers and one job slot, and ``mlflow-unlearn-serve``.

One server is shared by the module, in this order:

1. idle: ``/unlearn/health`` answers ``OK`` and ``/unlearn/metrics`` zeros;
2. three requests: one runs, one waits for the slot, one is refused when set; the metrics show exactly that, from
   either worker; the running request's launcher is killed, and recovery's replacement is counted as a launcher
   death; at the end the job has succeeded, the waiting request has been admitted (after a longer wait than the
   first's) and refused by its launcher's pre-flight (no job: one job per module keeps it short), and one run time
   is observed;
3. the registry database made read-only (as root: immutable), then the launchers' log directory made unusable:
   ``/unlearn/health`` answers 503 with one line that names neither a path nor SQL, and 200 again once repaired,
   while MLflow's own ``/health`` (liveness) stays 200;
4. ``mlflow-unlearn-serve`` against that server: ``/metrics`` counts a refused delivery, ``/health`` fails when its
   state database is read-only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from processes import request_pids
from test_plugin_metrics import SQL_OR_PATH, samples, unwritable
from test_plugin_server import (  # noqa: F401  (parent is a fixture used by name)
    MODEL,
    Server,
    _client,
    _free_port,
    _kill_if_ours,
    _new_version,
    _request,
    _warm_up,
    end_processes,
    leftover_processes,
    parent,
)

from mlflow_unlearn.tracking import vocabulary as vocab

pytestmark = pytest.mark.slow

JOB_TIMEOUT_S = 300
SECRET = "metrics-webhook-secret"
REFUSED = "forget=classes:3; method=no-such-method"
#: A request that waits, is admitted, and is refused by its launcher's pre-flight (digits has classes 0-9).
NO_SUCH_CLASS = "forget=classes:42; method=finetune"


@pytest.fixture(scope="module")
def server(tmp_path_factory, installed_site) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("metrics-server"), installed_site, max_jobs=1)
    srv.args = ["--app-name", "unlearn", "--workers", "2"]
    (srv.allowed / "fast.yaml").write_text(
        "epochs: 1\ngate: {forget_tolerance: 100, max_retain_drop: 100, max_test_drop: 100}\n")
    srv.start()
    for _ in range(3):  # each worker imports the engine at its first parsed request
        _warm_up(srv)
    yield srv
    leftovers = leftover_processes(srv)
    srv.stop()
    end_processes(leftovers)


def _scrape(srv: Server) -> dict[str, float]:
    answer = requests.get(f"{srv.url}/unlearn/metrics", timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(answer.text)


def _scrapes(srv: Server, n: int = 4) -> dict[str, float]:
    """``n`` scrapes (spread over the server's workers) that must all agree; their common answer."""
    answers = [_scrape(srv) for _ in range(n)]
    assert all(answer == answers[0] for answer in answers), answers
    return answers[0]


def _health(url: str) -> tuple[int, str]:
    answer = requests.get(url, timeout=60)
    return answer.status_code, answer.text


def _set_tag(srv: Server, version: str, value: str, status: int = 200) -> None:
    answer = requests.post(f"{srv.url}/api/2.0/mlflow/model-versions/set-tag", timeout=300, json={
        "name": MODEL, "version": version, "key": vocab.REQUEST_TAG, "value": value})
    assert answer.status_code == status, answer.text


def _tags(srv: Server, version: str) -> dict[str, str]:
    return _client(srv).get_model_version(MODEL, version).tags


def _wait_for(what: str, check, timeout: float = JOB_TIMEOUT_S, srv: Server | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    pytest.fail(f"{what} not seen in {timeout} s" + (f"\n{srv.log_tail()}" if srv else ""))


def test_an_idle_server_is_ready_and_counts_nothing(server):
    assert _health(f"{server.url}/unlearn/health") == (200, "OK\n")
    assert _health(f"{server.url}/health")[0] == 200
    idle = _scrapes(server)
    assert idle["mlflow_unlearn_job_slots"] == 1
    for name in ("queue_depth", "requests_admitted", "requests_running", "requests_submitted_total",
                 "launcher_deaths_total", "wait_seconds_count"):
        assert idle[f"mlflow_unlearn_{name}"] == 0, name
    assert not [key for key in idle if key.startswith("mlflow_unlearn_requests_finished_total")]


def test_metrics_follow_requests_through_the_queue_a_launcher_death_and_the_end(server, parent):  # noqa: F811
    first, second, refused = parent.version, _new_version(server, parent), _new_version(server, parent)
    for version, value, status in ((first, _request(server), 200), (second, NO_SUCH_CLASS, 200),
                                   (refused, REFUSED, 400)):
        _set_tag(server, version, value, status)
    _wait_for("one request running and one waiting", lambda: (
        (tags := [_tags(server, v) for v in (first, second)])[0].get(vocab.STATUS_TAG) == "running"
        and "job" in request_pids(server.registry_uri, MODEL).get(int(first), {})
        and tags[1].get(vocab.QUEUE_POSITION_TAG) == "1" and tags), srv=server)
    busy = _scrapes(server)
    assert {key: busy[f"mlflow_unlearn_{key}"] for key in (
        "queue_depth", "requests_admitted", "requests_running", "requests_submitted_total", "wait_seconds_count",
        "launcher_deaths_total")} == {
        "queue_depth": 1, "requests_admitted": 0, "requests_running": 1, "requests_submitted_total": 3,
        "wait_seconds_count": 1, "launcher_deaths_total": 0}
    assert busy['mlflow_unlearn_requests_finished_total{status="failed"}'] == 1  # the refused one
    assert _tags(server, refused)[vocab.STATUS_TAG] == "failed"

    # the running request's launcher dies (its job goes on): recovery starts another, and counts the death
    launcher = request_pids(server.registry_uri, MODEL)[int(first)]["launcher"]
    _kill_if_ours(launcher, "mlflow_unlearn_plugins.launcher")
    _wait_for("the launcher's death in the metrics", lambda: (
        _tags(server, first) and _scrape(server)["mlflow_unlearn_launcher_deaths_total"] == 1), srv=server)

    ended = [_wait_for(f"the end of {MODEL}/{version}", lambda v=version: (  # status and reason (two tag writes)
        (t := _tags(server, v)).get(vocab.STATUS_TAG) in ("succeeded", "failed")
        and (vocab.RESULT_VERSION_TAG in t or vocab.ERROR_TAG in t) and t), srv=server)
        for version in (first, second)]
    assert ended[0][vocab.STATUS_TAG] == "succeeded", ended[0].get(vocab.ERROR_TAG)
    assert ended[1][vocab.STATUS_TAG] == "failed" and "42" in ended[1][vocab.ERROR_TAG], ended[1]
    done = _scrapes(server)
    assert {key: done[f"mlflow_unlearn_{key}"] for key in (
        "queue_depth", "requests_admitted", "requests_running", "requests_submitted_total", "wait_seconds_count",
        "launcher_deaths_total")} == {
        "queue_depth": 0, "requests_admitted": 0, "requests_running": 0, "requests_submitted_total": 3,
        "wait_seconds_count": 2, "launcher_deaths_total": 1}
    assert done['mlflow_unlearn_requests_finished_total{status="succeeded"}'] == 1
    assert done['mlflow_unlearn_requests_finished_total{status="failed"}'] == 2
    # the first was admitted at once; the second waited for the first's whole job (over 5 s)
    assert done['mlflow_unlearn_wait_seconds_bucket{le="1"}'] == 1
    assert done['mlflow_unlearn_wait_seconds_bucket{le="5"}'] == 1
    run_s = done['mlflow_unlearn_run_seconds_sum{status="succeeded"}']
    assert done['mlflow_unlearn_run_seconds_count{status="succeeded"}'] == 1 and run_s > 5
    assert 'mlflow_unlearn_run_seconds_count{status="failed"}' not in done  # refused before its job
    assert done["mlflow_unlearn_wait_seconds_sum"] > run_s  # the second waited for the whole job
    print(f"\nwait {done['mlflow_unlearn_wait_seconds_sum']:.1f} s (sum of 2 requests), job {run_s:.1f} s")


def _answers(url: str, n: int = 4) -> list[tuple[int, str]]:
    return [_health(url) for _ in range(n)]


def _assert_one_line_without_internals(body: str, server: Server) -> None:
    assert body.endswith("\n") and body.count("\n") == 1, body
    assert not any(word in body for word in (*SQL_OR_PATH, str(server.root))), body


def test_readiness_fails_while_the_registry_database_cannot_be_written(server):
    url = f"{server.url}/unlearn/health"
    with unwritable(server.root / "registry.db") as how:
        failing = _answers(url)
        liveness = _health(f"{server.url}/health")
    expected = "the registry database's files cannot be written" if how == "journal" else \
        "the registry database is read-only"
    assert failing == [(503, expected + "\n")] * 4, (how, failing)  # from either worker
    _assert_one_line_without_internals(failing[0][1], server)
    assert liveness[0] == 200  # MLflow's own /health only says that the process answers
    assert _answers(url) == [(200, "OK\n")] * 4


def test_readiness_fails_while_a_launcher_cannot_start(server):
    from mlflow_unlearn_plugins.health import LAUNCHER_CHECK_S

    url, logs = f"{server.url}/unlearn/health", server.root / "logs"
    moved = server.root / "logs-moved"
    logs.rename(moved)
    logs.write_text("a file where the launchers' log directory should be")
    try:
        failing = _wait_for("503 from both workers", lambda: (
            (answers := _answers(url))[0][0] == 503 and all(a == answers[0] for a in answers) and answers),
            timeout=LAUNCHER_CHECK_S * 3)
    finally:
        logs.unlink()
        moved.rename(logs)
    assert failing[0] == (503, "the launcher cannot start: its log directory (MLFLOW_UNLEARN_LOG_DIR) cannot be "
                               "written\n")
    _assert_one_line_without_internals(failing[0][1], server)
    _wait_for("200 again", lambda: _answers(url) == [(200, "OK\n")] * 4, timeout=LAUNCHER_CHECK_S * 3)


@pytest.fixture()
def serve(server, tmp_path) -> Iterator[tuple[str, Path]]:
    """``mlflow-unlearn-serve`` against the module's server; yields its URL and its state database."""
    port, state_db = _free_port(), tmp_path / "state.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "_MLFLOW_"))}
    env.update(MLFLOW_UNLEARN_WEBHOOK_SECRET=SECRET, MLFLOW_UNLEARN_DIGEST_KEY=os.environ["MLFLOW_UNLEARN_DIGEST_KEY"],
               MLFLOW_UNLEARN_ALLOWED_ROOTS=str(server.allowed), MLFLOW_UNLEARN_LOG_DIR=str(tmp_path / "logs"),
               MLFLOW_UNLEARN_MAX_JOBS="3", OMP_NUM_THREADS="1", PYTHONPATH=str(server.site))
    with open(tmp_path / "serve.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow_unlearn_plugins.webhook", "--tracking-uri", server.url,
                                 "--state-db", str(state_db), "--port", str(port)], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                return requests.get(f"{url}/health", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        _wait_for("mlflow-unlearn-serve's health", up, timeout=180)
        yield url, state_db
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _deliver(url: str, version: str, value: str) -> requests.Response:
    from mlflow_unlearn_plugins.webhook import signature

    body = json.dumps({"entity": "model_version_tag", "action": "set", "timestamp": "now", "data": {
        "name": MODEL, "version": version, "key": vocab.REQUEST_TAG, "value": value}}).encode()
    delivery, stamp = str(uuid.uuid4()), str(int(time.time()))
    return requests.post(f"{url}/webhook", data=body, timeout=120, headers={
        "X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": stamp, "Content-Type": "application/json",
        "X-MLflow-Signature": signature(SECRET, delivery, stamp, body)})


def test_serve_answers_metrics_of_its_own_requests_and_an_honest_health(serve, server, parent):  # noqa: F811
    url, state_db = serve
    before = samples(requests.get(f"{url}/metrics", timeout=60).text)
    assert before["mlflow_unlearn_requests_submitted_total"] == 0 and before["mlflow_unlearn_job_slots"] == 3
    answer = _deliver(url, parent.version, REFUSED)
    assert answer.status_code == 200 and answer.json()["message"].startswith("refused"), answer.text
    metrics = requests.get(f"{url}/metrics", timeout=60)
    assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    after = samples(metrics.text)
    assert after["mlflow_unlearn_requests_submitted_total"] == 1
    assert after['mlflow_unlearn_requests_finished_total{status="failed"}'] == 1
    assert after["mlflow_unlearn_queue_depth"] == 0
    assert requests.get(f"{url}/health", timeout=60).json() == {"message": "OK"}
    with unwritable(state_db) as how:
        failing = requests.get(f"{url}/health", timeout=60)
    assert failing.status_code == 503, (how, failing.text)
    expected = "files cannot be written" if how == "journal" else "is read-only"
    assert failing.json() == {"message": f"the receiver's state database {expected}"}
    assert requests.get(f"{url}/health", timeout=60).status_code == 200
    assert requests.get(f"{url}/nothing-here", timeout=60).status_code == 404
