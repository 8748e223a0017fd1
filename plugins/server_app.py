"""The plugin's routes on ``mlflow server``: metrics and readiness, through MLflow's ``mlflow.app`` entry point.

``mlflow server --app-name unlearn --registry-store-uri unlearn+<database URI> ...`` serves MLflow's own app with
two routes added (under ``--static-prefix`` when one is set):

* ``GET /unlearn/metrics``: the plugin's Prometheus metrics (:mod:`mlflow_unlearn_plugins.metrics`), read from the
  registry database at each scrape, so every worker answers the same;
* ``GET /unlearn/health``: ``OK`` (200) when the registry database accepts a write and a launcher can start, else 503
  with one line that says which (:mod:`mlflow_unlearn_plugins.health`). MLflow's own ``/health`` stays what it is, an
  answer that the process is up: use it for liveness, this one for readiness.

``create_app`` is the factory that MLflow runs in each worker (``uvicorn --factory``, or ``gunicorn``/``waitress``
with ``--gunicorn-opts``/``--waitress-opts``), as MLflow's own ``basic-auth`` app does: it adds the routes to
MLflow's Flask app and, under uvicorn, wraps it in MLflow's FastAPI app. It reads the settings once and touches no
database: the routes read the registry's ledger when asked, so a database that is down at start-up is reported by
the health route instead of stopping the worker.
"""

from __future__ import annotations

import logging
import threading

from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore
from mlflow_unlearn_plugins.health import Readiness
from mlflow_unlearn_plugins.ledger import Ledger, connect
from mlflow_unlearn_plugins.mirror import StoreTags
from mlflow_unlearn_plugins.registry_store import SCHEME_PREFIX, parse_store_uri
from mlflow_unlearn_plugins.settings import PluginSettings, read_settings

METRICS_PATH = "/unlearn/metrics"
HEALTH_PATH = "/unlearn/health"
APP_NAME = "unlearn"

_logger = logging.getLogger(__name__)


class ServerRoutes:
    """The plugin's routes of one server worker.

    Args:
        registry_uri: the server's ``unlearn+...`` registry store URI.
        settings: the plugin's settings.

    Raises:
        ValueError: if the registry is not the plugin's (``unlearn+...``).
    """

    def __init__(self, registry_uri: str, settings: PluginSettings) -> None:
        if not registry_uri.startswith(SCHEME_PREFIX):
            raise ValueError(f"--app-name {APP_NAME} serves the unlearn registry plugin's metrics and health; start "
                             f"the server with --registry-store-uri {SCHEME_PREFIX}<database URI> (got a registry of "
                             f"scheme {registry_uri.partition(':')[0]!r})")
        self.registry_uri, self.settings = registry_uri, settings
        self._ledger: Ledger | None = None
        self._lock = threading.Lock()
        self.readiness = Readiness(self.ledger, settings.launcher)

    def ledger(self) -> Ledger:
        """The registry's ledger. Opening it touches no database; a first-ledger database that its first use
        migrates reads its tags through MLflow's store, as the plugin's store does."""
        with self._lock:
            if self._ledger is None:
                db_uri = parse_store_uri(self.registry_uri)
                self._ledger = Ledger(connect(db_uri), legacy=lambda: _legacy_states(db_uri))
            return self._ledger

    def metrics(self) -> tuple[bytes, int, dict[str, str]]:
        """``GET /unlearn/metrics``: the Prometheus text, or 503 with one line when the database cannot be read."""
        from mlflow_unlearn_plugins.health import database_reason
        from mlflow_unlearn_plugins.metrics import CONTENT_TYPE, render

        try:
            return render(self.ledger, self.settings.launcher.max_jobs), 200, {"Content-Type": CONTENT_TYPE}
        except Exception as exc:  # noqa: BLE001 (one line to the scraper; the detail goes to the log)
            _logger.warning("Metrics: the registry database cannot be read: %s", str(exc).splitlines()[0][:300])
            cause = exc if hasattr(exc, "orig") or exc.__cause__ is None else exc.__cause__
            return _line(f"metrics unavailable: {database_reason(cause)}"), 503, _TEXT

    def health(self) -> tuple[bytes, int, dict[str, str]]:
        """``GET /unlearn/health``: ``OK`` (200), or 503 with the reason in one line."""
        reason = self.readiness.reason()
        return (_line("OK"), 200, _TEXT) if reason is None else (_line(reason), 503, _TEXT)


_TEXT = {"Content-Type": "text/plain; charset=utf-8"}


def _legacy_states(db_uri: str) -> list:
    """The requests a first-ledger registry kept in its version tags (read once, by the ledger's migration)."""
    return list(StoreTags(SqlAlchemyStore(db_uri)).legacy_states())


def _line(text: str) -> bytes:
    return (text.splitlines()[0] if text else "").encode() + b"\n"


def add_routes(app, routes: ServerRoutes, static_prefix: str = "") -> None:
    """Add the plugin's routes to MLflow's Flask ``app``."""
    prefix = static_prefix.rstrip("/")
    app.add_url_rule(prefix + METRICS_PATH, "mlflow_unlearn_metrics", routes.metrics, methods=["GET"])
    app.add_url_rule(prefix + HEALTH_PATH, "mlflow_unlearn_health", routes.health, methods=["GET"])


def create_app(app=None):
    """The ``mlflow.app`` entry point ``unlearn``: MLflow's server app with the plugin's routes.

    Args:
        app: MLflow's Flask app (default: ``mlflow.server.app``).

    Returns:
        The Flask app, or under uvicorn (``mlflow server``'s default) MLflow's FastAPI app around it.

    Raises:
        ValueError: if the server's registry is not the plugin's, or a setting is invalid.
    """
    if app is None:
        from mlflow.server import app

    settings = read_settings()
    server = settings.server
    routes = ServerRoutes(server.registry_store_uri or server.backend_store_uri, settings)
    add_routes(app, routes, server.static_prefix)
    if server.sgi == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
