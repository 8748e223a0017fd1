"""End-to-end tests of the registry plugin through a real ``mlflow server`` subprocess on 127.0.0.1.

One server (``--registry-store-uri unlearn+sqlite:///...``, loaded through the plugin's entry point) is shared by
the module. One small model is trained once and registered as several versions, so that each scenario has its own
parent version: the REST ``Unlearn`` transition, concurrent tag requests, bad requests, the stock UI in headless
Chromium, and a server restart. The first test submits the requests at once so the jobs overlap; the restart
happens while they are in flight (the REST transition's job must survive it, a killed one must end failed).
Jobs use ``method=finetune`` for one epoch with a permissive gate (``config=`` YAML under the allowed root), so
they stay small.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from fresh_db import migrated_sqlite
from processes import request_pids

pytestmark = pytest.mark.slow

MODEL = "digits-plugin"
LINEAGE_KEYS = {"mlflow_unlearn.parent", "mlflow_unlearn.method", "mlflow_unlearn.forget_digest",
                "mlflow_unlearn.forget_count", "mlflow_unlearn.run_id", "mlflow_unlearn.verdict"}
JOB_TIMEOUT_S = 240
NO_ONNX = "; onnx=false"  # a request's own onnx= wins over the server's MLFLOW_UNLEARN_ONNX
SEED = "; seed=11"  # a request field at every door (issue 28): it reaches the job's run
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "unlearn_ui.png"
UPDATE_SCREENSHOT_ENV = "MLFLOW_UNLEARN_UPDATE_SCREENSHOT"  # =1: the UI test refreshes the README's screenshot
CHROMIUM = "/usr/bin/chromium"
MLFLOW_JOBS_OFF = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
"""MLflow's own job runner (a runner and a few consumer processes, ~17 s of CPU per server start here) serves
MLflow's server-side jobs; the plugin's launcher does not use it, so the suite's servers run without it."""
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``mlflow server`` with the plugin registry in a temporary directory, started and stopped by PID.

    The server proxies artifacts (MLflow's default), so jobs are ordinary HTTP clients of it.

    Args:
        onnx: the server's ``MLFLOW_UNLEARN_ONNX``. Off by default: the suite's registry jobs are about requests,
            not the export (3-5 s of CPU per job), which the API, CLI and ``mlflow run`` tests cover; the module's
            own ``server`` keeps it on, so one registry job exports ONNX end to end.
    """

    def __init__(self, root: Path, site: Path, backend_uri: str = "", registry_uri: str = "", max_jobs: int = 8,
                 onnx: bool = False) -> None:
        self.root, self.site, self.port, self.proc, self.max_jobs = root, site, _free_port(), None, max_jobs
        self.onnx = onnx
        self.backend_uri = backend_uri or f"sqlite:///{root}/tracking.db"
        self.registry_uri = registry_uri or f"unlearn+sqlite:///{root}/registry.db"
        self.allowed = root / "allowed"
        self.allowed.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.env: dict[str, str] = {}  # more environment variables of the server
        self.args: list[str] = []  # more options of `mlflow server`, after the defaults (a repeated option: the last)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "_MLFLOW_"))}
        # the deployment's digest key (conftest.py's): it signs, and the plugin checks, every result's provenance
        env["MLFLOW_UNLEARN_DIGEST_KEY"] = os.environ["MLFLOW_UNLEARN_DIGEST_KEY"]
        env.update(MLFLOW_UNLEARN_ALLOWED_ROOTS=str(self.allowed), MLFLOW_UNLEARN_LOG_DIR=str(self.root / "logs"),
                   MLFLOW_UNLEARN_DEVICE="cpu", MLFLOW_UNLEARN_MAX_JOBS=str(self.max_jobs), PYTHONPATH=str(self.site),
                   MLFLOW_UNLEARN_ONNX=str(self.onnx).lower(),
                   OMP_NUM_THREADS="1")  # jobs run side by side on 2 cores: one thread each, not two that wait
        env.update(MLFLOW_JOBS_OFF)
        env.update(self.env)
        for uri in (self.backend_uri, self.registry_uri):  # new SQLite stores: a copy of a migrated schema
            if uri.removeprefix("unlearn+").startswith("sqlite:///"):
                migrated_sqlite(Path(uri.removeprefix("unlearn+").removeprefix("sqlite:///")))
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend-store-uri", self.backend_uri, "--registry-store-uri", self.registry_uri,
               "--artifacts-destination", str(self.root / "mlartifacts"), "--workers", "1", *self.args]
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 (kept open for the subprocess)
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/health", timeout=5).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"mlflow server did not become healthy in 120 s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")[-4000:]


def _kill_if_ours(pid: int, marker: str) -> None:
    from mlflow_unlearn_plugins.ledger import process_alive

    if process_alive(pid, marker):
        os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(tmp_path_factory, installed_site) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("plugin-server"), installed_site, onnx=True)
    (srv.allowed / "fast.yaml").write_text(
        "epochs: 1\ngate: {forget_tolerance: 100, max_retain_drop: 100, max_test_drop: 100}\n")
    srv.start()
    _warm_up(srv)
    yield srv
    # Launchers and jobs run in their own sessions (they outlive a server restart); end the ones still running.
    leftovers = leftover_processes(srv)
    srv.stop()
    end_processes(leftovers)


def leftover_processes(srv: Server) -> list[tuple[int, str]]:
    """``(pid, marker)`` of the launchers and jobs of the requests on ``MODEL`` that the ledger records."""
    markers = {"launcher": "mlflow_unlearn_plugins.launcher", "job": "MLFLOW_RUN_ID="}  # a job: its environment
    return [(pid, markers[role]) for pids in request_pids(srv.registry_uri, MODEL).values()
            for role, pid in pids.items()]


def end_processes(leftovers: list[tuple[int, str]]) -> None:
    """Kill each process of ``leftovers`` that still runs with its marker (see :func:`leftover_processes`)."""
    for pid, marker in leftovers:
        _kill_if_ours(pid, marker)


def _warm_up(srv: Server) -> None:
    """Send the server its first request to parse, on a missing version (parsed, then 404), without a deadline.

    The first request a server worker parses imports the engine in its request thread (``plugins/request.py`` ->
    ``vocabulary.parse_forget_spec`` -> ``mlflow_unlearn.data`` -> torch): a few seconds on an idle machine, more
    than ``_set_tag``'s 30 s on a loaded one. The tests below are about requests and jobs, not about that import.
    """
    start = time.time()
    response = requests.post(f"{srv.url}/api/2.0/mlflow/model-versions/set-tag", timeout=600, json={
        "name": "warm-up", "version": "1", "key": "mlflow_unlearn.request", "value": "forget=classes:3"})
    assert response.status_code == 404, response.text
    print(f"\nfirst parsed request on {srv.url}: {time.time() - start:.1f} s")


def _client(srv: Server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=srv.url, registry_uri=srv.url)


@pytest.fixture(scope="module")
def parent(server):
    """An MLP trained on digits through the server (with its data lineage), registered as version 1."""
    from mlflow_unlearn.tracking import train_model

    out = train_model("digits", arch="mlp", registered_model_name=MODEL, config={"epochs": 2}, onnx=False,
                      device="cpu", tracking_uri=server.url, registry_uri=server.url)
    return out.version


def _new_version(server: Server, parent, tags: dict[str, str] | None = None) -> str:
    """Another version of the same logged model (tags given at creation do not trigger anything)."""
    return _client(server).create_model_version(MODEL, parent.source, parent.run_id, tags=tags).version


def _request(server: Server, extra: str = "") -> str:
    return f"forget=classes:3; method=finetune; config={server.allowed}/fast.yaml{extra}"


def _set_tag(server: Server, version: str, value: str) -> requests.Response:
    return requests.post(f"{server.url}/api/2.0/mlflow/model-versions/set-tag",
                         json={"name": MODEL, "version": version, "key": "mlflow_unlearn.request", "value": value},
                         timeout=30)


def _wait_done(server: Server, version: str, timeout: float = JOB_TIMEOUT_S) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        tags = _client(server).get_model_version(MODEL, version).tags
        if tags.get("mlflow_unlearn.status") in ("succeeded", "failed"):
            return tags
        time.sleep(0.5)
    pytest.fail(f"request on {MODEL}/{version} not finished after {timeout} s: {tags}\n{server.log_tail()}")


def _children(server: Server, version: str) -> list:
    return [mv for mv in _client(server).search_model_versions(f"name='{MODEL}'")
            if mv.tags.get("mlflow_unlearn.parent") == f"{MODEL}/{version}"]


def _assert_succeeded_with_lineage(server: Server, version: str, tags: dict[str, str]) -> None:
    assert tags["mlflow_unlearn.status"] == "succeeded", tags.get("mlflow_unlearn.error")
    children = _children(server, version)
    assert len(children) == 1, "one request must produce exactly one version"
    child = children[0]
    assert tags["mlflow_unlearn.result_version"] == f"{MODEL}/{child.version}"
    assert LINEAGE_KEYS <= set(child.tags)
    assert child.tags["mlflow_unlearn.method"] == "finetune"
    assert child.tags["mlflow_unlearn.run_id"] == tags["mlflow_unlearn.request_run_id"]
    assert int(child.tags["mlflow_unlearn.forget_count"]) > 0
    assert len(child.tags["mlflow_unlearn.forget_digest"]) == 64
    request_run = _client(server).get_run(tags["mlflow_unlearn.request_run_id"])
    assert request_run.info.status == "FINISHED"
    assert Path(request_run.data.tags["mlflow_unlearn.project_uri"]).is_relative_to(server.site)  # not the checkout
    # the server proxies artifacts: the job logged its report through the server
    assert request_run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert _client(server).list_artifacts(request_run.info.run_id)
    assert _client(server).get_experiment(request_run.info.experiment_id).name == "unlearn-requests"


@pytest.fixture(scope="module")
def transition_job(server, parent):
    """A version created with its request tag, then moved to "Unlearn" through the REST transition-stage call."""
    version = _new_version(server, parent, tags={"mlflow_unlearn.request": _request(server)})
    start = time.time()
    response = requests.post(f"{server.url}/api/2.0/mlflow/model-versions/transition-stage",
                             json={"name": MODEL, "version": version, "stage": "Unlearn",
                                   "archive_existing_versions": False}, timeout=30)
    return version, start, response


@pytest.fixture(scope="module")
def concurrent_job(server, parent):
    """Eight clients set request tags on one version at the same moment: two send the same value. The requests
    switch the ONNX copy off, over the server's default, and name their seed."""
    version = _new_version(server, parent)
    values = [_request(server, NO_ONNX + SEED), _request(server, NO_ONNX + SEED)] + [
        _request(server, NO_ONNX + SEED).replace("classes:3", f"classes:{c}") for c in (0, 1, 2, 4, 5, 6)]
    barrier = threading.Barrier(len(values))
    responses: dict[int, requests.Response] = {}

    def send(i: int) -> None:
        barrier.wait()
        responses[i] = _set_tag(server, version, values[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(values))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return version, values, responses


@pytest.fixture(scope="module")
def victim_job(server, parent):
    """A request whose launcher and job the restart test kills, as if the host had rebooted."""
    version = _new_version(server, parent)
    assert _set_tag(server, version, _request(server)).status_code == 200
    return version


def test_plugin_is_loaded_through_its_entry_point(server, parent, transition_job, victim_job, concurrent_job,
                                                 bad_requests):
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="mlflow.model_registry_store") if e.name == "unlearn+sqlite"]
    assert ep.value == "mlflow_unlearn_plugins.store_entry:unlearn_registry_store"
    # The server's registry is the plugin: "Unlearn" is understood, other stages behave as in MLflow.
    url = f"{server.url}/api/2.0/mlflow/model-versions/transition-stage"
    bogus = requests.post(url, json={"name": MODEL, "version": parent.version, "stage": "Forgotten",
                                     "archive_existing_versions": False}, timeout=30)
    assert bogus.status_code == 400 and "Invalid Model Version stage" in bogus.json()["message"]
    missing_tag = requests.post(url, json={"name": MODEL, "version": parent.version, "stage": "Unlearn",
                                           "archive_existing_versions": False}, timeout=30)
    assert missing_tag.status_code == 400 and "no 'mlflow_unlearn.request' tag" in missing_tag.json()["message"]


