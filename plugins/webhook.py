"""A webhook trigger for MLflow servers that cannot load the store plugin (``mlflow-unlearn serve``).

A stock ``mlflow server`` (MLflow 3.3+) sends a signed ``model_version_tag.set`` webhook when someone sets a tag on
a model version. :class:`WebhookService` receives it on 127.0.0.1, and for the tag ``mlflow_unlearn.request``:

1. verifies the HMAC-SHA256 signature (``X-MLflow-Signature: v1,<base64>`` over
   ``<delivery id>.<timestamp>.<body>``, the shared secret of ``MlflowClient().create_webhook(..., secret=...)``)
   and rejects replays: a timestamp outside :data:`REPLAY_WINDOW_S`, or a delivery ID seen within it;
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

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from mlflow_unlearn_plugins import ledger
from mlflow_unlearn_plugins.registry_store import UnlearnRegistryStore

from mlflow_unlearn.tracking.vocabulary import REQUEST_TAG

SECRET_ENV = "MLFLOW_UNLEARN_WEBHOOK_SECRET"
SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_ID_HEADER = "X-MLflow-Signature", "X-MLflow-Timestamp", \
    "X-MLflow-Delivery-Id"
#: A delivery whose timestamp is further than this from now is refused; delivery IDs are remembered this long.
REPLAY_WINDOW_S = 300
SYNC_S = 1.0
MAX_BODY = 64 * 1024
#: The status tags copied to the server (the request tag is the server's already; the lease's heartbeat stays in
#: the state database, or every heartbeat would be a tag write and a webhook).
MIRRORED_TAGS = tuple(key for key in ledger.RESERVED_TAGS if key != ledger.LEASE_TAG)

_logger = logging.getLogger(__name__)


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's webhook signature of ``body``: ``v1,`` + base64 HMAC-SHA256 of ``<delivery id>.<timestamp>.<body>``.

    Example:
        >>> signature("s3cret", "d1", "1700000000", b'{"a": 1}')
        'v1,SL09e/IZgMeXvzZRPOdF+ztEGcfCg48OkhwoQmVq2JE='
    """
    mac = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class ReplayGuard:
    """Remembers delivery IDs for :data:`REPLAY_WINDOW_S` and refuses stale timestamps (thread-safe).

    Example:
        >>> guard = ReplayGuard(window_s=300)
        >>> guard.check("d1", "1000", now=1000.0), guard.check("d1", "1000", now=1001.0)
        (None, 'delivery d1 was already received')
        >>> guard.check("d2", "100", now=1000.0)
        'timestamp 100 is outside the 300 s window'
    """

    def __init__(self, window_s: float = REPLAY_WINDOW_S) -> None:
        self.window_s, self._seen, self._lock = window_s, {}, threading.Lock()

    def check(self, delivery_id: str, timestamp: str, *, now: float | None = None) -> str | None:
        """None if the delivery is fresh (and remember it), else why it is refused."""
        now = time.time() if now is None else now
        if not timestamp.isdigit() or abs(now - int(timestamp)) > self.window_s:
            return f"timestamp {timestamp[:20]} is outside the {self.window_s:.0f} s window"
        with self._lock:
            self._seen = {d: t for d, t in self._seen.items() if t > now - self.window_s}
            if delivery_id in self._seen:
                return f"delivery {delivery_id[:64]} was already received"
            self._seen[delivery_id] = now
        return None


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
        self.secret, self.tracking_uri, self.replays = secret, tracking_uri.rstrip("/"), ReplayGuard()
        self.store = UnlearnRegistryStore(f"unlearn+sqlite:///{Path(state_db).resolve()}", tracking_uri=tracking_uri)
        self._pushed: dict[tuple[str, int], dict[str, str]] = {}
        self._stop = threading.Event()

    # -- one delivery ---------------------------------------------------------------------------------------------
    def handle(self, headers, body: bytes) -> tuple[int, str]:
        """Verify and act on one delivery; return the HTTP status and a one-line message."""
        delivery, stamp = headers.get(DELIVERY_ID_HEADER, ""), headers.get(TIMESTAMP_HEADER, "")
        given = headers.get(SIGNATURE_HEADER, "")
        if not given or not hmac.compare_digest(given, signature(self.secret, delivery, stamp, body)):
            return HTTPStatus.UNAUTHORIZED, "bad or missing signature"
        refused = self.replays.check(delivery, stamp)
        if refused:
            return HTTPStatus.CONFLICT, f"replay refused: {refused}"
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
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self._reply(HTTPStatus.OK if self.path == "/health" else HTTPStatus.NOT_FOUND, "OK")

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload too large")
                    return
                status, message = service.handle(self.headers, self.rfile.read(length))
                _logger.info("webhook %s: %s %s", self.headers.get(DELIVERY_ID_HEADER, "-"), int(status), message)
                self._reply(status, message)

            def _reply(self, status: int, message: str) -> None:
                body = json.dumps({"message": message}).encode()
                self.send_response(status)
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
