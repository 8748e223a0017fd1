"""Where the test suite's CPU goes: the machine's CPU time, split between the tests running at each moment.

The suite is CPU-bound on 2 cores (its processes, servers, launchers and jobs keep both busy), so its wall time
follows its CPU time; per-test durations do not show that, because a test's jobs run in other processes, some of
them detached. This runs the suite (or the pytest arguments given) with a small plugin that logs each test's start
and end in each pytest-xdist worker, while a thread reads the machine's busy time from ``/proc/stat`` every second.
Each second's CPU is split evenly between the tests running in it. Run it on an otherwise idle machine: every
process's CPU counts.

Example::

    python benchmarks/suite_cpu.py                # the whole suite, as the README runs it
    python benchmarks/suite_cpu.py tests/test_byo.py -n 0
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PLUGIN = '''
import os, time
_out = open(os.path.join(os.environ["SUITE_CPU_DIR"], "tests-" + os.environ.get("PYTEST_XDIST_WORKER", "main")),
            "a", buffering=1)

def pytest_runtest_logstart(nodeid, location):
    _out.write(f"start {time.time():.3f} {nodeid}\\n")

def pytest_runtest_logfinish(nodeid, location):
    _out.write(f"end {time.time():.3f} {nodeid}\\n")
'''


def busy_seconds() -> float:
    """The machine's busy CPU time so far (user, nice, system, irq, softirq), in seconds."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def run(pytest_args: list[str], log_dir: Path) -> tuple[list[tuple[float, float]], int]:
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.time(), busy_seconds()))
            done.wait(1.0)

    (log_dir / "suite_cpu_plugin.py").write_text(PLUGIN)
    env = {**os.environ, "SUITE_CPU_DIR": str(log_dir),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(log_dir), os.environ.get("PYTHONPATH")]))}
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = subprocess.call([sys.executable, "-m", "pytest", "-p", "suite_cpu_plugin", *pytest_args], env=env)
    done.set()
    sampler.join()
    samples.append((time.time(), busy_seconds()))
    return samples, code


def intervals(log_dir: Path) -> list[tuple[float, float, str]]:
    found = []
    for path in log_dir.glob("tests-*"):
        started: dict[str, float] = {}
        for line in path.read_text().splitlines():
            kind, at, nodeid = line.split(" ", 2)
            if kind == "start":
                started[nodeid] = float(at)
            elif nodeid in started:
                found.append((started.pop(nodeid), float(at), nodeid))
    return found


def split_cpu(samples: list[tuple[float, float]], tests: list[tuple[float, float, str]]) -> collections.Counter:
    """CPU-seconds per test: each sampled second's busy time, split evenly between the tests running in it."""
    cpu: collections.Counter = collections.Counter()
    for (t0, c0), (t1, c1) in zip(samples, samples[1:], strict=False):
        running = [nodeid for start, end, nodeid in tests if start < t1 and end > t0]
        for nodeid in running:
            cpu[nodeid] += (c1 - c0) / len(running)
    return cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=25, help="rows in each table")
    args, pytest_args = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="suite-cpu-") as tmp:
        start = time.time()
        samples, code = run(pytest_args, Path(tmp))
        tests = intervals(Path(tmp))
    wall = time.time() - start
    cpu = split_cpu(samples, tests)
    modules: collections.Counter = collections.Counter()
    for nodeid, seconds in cpu.items():
        modules[nodeid.split("::")[0]] += seconds
    busy = samples[-1][1] - samples[0][1]
    print(f"\npytest exit code {code}; {wall:.0f} s wall, {busy:.0f} CPU-s busy on {os.cpu_count()} CPUs "
          f"({busy / wall / os.cpu_count():.0%}); 1-minute load after: {os.getloadavg()[0]:.1f}\n")
    print("| module | CPU-s | share |\n|---|---|---|")
    for module, seconds in modules.most_common(args.top):
        print(f"| {module} | {seconds:.0f} | {seconds / busy:.0%} |")
    print("\n| test | CPU-s |\n|---|---|")
    for nodeid, seconds in cpu.most_common(args.top):
        print(f"| {nodeid} | {seconds:.0f} |")
    return code


if __name__ == "__main__":
    sys.exit(main())