def test_project_is_found_from_the_installed_package(installed_site):
    """The launcher runs the project shipped inside the installed package, whatever the working directory."""
    code = ("from mlflow_unlearn.tracking import project_dir; import mlflow_unlearn_plugins as p; "
            "print(project_dir()); print(p.__file__)")
    env = {**os.environ, "PYTHONPATH": str(installed_site)}
    out = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, check=True)
    project, plugin = (Path(line) for line in out.stdout.split())
    assert project == installed_site / "mlflow_unlearn" / "project" and plugin.is_relative_to(installed_site)
    from mlflow.projects.utils import load_project

    assert "unlearn" in load_project(str(project))._entry_points


def test_server_restart_resumes_or_fails_requests_with_a_reason(server, transition_job, victim_job):
    """Stop the server while jobs run; one job is also killed (as if its host had rebooted). After the restart the
    surviving request ends succeeded and the killed one failed with a reason; none is left queued or running."""
    survivor, victim = transition_job[0], victim_job
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
    server.stop()
    victim_pids = request_pids(server.registry_uri, MODEL)[int(victim)]
    _kill_if_ours(victim_pids["launcher"], "mlflow_unlearn_plugins.launcher")
    _kill_if_ours(victim_pids["job"], victim_tags["mlflow_unlearn.request_run_id"])
    server.start()
    victim_tags = _wait_done(server, victim)
    assert victim_tags["mlflow_unlearn.status"] == "failed"
    assert "stopped without recording a result" in victim_tags["mlflow_unlearn.error"]
    assert _children(server, victim) == []
    assert _client(server).get_run(victim_tags["mlflow_unlearn.request_run_id"]).info.status == "FAILED"
    _assert_succeeded_with_lineage(server, survivor, _wait_done(server, survivor))


