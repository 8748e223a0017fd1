"""The checks a launcher makes before a request's job starts, without importing the engine itself.

A launcher (:mod:`mlflow_unlearn_plugins.launcher`) lives as long as its request's job, so whatever it imports it
holds for the whole job: the engine (torch, ~700 MiB) is never imported there. Before the job starts, it:

1. writes a tiny probe object into the artifact store of the request's run, and deletes it
   (:func:`probe_artifact_store`): a store that cannot be written fails the request within seconds, instead of at the
   end of the job after minutes of MLflow's hidden HTTP retries, while it held a job slot;
2. prepares the request as its job will (:func:`preflight`, i.e. :func:`mlflow_unlearn.tracking.plan.prepare`, the
   checks of every door) in a short-lived process of its own (:func:`preflight_in_process`,
   ``python -m mlflow_unlearn_plugins.preflight``), which ends before the job starts. A refused request is failed
   with the API's own message.

The request reaches that process on its standard input (never on a command line, where ``ps`` shows an ``ids:``
file's path); its answer is one JSON line on its standard output, and everything else it prints goes to the
launcher's log. It exits if its launcher dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from mlflow_unlearn_plugins.request import RequestRefused, UnlearnRequest, parse_request
from mlflow_unlearn_plugins.settings import TRACKING_URI_ENV, PluginSettings

from mlflow_unlearn.tracking.keys import DigestKeyError

TRANSIENT_ERRORS = frozenset({"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"})
"""MLflow error codes that a server restart or overload gives (a download cut off, a 503): tried again."""
PREFLIGHT_WAIT_S = 120.0
"""How long a launcher keeps trying a preflight that fails with one of :data:`TRANSIENT_ERRORS`, or a probe of an
artifact store that cannot be reached."""
PROBE_FILE = "mlflow_unlearn_write_probe.txt"
"""The probe object's name, at the top of the request run's artifacts (deleted again at once)."""
#: HTTP answers to a probe that a restarting or overloaded server gives: tried again, like an unreachable server.
TRANSIENT_HTTP = frozenset({408, 429, 502, 503, 504})
#: MLflow's HTTP client retries 500s and 503s about seven times with a doubling backoff (~4 min in all); the probe
#: makes each try once, with this timeout, and decides itself what is worth another try.
PROBE_HTTP_TIMEOUT_S = 30
_HTTP_STATUS = re.compile(r"too many (\d{3}) error responses|\b(\d{3}) (?:Client|Server) Error")


class PreflightError(RuntimeError):
    """The pre-flight could not run (the engine cannot be imported, or its process failed): the request fails with
    this message, and the launcher exits non-zero."""


# -- the engine's checks (run in the pre-flight process) ---------------------------------------------------------
def preflight(request: UnlearnRequest, model_uri: str, *, client, nproc: int = 1, wait_s: float = 0.0,
              beat: Callable[[], None] | None = None) -> None:
    """Prepare ``request`` on ``model_uri`` as its job will (:func:`mlflow_unlearn.tracking.plan.prepare`).

    The job prepares it again in its own process (an MLflow Projects run, maybe on another host): this call only
    makes sure a request that cannot run is refused before anything is launched, with the API's own message. It
    imports the engine: a launcher calls it through :func:`preflight_in_process`.

    Args:
        request: the parsed request.
        model_uri: ``models:/<name>/<version>`` of the version the request is on.
        client: the MLflow client of the job's tracking and registry URIs.
        nproc: processes of the job; above 1 a method without DistributedDataParallel support is refused.
        wait_s: how long to keep trying when the registry fails with one of :data:`TRANSIENT_ERRORS` (a server
            that restarts while the model downloads); 0 = once.
        beat: called between tries.

    Raises:
        RequestRefused: with the message of :func:`~mlflow_unlearn.tracking.plan.prepare` (a generic one when
            the message concerns an ID file, which the engine may quote).
    """
    from mlflow.exceptions import MlflowException

    from mlflow_unlearn.tracking.plan import prepare

    deadline, pause = time.monotonic() + wait_s, 1.0
    while True:
        try:
            prepare(model_uri, request.replace(device="cpu"), distributed=nproc > 1, client=client)
            return
        except (ValueError, OSError, KeyError) as exc:
            raise RequestRefused(_refusal_message(exc, request)) from None
        except MlflowException as exc:
            if exc.error_code not in TRANSIENT_ERRORS or time.monotonic() + pause >= deadline:
                raise RequestRefused(
                    f"cannot read {model_uri} from the registry ({exc.error_code}); if the server proxies "
                    f"artifacts, set {TRACKING_URI_ENV} to its http:// address"
                ) from None
            print(f"reading {model_uri} failed ({exc.error_code}); trying again in {pause:.0f} s", flush=True)
            if beat is not None:
                beat()
            time.sleep(pause)
            pause = min(2 * pause, 15.0)


def _refusal_message(exc: BaseException, request: UnlearnRequest) -> str:
    """The API's message, unless it concerns an ID file (this request's or an earlier forget step's): the
    engine may quote IDs, and a refusal is stored in a tag anyone can read."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, DigestKeyError):  # no ID, no path: the API's own words (how to set a key)
        return message
    id_file = request.forget.path if request.forget.by_ids else None
    if "IDs" in message or "ids:" in message or (id_file and id_file in message):
        return ("a forget ID file (this request's, or one of an earlier forget step in the version's lineage) does "
                "not match the training data (unknown IDs, a wrong format or an empty set); fix the file and submit "
                "again")
    return message


