"""A webhook trigger for MLflow servers that cannot load the store plugin (``mlflow-unlearn serve``).

A stock ``mlflow server`` (MLflow 3.3+) sends a signed ``model_version_tag.set`` webhook when someone sets a tag on
a model version. :class:`WebhookService` receives it on 127.0.0.1, and for the tag ``mlflow_unlearn.request``:

1. authenticates it (:mod:`mlflow_unlearn_plugins.webhook_auth`): from the headers alone, before the body is
   read, a plain ``Content-Length`` of at most 64 KiB, a well-formed signature and a timestamp within 300 s; then
   the HMAC-SHA256 signature (``X-MLflow-Signature: v1,<base64>`` over ``<delivery id>.<timestamp>.<body>``, the
   shared secret of ``MlflowClient().create_webhook(..., secret=...)``) and the delivery ID, which is recorded in
   the state database so that a replay is refused across restarts;
2. mirrors the version into its own state database (a private SQLite registry, ``--state-db``), which holds the
   request's ledger (:mod:`mlflow_unlearn_plugins.ledger`: compare-and-set, leases, the bounded queue);
3. submits it exactly as the store plugin does (:meth:`UnlearnRegistryStore.submit`: the checks of
   :mod:`mlflow_unlearn_plugins.request`, the ledger, the launcher); the job reads the parent version from the
   MLflow server and registers the new version there, through its REST API;
4. copies the plugin's status tags (``mlflow_unlearn.status``, ``.error``, ``.result_version``, ...) from the state
   database to the version on the server, through the REST API with this process's own credentials
   (``MLFLOW_TRACKING_TOKEN`` or ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``), every
   :data:`SYNC_S` seconds.

The server cannot refuse a tag as the plugin does (409): a different request set while one is active is ignored
and answered 409 to the webhook; the status tags show the request that runs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from mlflow_unlearn_plugins import ledger
from mlflow_unlearn_plugins.registry_store import UnlearnRegistryStore
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

from mlflow_unlearn.tracking.vocabulary import REQUEST_TAG

SECRET_ENV = "MLFLOW_UNLEARN_WEBHOOK_SECRET"
SYNC_S = 1.0
#: The status tags copied to the server (the request tag is the server's already; the lease's heartbeat stays in
#: the state database, or every heartbeat would be a tag write and a webhook).
MIRRORED_TAGS = tuple(key for key in ledger.RESERVED_TAGS if key != ledger.LEASE_TAG)

_logger = logging.getLogger(__name__)


class WebhookService:
    """Receives ``model_version_tag.set`` webhooks and runs their unlearning requests (see the module docstring).

    Args:
        secret: the webhook's shared secret.
        tracking_uri: the MLflow server's ``http(s)://`` address (its tracking and registry).
        state_db: the SQLite file of this service's ledger (created if absent).

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
        self.store = UnlearnRegistryStore(f"unlearn+sqlite:///{Path(state_db).resolve()}", tracking_uri=tracking_uri)
        self._pushed: dict[tuple[str, int], dict[str, str]] = {}
        self._stop = threading.Event()

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
        if kind != ("model_version_tag", "set") or key != REQUEST_TAG:
            return HTTPStatus.OK, "ignored"
        self._mirror(name, version)
        try:
            refusal = self.store.submit(name, version, value)
        except ledger.ActiveRequestError as exc:
            return HTTPStatus.CONFLICT, exc.message
        self.sync()
        return HTTPStatus.OK, f"refused: {refusal}" if refusal else "submitted"

    def _mirror(self, name: str, version: int) -> None:
        """The version in the state database (same name and number), so that the ledger can hold its tags."""
        from mlflow.exceptions import MlflowException
        from mlflow.store.model_registry.dbmodels.models import SqlModelVersion

        try:
            self.store.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        now = int(time.time() * 1000)
        with self.store.ManagedSessionMaker(read_only=False) as session:
            if session.query(SqlModelVersion).filter_by(name=name, version=version).first() is None:
                session.add(SqlModelVersion(name=name, version=version, creation_time=now, last_updated_time=now,
                                            current_stage="None", source=f"models:/{name}/{version}",
                                            status="READY"))

    # -- status tags to the server ----------------------------------------------------------------------------
    def sync(self) -> None:
        """Copy the state database's status tags of every known version to the server (changes only)."""
        from mlflow import MlflowClient
        from mlflow.store.model_registry.dbmodels.models import SqlModelVersion

        with self.store.ManagedSessionMaker() as session:
            keys = [(mv.name, int(mv.version)) for mv in session.query(SqlModelVersion).all()]
        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        for name, version in keys:
            tags = {key: value for key, value in ledger.read_tags(self.store, name, version).items()
                    if key in MIRRORED_TAGS}
            before = self._pushed.get((name, version), {})
            if tags == before:
                continue
            for key, value in tags.items():
                if before.get(key) != value:
                    client.set_model_version_tag(name, str(version), key, value)
            for key in set(before) - set(tags):
                client.delete_model_version_tag(name, str(version), key)
            self._pushed[(name, version)] = tags

    def _sync_loop(self) -> None:
        while not self._stop.wait(SYNC_S):
            try:
                self.store.recover_once()  # dead launchers and free slots, every 30 s
                self.sync()
            except Exception as exc:  # noqa: BLE001 (the server may be down for a while; try again)
                _logger.warning("Copying status tags to %s failed (%s); trying again", self.tracking_uri,
                                type(exc).__name__)

    # -- serving ----------------------------------------------------------------------------------------------
    def serve(self, host: str = "127.0.0.1", port: int = 8765) -> None:
        """Serve webhooks on ``host:port`` until interrupted (any path; ``GET /health`` answers ``OK``)."""
        from mlflow_unlearn_plugins.request import RequestRefused, parse_request

        try:  # import the engine now, not in the first delivery (MLflow's delivery timeout is short)
            parse_request("forget=classes:0", self.store.settings.policy)
        except RequestRefused:
            pass
        service, handling = self, threading.BoundedSemaphore(MAX_CONCURRENT)

        class Handler(BaseHTTPRequestHandler):
            timeout = READ_TIMEOUT_S  # a connection that stalls in its headers or body is closed

            def do_GET(self) -> None:  # noqa: N802
                self._reply(HTTPStatus.OK if self.path == "/health" else HTTPStatus.NOT_FOUND, "OK")

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
                body = json.dumps({"message": message}).encode()
                self.close_connection = True  # an unread body must not be taken for the next request
                self.send_response(status)
                self.send_header("Connection", "close")
                if retry_after is not None:
                    self.send_header("Retry-After", str(retry_after))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # one line per delivery is logged by do_POST
                pass

        httpd = ThreadingHTTPServer((host, port), Handler)
        syncer = threading.Thread(target=self._sync_loop, name="status-sync", daemon=True)
        syncer.start()
        _logger.info("mlflow-unlearn serve: webhooks on http://%s:%s for %s", host, port, self.tracking_uri)
        try:
            httpd.serve_forever()
        finally:
            self._stop.set()
            httpd.server_close()
