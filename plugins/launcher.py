"""The detached launcher process of one unlearning request: ``python -m mlflow_unlearn_plugins.launcher``.

The scheduler (:func:`mlflow_unlearn_plugins.scheduler.start_launcher`) starts it for an admitted request, in its
own session so that it outlives a server restart. It runs the request's :class:`~mlflow_unlearn_plugins.job.Job`
(launch, watch, finalise) and, whatever the outcome, admits the next waiting requests
(:meth:`~mlflow_unlearn_plugins.scheduler.Scheduler.dispatch`), so the queue moves on without the server; a
launcher killed before that is replaced by the scheduler's recovery.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlflow_unlearn_plugins.job import Job
from mlflow_unlearn_plugins.ledger import contention_retries
from mlflow_unlearn_plugins.request import RequestRefused, parse_request
from mlflow_unlearn_plugins.scheduler import LAUNCHER_MARKER, Scheduler
from mlflow_unlearn_plugins.settings import PluginSettings


def main(argv: list[str] | None = None) -> int:
    """Entry point of the detached launcher process."""
    parser = argparse.ArgumentParser(prog=LAUNCHER_MARKER, description=__doc__.splitlines()[0])
    parser.add_argument("--ledger-uri", required=True)
    parser.add_argument("--mirror-uri", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True, type=int)
    parser.add_argument("--request-id", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--settings", required=True, type=PluginSettings.from_json, help="PluginSettings.to_json()")
    args = parser.parse_args(argv)
    job = Job.open(args.ledger_uri, args.mirror_uri, args.name, args.version, args.request_id, args.log,
                   args.settings)
    try:
        return job.run()
    except Exception as exc:  # never leave the request queued or running behind a dead launcher
        if _is_contention(exc):
            print(f"the launcher gave up after {contention_retries()} lock retries: "
                  f"{str(exc).splitlines()[0][:200]}", flush=True)
            return 1
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


def _is_contention(exc: BaseException) -> bool:
    import sqlalchemy.exc

    cause = exc.__cause__ if exc.__cause__ is not None else exc
    return isinstance(cause, sqlalchemy.exc.OperationalError)


def _next_jobs(job: Job, args) -> None:
    """Start the next waiting requests now that this one holds no slot; log the ledger's lock retries."""
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
