"""The registry plugin on a real PostgreSQL: ``mlflow server --registry-store-uri unlearn+postgresql://...``.

A private cluster (:mod:`pg_cluster`: ``initdb`` into a temporary directory, 127.0.0.1 only, stopped by PID) holds
one database. Two ``mlflow server`` processes share it, as two replicas behind a load balancer would: both point
their tracking and registry stores at it, and both run the plugin. The helpers of ``test_plugin_server`` (the
SQLite end-to-end tests) are reused, so the flows and their assertions are the same:

* a request ends ``succeeded`` with a new version and its lineage (through either server);
* a different request on a busy version is refused with 409, the identical one is a no-op;
* restart recovery: the server is killed with SIGKILL while two jobs run and one of them is killed too; after the
  restart the survivor succeeds and the killed one fails with a reason, while the second server keeps serving;
* concurrent requests through both servers: one wins, the rest get 409, exactly one new version;
* concurrent ``create_model_version`` through both servers: no duplicate version number;
* the ledger's transactions (compare-and-set, lease, advance) straight on PostgreSQL, from racing threads;
* no zombie process is left under the test process.

The bounded job queue under load is tested on both databases in ``test_plugin_queue``.
Without the PostgreSQL binaries (Debian's ``postgresql``) these tests skip, except under ``CI=true``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from pg_cluster import PostgresCluster, binaries_or_skip
from processes import request_pids
from test_plugin_server import (  # noqa: F401  (parent is a fixture used by name)
    JOB_TIMEOUT_S,
    MODEL,
    Server,
    _assert_succeeded_with_lineage,
    _children,
    _client,
    _kill_if_ours,
    _new_version,
    _request,
    _set_tag,
    _wait_done,
    end_processes,
    leftover_processes,
    parent,
)

pytestmark = pytest.mark.slow


def _race(calls: list[Callable[[], object]]) -> list[object]:
    """Run ``calls`` in threads released together by a barrier; return each result (or the exception raised)."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # the caller asserts on it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[PostgresCluster]:
    pg = PostgresCluster(binaries_or_skip())
    pg.start()
    yield pg
    pg.stop(keep_log=tmp_path_factory.mktemp("postgres") / "server.log")  # kept with pytest's temporary folders


def _end_leftovers(srv: Server) -> None:
    """Kill launchers and jobs still recorded in the ledger (they run in their own sessions and outlive a server)."""
    end_processes(leftover_processes(srv))


WARM_UP_MODEL = "warm-up"
#: Refused in the server's request thread after the forget spec is parsed (a URL as data): no launcher, no job.
WARM_UP_REQUEST = "forget=classes:3; data=https://example.com/data.npz"


def _warm_up(srv: Server) -> float:
    """Submit one request that the server refuses, and return how long it took.

    The first request a server process parses imports the engine (``plugins/request.py`` ->
    ``vocabulary.parse_forget_spec`` -> ``mlflow_unlearn.data`` -> torch) inside its request thread: measured 50 s
    on a loaded 2-core machine, beyond the 30 s timeout of ``_set_tag``, and every request that arrives meanwhile
    waits too. Warming up keeps the concurrency tests about the database, not about that import.
    """
    from mlflow.exceptions import MlflowException

    client = _client(srv)
    try:
        client.create_registered_model(WARM_UP_MODEL)
    except MlflowException:  # created by the other server of the same database
        pass
    versions = client.search_model_versions(f"name='{WARM_UP_MODEL}'")
    if versions:
        version = versions[0].version
    else:
        run_id = client.create_run("0").info.run_id
        version = client.create_model_version(WARM_UP_MODEL, f"runs:/{run_id}/model", run_id=run_id).version
    start = time.time()
    response = requests.post(f"{srv.url}/api/2.0/mlflow/model-versions/set-tag", timeout=300, json={
        "name": WARM_UP_MODEL, "version": version, "key": "mlflow_unlearn.request", "value": WARM_UP_REQUEST})
    elapsed = time.time() - start
    assert response.status_code == 400 and "is a URL" in response.json()["message"], response.text  # issue 29
    tags = client.get_model_version(WARM_UP_MODEL, version).tags
    assert tags["mlflow_unlearn.status"] == "failed" and "is a URL" in tags["mlflow_unlearn.error"], tags
    print(f"\nfirst request on {srv.url}: {elapsed:.1f} s")
    return elapsed


@pytest.fixture(scope="module")
def server(tmp_path_factory, installed_site, cluster) -> Iterator[Server]:  # noqa: F811
    """Server A: tracking and registry in one PostgreSQL database (named ``server`` so ``parent`` uses it)."""
    db = cluster.create_database("mlflow")
    srv = Server(tmp_path_factory.mktemp("pg-server-a"), installed_site, backend_uri=db, registry_uri=f"unlearn+{db}")
    (srv.allowed / "fast.yaml").write_text(
        "epochs: 1\ngate: {forget_tolerance: 100, max_retain_drop: 100, max_test_drop: 100}\n")
    srv.start()
    _warm_up(srv)
    yield srv
    _end_leftovers(srv)
    srv.stop()


