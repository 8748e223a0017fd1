"""The processes of a registry request and its pre-flight, through a real ``mlflow server`` (issue 29, defects 7, 11).

* One request costs one long-lived launcher that never imports the engine (and waits for its job without MLflow), a
  short-lived pre-flight process that ends before the job starts, and the job itself: never more than two
  processes at once, and no ``mlflow run`` between the launcher and the job. A launcher killed with SIGKILL while
  the job runs is replaced, and the new one finds the job (by its run, in its environment), waits for it without
  MLflow too, and records its result.
* A request the engine refuses ends ``failed`` with the API's own message, and no job starts.
* An artifact store that cannot be written fails the request within seconds, before the engine is imported, with a
  one-line reason that names no server path (it took ~270 s of hidden HTTP retries inside the job before).

Jobs use ``method=finetune`` for one epoch with a permissive gate, without the ONNX copy, on one small MLP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from processes import request_pids
from test_plugin_server import Server

pytestmark = pytest.mark.slow

MODEL = "digits-process"
JOB_TIMEOUT_S = 300
REQUESTS_EXPERIMENT = "unlearn-requests"
#: Seconds from the request tag to the final status of a request whose artifact store refuses writes: the launcher's
#: start (it imports MLflow, several seconds on the suite's loaded 2 cores) plus the probe.
PROBE_FAIL_S = 45


@pytest.fixture(scope="module")
def server(tmp_path_factory, installed_site) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("plugin-process"), installed_site, max_jobs=2)
    (srv.allowed / "fast.yaml").write_text(
        "epochs: 1\ngate: {forget_tolerance: 100, max_retain_drop: 100, max_test_drop: 100}\n")
    srv.start()
    yield srv
    srv.stop()
    for pid in request_processes(srv.root):  # launchers and jobs run in their own sessions
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _client(srv: Server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=srv.url, registry_uri=srv.url)


@pytest.fixture(scope="module")
def parent(server):
    """An MLP trained on digits through the server (with its data lineage), registered as version 1."""
    from mlflow_unlearn.tracking import train_model

    return train_model("digits", arch="mlp", registered_model_name=MODEL, config={"epochs": 1}, onnx=False,
                       device="cpu", tracking_uri=server.url, registry_uri=server.url).version


def _new_version(server: Server, parent) -> str:
    return _client(server).create_model_version(MODEL, parent.source, parent.run_id).version


def _set_request(server: Server, version: str, value: str) -> None:
    response = requests.post(f"{server.url}/api/2.0/mlflow/model-versions/set-tag", timeout=600, json={
        "name": MODEL, "version": version, "key": "mlflow_unlearn.request", "value": value})
    assert response.status_code == 200, response.text


def _status(server: Server, version: str) -> dict[str, str]:
    return _client(server).get_model_version(MODEL, version).tags


# -- the request's processes, read from /proc ----------------------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, bytes]]:
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if stat[stat.rindex(b")") + 2:].split()[0] != b"Z":
                table[int(entry.name)] = (int(stat[stat.rindex(b")") + 2:].split()[1]), cmdline)
    return table


def request_processes(root: Path) -> dict[int, tuple[int, bytes]]:
    """PID -> (parent PID, command line) of the launchers of the server under ``root`` and all their descendants."""
    table = _proc_table()
    ours = {pid for pid, (_, cmd) in table.items()
            if b"mlflow_unlearn_plugins.launcher" in cmd and str(root).encode() in cmd}
    for pid in table:
        ancestor = table[pid][0]
        while ancestor and ancestor not in ours and ancestor in table:
            ancestor = table[ancestor][0]
        if ancestor in ours:
            ours.add(pid)
    return {pid: table[pid] for pid in ours if pid in table}


def _role(cmdline: bytes) -> str:
    if b"mlflow_unlearn_plugins.launcher" in cmdline:
        return "launcher"
    if b"mlflow_unlearn_plugins.preflight" in cmdline:
        return "pre-flight"
    if b"mlflow_unlearn\x00unlearn" in cmdline:
        return "job"
    return cmdline.replace(b"\x00", b" ").decode(errors="replace")[:120]


def _maps(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _rss_mib(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)


@dataclass(eq=False)
class Watch(threading.Thread):
    """Samples the request's processes every 0.1 s: their roles, parents, the most at once, whether a launcher ever
    mapped torch's libraries."""

    root: Path
    seen: dict[int, str] = field(default_factory=dict)
    parents: dict[int, int] = field(default_factory=dict)
    most_at_once: int = 0
    overlaps: list[set[str]] = field(default_factory=list)
    launcher_torch: list[int] = field(default_factory=list)
    #: (waits without MLflow: ``--wait-job`` on its command line, protobuf not mapped; RSS in MiB) of each launcher
    #: sample taken beside a running job
    waiting: list[tuple[bool, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(daemon=True)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            found = request_processes(self.root)
            jobs = {pid for pid, (_, cmdline) in found.items() if _role(cmdline) == "job"}
            # a job's own short-lived helpers (Python's `platform` runs `uname -p`) are not request processes
            found = {pid: entry for pid, entry in found.items() if entry[0] not in jobs}
            roles = set()
            for pid, (ppid, cmdline) in found.items():
                role = self.seen[pid] = _role(cmdline)  # a child seen before its exec has its parent's command line
                self.parents.setdefault(pid, ppid)
                roles.add(role)
                if role == "launcher" and _maps(pid, "libtorch"):
                    self.launcher_torch.append(pid)
            job_runs = any(_role(cmdline) == "job" for _, cmdline in found.values())
            for pid, (_, cmdline) in found.items():
                if job_runs and _role(cmdline) == "launcher":
                    slim = b"--wait-job" in cmdline and not _maps(pid, "google/_upb")  # MLflow brings protobuf
                    self.waiting.append((slim, _rss_mib(pid)))
            self.most_at_once = max(self.most_at_once, len(found))
            if len(found) > 1:
                self.overlaps.append(roles)
            time.sleep(0.1)

    def pids(self, role: str) -> list[int]:
        return [pid for pid, r in self.seen.items() if r == role]


def _wait_final(server: Server, version: str, timeout: float = JOB_TIMEOUT_S) -> dict[str, str]:
    deadline, tags = time.time() + timeout, {}
    while time.time() < deadline:
        tags = _status(server, version)
        if tags.get("mlflow_unlearn.status") in ("succeeded", "failed"):
            return tags
        time.sleep(0.3)
    pytest.fail(f"request on {MODEL}/{version} not final after {timeout} s: {tags}\n{server.log_tail()}")


def _wait_gone(server: Server, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while request_processes(server.root) and time.time() < deadline:
        time.sleep(0.2)


# -- tests -----------------------------------------------------------------------------------------------------------
def test_a_request_runs_as_a_torch_free_launcher_and_one_job_and_survives_its_launchers_death(server, parent):
    version = _new_version(server, parent)
    watch = Watch(server.root)
    watch.start()
    _set_request(server, version, f"forget=classes:3; method=finetune; config={server.allowed}/fast.yaml")
    deadline = time.time() + JOB_TIMEOUT_S
    while not watch.pids("job") and time.time() < deadline:
        assert _status(server, version).get("mlflow_unlearn.status") != "failed", _status(server, version)
        time.sleep(0.2)
    (job,) = watch.pids("job")
    (launcher,) = watch.pids("launcher")
    time.sleep(1.0)  # a few samples of the running job beside its launcher
    # one launcher and the job itself: no `mlflow run` between them, no pre-flight left beside the job
    assert watch.parents[job] == launcher, watch.seen
    assert set(watch.seen.values()) == {"launcher", "pre-flight", "job"}, watch.seen
    assert watch.most_at_once == 2 and all(len(roles) <= 2 for roles in watch.overlaps), watch.overlaps
    assert {"pre-flight", "job"} not in watch.overlaps  # the engine's pre-flight ended before the job started
    assert request_pids(server.registry_uri, MODEL)[int(version)]["job"] == job  # the ledger knows the job

    os.kill(launcher, signal.SIGKILL)  # the job goes on; the server's recovery starts a new launcher for it
    tags = _wait_final(server, version)
    watch.done.set()
    watch.join(5)
    _wait_gone(server)
    assert tags["mlflow_unlearn.status"] == "succeeded", tags.get("mlflow_unlearn.error")
    children = [mv for mv in _client(server).search_model_versions(f"name='{MODEL}'")
                if mv.tags.get("mlflow_unlearn.parent") == f"{MODEL}/{version}"]
    assert [f"{MODEL}/{mv.version}" for mv in children] == [tags["mlflow_unlearn.result_version"]]
    assert len(watch.pids("launcher")) == 2 and watch.pids("job") == [job]  # the new launcher watched the same job
    assert watch.launcher_torch == [], "a launcher loaded torch"
    # its job running, the launcher waits without MLflow (about 120 MiB instead of about 240 MiB), except for a
    # moment after its start (or a replacement's start) and before its end
    assert sum(slim for slim, _ in watch.waiting) > len(watch.waiting) / 2, watch.waiting


def test_a_request_the_engine_refuses_fails_with_the_apis_message_and_starts_no_job(server, parent):
    from mlflow_unlearn.request import UnlearnRequest
    from mlflow_unlearn.tracking.plan import prepare

    version = _new_version(server, parent)
    value = "forget=classes:42; method=finetune"  # digits has classes 0-9: the grammar passes, prepare() refuses
    with pytest.raises(ValueError) as api:
        prepare(f"models:/{MODEL}/{version}", UnlearnRequest("classes:42", method="finetune", device="cpu"),
                client=_client(server))
    watch = Watch(server.root)
    watch.start()
    _set_request(server, version, value)
    tags = _wait_final(server, version)
    _wait_gone(server)
    watch.done.set()
    watch.join(5)
    assert tags["mlflow_unlearn.status"] == "failed"
    assert tags["mlflow_unlearn.error"] == str(api.value)
    assert "job" not in watch.seen.values() and "pre-flight" in watch.seen.values(), watch.seen
    run = _client(server).get_run(tags["mlflow_unlearn.request_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["mlflow_unlearn.error"] == str(api.value)
    assert _client(server).list_artifacts(run.info.run_id) == []  # the write probe was deleted


@pytest.fixture()
def unwritable_requests_store(server):
    """The requests experiment's artifact folder on the server replaced by a regular file: every write under it
    fails on the server (as root too, where permissions do not stop writes), and is answered HTTP 500."""
    client = _client(server)
    experiment = client.get_experiment_by_name(REQUESTS_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(REQUESTS_EXPERIMENT)
    folder = server.root / "mlartifacts" / experiment_id
    aside = folder.with_name(f"{experiment_id}.aside")
    if folder.exists():
        folder.rename(aside)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text("not a folder")
    yield folder
    folder.unlink()
    if aside.exists():
        aside.rename(folder)


def test_an_unwritable_artifact_store_fails_the_request_within_seconds(server, parent, unwritable_requests_store):
    version = _new_version(server, parent)
    watch = Watch(server.root)
    watch.start()
    start = time.time()
    _set_request(server, version, f"forget=classes:3; method=finetune; config={server.allowed}/fast.yaml")
    tags = _wait_final(server, version, timeout=PROBE_FAIL_S)
    took = time.time() - start
    _wait_gone(server)
    watch.done.set()
    watch.join(5)
    reason = tags["mlflow_unlearn.error"]
    assert tags["mlflow_unlearn.status"] == "failed", tags
    assert reason.startswith("the artifact store did not accept a test write (HTTP 500)"), reason
    assert "\n" not in reason and str(server.root) not in reason and "/" not in reason.split("(")[1], reason
    assert set(watch.seen.values()) == {"launcher"}, watch.seen  # failed before the engine's pre-flight, no job
    print(f"\nunwritable artifact store: request failed {took:.1f} s after its tag was set")


# -- the pieces, without a server ---------------------------------------------------------------------------------
def test_the_probe_leaves_nothing_and_names_no_path_when_it_fails(tmp_path):
    from mlflow import MlflowClient
    from mlflow_unlearn_plugins.preflight import probe_artifact_store
    from mlflow_unlearn_plugins.request import RequestRefused

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    good = client.create_experiment("good", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(good).info.run_id
    probe_artifact_store(client, run)
    assert client.list_artifacts(run) == []
    (tmp_path / "blocked").write_text("a file where a folder should be")
    bad = client.create_experiment("bad", artifact_location=str(tmp_path / "blocked" / "artifacts"))
    run = client.create_run(bad).info.run_id
    start = time.monotonic()
    with pytest.raises(RequestRefused) as refused:
        probe_artifact_store(client, run, wait_s=60)
    assert time.monotonic() - start < 10  # a refusal of the store itself is not waited out
    assert str(tmp_path) not in str(refused.value) and "NotADirectoryError" in str(refused.value)


def test_a_job_is_recognised_by_its_run_in_its_environment(tmp_path):
    """The job is the entry point's own process, whose command line holds no run ID: its environment does."""
    from mlflow_unlearn_plugins.ledger import process_alive

    env = {**os.environ, "MLFLOW_RUN_ID": "0123456789abcdef0123456789abcdef"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    deadline = time.time() + 10
    while b"sleep" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.time() < deadline:
        time.sleep(0.01)  # Popen may return before the child's exec
    try:
        assert process_alive(proc.pid, "0123456789abcdef0123456789abcdef")
        assert not process_alive(proc.pid, "fedcba9876543210fedcba9876543210")
    finally:
        proc.kill()
        proc.wait()
    assert not process_alive(proc.pid, "0123456789abcdef0123456789abcdef")