def _chromium_or_skip() -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{CHROMIUM} is missing; .ci/run installs Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the UI test needs a real browser")


def add_request_tag_in_ui(page, server: Server, version: str, value: str) -> None:
    """Open the version's page of the stock MLflow UI and add the request tag there, as a user would."""
    page.goto(f"{server.url}/#/models/{MODEL}/versions/{version}")
    section = page.get_by_role("button", name="Tags", exact=True)
    section.wait_for(timeout=60_000)
    if section.get_attribute("aria-expanded") == "false":  # the UI folds an empty Tags table
        section.click()
    add = page.get_by_test_id("add-tag-button")
    add.wait_for(timeout=30_000)
    page.get_by_placeholder("Name", exact=True).fill("mlflow_unlearn.request")
    page.get_by_placeholder("Value", exact=True).fill(value)
    add.click()


def test_request_from_the_stock_ui_creates_a_new_version(server, parent, tmp_path):
    _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    version = _new_version(server, parent)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            start = time.time()
            add_request_tag_in_ui(page, server, version, _request(server))
            page.get_by_text("mlflow_unlearn.status").first.wait_for(timeout=30_000)
            tags = _wait_done(server, version)
            elapsed = time.time() - start
            _assert_succeeded_with_lineage(server, version, tags)
            new_version = tags["mlflow_unlearn.result_version"].split("/")[1]
            page.reload()
            page.get_by_text("succeeded").first.wait_for(timeout=60_000)
            for close in page.get_by_label("Close").all():  # the assistant side panel hides the tags
                if close.is_visible():
                    close.click()
            page.get_by_text("mlflow_unlearn.status").first.scroll_into_view_if_needed()
            shot = DOCS_SCREENSHOT if os.environ.get(UPDATE_SCREENSHOT_ENV) == "1" else tmp_path / "unlearn_ui.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            page.goto(f"{server.url}/#/models/{MODEL}")
            page.get_by_text(f"Version {new_version}").first.wait_for(timeout=60_000)
        finally:
            browser.close()
    print(f"\nUI tag -> new version {new_version}: {elapsed:.1f} s")