@pytest.fixture(scope="module")
def server_b(tmp_path_factory, installed_site, server) -> Iterator[Server]:  # noqa: F811
    """Server B: another process on the same database (started after A has created the schema)."""
    srv = Server(tmp_path_factory.mktemp("pg-server-b"), installed_site, backend_uri=server.backend_uri,
                 registry_uri=server.registry_uri)
    srv.allowed = server.allowed  # the same config files are allowed on both
    (srv.root / "mlartifacts").symlink_to(server.root / "mlartifacts")  # replicas share one artifact store
    srv.start()
    _warm_up(srv)
    yield srv
    _end_leftovers(srv)
    srv.stop()


def test_server_registry_is_the_plugin_on_postgresql(server):
    assert server.registry_uri.startswith("unlearn+postgresql://") and "@127.0.0.1:" in server.registry_uri
    url = f"{server.url}/api/2.0/mlflow/model-versions/transition-stage"
    response = requests.post(url, json={"name": "no-such-model", "version": "1", "stage": "Unlearn",
                                        "archive_existing_versions": False}, timeout=30)
    assert response.status_code == 404  # "Unlearn" reached the plugin (MLflow itself would answer 400)


@pytest.fixture(scope="module")
def busy_job(server, server_b, parent):  # noqa: F811
    """A request through server A, then (while it is queued) a different request and the identical one.

    Server B is started first, so that all requests of the module are submitted within seconds and still run
    when the restart test kills server A.
    """
    version = _new_version(server, parent)
    first = _set_tag(server, version, _request(server))
    tags = _client(server).get_model_version(MODEL, version).tags
    other = _set_tag(server, version, _request(server).replace("classes:3", "classes:5"))
    same = _set_tag(server, version, _request(server))
    after = _client(server).get_model_version(MODEL, version).tags
    return version, first, tags, other, same, after


@pytest.fixture(scope="module")
def victim_job(server, parent):  # noqa: F811
    """A request whose launcher and job the restart test kills."""
    version = _new_version(server, parent)
    assert _set_tag(server, version, _request(server)).status_code == 200
    return version


@pytest.fixture(scope="module")
def shared_jobs(server, server_b, parent):  # noqa: F811
    """Through both servers at the same moment: eight requests on one version (two identical), and through B one
    request on another version (A's requests are those of the busy and the killed version)."""
    contested, on_b = (_new_version(server, parent) for _ in range(2))
    values = [_request(server), _request(server)] + [_request(server).replace("classes:3", f"classes:{c}")
                                                     for c in (0, 1, 2, 4, 5, 6)]
    servers = [server, server_b] * 4  # the identical pair goes through different servers
    calls = [lambda i=i: _set_tag(servers[i], contested, values[i]) for i in range(len(values))]
    calls.append(lambda: _set_tag(server_b, on_b, _request(server)))
    responses = _race(calls)
    return contested, values, responses[:len(values)], on_b, responses[len(values)]


def test_busy_version_refuses_a_different_request(server, busy_job, victim_job, shared_jobs):
    version, first, tags, other, same, after = busy_job
    assert first.status_code == 200, first.text
    assert tags["mlflow_unlearn.status"] in ("queued", "running")
    assert other.status_code == 409, other.text
    assert "already has an unlearning request" in other.json()["message"]
    assert same.status_code == 200, same.text  # the identical request is accepted as a no-op
    assert after["mlflow_unlearn.request_id"] == tags["mlflow_unlearn.request_id"]
    assert after["mlflow_unlearn.request"] == _request(server)


