"""The processes of one registry request and their resident memory, from the request to its final state.

A real ``mlflow server`` runs the plugin on SQLite with artifact proxying (``Server`` of ``benchmarks/load.py``, one
job slot). One small model (MLP on ``digits``) is trained and registered, and one request is set on a new version of
it (``method=finetune``, one epoch, permissive gate, ``onnx=false``). While the request runs, every 0.1 s the
request's processes are read from ``/proc``: its launcher (its command line names the run's log folder) and every
descendant of it, each with its role (launcher, pre-flight, ``mlflow run``, shell, job), its ``VmRSS``, its
``VmHWM`` (the kernel's own high-water mark of the process, so a peak between two samples still counts) and its
``Pss`` (``smaps_rollup``: shared pages split between the processes that map them, every 0.5 s).

Reported (a Markdown table on stdout, JSON with ``--json``): per process, its role, its peak RSS and how long it
lived; per request, the number of processes, the most that ran at once, the sum of the per-process peaks, the
peak of the sum of concurrent RSS (the memory the request holds at its worst moment: ``peak launchers+jobs RSS``
of ``LOAD.md`` for one request) and the peak of the sum of concurrent PSS (the same without counting a library that
two of its processes map twice). With ``--baseline-code DIR`` the same request runs first with the packages under
``DIR`` (a ``git archive`` of an earlier commit, on the server's ``PYTHONPATH``, inherited by launchers and jobs).

Example::

    git archive main mlflow_unlearn plugins | tar -x -C /tmp/main-code && mv /tmp/main-code/plugins \\
        /tmp/main-code/mlflow_unlearn_plugins
    nice -n 10 python benchmarks/request_rss.py --baseline-code /tmp/main-code --baseline-label main
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from load import MODEL, Server  # noqa: E402 (benchmarks/ is not a package)

#: (role, bytes that a command line of that role contains), first match wins.
ROLES = (
    ("launcher", b"mlflow_unlearn_plugins.launcher"),
    ("pre-flight", b"mlflow_unlearn_plugins.preflight"),
    ("job", b"mlflow_unlearn\x00unlearn"),
    ("mlflow run", b"\x00run\x00"),
    ("shell", b"bash"),
)


def _role(cmdline: bytes) -> str:
    for role, marker in ROLES:
        if marker in cmdline:
            return role
    return cmdline.split(b"\x00", 1)[0].decode(errors="replace")[-40:] or "?"


def _memory_mib(pid: int) -> tuple[float, float]:
    """``(VmRSS, VmHWM)`` of ``pid`` in MiB; zeros once it is gone."""
    rss = hwm = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, hwm


def _pss_mib(pid: int) -> float:
    """``Pss`` of ``pid`` in MiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def request_processes(root: Path) -> dict[int, bytes]:
    """PID -> command line of the launchers whose command line names ``root`` and of all their descendants."""
    parents, cmdlines = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
            cmdlines[int(entry.name)] = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rindex(b")") + 2:].split()[1])
    ours = {pid for pid, cmd in cmdlines.items()
            if b"mlflow_unlearn_plugins.launcher" in cmd and str(root).encode() in cmd}
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor and ancestor not in ours and ancestor in parents:
            ancestor = parents.get(ancestor)
        if ancestor in ours:
            ours.add(pid)
    return {pid: cmdlines[pid] for pid in ours if pid in cmdlines}


@dataclass
class ProcessRecord:
    pid: int
    role: str
    peak_rss_mib: float = 0.0
    first_s: float = 0.0
    last_s: float = 0.0


@dataclass(eq=False)
class Sampler(threading.Thread):
    """Samples the processes of the request under ``root`` every ``period`` seconds until stopped."""

    root: Path
    period: float = 0.1
    processes: dict[int, ProcessRecord] = field(default_factory=dict)
    peak_total_mib: float = 0.0
    peak_total_roles: dict[str, float] = field(default_factory=dict)
    peak_total_pss_mib: float = 0.0
    most_at_once: int = 0

    def __post_init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.start_time = time.time()

    def run(self) -> None:
        samples = 0
        while not self.stop.is_set():
            now, total, roles = time.time() - self.start_time, 0.0, {}
            found = request_processes(self.root)
            samples += 1
            if samples % 5 == 0:  # smaps_rollup walks the page tables: less often
                self.peak_total_pss_mib = max(self.peak_total_pss_mib, sum(_pss_mib(pid) for pid in found))
            for pid, cmdline in found.items():
                rss, hwm = _memory_mib(pid)
                if rss == 0.0:  # a zombie or gone
                    continue
                record = self.processes.setdefault(pid, ProcessRecord(pid, _role(cmdline), first_s=now))
                record.role = _role(cmdline)  # a child seen between its fork and its exec has its parent's role
                record.peak_rss_mib = max(record.peak_rss_mib, hwm, rss)
                record.last_s = now
                total += rss
                roles[f"{record.role} {pid}"] = round(rss)
            self.most_at_once = max(self.most_at_once, len(roles))
            if total > self.peak_total_mib:
                self.peak_total_mib, self.peak_total_roles = total, roles
            time.sleep(self.period)


