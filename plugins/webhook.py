"""A webhook trigger for MLflow servers that cannot load the store plugin (``mlflow-unlearn-serve``).

A stock ``mlflow server`` (MLflow 3.3+) sends a signed ``model_version_tag.set`` webhook when someone sets a tag on
a model version. :class:`WebhookService` receives it on 127.0.0.1, and for the tag ``mlflow_unlearn.request``:

1. verifies the HMAC-SHA256 signature (``X-MLflow-Signature: v1,<base64>`` over
   ``<delivery id>.<timestamp>.<body>``, the shared secret of ``MlflowClient().create_webhook(..., secret=...)``)
   and rejects replays: a timestamp outside :data:`REPLAY_WINDOW_S`, or a delivery ID seen within it;
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

The server cannot refuse a tag as the plugin does (409): a different request set while one is active is ignored
and answered 409 to the webhook; the status tags show the request that runs.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from mlflow_unlearn_plugins.ledger import ActiveRequestError, Ledger, RequestState, connect
from mlflow_unlearn_plugins.mirror import ClientTags, StoreTags, mirror_pending
from mlflow_unlearn_plugins.registry_store import RECOVERY_INTERVAL_S
from mlflow_unlearn_plugins.scheduler import Scheduler
from mlflow_unlearn_plugins.settings import read_settings

from mlflow_unlearn.tracking.vocabulary import REQUEST_TAG

SECRET_ENV = "MLFLOW_UNLEARN_WEBHOOK_SECRET"
SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_ID_HEADER = "X-MLflow-Signature", "X-MLflow-Timestamp", \
    "X-MLflow-Delivery-Id"
#: A delivery whose timestamp is further than this from now is refused; delivery IDs are remembered this long.
REPLAY_WINDOW_S = 300
SYNC_S = 1.0
MAX_BODY = 64 * 1024

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
        self.secret, self.tracking_uri, self.replays = secret, tracking_uri.rstrip("/"), ReplayGuard()
        self.state_uri = f"sqlite:///{Path(state_db).resolve()}"
        self.settings = read_settings()
        self.tags = ClientTags(self.tracking_uri)
        self.ledger = Ledger(connect(self.state_uri), legacy=self._legacy_states)
        self.scheduler = Scheduler(self.ledger, self.tags, self.settings, ledger_uri=self.state_uri,
                                   mirror_uri=self.tracking_uri, job_uris=lambda: (self.tracking_uri,) * 2)
        self._stop = threading.Event()

    def _legacy_states(self) -> list[RequestState]:
        """The queued and running requests of a state database of the first ledger: a private MLflow registry."""
        import sqlalchemy as sa
        from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

        if not sa.inspect(self.ledger.engine).has_table("model_version_tags"):
            return []
        return list(StoreTags(SqlAlchemyStore(self.state_uri)).legacy_states())

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
        try:
            refusal = self.scheduler.submit(name, version, value)
        except ActiveRequestError as exc:
            return HTTPStatus.CONFLICT, exc.message
        return HTTPStatus.OK, f"refused: {refusal}" if refusal else "submitted"

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
        """Serve webhooks on ``host:port`` until interrupted (any path; ``GET /health`` answers ``OK``)."""
        from mlflow_unlearn_plugins.request import RequestRefused, parse_request

        try:  # import the engine now, not in the first delivery (MLflow's delivery timeout is short)
            parse_request("forget=classes:0", self.settings.policy)
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
        service = WebhookService(os.environ.get(SECRET_ENV, ""), args.tracking_uri, args.state_db)
    except ValueError as exc:
        parser.error(str(exc))
    service.serve(args.host, args.port)


if __name__ == "__main__":
    main()