def test_server_killed_mid_job_resumes_or_fails_requests_with_a_reason(server, server_b, busy_job, victim_job):
    """SIGKILL server A while two of its jobs run, and kill one job (as if its host had rebooted); restart A.
    The surviving request ends succeeded, the killed one failed with a reason; server B serves throughout."""
    survivor, victim = busy_job[0], victim_job
    deadline = time.time() + JOB_TIMEOUT_S
    while time.time() < deadline:
        states = [_client(server).get_model_version(MODEL, v).tags for v in (survivor, victim)]
        if all(s.get("mlflow_unlearn.status") == "running" for s in states) \
                and all("job" in pids.get(int(v), {}) for pids in [request_pids(server.registry_uri, MODEL)]
                        for v in (survivor, victim)):
            break
        ended = {v: (s.get("mlflow_unlearn.status"), s.get("mlflow_unlearn.error"))
                 for v, s in zip((survivor, victim), states, strict=True)
                 if s.get("mlflow_unlearn.status") in ("succeeded", "failed")}
        assert not ended, f"requests ended before the restart (version: status, error): {ended}"
        time.sleep(0.2)
    else:
        pytest.fail(f"the two requests did not start running: {states}")
    victim_tags = states[1]
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(30)
    victim_pids = request_pids(server.registry_uri, MODEL)[int(victim)]
    _kill_if_ours(victim_pids["launcher"], "mlflow_unlearn_plugins.launcher")
    _kill_if_ours(victim_pids["job"], victim_tags["mlflow_unlearn.request_run_id"])
    # while A is down, B reads the same database
    assert _client(server_b).get_model_version(MODEL, survivor).tags["mlflow_unlearn.status"] == "running"
    server.start()
    victim_tags = _wait_done(server, victim)
    assert victim_tags["mlflow_unlearn.status"] == "failed"
    assert "stopped without recording a result" in victim_tags["mlflow_unlearn.error"]
    assert _children(server, victim) == []
    assert _client(server).get_run(victim_tags["mlflow_unlearn.request_run_id"]).info.status == "FAILED"
    _assert_succeeded_with_lineage(server, survivor, _wait_done(server, survivor))


def test_concurrent_requests_through_two_servers_run_once(server, server_b, shared_jobs):
    contested, values, responses, _, _ = shared_jobs
    accepted = [i for i, r in enumerate(responses) if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 409]
    assert len(accepted) + len(refused) == len(values), [(r.status_code, r.text[:200]) for r in responses]
    assert all("already has an unlearning request" in r.json()["message"] for r in refused)
    assert len({values[i] for i in accepted}) == 1 and len(accepted) <= 2
    tags = _client(server_b).get_model_version(MODEL, contested).tags
    assert tags["mlflow_unlearn.request"] in {values[i] for i in accepted}
    _assert_succeeded_with_lineage(server_b, contested, _wait_done(server_b, contested))


def test_request_through_the_second_server_registers_a_new_version(server, server_b, shared_jobs):
    _, _, _, on_b, response = shared_jobs
    assert response.status_code == 200, response.text
    _assert_succeeded_with_lineage(server_b, on_b, _wait_done(server_b, on_b))
    assert len(_children(server, on_b)) == 1  # server A sees B's result in the shared database


def test_concurrent_version_creation_through_two_servers_has_no_duplicate(server, server_b, parent):  # noqa: F811
    """MLflow numbers a new version max+1 in a transaction: on PostgreSQL, racing creators must still differ."""
    creators = [server, server_b] * 6
    results = _race([lambda srv=srv: _new_version(srv, parent) for srv in creators])
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors
    assert len(set(results)) == len(creators), sorted(results, key=int)
    after = [mv.version for mv in _client(server_b).search_model_versions(f"name='{MODEL}'")]
    assert len(after) == len(set(after)) and set(results) <= set(after)  # jobs may register versions meanwhile


# -- the ledger straight on PostgreSQL ---------------------------------------------------------------------------
LEDGER_MODEL = "ledger-cas"
RACERS = 8


