"""A webhook trigger for MLflow servers that cannot load the store plugin (``mlflow-unlearn-serve``).

A stock ``mlflow server`` (MLflow 3.3+) sends a signed ``model_version_tag.set`` webhook when someone sets a tag on
a model version. :class:`WebhookService` receives it on 127.0.0.1, and for the tag ``mlflow_unlearn.request``:

1. authenticates it (:mod:`mlflow_unlearn_plugins.webhook_auth`): from the headers alone, before the body is
   read, a plain ``Content-Length`` of at most 64 KiB, a well-formed signature and a timestamp within 300 s; then
   the HMAC-SHA256 signature (``X-MLflow-Signature: v1,<base64>`` over ``<delivery id>.<timestamp>.<body>``, the
   shared secret of ``MlflowClient().create_webhook(..., secret=...)``) and the delivery ID, which is recorded in
   the state database so that a replay is refused across restarts;
2. submits it to the scheduler of the store plugin (:meth:`~mlflow_unlearn_plugins.scheduler.Scheduler.submit`:
   the checks of :mod:`mlflow_unlearn_plugins.request`, the ledger, the launcher), whose ledger lives in this
   service's own state database (``--state-db``, a SQLite file holding the plugin's tables only); the job reads the
   parent version from the MLflow server and registers the new version there, through its REST API;
3. mirrors the plugin's status tags (``mlflow_unlearn.status``, ``.error``, ``.result_version``, ...) to the version
   on the server, through the REST API with this process's own credentials (``MLFLOW_TRACKING_TOKEN`` or
   ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``): at once, from each launcher as its job moves on, and
   every :data:`SYNC_S` seconds for a mirror cut short (:func:`mlflow_unlearn_plugins.mirror.mirror_pending`).

A state database of the first ledger (a private MLflow registry whose version tags held the state) is migrated at
start-up: its queued and running requests are imported and resumed.

``GET /metrics`` answers the plugin's Prometheus metrics of this service's requests (read from the state database,
:mod:`mlflow_unlearn_plugins.metrics`); ``GET /health`` answers 200 when the state database accepts a write and a
launcher can start (:mod:`mlflow_unlearn_plugins.health`), else 503 with the reason, in one line. The MLflow server
being down does not make this service unready: deliveries come from it, and status copies that fail meanwhile are
retried (and logged).

The server cannot refuse a tag as the plugin does (409): a different request set while one is active is ignored
and answered 409 to the webhook; the status tags show the request that runs.

The tag ``mlflow_unlearn.cancel`` (its value: who cancels, or empty) cancels the version's queued or running
request (:meth:`~mlflow_unlearn_plugins.scheduler.Scheduler.cancel`), as on the plugin's store; the receiver then
removes that tag again. A webhook carries no user, so the tag's value (else ``unknown``) is recorded as who
cancelled; nothing to cancel is answered 409 to the webhook.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from mlflow_unlearn_plugins.errors import ActiveRequestError
from mlflow_unlearn_plugins.health import Readiness
from mlflow_unlearn_plugins.ledger import Ledger, RequestState, connect
from mlflow_unlearn_plugins.mirror import ClientTags, StoreTags, mirror_pending
from mlflow_unlearn_plugins.registry_store import RECOVERY_INTERVAL_S, requesting_user
from mlflow_unlearn_plugins.scheduler import CancelRefused, Scheduler
from mlflow_unlearn_plugins.settings import WEBHOOK_SECRET_ENV, read_settings, read_webhook_secret
from mlflow_unlearn_plugins.webhook_auth import (
    DELIVERY_ID_HEADER,
    MAX_CONCURRENT,
    READ_TIMEOUT_S,
    DeliveryHeaders,
    DeliveryRefused,
    ReplayGuard,
    read_headers,
    verify_signature,
)
from mlflow_unlearn_plugins.webhook_auth import signature as signature  # the name callers import from here

from mlflow_unlearn.tracking.vocabulary import CANCEL_TAG, REQUEST_TAG

SECRET_ENV = WEBHOOK_SECRET_ENV
SYNC_S = 1.0
STATE_DATABASE = "the receiver's state database"

_logger = logging.getLogger(__name__)


class WebhookService:
    """Receives ``model_version_tag.set`` webhooks and runs their unlearning requests (see the module docstring).

    Args:
        secret: the webhook's shared secret.
        tracking_uri: the MLflow server's ``http(s)://`` address (its tracking and registry).
        state_db: the SQLite file of this service's ledger (created at the first delivery if absent).

    Raises:
        ValueError: for an empty secret or a tracking URI that is not ``http(s)://``.
    """

    def __init__(self, secret: str, tracking_uri: str, state_db: str | Path) -> None:
        if not secret:
            raise ValueError(f"Expected a webhook secret in `{SECRET_ENV}` but got nothing; use the secret given to "
                             "MlflowClient().create_webhook(..., secret=...)")
        if not tracking_uri.startswith(("http://", "https://")):
            raise ValueError(f"Expected the MLflow server's http(s):// address but got {tracking_uri!r}")
        self.secret, self.tracking_uri = secret, tracking_uri.rstrip("/")
        self.replays = ReplayGuard(Path(state_db).resolve())  # delivery IDs in the state database's own table
        self.state_uri = f"sqlite:///{Path(state_db).resolve()}"
        self.settings = read_settings()
        self.tags = ClientTags(self.tracking_uri)
        self.ledger = Ledger(connect(self.state_uri), legacy=self._legacy_states)
        self.scheduler = Scheduler(self.ledger, self.tags, self.settings, ledger_uri=self.state_uri,
                                   mirror_uri=self.tracking_uri, job_uris=lambda: (self.tracking_uri,) * 2)
        self.readiness = Readiness(lambda: self.ledger, self.settings.launcher, db=STATE_DATABASE)
        self._stop = threading.Event()

    def _legacy_states(self) -> list[RequestState]:
        """The queued and running requests of a state database of the first ledger: a private MLflow registry."""
        import sqlalchemy as sa
        from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

        if not sa.inspect(self.ledger.engine).has_table("model_version_tags"):
            return []
        return list(StoreTags(SqlAlchemyStore(self.state_uri)).legacy_states())

    # -- one delivery ---------------------------------------------------------------------------------------------
    def handle(self, delivery: DeliveryHeaders, body: bytes) -> tuple[int, str]:
        """Verify and act on one delivery whose headers passed :func:`read_headers`; the HTTP status and a line.

        Raises:
            DeliveryRefused: for a signature that does not match the body, or a delivery already received.
        """
        verify_signature(self.secret, delivery, body)
        self.replays.claim(delivery)
        try:
            event = json.loads(body)
            data = event["data"]
            kind = (event["entity"], event["action"])
            name, version, key, value = str(data["name"]), int(data["version"]), data["key"], data.get("value", "")
        except (ValueError, KeyError, TypeError):
            return HTTPStatus.BAD_REQUEST, "not a model_version_tag.set payload"
        if kind != ("model_version_tag", "set") or key not in (REQUEST_TAG, CANCEL_TAG):
            return HTTPStatus.OK, "ignored"
        if key == CANCEL_TAG:
            return self._cancel(name, version, value)
        try:
            refusal = self.scheduler.submit(name, version, value)
        except ActiveRequestError as exc:
            return HTTPStatus.CONFLICT, exc.message
        return HTTPStatus.OK, f"refused: {refusal}" if refusal else "submitted"

    # -- operations -------------------------------------------------------------------------------------------
    def health(self) -> str | None:
        """None when this service can record deliveries and start their launchers, else the reason it cannot
        (:class:`~mlflow_unlearn_plugins.health.Readiness` of the state database)."""
        return self.readiness.reason()

    def metrics(self) -> bytes:
        """The Prometheus text of this service's requests (:func:`mlflow_unlearn_plugins.metrics.render`)."""
        from mlflow_unlearn_plugins.metrics import render

        return render(lambda: self.ledger, self.settings.launcher.max_jobs)

    def _cancel(self, name: str, version: int, value: str) -> tuple[int, str]:
        from mlflow.exceptions import MlflowException

        try:
            state = self.scheduler.cancel(name, version, by=requesting_user(value))
        except CancelRefused as exc:
            return HTTPStatus.CONFLICT, exc.message
        except MlflowException as exc:
            return HTTPStatus.BAD_REQUEST, exc.message
        try:  # the cancel is done; the command tag goes (the status tags say who cancelled and when)
            self.tags.write(name, version, CANCEL_TAG, None)
        except MlflowException as exc:
            _logger.warning("Removing %s from %s/%s failed (%s)", CANCEL_TAG, name, version, exc.error_code)
        return HTTPStatus.OK, f"cancelled by {state.cancelled_by}"

    # -- status tags to the server ----------------------------------------------------------------------------
    def sync(self) -> None:
        """Mirror to the server every request whose status tags lag behind the ledger."""
        mirror_pending(self.ledger, self.tags)

    def _sync_loop(self) -> None:
        recovered_at = None
        while not self._stop.wait(SYNC_S):
            try:
                if recovered_at is None or time.monotonic() - recovered_at >= RECOVERY_INTERVAL_S:
                    self.scheduler.recover(leased_only=recovered_at is not None)  # dead launchers, free slots
                    recovered_at = time.monotonic()
                self.sync()
            except Exception as exc:  # noqa: BLE001 (the server may be down for a while; try again)
                _logger.warning("Copying status tags to %s failed (%s); trying again", self.tracking_uri,
                                type(exc).__name__)

    # -- serving ----------------------------------------------------------------------------------------------
    def serve(self, host: str = "127.0.0.1", port: int = 8765) -> None:
        """Serve webhooks on ``host:port`` until interrupted (``POST``: any path; ``GET /health``, ``GET /metrics``)."""
        from mlflow_unlearn_plugins.health import database_reason
        from mlflow_unlearn_plugins.metrics import CONTENT_TYPE
        from mlflow_unlearn_plugins.request import RequestRefused, parse_request

        try:  # import the engine now, not in the first delivery (MLflow's delivery timeout is short)
            parse_request("forget=classes:0", self.settings.policy)
        except RequestRefused:
            pass
        service, handling = self, threading.BoundedSemaphore(MAX_CONCURRENT)

        class Handler(BaseHTTPRequestHandler):
            timeout = READ_TIMEOUT_S  # a connection that stalls in its headers or body is closed

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.partition("?")[0]
                if path == "/health":
                    reason = service.health()
                    self._reply(HTTPStatus.OK if reason is None else HTTPStatus.SERVICE_UNAVAILABLE, reason or "OK")
                elif path == "/metrics":
                    try:
                        body = service.metrics()
                    except Exception as exc:  # noqa: BLE001 (one line to the scraper; the detail to this log)
                        _logger.warning("metrics: %s", str(exc).splitlines()[0][:300] if str(exc) else exc)
                        self._reply(HTTPStatus.SERVICE_UNAVAILABLE,
                                    f"metrics unavailable: {database_reason(exc, STATE_DATABASE)}")
                        return
                    self._send(HTTPStatus.OK, body, CONTENT_TYPE)
                else:
                    self._reply(HTTPStatus.NOT_FOUND, "not found")

            def do_POST(self) -> None:  # noqa: N802
                if not handling.acquire(blocking=False):
                    self._reply(HTTPStatus.SERVICE_UNAVAILABLE, "busy; retry", retry_after=1)
                    return
                try:
                    status, message = self._deliver()
                finally:
                    handling.release()
                _logger.info("webhook %s: %s %s", self.headers.get(DELIVERY_ID_HEADER, "-")[:64], int(status),
                             message)
                self._reply(status, message)

            def _deliver(self) -> tuple[int, str]:
                """Authenticate from the headers, then read at most MAX_BODY bytes, then act (webhook_auth)."""
                try:
                    delivery = read_headers(self.headers)
                except DeliveryRefused as refused:  # the body is never read: the connection closes after the answer
                    return refused.status, refused.message
                try:
                    body = self.rfile.read(delivery.length)
                except TimeoutError:
                    return HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive within {READ_TIMEOUT_S} s"
                if len(body) < delivery.length:
                    return HTTPStatus.BAD_REQUEST, "the body is shorter than its Content-Length"
                try:
                    return service.handle(delivery, body)
                except DeliveryRefused as refused:
                    return refused.status, refused.message
                except Exception:  # noqa: BLE001 (one line to the sender; the traceback stays in this log)
                    service.replays.release(delivery.delivery_id)  # MLflow retries a 500 with the same delivery ID
                    _logger.exception("webhook %s: handling failed", delivery.delivery_id[:64])
                    return HTTPStatus.INTERNAL_SERVER_ERROR, "the delivery could not be handled; it may be retried"

            def _reply(self, status: int, message: str, retry_after: int | None = None) -> None:
                self._send(status, json.dumps({"message": message}).encode(), "application/json", retry_after)

            def _send(self, status: int, body: bytes, content_type: str, retry_after: int | None = None) -> None:
                self.close_connection = True  # an unread body must not be taken for the next request
                self.send_response(status)
                self.send_header("Connection", "close")
                if retry_after is not None:
                    self.send_header("Retry-After", str(retry_after))
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # one line per delivery is logged by do_POST
                pass

        httpd = ThreadingHTTPServer((host, port), Handler)
        syncer = threading.Thread(target=self._sync_loop, name="status-sync", daemon=True)
        syncer.start()
        _logger.info("mlflow-unlearn-serve: webhooks on http://%s:%s for %s", host, port, self.tracking_uri)
        try:
            httpd.serve_forever()
        finally:
            self._stop.set()
            httpd.server_close()


def main(argv: list[str] | None = None) -> None:
    """The ``mlflow-unlearn-serve`` program (see the module docstring and docs/registry_plugin.md)."""
    parser = argparse.ArgumentParser(
        prog="mlflow-unlearn-serve",
        description="Run unlearning requests from a stock MLflow server's model_version_tag.set webhooks. The "
                    f"webhook's shared secret is read from {SECRET_ENV}.")
    parser.add_argument("--tracking-uri", required=True,
                        help="The MLflow server's http(s):// address (sends the webhooks).")
    parser.add_argument("--state-db", required=True,
                        help="SQLite file of this service's request ledger (created if absent).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: %(default)s).")
    parser.add_argument("--port", default=8765, type=int, help="Port (default: %(default)s).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        service = WebhookService(read_webhook_secret(), args.tracking_uri, args.state_db)
    except ValueError as exc:
        parser.error(str(exc))
    service.serve(args.host, args.port)


if __name__ == "__main__":
    main()
