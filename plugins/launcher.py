"""The detached launcher process of one unlearning request: ``python -m mlflow_unlearn_plugins.launcher``.

The scheduler (:func:`mlflow_unlearn_plugins.scheduler.start_launcher`) starts it for an admitted request, in its
own session so that it outlives a server restart. It runs the request's :class:`~mlflow_unlearn_plugins.job.Job`
(launch, watch, finalise) and, whatever the outcome, admits the next waiting requests
(:meth:`~mlflow_unlearn_plugins.scheduler.Scheduler.dispatch`), so the queue moves on without the server; a
launcher killed before that is replaced by the scheduler's recovery.

Once a local job runs, the launcher replaces itself (``os.execv``) with the same command plus ``--wait-job``: the
same process waits for the job without MLflow (:mod:`mlflow_unlearn_plugins.watch`), then imports it again to
finalise the request. MLflow comes with :mod:`~mlflow_unlearn_plugins.job` and
:mod:`~mlflow_unlearn_plugins.scheduler`, so :func:`main` imports them only after that wait.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from mlflow_unlearn_plugins.ledger import LAUNCHER_MARKER, Ledger, connect, contention_retries
from mlflow_unlearn_plugins.process_group import WAKE_SIGNAL
from mlflow_unlearn_plugins.settings import PluginSettings
from mlflow_unlearn_plugins.watch import StopCheck, wait_for_job


def main(argv: list[str] | None = None) -> int:
    """Entry point of the detached launcher process (``argv`` None: its command line; only then does it replace
    itself to wait for its job)."""
    parser = argparse.ArgumentParser(prog=LAUNCHER_MARKER, description=__doc__.splitlines()[0])
    parser.add_argument("--ledger-uri", required=True)
    parser.add_argument("--mirror-uri", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True, type=int)
    parser.add_argument("--request-id", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--settings", required=True, type=PluginSettings.from_json, help="PluginSettings.to_json()")
    parser.add_argument("--wait-job", type=int, help="the PID of the local job that this launcher started before it "
                        "replaced itself: wait for it, then finalise the request")
    parser.add_argument("--run-id", help="with --wait-job: the request run")
    own_process = argv is None  # main(argv) called in another program's process never replaces that process
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    waited = _wait(args) if args.wait_job is not None else None
    from mlflow_unlearn_plugins.job import Job  # noqa: PLC0415 (MLflow: only once no job is waited for)

    job = Job.open(args.ledger_uri, args.mirror_uri, args.name, args.version, args.request_id, args.log,
                   args.settings)
    try:
        if args.wait_job is not None:
            return job.finish_waited(waited, args.run_id)
        return job.run(handoff=(lambda pid, run_id: _hand_off(job, argv, pid, run_id)) if own_process else None)
    except Exception as exc:  # never leave the request queued or running behind a dead launcher
        if _is_contention(exc):
            print(f"the launcher gave up after {contention_retries()} lock retries: "
                  f"{str(exc).splitlines()[0][:200]}", flush=True)
            return 1
        from mlflow_unlearn_plugins.request import RequestRefused, parse_request  # noqa: PLC0415

        state = job.ledger.read(args.name, args.version)
        try:
            ids = parse_request(state.request or "", args.settings.policy).forget.by_ids
        except RequestRefused:
            ids = False
        detail = "" if ids else f": {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        job.fail_request(f"the launcher failed{detail}")
        raise
    finally:
        _next_jobs(job, args)


def _wait(args) -> tuple[str | None, int | None] | None:
    """The job's outcome (:func:`~mlflow_unlearn_plugins.watch.wait_for_job`), or None if the wait failed."""
    ledger = Ledger(connect(args.ledger_uri))
    check = StopCheck(ledger, args.name, args.version, args.request_id)
    check.listen()
    try:
        return wait_for_job(check, args.wait_job, args.run_id)
    except Exception as exc:  # the job is then watched as one whose launcher died (Job.finish_waited)
        print(f"the wait for the job failed ({type(exc).__name__}); watching it with MLflow", flush=True)
        return None
    finally:
        ledger.engine.dispose()


def _hand_off(job, argv: list[str], pid: int, run_id: str) -> None:
    """Replace this process (same PID: the lease, the marker and the child job stay) by its wait for the job;
    returns only if that failed. The wake signal is blocked until the new image has its handler."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, {WAKE_SIGNAL})
    job.ledger.engine.dispose()
    try:
        os.execv(sys.executable, [sys.executable, "-m", LAUNCHER_MARKER, *argv, "--wait-job", str(pid),
                                  "--run-id", run_id])
    except OSError as exc:
        print(f"could not hand the wait off ({exc.strerror}); waiting here", flush=True)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {WAKE_SIGNAL})


def _is_contention(exc: BaseException) -> bool:
    import sqlalchemy.exc

    cause = exc.__cause__ if exc.__cause__ is not None else exc
    return isinstance(cause, sqlalchemy.exc.OperationalError)


def _next_jobs(job, args) -> None:
    """Start the next waiting requests now that this one holds no slot; log the ledger's lock retries."""
    from mlflow_unlearn_plugins.scheduler import Scheduler  # noqa: PLC0415 (MLflow, see the module docstring)

    uris = (os.environ.get("MLFLOW_TRACKING_URI", ""), os.environ.get("MLFLOW_REGISTRY_URI", ""))
    scheduler = Scheduler(job.ledger, job.tags, args.settings, ledger_uri=args.ledger_uri,
                          mirror_uri=args.mirror_uri, job_uris=lambda: uris)
    try:
        pids = scheduler.dispatch()
        if pids:
            print(f"started the launchers of the next queued requests: PIDs {pids}", flush=True)
    except Exception as exc:  # the store's next call (recovery) admits them instead
        print(f"could not start the next queued requests ({type(exc).__name__}); the server's next registry call "
              "will", flush=True)
    print(f"ledger lock retries: {contention_retries()}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
