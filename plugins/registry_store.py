"""Model-registry store plugin: MLflow's SQL registry plus an "Unlearn" request on any model version.

URI scheme: ``unlearn+<SQLAlchemy URI>``, e.g. ``unlearn+sqlite:////srv/mlflow/registry.db`` or
``unlearn+postgresql://user@db/mlflow``; the wrapped URI is the database MLflow's own
:class:`~mlflow.store.model_registry.sqlalchemy_store.SqlAlchemyStore` uses, so the plugin can be switched on and
off on an existing registry. Use it on a server (``mlflow server --registry-store-uri unlearn+sqlite:///...``) or
in a client (``mlflow.set_registry_uri("unlearn+sqlite:///...")``).

Two triggers submit a request on a version:

* the tag ``mlflow_unlearn.request`` (e.g. ``forget=classes:3; method=nitc``) set from the version page of the
  stock MLflow UI or through the API: setting it submits the request;
* ``MlflowClient().transition_model_version_stage(name, version, "Unlearn")`` (or the REST ``transition-stage``
  call), which submits the request stored in that tag, e.g. one attached when the version was created. The stored
  stage is left unchanged: MLflow knows only four stages, and this store intercepts ``Unlearn`` before MLflow
  validates the stage.

Two doors cancel the version's queued or running request (:meth:`~mlflow_unlearn_plugins.scheduler.Scheduler.cancel`):
the tag ``mlflow_unlearn.cancel`` (its value: who cancels, or empty; the tag itself is not stored), and a
transition to ``Cancel``. Who cancelled is the authenticated user of the HTTP request when the server runs MLflow's
authentication (``--app-name basic-auth``), else the cancel tag's value, else ``unknown``.

The store only intercepts these triggers (and keeps the plugin's tags read-only); everything else is the
scheduler's (:mod:`mlflow_unlearn_plugins.scheduler`): it checks the request (:mod:`mlflow_unlearn_plugins.request`),
records it in the plugin's own tables of the same database (:mod:`mlflow_unlearn_plugins.ledger`), mirrors the state
into the version's tags for the UI (:mod:`mlflow_unlearn_plugins.mirror`, through this store's public methods) and
starts a detached launcher process (:mod:`mlflow_unlearn_plugins.launcher`); nothing runs in the request thread.

The constructor only constructs: it parses the URI, opens the database and reads the settings
(:func:`mlflow_unlearn_plugins.settings.read_settings`); the plugin's tables are created or migrated at the first
call. ``mlflow server`` constructs the store once in its own process (to check the URI) and once in each worker, at
the worker's first request; a worker's store resumes every request that is queued or running without a live
launcher (:meth:`~mlflow_unlearn_plugins.scheduler.Scheduler.recover`) at its first registry call
(:meth:`UnlearnRegistryStore.recover_once`), so a restarted server resumes as soon as anyone, the UI included, reads
the registry; it checks again every :data:`RECOVERY_INTERVAL_S` seconds of registry calls.

At most ``MLFLOW_UNLEARN_MAX_JOBS`` requests run at once; the others wait as ``queued`` with a
``mlflow_unlearn.queue_position`` tag, and start when a job ends.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore
from mlflow_unlearn_plugins.guards import (
    check_created_tags,
    refuse_busy_model,
    refuse_busy_version,
    refuse_plugin_tag,
    refuse_stopped_result,
)
from mlflow_unlearn_plugins.ledger import Ledger
from mlflow_unlearn_plugins.mirror import StoreTags
from mlflow_unlearn_plugins.public_errors import without_sql
from mlflow_unlearn_plugins.scheduler import Scheduler
from mlflow_unlearn_plugins.settings import PluginSettings, read_settings

from mlflow_unlearn.tracking.vocabulary import CANCEL_TAG, REQUEST_TAG

SCHEME_PREFIX = "unlearn+"
UNLEARN_STAGE = "Unlearn"
#: The transition that cancels a version's queued or running request.
CANCEL_STAGE = "Cancel"
_REQUESTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}")
#: SQLAlchemy dialects of MLflow's SQL stores; each has an entry point ``unlearn+<dialect>``.
DIALECTS = ("sqlite", "postgresql", "mysql", "mssql")
#: After the first recovery, registry calls look again for dead launchers and free job slots this often.
RECOVERY_INTERVAL_S = 30.0

_logger = logging.getLogger(__name__)


def parse_store_uri(store_uri: str) -> str:
    """Return the wrapped SQLAlchemy URI of ``unlearn+<uri>``; relative SQLite paths are made absolute.

    Raises:
        MlflowException: if the URI does not start with ``unlearn+`` followed by a supported dialect.

    Example:
        >>> parse_store_uri("unlearn+postgresql://user@db/mlflow")
        'postgresql://user@db/mlflow'
    """
    inner = store_uri[len(SCHEME_PREFIX):] if store_uri.startswith(SCHEME_PREFIX) else ""
    dialect = inner.partition(":")[0].partition("+")[0]
    if dialect not in DIALECTS:
        raise MlflowException(
            f"Expected a registry store URI 'unlearn+<dialect>://...' with a dialect in {', '.join(DIALECTS)} "
            f"(e.g. unlearn+sqlite:///registry.db) but got {store_uri!r}",
            INVALID_PARAMETER_VALUE,
        )
    return absolute_sqlite_uri(inner)


def version_number(version: Any) -> int:
    """A model version as the integer the registry stores, or MLflow's own 400 for anything else.

    Raises:
        MlflowException: ``INVALID_PARAMETER_VALUE`` for a version that is not an integer (as stock MLflow answers).

    Example:
        >>> version_number("3")
        3
    """
    try:
        return int(str(version))
    except ValueError:
        raise MlflowException(f"Expected the model version to be an integer but got {str(version)[:40]!r}",
                              INVALID_PARAMETER_VALUE) from None


def absolute_sqlite_uri(uri: str) -> str:
    """``sqlite:///relative.db`` -> ``sqlite:////abs/relative.db``: a job runs in another working directory."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        return prefix + os.path.abspath(uri[len(prefix):])
    return uri