def measure(workdir: Path, label: str, code: Path | None, timeout_s: float) -> dict:
    """Run one request on a fresh server and return what :class:`Sampler` saw, and the request's final tags."""
    from mlflow import MlflowClient

    from mlflow_unlearn.tracking import train_model

    root = workdir / label.replace(" ", "-")
    root.mkdir(parents=True)
    server = Server(root, f"sqlite:///{root}/tracking.db", f"unlearn+sqlite:///{root}/registry.db", 1, code)
    try:
        server.start()
        client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
        parent = train_model("digits", arch="mlp", registered_model_name=MODEL, config={"epochs": 1}, onnx=False,
                             device="cpu", tracking_uri=server.url, registry_uri=server.url).version
        version = client.create_model_version(MODEL, parent.source, parent.run_id).version
        sampler = Sampler(server.root)
        sampler.start()
        started = time.time()
        value = f"forget=classes:3; method=finetune; config={server.allowed}/fast.yaml; onnx=false"
        requests.post(f"{server.url}/api/2.0/mlflow/model-versions/set-tag", timeout=600, json={
            "name": MODEL, "version": version, "key": "mlflow_unlearn.request", "value": value}).raise_for_status()
        tags: dict[str, str] = {}
        while time.time() - started < timeout_s:
            tags = client.get_model_version(MODEL, version).tags
            if tags.get("mlflow_unlearn.status") in ("succeeded", "failed") and not request_processes(server.root):
                break
            time.sleep(0.5)
        elapsed = time.time() - started
        sampler.stop.set()
        sampler.join(10)
    finally:
        server.kill()
    records = sorted(sampler.processes.values(), key=lambda r: r.first_s)
    return {
        "code": label, "status": tags.get("mlflow_unlearn.status"), "error": tags.get("mlflow_unlearn.error"),
        "seconds": round(elapsed, 1), "processes": [asdict(r) for r in records],
        "most_at_once": sampler.most_at_once,
        "sum_of_peaks_mib": round(sum(r.peak_rss_mib for r in records)),
        "peak_total_mib": round(sampler.peak_total_mib), "at_peak": sampler.peak_total_roles,
        "peak_total_pss_mib": round(sampler.peak_total_pss_mib),
    }


def report(results: list[dict]) -> str:
    machine = f"{platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}"
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [f"Machine: {machine}; load average after the run: {load}.", "",
             "| code | status | s | processes | most at once | per process: role peak RSS MiB (lived s) | "
             "sum of per-process peaks (MiB) | peak of concurrent RSS (MiB) | peak of concurrent PSS (MiB) |",
             "|" + "---|" * 9]
    for r in results:
        per = "; ".join(f"{p['role']} {p['peak_rss_mib']:.0f} ({p['last_s'] - p['first_s']:.0f})"
                        for p in r["processes"])
        lines.append(f"| {r['code']} | {r['status']} | {r['seconds']} | {len(r['processes'])} | {r['most_at_once']} | "
                     f"{per} | {r['sum_of_peaks_mib']} | {r['peak_total_mib']} | {r['peak_total_pss_mib']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-code", type=Path, default=None,
                        help="a folder with earlier mlflow_unlearn and mlflow_unlearn_plugins packages, run first")
    parser.add_argument("--baseline-label", default="baseline")
    parser.add_argument("--label", default="this commit")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    sides = [(args.baseline_code.resolve(), args.baseline_label)] if args.baseline_code else []
    sides.append((None, args.label))
    results = []
    with tempfile.TemporaryDirectory(prefix="mlflow-unlearn-rss-") as work:
        for code, label in sides:
            results.append(measure(Path(work), label, code, args.timeout))
            print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(report(results))
    return 0 if all(r["status"] == "succeeded" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
