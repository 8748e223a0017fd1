"""Overhead of ``mlflow run . -e unlearn`` on the demo task: everything except the unlearning algorithm.

Setup (not timed): a fresh SQLite tracking store in a temporary folder and ``smallcnn`` trained on
``mnist5k`` and registered as version 1, as the ``main`` entry point does. Then, ``--repeats`` times, a
different class is unlearned from version 1 by

    mlflow run <repo> -e unlearn --env-manager local -P model_uri=models:/<name>/1 -P forget=classes:<c>

(a different class each time, so that idempotency never short-cuts a repeat). For each repeat:

* ``wall_s``: wall-clock time of the whole ``mlflow run`` command;
* ``algorithm_s``: the method's own time (``unlearn.wall_time_s``, timed inside ``run_method``);
* ``overhead_s = wall_s - algorithm_s``: CLI and interpreter start-up, imports, run creation, registry
  look-up, model download, data loading, forget-set resolution, evaluation of the original and the
  unlearned model (accuracies, MIAs, ZRF), the gate, the report and plots, logging the trainable model and
  the checked ONNX copy, registration;

and, from the run's ``time.*`` metrics, the in-process parts. The job process (``python -m mlflow_unlearn
unlearn``) is watched through ``/proc`` (Linux): its start and its exit split the wall time into what
``mlflow run`` does before and after the job, and the job's own lifetime; the job's lifetime minus its
in-process time is its interpreter start-up, imports, printing and exit. Two floors are timed for
reference: ``mlflow run`` of a project whose command is ``python -c pass`` (``mlflow_run_floor_s``), and
``python -c "import torch, mlflow"`` (``import_floor_s``), the imports no job can avoid. Results go to
``OVERHEAD.md`` (and ``overhead.json``) next to this file unless ``--out-dir`` is given.

Example::

    python benchmarks/overhead.py --repeats 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 5.0
#: The job's command line contains this (the MLproject's ``unlearn`` entry point).
JOB_MARKER = b"mlflow_unlearn\0unlearn"
_POLL_S = 0.02


def _find_job(marker: bytes) -> int | None:
    """The PID of a running process whose command line contains ``marker`` (None if none, or no ``/proc``)."""
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    if marker in fh.read():
                        return int(entry.name)
            except OSError:
                continue
    return None


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


ANALYSIS_HEADING = "## Measurement conditions and analysis"
"""The hand-written part of OVERHEAD.md, from this heading on, is kept when the tables are regenerated."""


def _mlflow_run(args: list[str], env: dict[str, str], cwd: Path, *,
                job_marker: bytes | None = None) -> dict[str, float | None]:
    """Run ``mlflow run ARGS``; return its wall time, the CPU time (user + system) of its process tree and,
    when ``job_marker`` is given, when the job process appeared and exited (seconds after the start)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "run", *args], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    job, job_start, job_end = None, None, None
    while job_marker is not None and proc.poll() is None:
        if job is None:
            job = _find_job(job_marker)
            if job is not None:
                job_start = time.perf_counter() - start
        elif not _running(job):
            job_end = time.perf_counter() - start
            break
        time.sleep(_POLL_S)
    stderr = proc.communicate()[1].decode(errors="replace")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"mlflow run {' '.join(args)} failed:\n{stderr[-3000:]}")
    return {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "job_start_s": job_start, "job_end_s": job_end}