# -- the launcher's side ------------------------------------------------------------------------------------------
def preflight_in_process(value: str, model_uri: str, settings: PluginSettings, *, wait_s: float = PREFLIGHT_WAIT_S,
                         beat: Callable[[], None] | None = None, poll_s: float = 0.2) -> None:
    """Run :func:`preflight` on the request ``value`` in a short-lived process and wait for it (calling ``beat``).

    Args:
        value: the request tag's value (sent on the process's standard input).
        model_uri: ``models:/<name>/<version>``.
        settings: the plugin's settings (the request's policy, the job's processes).
        wait_s: how long the process keeps trying a transient registry error.
        beat: called while waiting (the launcher's lease heartbeat).
        poll_s: how often the process is looked at.

    Raises:
        RequestRefused: the request cannot run; the message is the API's (see :func:`preflight`).
        PreflightError: the check itself could not run.
    """
    order = json.dumps({"request": value, "model_uri": model_uri, "settings": settings.to_json(), "wait_s": wait_s})
    proc = subprocess.Popen([sys.executable, "-m", "mlflow_unlearn_plugins.preflight"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # its stderr: the launcher's log
    try:
        with proc.stdin as stdin:
            stdin.write(order)
    except BrokenPipeError:  # it ended at once: its log says why, and it gives no answer below
        pass
    while proc.poll() is None:
        if beat is not None:
            beat()
        time.sleep(poll_s)
    lines = proc.stdout.read().splitlines()
    proc.stdout.close()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise PreflightError(f"the pre-flight check stopped without an answer (exit code {proc.returncode}); see "
                             "the launcher's log") from None
    if "refused" in answer:
        raise RequestRefused(answer["refused"])
    if "error" in answer:
        raise PreflightError(answer["error"])


@contextlib.contextmanager
def _one_http_try() -> Iterator[None]:
    """MLflow's HTTP client without its own retries (read from the environment at each call), for one probe."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(PROBE_HTTP_TIMEOUT_S)}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _probe_failure(exc: BaseException) -> tuple[str, bool]:
    """``(what failed, in words without any path or URL; whether another try may succeed)``."""
    import requests

    chain, cause = [], exc
    while cause is not None and len(chain) < 5:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for cause in chain:
        status = getattr(getattr(cause, "response", None), "status_code", None)
        match = _HTTP_STATUS.search(str(cause)) if status is None else None
        if match:
            status = int(match.group(1) or match.group(2))
        if status is not None:
            return f"HTTP {status}", status in TRANSIENT_HTTP
    for cause in chain:
        if isinstance(cause, (requests.ConnectionError, requests.Timeout)) or "ConnectionError" in str(cause):
            return "the server did not answer", True
    return type(chain[-1]).__name__, False


def probe_artifact_store(client, run_id: str, *, wait_s: float = 0.0, beat: Callable[[], None] | None = None) -> None:
    """Write a tiny object into the artifact store of run ``run_id``, then delete it.

    A store that does not answer (a server restarting) is tried again for up to ``wait_s`` seconds; one that answers
    with an error is tried once more a second later, then refused. A probe that cannot be deleted stays in the run's
    artifacts (logged).

    Args:
        client: the MLflow client of the job's tracking URI.
        run_id: the request's run: its artifact location is where the job logs.
        wait_s: how long to wait out an unreachable store.
        beat: called between tries.

    Raises:
        RequestRefused: one line, with the HTTP status or the error's type only (never the store's location).
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
    deadline, pause, tries = time.monotonic() + wait_s, 1.0, 0
    with tempfile.TemporaryDirectory(prefix="mlflow-unlearn-probe-") as folder:
        probe = Path(folder, PROBE_FILE)
        probe.write_text("written by mlflow-unlearn to check that the artifact store accepts writes; safe to delete\n")
        while True:
            tries += 1
            try:
                with _one_http_try():
                    repo.log_artifact(str(probe))
                break
            except Exception as exc:  # noqa: BLE001 (any store's error: HTTP, OSError, a cloud SDK's)
                what, transient = _probe_failure(exc)
                if (transient and time.monotonic() + pause >= deadline) or (not transient and tries >= 2):
                    raise RequestRefused(
                        f"the artifact store did not accept a test write ({what}), so the job could not save its "
                        "result; the server's operator must make the artifact store writable, then set the request "
                        "tag again") from None
                print(f"the artifact store's test write failed ({what}); trying again in {pause:.0f} s", flush=True)
            if beat is not None:
                beat()
            time.sleep(pause)
            if transient:
                pause = min(2 * pause, 15.0)
    try:
        with _one_http_try():
            repo.delete_artifacts(PROBE_FILE)
    except Exception as exc:  # noqa: BLE001 (a store may refuse deletes; the probe is harmless)
        print(f"the artifact store's test object {PROBE_FILE} could not be deleted ({_probe_failure(exc)[0]}); it "
              "stays in the request run's artifacts", flush=True)


# -- the pre-flight process ---------------------------------------------------------------------------------------
def _exit_with_parent() -> None:
    """End this process when its launcher is gone (a launcher killed with SIGKILL is replaced by recovery, whose
    own pre-flight starts afresh)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-launcher", daemon=True).start()


def main() -> int:
    """``python -m mlflow_unlearn_plugins.preflight``: the order on stdin, one JSON answer line on stdout."""
    answer_to, sys.stdout = sys.stdout, sys.stderr  # anything else printed goes to the launcher's log
    _exit_with_parent()
    order = json.loads(sys.stdin.read())
    settings = PluginSettings.from_json(order["settings"])
    request = None
    try:
        from mlflow import MlflowClient

        request = parse_request(order["request"], settings.policy)
        preflight(request, order["model_uri"], client=MlflowClient(), nproc=settings.launcher.nproc,
                  wait_s=order["wait_s"])
        answer = {"ok": True}
    except RequestRefused as exc:
        answer = {"refused": str(exc)}
    except ImportError as exc:
        answer = {"error": f"the mlflow-unlearn engine cannot be imported on the server: {exc}"}
    except Exception as exc:  # noqa: BLE001 (reported as the request's error, as one line)
        ids = request is None or request.forget.by_ids
        if not ids:  # an ID request's traceback may quote IDs: none in the log either
            traceback.print_exc()
        detail = "" if ids else f": {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        answer = {"error": f"the pre-flight check failed{detail}"}
    answer_to.write(json.dumps(answer) + "\n")
    answer_to.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