def request_address() -> str:
    """``http://host:port`` of the socket on which the server received the current request ('' outside one).

    Under uvicorn (``mlflow server``'s default) the WSGI ``SERVER_NAME``/``SERVER_PORT`` are the local address of
    the connection, never the client's ``Host`` header (see :func:`mlflow_unlearn_plugins.settings.read_settings`).
    """
    try:
        from flask import has_request_context, request
    except ImportError:  # a client-side store without the server extras
        return ""
    if not has_request_context():
        return ""
    host, port = request.environ.get("SERVER_NAME", ""), str(request.environ.get("SERVER_PORT") or "")
    if not host or not port.isdigit():
        return ""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def requesting_user(given: str | None = None) -> str:
    """Who asks, as the server knows it: the authenticated user of the current HTTP request when the server runs
    MLflow's authentication app, else ``given`` (a name the client wrote), else ``unknown``.

    Raises:
        MlflowException: ``INVALID_PARAMETER_VALUE`` for a ``given`` name outside letters, digits and ``._@+-``
            (at most 100 characters).

    Example:
        >>> requesting_user("alice@example.com"), requesting_user("")
        ('alice@example.com', 'unknown')
    """
    if "mlflow.server.auth" in sys.modules:  # the auth app answered 401 before this point without a valid user
        try:
            from flask import has_request_context, request
        except ImportError:
            has_request_context = None
        if has_request_context is not None and has_request_context():
            auth = request.authorization
            if auth is not None and auth.username:
                return auth.username
    given = (given or "").strip()
    if not given:
        return "unknown"
    if not _REQUESTER.fullmatch(given):
        raise MlflowException(f"Expected the value of {CANCEL_TAG!r} to name who cancels (letters, digits and "
                              "'._@+-', at most 100 characters; e.g. alice@example.com) or to be empty",
                              INVALID_PARAMETER_VALUE)
    return given