def _import_floor(repeats: int) -> float:
    """Median wall time of ``python -c "import torch, mlflow"``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, mlflow"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--arch", default="smallcnn")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of version 1 (setup)")
    parser.add_argument("--method", default="nitc")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)

    from mlflow import MlflowClient

    from mlflow_unlearn.tracking.api import train_model

    work = Path(tempfile.mkdtemp(prefix="mlflow-unlearn-overhead-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("overhead", artifact_location=str(work / "artifacts"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_UNLEARN_QUIET": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    name = f"{args.data}-{args.arch}"
    print(f"setup: training {args.arch} on {args.data} ({args.epochs} epochs) in {work}", file=sys.stderr)
    train_model(args.data, arch=args.arch, registered_model_name=name, config={"epochs": args.epochs},
                tracking_uri=uri, experiment=experiment)

    floor_project = work / "floor"
    floor_project.mkdir()
    (floor_project / "MLproject").write_text("name: floor\nentry_points:\n  main:\n    command: python -c pass\n")
    floor_runs = [_mlflow_run([str(floor_project), "--env-manager", "local", "--experiment-id", experiment], env,
                              work) for _ in range(args.repeats)]
    floors = [r["wall_s"] for r in floor_runs]
    floor_cpu = statistics.median(r["cpu_s"] for r in floor_runs)
    import_floor = _import_floor(args.repeats)

    rows = []
    for i in range(args.repeats):
        forget = f"classes:{(3 + 2 * i) % 10}"
        timed = _mlflow_run([str(REPO), "-e", "unlearn", "--env-manager", "local", "--experiment-id", experiment,
                             "-P", f"model_uri=models:/{name}/1", "-P", f"forget={forget}",
                             "-P", f"method={args.method}"], env, work, job_marker=JOB_MARKER)
        wall = timed["wall_s"]
        run = client.search_runs([experiment], filter_string="tags.`mlflow.project.entryPoint` = 'unlearn'",
                                 order_by=["attributes.start_time DESC"], max_results=1)[0]
        metrics = run.data.metrics
        algorithm = metrics["unlearn.wall_time_s"]
        watched = timed["job_start_s"] is not None and timed["job_end_s"] is not None
        rows.append({
            "forget": forget, "wall_s": wall, "cpu_s": timed["cpu_s"], "algorithm_s": algorithm,
            "overhead_s": wall - algorithm,
            "job_lifetime_s": timed["job_end_s"] - timed["job_start_s"] if watched else None,
            "mlflow_run_own_s": wall - (timed["job_end_s"] - timed["job_start_s"]) if watched else None,
            "in_process_total_s": metrics["time.total_s"], "prepare_s": metrics["time.prepare_s"],
            "evaluate_s": metrics["time.evaluate_s"], "log_models_s": metrics.get("time.log_models_s", 0.0),
            "report_s": metrics["time.report_s"],
            "verdict": run.data.tags.get("mlflow_unlearn.verdict"),
            "onnx_max_abs_diff": metrics.get("onnx.max_abs_diff"),
        })
        print(json.dumps(rows[-1]), file=sys.stderr)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    floor = statistics.median(floors)
    # The breakdown is that of the repeat with the median overhead, so that its parts add up.
    typical = sorted(rows, key=lambda r: r["overhead_s"])[len(rows) // 2]
    in_process_rest = typical["in_process_total_s"] - typical["algorithm_s"] - typical["prepare_s"] \
        - typical["evaluate_s"] - typical["log_models_s"] - typical["report_s"]
    if typical["job_lifetime_s"] is not None:
        mlflow_run_part = ("`mlflow run` itself, before and after the job (measured: wall time minus the job "
                           "process's lifetime)", typical["mlflow_run_own_s"])
        startup = typical["job_lifetime_s"] - typical["in_process_total_s"]
    else:  # no /proc: the floor stands in for mlflow run's own part
        mlflow_run_part = ("`mlflow run` itself (the floor below)", floor)
        startup = typical["wall_s"] - typical["in_process_total_s"] - floor
    summary = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
                   f"{os.getloadavg()[0]:.1f} at the end",
        "task": f"{args.arch} on {args.data}, method {args.method}, forget one class",
        "repeats": rows, "mlflow_run_floor_s": floors, "mlflow_run_floor_cpu_s": floor_cpu,
        "import_floor_s": import_floor,
        "median_overhead_s": med("overhead_s"), "target_s": TARGET_S,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "overhead.json").write_text(json.dumps(summary, indent=2))
    lines = [
        "# Overhead of `mlflow run . -e unlearn`",
        "",
        f"Measured {summary['date']} by `benchmarks/overhead.py` on {summary['machine']}. Task: "
        f"{summary['task']}; version 1 trained for {args.epochs} epochs. Overhead = wall time of the whole "
        "`mlflow run` command minus the method's own time.",
        "",
        "| forget | wall (s) | CPU (s) | algorithm (s) | **overhead (s)** | evaluate (s) | log models + ONNX (s) | "
        "verdict | ONNX max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| `{r['forget']}` | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['algorithm_s']:.2f} | "
              f"**{r['overhead_s']:.2f}** | {r['evaluate_s']:.2f} | {r['log_models_s']:.2f} | {r['verdict']} | "
              f"{r['onnx_max_abs_diff'] if r['onnx_max_abs_diff'] is not None else 'n/a'} |" for r in rows]
    lines += [
        "",
        f"Median overhead: **{med('overhead_s'):.2f} s** (target <= {TARGET_S:g} s: "
        f"{'met' if med('overhead_s') <= TARGET_S else 'NOT met'}).",
        "",
        f"Where the overhead of the median repeat (`{typical['forget']}`) goes:",
        "",
        "| part | seconds |",
        "|---|---|",
        f"| {mlflow_run_part[0]} | {mlflow_run_part[1]:.2f} |",
        f"| the job's interpreter start-up, imports, printing and exit | {startup:.2f} |",
        f"| registry look-up, model download, data, forget set | {typical['prepare_s']:.2f} |",
        f"| evaluation (original + unlearned: accuracies, MIAs, ZRF) and gate | {typical['evaluate_s']:.2f} |",
        f"| logging the trainable model and the checked ONNX copy | {typical['log_models_s']:.2f} |",
        f"| audit report: loss histograms, JSON/Markdown, plots, upload | {typical['report_s']:.2f} |",
        f"| params, dataset inputs, registration, run tags | {in_process_rest:.2f} |",
        "",
        f"Floors, for reference (medians of {args.repeats}): `mlflow run` of a project whose command is "
        f"`python -c pass` takes {floor:.2f} s ({floor_cpu:.2f} s of CPU time); `python -c \"import torch, "
        f"mlflow\"` takes {import_floor:.2f} s.",
        "",
    ]
    target = args.out_dir / "OVERHEAD.md"
    previous = target.read_text() if target.exists() else ""
    kept = previous[previous.index(ANALYSIS_HEADING):] if ANALYSIS_HEADING in previous else ""
    target.write_text("\n".join(lines).rstrip("\n") + ("\n\n" + kept if kept else "\n"))
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