def test_rest_transition_to_unlearn_registers_a_new_version(server, transition_job):
    version, start, response = transition_job
    assert response.status_code == 200, response.text
    assert response.json()["model_version"]["current_stage"] == "None"  # the stage column is left unchanged
    tags = _wait_done(server, version)
    elapsed = time.time() - start
    _assert_succeeded_with_lineage(server, version, tags)
    assert _client(server).get_model_version(MODEL, version).current_stage == "None"
    # the server's MLFLOW_UNLEARN_ONNX=true: the job logged the ONNX copy of the new version, through the server
    onnx_files = {f.path for f in _client(server).list_artifacts(tags["mlflow_unlearn.request_run_id"], "onnx_model")}
    assert {"onnx_model/model.onnx", "onnx_model/MLmodel"} <= onnx_files
    print(f"\nREST transition -> new version: {elapsed:.1f} s")


def test_concurrent_tag_requests_run_once(server, concurrent_job):
    version, values, responses = concurrent_job
    accepted = [i for i, r in responses.items() if r.status_code == 200]
    refused = [r for r in responses.values() if r.status_code == 409]
    assert len(accepted) + len(refused) == len(values)
    assert all("already has an unlearning request" in r.json()["message"] for r in refused)
    # one request won; the identical duplicate of the winner (if any) was accepted as a no-op
    assert len({values[i] for i in accepted}) == 1 and len(accepted) <= 2
    tags = _client(server).get_model_version(MODEL, version).tags
    assert tags["mlflow_unlearn.request"] in {values[i] for i in accepted}
    tags = _wait_done(server, version)
    _assert_succeeded_with_lineage(server, version, tags)
    assert "onnx_model" not in {f.path for f in _client(server).list_artifacts(tags["mlflow_unlearn.request_run_id"])}
    assert _client(server).get_run(tags["mlflow_unlearn.request_run_id"]).data.params["unlearn.seed"] == "11"