@pytest.fixture(scope="module")
def ledger_store(cluster):
    """MLflow's stock SQL registry store on a database of its own (no server would resume these requests), and the
    plugin's ledger in its own tables of that database."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore
    from mlflow_unlearn_plugins.ledger import Ledger

    store = SqlAlchemyStore(cluster.create_database("ledger"))
    store.create_registered_model(LEDGER_MODEL)
    yield store, Ledger(store.engine)
    store.engine.dispose()


def _own_marker() -> str:
    """A string of this process's command line, so that the ledger sees this process's leases as alive."""
    return Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode()


def test_ledger_open_request_is_a_compare_and_set(ledger_store):
    from mlflow_unlearn_plugins import errors

    store, led = ledger_store
    version = store.create_model_version(LEDGER_MODEL, "file:///nowhere").version
    values = [f"forget=classes:{i}; method=finetune" for i in range(RACERS)]
    ids = [f"request-{i}" for i in range(RACERS)]
    results = _race([lambda i=i: led.open(LEDGER_MODEL, version, values[i],
                                                     request_id=ids[i]) for i in range(RACERS)])
    winners = [i for i, r in enumerate(results) if r is True]
    assert len(winners) == 1, results
    losers = [r for r in results if r is not True]
    assert all(isinstance(r, errors.ActiveRequestError) for r in losers), losers
    state = led.read(LEDGER_MODEL, version)
    (won,) = winners
    assert (state.status, state.request, state.request_id) == ("queued", values[won], ids[won])
    # the identical request is a no-op; a different one is refused while the first is active
    assert led.open(LEDGER_MODEL, version, values[won], request_id="again") is False
    with pytest.raises(errors.ActiveRequestError):
        led.open(LEDGER_MODEL, version, "forget=classes:9", request_id="other")
    assert led.read(LEDGER_MODEL, version).request_id == ids[won]


def test_ledger_advance_has_one_winner(ledger_store):
    from mlflow_unlearn_plugins import ledger

    store, led = ledger_store
    version = store.create_model_version(LEDGER_MODEL, "file:///nowhere").version
    assert led.open(LEDGER_MODEL, version, "forget=classes:1", request_id="r1") is True
    led.dispatch(10 * RACERS)  # admitted: a launcher may claim it
    marker = _own_marker()
    assert led.claim_lease(LEDGER_MODEL, version, "r1", marker) is True
    assert led.claim_lease(LEDGER_MODEL, version, "r1", marker) is False  # its holder is alive
    assert led.claim_lease(LEDGER_MODEL, version, "another-request", marker) is False
    assert [s.version for s in led.active() if s.name == LEDGER_MODEL].count(int(version)) == 1

    moves = _race([lambda: led.advance(LEDGER_MODEL, version, "r1", expect=("queued",),
                                          to="running", fields={"job": "host|1"})] * RACERS)
    assert moves.count(True) == 1 and moves.count(False) == RACERS - 1, moves
    assert led.advance(LEDGER_MODEL, version, "not-r1", expect=ledger.ACTIVE, to="failed") is False
    assert led.set_fields(LEDGER_MODEL, version, "not-r1", {"error": "x"}) is False
    finals = _race([lambda to=to: led.advance(LEDGER_MODEL, version, "r1", expect=("running",),
                                                 to=to, fields={"lease": None, "job": None})
                    for to in ("succeeded", "failed") * (RACERS // 2)])
    assert finals.count(True) == 1, finals
    state = led.read(LEDGER_MODEL, version)
    assert state.status in ledger.TERMINAL and state.lease is None and state.job is None
    assert led.set_fields(LEDGER_MODEL, version, "r1", {"error": "late"}) is False
    # a finished request frees the version for the next one
    assert led.open(LEDGER_MODEL, version, "forget=classes:2", request_id="r2") is True
    assert led.read(LEDGER_MODEL, version).status == "queued"


def test_ledger_lease_is_a_compare_and_set_when_absent(ledger_store, monkeypatch):
    """Launcher L2 reads 'no lease', L1 takes the lease and commits, then L2 writes: L2 must lose."""
    from mlflow_unlearn_plugins import ledger

    store, led = ledger_store
    version = store.create_model_version(LEDGER_MODEL, "file:///nowhere").version
    assert led.open(LEDGER_MODEL, version, "forget=classes:1", request_id="r1") is True
    led.dispatch(10 * RACERS)
    read_done, first_done, results = threading.Event(), threading.Event(), {}
    original = ledger.Ledger._lease_of

    def read_then_wait(*args, **kwargs):  # pauses the late launcher between its read and its write
        current = original(*args, **kwargs)
        if threading.current_thread().name == "late":
            read_done.set()
            first_done.wait(30)
        return current

    monkeypatch.setattr(ledger.Ledger, "_lease_of", staticmethod(read_then_wait))
    marker = _own_marker()
    late = threading.Thread(name="late", target=lambda: results.update(
        late=led.claim_lease(LEDGER_MODEL, version, "r1", marker)))
    late.start()
    assert read_done.wait(30)
    try:
        results["first"] = led.claim_lease(LEDGER_MODEL, version, "r1", marker)
    finally:
        first_done.set()
        late.join(60)
    assert results == {"first": True, "late": False}


# -- last: what the servers leave behind -------------------------------------------------------------------------
def _zombie_descendants(root: int) -> list[str]:
    """``pid (command)`` of every process in state Z below ``root`` (read from /proc)."""
    parents, states = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_bytes()
        except OSError:
            continue
        comm, rest = raw[raw.index(b"(") + 1:raw.rindex(b")")].decode(errors="replace"), raw[raw.rindex(b")") + 2:]
        fields = rest.split()
        parents[int(entry.name)], states[int(entry.name)] = int(fields[1]), (fields[0].decode(), comm)
    found = []
    for pid, (state, comm) in states.items():
        ancestor = parents.get(pid)
        while ancestor and ancestor != root:
            ancestor = parents.get(ancestor)
        if ancestor == root and state == "Z":
            found.append(f"{pid} ({comm}, parent {parents[pid]})")
    return found


def test_no_zombie_processes_remain(server, server_b, busy_job, victim_job, shared_jobs):
    for srv, version in ((server, busy_job[0]), (server, victim_job), (server_b, shared_jobs[0]),
                         (server_b, shared_jobs[3])):
        _wait_done(srv, version)
    deadline = time.time() + 10  # launchers exit a moment after their final status
    while time.time() < deadline and (zombies := _zombie_descendants(os.getpid())):
        time.sleep(0.5)
    assert zombies == [], f"zombie processes under the test process (pid {os.getpid()}): {zombies}"
