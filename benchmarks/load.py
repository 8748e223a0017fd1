"""Load and faults of the registry plugin: many requests at once under a job cap, with kill -9 in the middle.

For each database (``sqlite``, ``postgresql``: a private cluster from ``tests/pg_cluster.py``), a real ``mlflow
server`` runs the plugin with ``MLFLOW_UNLEARN_MAX_JOBS=<cap>``. One small model (MLP on ``digits``) is trained and
registered as ``--requests`` versions; one request per version (``method=finetune``, one epoch, permissive gate:
a tiny budget) is submitted from as many threads at once. While they run, a sampler reads every version's tags
(slot holders, running jobs, queue positions), the resident memory of launchers and jobs (``/proc``) and the
server's ``/health`` latency. With ``--faults``, once a quarter of the requests have ended, one running job is
killed with SIGKILL, then the server itself (SIGKILL of its process group), which is restarted 2 s later.

``--cancel N`` adds N requests whose jobs would run for hours (``epochs: 100000``), cancelled through the tag
``mlflow_unlearn.cancel``: every other one as soon as it is submitted (queued, or just admitted), the others once
their job runs (the time until the job's process group is gone is measured). ``--timeout-cases N`` adds N such
requests with ``timeout=<--case-timeout>``, which must end ``timed_out``. Both must leave no version, no launcher
and no job behind.

Reported per database (``LOAD.md`` and ``load.json`` next to this file unless ``--out-dir``): time from the first
submission to the last final state, throughput, final states, lost requests (never final) and duplicates (more than
one new version per request), peak concurrent jobs (``running``) and slot holders, peak memory, health-check
latency, database time per request, the machine and its load average.

Database time is measured inside the server, its launchers and their jobs (``benchmarks/dbtime/sitecustomize.py``
on their ``PYTHONPATH``): every SQL statement and commit, lock waits included, split into the plugin's (ledger,
queue, tag mirror) and MLflow's own. With ``--baseline-code DIR`` each database is run twice in the same
invocation, first with the packages under ``DIR`` (``mlflow_unlearn`` and ``mlflow_unlearn_plugins``, e.g. a
``git archive`` of an earlier commit) ahead of the installed ones, then with the installed code.

Example::

    python benchmarks/load.py --requests 50 --cap 2 --databases sqlite,postgresql --faults --cancel 4 \
        --timeout-cases 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL = "load"
FINAL = ("succeeded", "failed", "cancelled", "timed_out")
STOPPED = ("cancelled", "timed_out")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _job_processes(root: Path) -> list[int]:
    """PIDs of this run's launchers (their command line names their log file under ``root``) and of their
    descendants (the jobs); processes of anyone else are never counted nor touched."""
    parents, launchers = {}, []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rindex(b")") + 2:].split()[1])
        if b"mlflow_unlearn_plugins.launcher" in cmd and str(root).encode() in cmd:
            launchers.append(int(entry.name))
    ours = set(launchers)
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor and ancestor not in ours and ancestor in parents:
            ancestor = parents.get(ancestor)
        if ancestor in ours:
            ours.add(pid)
    return sorted(ours)
#: The deployment key of the benchmark's servers when none is set (it signs every result's provenance).
LOAD_DIGEST_KEY = "load-benchmark-key-0123456789ab"


class Server:
    """``mlflow server`` with the plugin, started and stopped (SIGTERM or SIGKILL) by its process group."""

    def __init__(self, root: Path, backend_uri: str, registry_uri: str, cap: int, code: Path | None = None) -> None:
        self.root, self.port, self.proc, self.cap, self.code = root, _free_port(), None, cap, code
        self.dbtime = root / "dbtime"
        self.dbtime.mkdir(parents=True, exist_ok=True)
        self.backend_uri, self.registry_uri = backend_uri, registry_uri
        self.url = f"http://127.0.0.1:{self.port}"
        self.allowed = root / "allowed"
        self.allowed.mkdir(parents=True, exist_ok=True)
        (self.allowed / "fast.yaml").write_text(
            "epochs: 1\ngate: {forget_tolerance: 100, max_retain_drop: 100, max_test_drop: 100}\n")
        (self.allowed / "slow.yaml").write_text(  # hours: the cancel and timeout cases stop it long before
            "epochs: 100000\ngate: {forget_tolerance: 100, max_retain_drop: 100, max_test_drop: 100}\n")

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "_MLFLOW_"))}
        # the deployment's digest key: it signs (and the plugin checks) the provenance of every result
        env["MLFLOW_UNLEARN_DIGEST_KEY"] = os.environ.get("MLFLOW_UNLEARN_DIGEST_KEY") or LOAD_DIGEST_KEY
        env.update(MLFLOW_UNLEARN_ALLOWED_ROOTS=str(self.allowed), MLFLOW_UNLEARN_LOG_DIR=str(self.root / "logs"),
                   MLFLOW_UNLEARN_DEVICE="cpu", MLFLOW_UNLEARN_MAX_JOBS=str(self.cap), LOAD_DBTIME_DIR=str(self.dbtime))
        # the launchers and jobs inherit the server's environment: the same code and the same clock
        paths = [str(self.code)] if self.code else []
        env["PYTHONPATH"] = os.pathsep.join([*paths, str(HERE / "dbtime"), env.get("PYTHONPATH", "")]).rstrip(":")
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend-store-uri", self.backend_uri, "--registry-store-uri", self.registry_uri,
               "--artifacts-destination", str(self.root / "mlartifacts"), "--workers", "1"]
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 (kept open for the subprocess)
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=5).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError("mlflow server did not become healthy in 300 s")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:  # a loaded server may take longer to shut down gracefully
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)

    def tree_rss_mib(self) -> float:
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return _rss_mib(self.proc.pid) + sum(_rss_mib(int(p)) for p in out.stdout.split())


def _job_pid(server: Server, version: str, tags: dict[str, str]) -> int | None:
    """The PID of a running request's job: in the first ledger's ``mlflow_unlearn.job`` tag, else in the plugin's
    ledger table (the tags no longer show it)."""
    job = tags.get("mlflow_unlearn.job", "")
    if not job:
        import sqlalchemy as sa

        engine = sa.create_engine(server.registry_uri.removeprefix("unlearn+"))
        try:
            with engine.connect() as conn:
                job = conn.execute(sa.text("SELECT job FROM mlflow_unlearn_requests WHERE name = :n AND version = :v"),
                                   {"n": MODEL, "v": int(version)}).scalar() or ""
        except sa.exc.DBAPIError:
            job = ""
        finally:
            engine.dispose()
    pid = job.split("|")[1:2]
    return int(pid[0]) if pid and pid[0].isdigit() else None


class Monitor(threading.Thread):
    """Samples tags, memory, health latency and load average every ``period`` seconds."""

    def __init__(self, server: Server, versions: set[str], period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.server, self.versions, self.period, self.stop = server, versions, period, threading.Event()
        self.peak_running = self.peak_slots = self.peak_queue = 0
        self.peak_jobs_mib = self.peak_server_mib = self.peak_load = 0.0
        self.health_ms: list[float] = []
        self.health_failures = 0
        self.states: dict[str, dict[str, str]] = {}

    def run(self) -> None:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.server.url, registry_uri=self.server.url)
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                requests.get(f"{self.server.url}/health", timeout=10).raise_for_status()
                self.health_ms.append((time.perf_counter() - start) * 1000)
                tags = {mv.version: mv.tags for mv in client.search_model_versions(f"name='{MODEL}'", max_results=1000)
                        if mv.version in self.versions}
                self.states = tags
                status = [t.get("mlflow_unlearn.status") for t in tags.values()]
                waiting = sum(1 for t in tags.values() if "mlflow_unlearn.queue_position" in t)
                self.peak_running = max(self.peak_running, status.count("running"))
                self.peak_slots = max(self.peak_slots, status.count("running") + status.count("queued") - waiting)
                self.peak_queue = max(self.peak_queue, waiting)
            except Exception:  # noqa: BLE001 (the server is down during the fault; counted)
                self.health_failures += 1
            self.peak_jobs_mib = max(self.peak_jobs_mib, sum(_rss_mib(p) for p in _job_processes(self.server.root)))
            self.peak_server_mib = max(self.peak_server_mib, self.server.tree_rss_mib())
            self.peak_load = max(self.peak_load, os.getloadavg()[0])
            time.sleep(self.period)

    def final(self) -> dict[str, str]:
        return {v: t.get("mlflow_unlearn.status", "") for v, t in self.states.items()}


def db_time(folder: Path) -> dict[str, float]:
    """The database time of every process of one run (one JSON file per process, see ``dbtime/sitecustomize.py``)."""
    totals = {"plugin_s": 0.0, "other_s": 0.0, "plugin_statements": 0, "other_statements": 0}
    for path in folder.glob("*.json"):
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for key in totals:
            totals[key] += values.get(key, 0)
    return totals


def _processes_naming(markers: set[str]) -> list[int]:
    """PIDs of live processes whose command line holds one of ``markers`` (a request's ID or run ID)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and any(m in cmd for m in markers):
            found.append(int(entry.name))
    return found


def run_database(database: str, n: int, cap: int, faults: bool, timeout_s: float, workdir: Path,
                 code: Path | None = None, label: str = "installed", cancel: int = 0, timeout_cases: int = 0,
                 case_timeout: str = "30s") -> dict:
    from mlflow import MlflowClient
    from mlflow_unlearn_plugins.process_group import group_members

    from mlflow_unlearn.tracking import train_model

    root = workdir / f"{database}-{label}"
    root.mkdir(parents=True)
    cluster = None
    if database == "postgresql":
        sys.path.insert(0, str(REPO / "tests"))
        from pg_cluster import PostgresCluster, find_binaries

        binaries = find_binaries()
        if binaries is None:
            raise RuntimeError("PostgreSQL binaries not found (apt-get install postgresql)")
        cluster = PostgresCluster(binaries)
        cluster.start()
        db = cluster.create_database("mlflow")
        server = Server(root, db, f"unlearn+{db}", cap, code)
    else:
        server = Server(root, f"sqlite:///{root}/tracking.db", f"unlearn+sqlite:///{root}/registry.db", cap, code)
    events: list[str] = []
    try:
        server.start()
        client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
        parent = train_model("digits", arch="mlp", registered_model_name=MODEL, config={"epochs": 1}, onnx=False,
                             device="cpu", tracking_uri=server.url, registry_uri=server.url).version
        total = n + cancel + timeout_cases
        versions = [client.create_model_version(MODEL, parent.source, parent.run_id).version for _ in range(total)]
        value = f"forget=classes:3; method=finetune; config={server.allowed}/fast.yaml"
        slow = f"forget=classes:3; method=finetune; onnx=false; config={server.allowed}/slow.yaml"
        values = {v: value for v in versions[:n]}
        values.update({v: slow for v in versions[n:n + cancel]})
        values.update({v: f"{slow}; timeout={case_timeout}" for v in versions[n + cancel:]})
        # every other cancel case is cancelled at once (queued), the others once their job runs
        to_cancel = {v: "queued" if i % 2 else "running" for i, v in enumerate(versions[n:n + cancel])}
        cancel_codes: dict[str, int] = {}
        stopping: dict[int, float] = {}  # job PID -> when its request was cancelled
        stop_s: list[float] = []
        # the server's first request imports the engine; one refused request warms it up
        requests.post(f"{server.url}/api/2.0/mlflow/model-versions/set-tag", timeout=600, json={
            "name": MODEL, "version": parent.version, "key": "mlflow_unlearn.request", "value": "forget=x"})
        monitor = Monitor(server, set(versions))
        barrier, codes = threading.Barrier(total), {}

        def submit(v: str) -> None:
            barrier.wait()
            codes[v] = requests.post(f"{server.url}/api/2.0/mlflow/model-versions/set-tag", timeout=600, json={
                "name": MODEL, "version": v, "key": "mlflow_unlearn.request", "value": values[v]}).status_code

        def cancel_due() -> None:
            """Cancel the cancel cases that are due; time the stop of each running job cancelled."""
            for v, when in list(to_cancel.items()):
                tags = monitor.states.get(v, {})
                job = _job_pid(server, v, tags) if tags.get("mlflow_unlearn.status") == "running" else None
                running = job is not None
                if tags.get("mlflow_unlearn.status") in FINAL:
                    to_cancel.pop(v)  # finished first: counted by its final state
                elif when == "queued" or running:
                    at = time.time()
                    cancel_codes[v] = requests.post(
                        f"{server.url}/api/2.0/mlflow/model-versions/set-tag", timeout=600,
                        json={"name": MODEL, "version": v, "key": "mlflow_unlearn.cancel", "value": "load"}).status_code
                    to_cancel.pop(v)
                    if running:
                        stopping[job] = at
            for pid, at in list(stopping.items()):
                if not group_members(pid):
                    stop_s.append(time.time() - at)
                    stopping.pop(pid)

        threads = [threading.Thread(target=submit, args=(v,)) for v in versions]
        time.sleep(2.5)  # every process's last flush before the requests
        db_before = db_time(server.dbtime)  # the model's training and registration are not the requests' time
        monitor.start()
        start = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        submit_s = time.time() - start
        killed_job = killed_server = False
        deadline = start + timeout_s
        while time.time() < deadline:
            states = monitor.final()
            done = sum(1 for s in states.values() if s in FINAL)
            cancel_due()
            if len(states) == total and done == total and not stopping:
                break
            if faults and not killed_job and done >= n // 4:
                for version, tags in monitor.states.items():
                    job = _job_pid(server, version, tags) if tags.get("mlflow_unlearn.status") == "running" else None
                    if job is not None:
                        try:
                            os.kill(job, signal.SIGKILL)
                        except ProcessLookupError:  # it ended between the read and the kill: try the next one
                            continue
                        killed_job = True
                        events.append(f"{time.time() - start:.0f} s: kill -9 of a running job (request ended: "
                                      f"{done}/{n})")
                        break
            if faults and killed_job and not killed_server:
                server.kill()
                killed_server = True
                events.append(f"{time.time() - start:.0f} s: kill -9 of the server; restarted 2 s later")
                time.sleep(2)
                server.start()
            time.sleep(1)
        total_s = time.time() - start
        monitor.stop.set()
        monitor.join(30)
        final = monitor.final()
        children: dict[str, int] = {}
        for mv in client.search_model_versions(f"name='{MODEL}'", max_results=1000):
            p = mv.tags.get("mlflow_unlearn.parent", "")
            if p:
                children[p] = children.get(p, 0) + 1
        counts = {s: list(final.values()).count(s) for s in FINAL}
        health = sorted(monitor.health_ms)
        stopped = [v for v, s in final.items() if s in STOPPED]
        markers = {t[k] for v in stopped for t in [monitor.states[v]]
                   for k in ("mlflow_unlearn.request_id", "mlflow_unlearn.request_run_id") if k in t}
        left_deadline = time.time() + 60  # a launcher exits a moment after its final write
        while (left := _processes_naming(markers)) and time.time() < left_deadline:
            time.sleep(0.5)
        time.sleep(3)  # the launchers' last ledger writes and every process's last flush
        db = {key: value - db_before.get(key, 0) for key, value in db_time(server.dbtime).items()}
        return {
            "database": database, "code": label, "requests": total, "cap": cap, "faults": events,
            "submit_s": round(submit_s, 2),
            "accepted": sum(1 for c in codes.values() if c == 200), "time_to_final_s": round(total_s, 1),
            "succeeded": counts["succeeded"], "failed": counts["failed"],
            "cancel_cases": cancel, "cancelled": counts["cancelled"], "cancel_answers": sorted(cancel_codes.values()),
            "timeout_cases": timeout_cases, "timed_out": counts["timed_out"],
            "stopped_with_version": sum(1 for v in stopped if children.get(f"{MODEL}/{v}")),
            "stopped_left_running": len(left),
            "cancel_to_job_gone_s_max": round(max(stop_s), 1) if stop_s else None,
            "lost": total - sum(counts.values()),
            "duplicates": sum(1 for c in children.values() if c > 1),
            "peak_running": monitor.peak_running, "peak_slots": monitor.peak_slots,
            "peak_queue": monitor.peak_queue, "peak_jobs_rss_mib": round(monitor.peak_jobs_mib),
            "peak_server_rss_mib": round(monitor.peak_server_mib),
            "health_ms_p50": round(statistics.median(health), 1) if health else None,
            "health_ms_p95": round(health[int(0.95 * (len(health) - 1))], 1) if health else None,
            "health_ms_max": round(health[-1], 1) if health else None,
            "health_failures": monitor.health_failures, "peak_load_1min": round(monitor.peak_load, 1),
            "requests_per_min": round(60 * n / total_s, 2),
            "plugin_db_ms_per_request": round(1000 * db["plugin_s"] / n, 1),
            "plugin_statements_per_request": round(db["plugin_statements"] / n, 1),
            "all_db_ms_per_request": round(1000 * (db["plugin_s"] + db["other_s"]) / n, 1),
        }
    finally:
        _end_jobs(root)
        server.kill(signal.SIGTERM)
        if cluster is not None:
            cluster.stop()


def _end_jobs(root: Path) -> None:
    for pid in _job_processes(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def write_report(results: list[dict], out_dir: Path, command: str) -> Path:
    machine = f"{platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}"
    lines = ["# Load and faults of the registry plugin", "",
             f"Generated by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
             f"Machine: {machine}; load average before the run: {results[0].get('load_before', '?')}.", "",
             "| database | code | requests | cap | submitted in (s) | time to final (s) | requests / min | "
             "plugin DB ms / request | plugin statements / request | all DB ms / request | succeeded | failed | "
             "lost | duplicates | peak running | peak slots | longest queue | peak launchers+jobs RSS (MiB) | "
             "peak server RSS (MiB) | /health p50 / p95 / max (ms) | health failures | peak load (1 min) |",
             "|" + "---|" * 22]
    for r in results:
        lines.append(
            f"| {r['database']} | {r['code']} | {r['requests']} | {r['cap']} | {r['submit_s']} | "
            f"{r['time_to_final_s']} | {r['requests_per_min']} | {r['plugin_db_ms_per_request']} | "
            f"{r['plugin_statements_per_request']} | {r['all_db_ms_per_request']} | "
            f"{r['succeeded']} | {r['failed']} | {r['lost']} | {r['duplicates']} | {r['peak_running']} | "
            f"{r['peak_slots']} | {r['peak_queue']} | {r['peak_jobs_rss_mib']} | {r['peak_server_rss_mib']} | "
            f"{r['health_ms_p50']} / {r['health_ms_p95']} / {r['health_ms_max']} | {r['health_failures']} | "
            f"{r['peak_load_1min']} |")
    if any(r.get("cancel_cases") or r.get("timeout_cases") for r in results):
        lines += ["", "Cancel and deadlines:", "",
                  "| database | code | cancel cases | cancelled | cancel answers (HTTP) | cancel → job gone, max (s) | "
                  "timeout cases | timed out | stopped with a version | stopped, left running |", "|" + "---|" * 10]
        for r in results:
            lines.append(f"| {r['database']} | {r['code']} | {r['cancel_cases']} | {r['cancelled']} | "
                         f"{r['cancel_answers']} | {r['cancel_to_job_gone_s_max']} | {r['timeout_cases']} | "
                         f"{r['timed_out']} | {r['stopped_with_version']} | {r['stopped_left_running']} |")
    lines += ["", "Faults injected:", ""]
    for r in results:
        lines += [f"* {r['database']} ({r['code']}): " + ("; ".join(r["faults"]) or "none")]
    lines += ["", "A request whose job was killed ends `failed` with a reason; every other request must end "
              "`succeeded`. *Lost* counts requests never final; *duplicates* counts parents with more than one new "
              "version. *Peak slots* counts requests admitted or running (never above the cap); health failures "
              "are samples taken while the server was down. *Plugin DB ms / request* is the time of the SQL "
              "statements and commits sent by the plugin's code (lock waits included) in the server, the launchers "
              "and the jobs, from the first submission to the last final state, divided by the requests; *all DB "
              "ms* adds MLflow's own statements (the jobs' runs and metrics, the monitor's searches).", ""]
    path = out_dir / "LOAD.md"
    path.write_text("\n".join(lines))
    (out_dir / "load.json").write_text(json.dumps(results, indent=1))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--cap", type=int, default=2)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--faults", action="store_true", help="kill -9 a job and the server in the middle")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds to wait for every final state")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--baseline-code", type=Path, default=None,
                        help="a folder with earlier mlflow_unlearn and mlflow_unlearn_plugins packages, run first")
    parser.add_argument("--baseline-label", default="baseline")
    parser.add_argument("--label", default="this commit")
    parser.add_argument("--cancel", type=int, default=0, help="requests of long jobs to cancel (queued or running)")
    parser.add_argument("--timeout-cases", type=int, default=0, help="requests of long jobs with a short timeout=")
    parser.add_argument("--case-timeout", default="30s", help="the timeout= of the timeout cases")
    args = parser.parse_args(argv)
    load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    results = []
    sides = [(args.baseline_code.resolve(), args.baseline_label)] if args.baseline_code else []
    sides.append((None, args.label))
    with tempfile.TemporaryDirectory(prefix="mlflow-unlearn-load-") as work:
        for database in args.databases.split(","):
            for code, label in sides:
                # the baseline code may predate cancel and deadlines: its side runs the plain requests only
                stops = (0, 0) if code is not None else (args.cancel, args.timeout_cases)
                result = run_database(database, args.requests, args.cap, args.faults, args.timeout, Path(work),
                                      code, label, *stops, args.case_timeout)
                result["load_before"] = load_before
                results.append(result)
                print(json.dumps(result), flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/load.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(write_report(results, args.out_dir, command))
    return 0 if all(r["lost"] == 0 and r["duplicates"] == 0 and r["peak_slots"] <= r["cap"]
                    and r["stopped_with_version"] == 0 and r["stopped_left_running"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