BAD_REQUESTS = {
    "malformed value": ("forget classes:3 method nitc", "malformed request part"),
    "unknown method": ("forget=classes:3; method=mystery", "Unknown unlearning method 'mystery'"),
    "module path": ("forget=classes:3; method=os.system", "module paths are not allowed"),
    "disallowed path": ("forget=ids:/etc/forget.txt", "outside the allowed roots"),
    "traversal": ("forget=ids:{allowed}/../forget.txt", "path traversal is not allowed"),
    "URL": ("forget=classes:3; data=https://example.com/data.npz", "is a URL"),
    "unknown classes": ("forget=classes:42; method=finetune", "Unknown classes [42] in the forget spec"),
    "oversized value": ("forget=classes:" + ",".join(["1"] * 600), "the limit is 1000"),
    "non-PyTorch version": ("forget=classes:3; method=finetune", "needs a PyTorch (pytorch flavor) model"),
}


@pytest.fixture(scope="module")
def bad_requests(server, parent):
    """Submit every bad request at once, each on its own version (waiting happens in the tests)."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    versions = {}
    for case, (value, _) in BAD_REQUESTS.items():
        if case == "non-PyTorch version":
            mlflow.set_tracking_uri(server.url)
            mlflow.set_registry_uri(server.url)
            try:
                with mlflow.start_run():
                    info = mlflow.sklearn.log_model(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), name="lr",
                                                    pip_requirements=["scikit-learn"], registered_model_name=MODEL)
            finally:
                mlflow.set_tracking_uri(None)
                mlflow.set_registry_uri(None)
                os.environ.pop("MLFLOW_REGISTRY_URI", None)  # set_registry_uri(None) leaves it set
            versions[case] = str(info.registered_model_version)
        else:
            versions[case] = _new_version(server, parent)
        response = _set_tag(server, versions[case], value.format(allowed=server.allowed))
        if response.status_code == 400:  # refused in the request thread: answered with the reason it records
            error = _client(server).get_model_version(MODEL, versions[case]).tags["mlflow_unlearn.error"]
            assert response.json()["message"] == f"Unlearning request refused: {error}"
        else:  # accepted; the launcher's pre-flight refuses it and marks it failed
            assert response.status_code == 200, response.text
    return versions


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_ui_request_fails_with_a_reason_and_registers_nothing(server, bad_requests, case):
    version = bad_requests[case]
    tags = _wait_done(server, version, timeout=120)
    assert tags["mlflow_unlearn.status"] == "failed"
    assert BAD_REQUESTS[case][1] in tags["mlflow_unlearn.error"]
    assert "mlflow_unlearn.result_version" not in tags
    assert _children(server, version) == []
    if case == "oversized value":
        assert "mlflow_unlearn.request" not in tags  # an oversized value is not stored
    if "mlflow_unlearn.request_run_id" in tags:  # refused in the launcher: the request run records the refusal
        run = _client(server).get_run(tags["mlflow_unlearn.request_run_id"])
        assert run.info.status == "FAILED" and run.data.tags["mlflow_unlearn.status"] == "failed"


def test_request_on_a_missing_version_is_rejected(server, parent):
    before = len(_client(server).search_model_versions(f"name='{MODEL}'"))
    response = _set_tag(server, "999", "forget=classes:3; method=finetune")
    assert response.status_code == 404 and "not found" in response.json()["message"].lower()
    transition = requests.post(f"{server.url}/api/2.0/mlflow/model-versions/transition-stage",
                               json={"name": MODEL, "version": "999", "stage": "Unlearn",
                                     "archive_existing_versions": False}, timeout=30)
    assert transition.status_code == 404
    assert len(_client(server).search_model_versions(f"name='{MODEL}'")) == before


def test_rest_refuses_planted_unlearning_tags_and_a_planted_result(server, transition_job, tmp_path):
    """Issue 25: over REST, every ``mlflow_unlearn.*`` tag but the request is refused on set and delete, lineage
    tags are refused at creation, and a version created with the original's files and a real unlearning run's ID
    (no tags) is not an unlearning result to the reuse lookup or to the provenance check."""
    import mlflow

    from mlflow_unlearn.tracking.keys import read_digest_key
    from mlflow_unlearn.tracking.provenance import INVALID, check

    version, _, _ = transition_job
    tags = _wait_done(server, version)
    child = _children(server, version)[0]
    api = f"{server.url}/api/2.0/mlflow/model-versions"
    for key in ("mlflow_unlearn.verdict", "mlflow_unlearn.provenance", "mlflow_unlearn.parent",
                "mlflow_unlearn.status"):
        planted = requests.post(f"{api}/set-tag", json={"name": MODEL, "version": child.version, "key": key,
                                                        "value": "passed"}, timeout=30)
        deleted = requests.delete(f"{api}/delete-tag", json={"name": MODEL, "version": child.version, "key": key},
                                  timeout=30)
        assert (planted.status_code, deleted.status_code) == (400, 400), (key, planted.text, deleted.text)
    assert _client(server).get_model_version(MODEL, child.version).tags == child.tags
    copied = requests.post(f"{api}/create", json={"name": MODEL, "source": child.source, "run_id": child.run_id,
                                                  "tags": [{"key": k, "value": v} for k, v in child.tags.items()]},
                           timeout=30)
    assert copied.status_code == 200, copied.text  # the real record of this run and these files: a true result
    forged = requests.post(f"{api}/create", json={"name": MODEL, "source": child.source, "run_id": child.run_id,
                                                  "tags": [{"key": k, "value": "planted" if k.endswith("verdict")
                                                            else v} for k, v in child.tags.items()]}, timeout=30)
    assert forged.status_code == 400 and "signed with this server's digest key" in forged.json()["message"]
    # the original's files, logged into the real unlearning run by a writer of the tracking store, and a version
    # created from them under that run (MLflow accepts a source inside the run's artifacts)
    client, run_id = _client(server), tags["mlflow_unlearn.request_run_id"]
    original = mlflow.artifacts.download_artifacts(artifact_uri=client.get_model_version_download_uri(MODEL, version),
                                                   dst_path=str(tmp_path), tracking_uri=server.url)
    client.log_artifacts(run_id, original, "planted_model")
    planted = client.create_model_version(MODEL, f"{client.get_run(run_id).info.artifact_uri}/planted_model",
                                          run_id=run_id)
    found = check(client, planted, read_digest_key())
    assert found.status == INVALID and "other model files" in found.reason