def _first_call_recovers(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` of :class:`SqlAlchemyStore`, preceded by :meth:`UnlearnRegistryStore.recover_once`."""

    @functools.wraps(method)
    def wrapper(self: UnlearnRegistryStore, *args: Any, **kwargs: Any) -> Any:
        self.recover_once()
        return method(self, *args, **kwargs)

    return wrapper


class UnlearnRegistryStore(SqlAlchemyStore):
    """SQL model registry that turns an ``Unlearn`` transition or a request tag into an unlearning job.

    Args:
        store_uri: ``unlearn+<SQLAlchemy URI>`` of the registry database.
        tracking_uri: the tracking URI MLflow resolved for this registry; the job logs there unless the server
            says otherwise (see :meth:`~mlflow_unlearn_plugins.settings.PluginSettings.job_uris`).
        settings: the plugin's settings (default: read from the environment, once, here).

    Raises:
        MlflowException: for a malformed URI.
        ValueError: for invalid ``MLFLOW_UNLEARN_*`` settings (checked at start-up, not at the first request).
    """

    def __init__(self, store_uri: str, tracking_uri: str | None = None, settings: PluginSettings | None = None
                 ) -> None:
        db_uri = parse_store_uri(store_uri)
        self._recovery_lock = threading.Lock()
        self._recovery_started = False
        self._recovered_at = 0.0
        self.settings = read_settings() if settings is None else settings
        super().__init__(db_uri)
        self.ManagedSessionMaker = without_sql(self.ManagedSessionMaker)  # errors answered without their SQL
        self.store_uri = store_uri
        self.tracking_uri = tracking_uri
        tags = StoreTags(self)
        self.ledger = Ledger(self.engine, legacy=tags.legacy_states)
        self.scheduler = Scheduler(self.ledger, tags, self.settings, ledger_uri=self.db_uri, mirror_uri=self.db_uri,
                                   job_uris=self._job_uris)

    def _job_uris(self) -> tuple[str, str]:
        tracking, registry = self.settings.job_uris(self.db_uri, self.tracking_uri, request_address())
        return absolute_sqlite_uri(tracking), absolute_sqlite_uri(registry)

    # The registry calls through which a server (and its UI) first reads a restarted registry.
    get_model_version = _first_call_recovers(SqlAlchemyStore.get_model_version)
    search_model_versions = _first_call_recovers(SqlAlchemyStore.search_model_versions)
    get_registered_model = _first_call_recovers(SqlAlchemyStore.get_registered_model)
    search_registered_models = _first_call_recovers(SqlAlchemyStore.search_registered_models)
    get_latest_versions = _first_call_recovers(SqlAlchemyStore.get_latest_versions)

    def create_model_version(self, name, source, run_id=None, tags=None, *args, **kwargs):
        """MLflow's ``create_model_version``, refusing a request tag that would be refused, the plugin's status
        tags, lineage tags without their signed provenance record
        (:func:`~mlflow_unlearn_plugins.guards.check_created_tags`), and the result of a request that was
        cancelled or timed out (:func:`~mlflow_unlearn_plugins.guards.refuse_stopped_result`): nothing is created
        then."""
        self.recover_once()
        refuse_stopped_result(self.ledger, tags, run_id)
        check_created_tags(tags, self.settings, source=source, run_id=run_id)
        return super().create_model_version(name, source, run_id, tags, *args, **kwargs)

    # -- triggers ---------------------------------------------------------------------------------------------
    def transition_model_version_stage(self, name, version, stage, archive_existing_versions=False):
        """``stage="Unlearn"`` submits the version's request tag, ``stage="Cancel"`` cancels its queued or running
        request; both leave the stage as it is. Other stages as usual.

        Raises:
            MlflowException: if the version has no request tag, the request is refused (it is also recorded as
                ``failed``), or another request is queued or running on the version; for ``Cancel``, if there is
                no request to cancel or it has finished (cancelling a cancelled request does nothing).
        """
        self.recover_once()
        version = version_number(version)
        if isinstance(stage, str) and stage.strip().lower() == CANCEL_STAGE.lower():
            self.scheduler.cancel(name, version, by=requesting_user())
            return self.get_model_version(name, version)
        if isinstance(stage, str) and stage.strip().lower() == UNLEARN_STAGE.lower():
            request = SqlAlchemyStore.get_model_version(self, name, version).tags.get(REQUEST_TAG)
            if not request:
                raise MlflowException(
                    f"Model version {name}/{version} has no {REQUEST_TAG!r} tag. Set it first, e.g. "
                    f"'forget=classes:3; method=nitc', then transition to {UNLEARN_STAGE!r}",
                    INVALID_PARAMETER_VALUE,
                )
            refusal = self.scheduler.submit(name, version, request)
            if refusal:
                raise MlflowException(f"Unlearning request refused: {refusal}", INVALID_PARAMETER_VALUE)
            return self.get_model_version(name, version)
        return super().transition_model_version_stage(name, version, stage, archive_existing_versions)

    def set_model_version_tag(self, name, version, tag):
        """Setting ``mlflow_unlearn.request`` submits a request, ``mlflow_unlearn.cancel`` cancels it; every other
        ``mlflow_unlearn.*`` tag (status, lineage, provenance) is written by the plugin and its jobs only, and is
        read-only here.

        Raises:
            MlflowException: ``INVALID_PARAMETER_VALUE`` (HTTP 400) for a refused request, with the reason (which
                the status and error tags record too), or a cancel with nothing to cancel.
        """
        self.recover_once()
        version = version_number(version)
        if tag.key == REQUEST_TAG:
            refusal = self.scheduler.submit(name, version, tag.value)
            if refusal:
                raise MlflowException(f"Unlearning request refused: {refusal}", INVALID_PARAMETER_VALUE)
            return
        if tag.key == CANCEL_TAG:
            self.scheduler.cancel(name, version, by=requesting_user(tag.value))
            return
        refuse_plugin_tag(tag.key)
        super().set_model_version_tag(name, version, tag)

    # -- the plugin's rules for MLflow's other writes (mlflow_unlearn_plugins.guards) --------------------------
    def delete_model_version_tag(self, name, version, key):
        """The request tag cannot be deleted while its request is queued or running; the plugin's other
        ``mlflow_unlearn.*`` tags (status, lineage, provenance) cannot be deleted at all."""
        version = version_number(version)
        refuse_plugin_tag(key, deleting=True)
        if key == REQUEST_TAG:
            refuse_busy_version(self.ledger, name, version, tag=key)
        super().delete_model_version_tag(name, version, key)

    def delete_model_version(self, name, version):
        """A version cannot be deleted while its unlearning request is queued or running."""
        version = version_number(version)
        refuse_busy_version(self.ledger, name, version)
        super().delete_model_version(name, version)
        self.ledger.forget_version(name, version)

    def delete_registered_model(self, name):
        """A registered model cannot be deleted while an unlearning request on one of its versions is active."""
        refuse_busy_model(self.ledger, name, "delete")
        super().delete_registered_model(name)
        self.ledger.forget_version(name)

    def rename_registered_model(self, name, new_name):
        """A registered model cannot be renamed while an unlearning request on one of its versions is active; its
        requests' records follow the new name."""
        refuse_busy_model(self.ledger, name, "rename")
        renamed = super().rename_registered_model(name, new_name)
        self.ledger.rename(name, new_name)
        return renamed

    # -- requests ---------------------------------------------------------------------------------------------
    def submit(self, name: str, version: int | str, value: str) -> str | None:
        """Submit request ``value`` on ``name``/``version`` (see :meth:`Scheduler.submit`); the refusal, if any."""
        return self.scheduler.submit(name, version_number(version), value)

    def recover_once(self) -> None:
        """Run :meth:`recover` the first time this store serves a registry call (thread-safe; later calls return).

        In ``mlflow server`` that is a worker's first request, so the job address is known (:func:`request_address`).
        A recovery that fails (e.g. the database is briefly locked) is logged and tried again at the next call; the
        call itself goes on.
        """
        with self._recovery_lock:
            first = not self._recovery_started
            if not first and time.monotonic() - self._recovered_at < RECOVERY_INTERVAL_S:
                return
            self._recovery_started, self._recovered_at = True, time.monotonic()
        try:
            self.recover(leased_only=not first)
        except Exception as exc:  # noqa: BLE001 (a locked database must not fail the registry call)
            _logger.warning("Resuming interrupted unlearning requests failed (%s: %s); trying again at the next call",
                            type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
            with self._recovery_lock:
                self._recovery_started = self._recovery_started and not first
                self._recovered_at = 0.0

    def recover(self, *, leased_only: bool = False) -> None:
        """Resume requests whose launcher is gone and fill free job slots (:meth:`Scheduler.recover`)."""
        self.scheduler.recover(leased_only=leased_only)
