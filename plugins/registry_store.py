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

A request is parsed and checked at once (see :mod:`mlflow_unlearn_plugins.request`), recorded in the database
(:mod:`mlflow_unlearn_plugins.ledger`) and handed to a detached launcher process
(:mod:`mlflow_unlearn_plugins.launcher`); nothing runs in the request thread.

The constructor only constructs: it parses the URI, opens the database and reads the settings
(:func:`mlflow_unlearn_plugins.settings.read_settings`). ``mlflow server`` constructs the store once in its own
process (to check the URI) and once in each worker, at the worker's first request; a worker's store resumes every
request that is queued or running without a live launcher (:meth:`UnlearnRegistryStore.recover`) at its first
registry call (:meth:`UnlearnRegistryStore.recover_once`), so a restarted server resumes as soon as anyone, the UI
included, reads the registry; it checks again every :data:`RECOVERY_INTERVAL_S` seconds of registry calls.

At most ``MLFLOW_UNLEARN_MAX_JOBS`` requests run at once (:func:`mlflow_unlearn_plugins.ledger.dispatch`); the
others wait as ``queued`` with a ``mlflow_unlearn.queue_position`` tag, and start when a job ends.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore
from mlflow_unlearn_plugins import launcher, ledger
from mlflow_unlearn_plugins.public_errors import without_sql
from mlflow_unlearn_plugins.request import RequestRefused, parse_request
from mlflow_unlearn_plugins.settings import PluginSettings, read_settings

from mlflow_unlearn.tracking.keys import DIGEST_KEY_ENV
from mlflow_unlearn.tracking.provenance import Provenance, matches_tags
from mlflow_unlearn.tracking.vocabulary import (
    ERROR_TAG,
    PROVENANCE_TAG,
    REQUEST_TAG,
    TAG_PREFIX,
    VERSION_TAG_KEYS,
)

SCHEME_PREFIX = "unlearn+"
UNLEARN_STAGE = "Unlearn"
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

    # The registry calls through which a server (and its UI) first reads a restarted registry.
    get_model_version = _first_call_recovers(SqlAlchemyStore.get_model_version)
    search_model_versions = _first_call_recovers(SqlAlchemyStore.search_model_versions)
    get_registered_model = _first_call_recovers(SqlAlchemyStore.get_registered_model)
    search_registered_models = _first_call_recovers(SqlAlchemyStore.search_registered_models)
    get_latest_versions = _first_call_recovers(SqlAlchemyStore.get_latest_versions)

    def create_model_version(self, name, source, run_id=None, tags=None, *args, **kwargs):
        """MLflow's ``create_model_version``, refusing a request tag that would be refused, the plugin's status
        tags (:data:`ledger.RESERVED_TAGS`), and lineage tags that do not come with this run's provenance record,
        signed with the deployment key (an unlearning job's result): nothing is created, and the refused value is
        never stored.

        Raises:
            MlflowException: ``INVALID_PARAMETER_VALUE`` with one line that repeats no tag value.
        """
        self.recover_once()
        lineage = {}
        for tag in tags or ():
            if tag.key == REQUEST_TAG:
                try:
                    parse_request(tag.value, self.settings.policy)
                except RequestRefused as exc:
                    raise MlflowException(f"Unlearning request refused, the version is not created: {exc}",
                                          INVALID_PARAMETER_VALUE) from None
            elif tag.key.startswith(TAG_PREFIX):
                lineage[tag.key] = tag.value
        if lineage:
            self._check_result_tags(lineage, source=source, run_id=run_id)
        return super().create_model_version(name, source, run_id, tags, *args, **kwargs)

    def _check_result_tags(self, tags: dict[str, str], *, source: str, run_id: str | None) -> None:
        """Accept ``mlflow_unlearn.*`` tags at creation only as an unlearning job registers its result: exactly the
        lineage tags and a provenance record of this run and source, signed with the deployment key, that signs
        those very values.

        Raises:
            MlflowException: ``INVALID_PARAMETER_VALUE`` naming the first offending tag key (never a value).
        """
        allowed = set(VERSION_TAG_KEYS)
        foreign = sorted(set(tags) - allowed)
        if foreign:
            raise MlflowException(f"Tag {foreign[0]!r} is written by the unlearning plugin only; create the version "
                                  f"without it (set {REQUEST_TAG!r} to submit a request)", INVALID_PARAMETER_VALUE)
        record = Provenance.from_tag(tags.get(PROVENANCE_TAG))
        if (record is None or not record.valid(self.settings.digest_key) or record.run_id != (run_id or "")
                or record.source != source or not matches_tags(record, tags)):
            first = sorted(set(tags) - {PROVENANCE_TAG}) or [PROVENANCE_TAG]
            raise MlflowException(
                f"Tag {first[0]!r} is an unlearning result's lineage, which only mlflow-unlearn's own unlearning "
                "runs write, with a provenance record of their run signed with this server's digest key "
                f"({DIGEST_KEY_ENV}); create the version without it", INVALID_PARAMETER_VALUE)

    # -- triggers ---------------------------------------------------------------------------------------------
    def transition_model_version_stage(self, name, version, stage, archive_existing_versions=False):
        """``stage="Unlearn"`` submits the version's request tag and leaves the stage as it is; other stages as usual.

        Raises:
            MlflowException: if the version has no request tag, the request is refused (it is also recorded as
                ``failed``), or another request is queued or running on the version.
        """
        self.recover_once()
        version = version_number(version)
        if isinstance(stage, str) and stage.strip().lower() == UNLEARN_STAGE.lower():
            state = ledger.read_state(self, name, version)
            if not state.request:
                raise MlflowException(
                    f"Model version {name}/{version} has no {REQUEST_TAG!r} tag. Set it first, e.g. "
                    f"'forget=classes:3; method=nitc', then transition to {UNLEARN_STAGE!r}",
                    INVALID_PARAMETER_VALUE,
                )
            refusal = self.submit(name, version, state.request, store_value=False)
            if refusal:
                raise MlflowException(f"Unlearning request refused: {refusal}", INVALID_PARAMETER_VALUE)
            return self.get_model_version(name, version)
        return super().transition_model_version_stage(name, version, stage, archive_existing_versions)

    def set_model_version_tag(self, name, version, tag):
        """Setting ``mlflow_unlearn.request`` submits a request; every other ``mlflow_unlearn.*`` tag (status,
        lineage, provenance) is written by the plugin and its jobs only, and is read-only here."""
        self.recover_once()
        version = version_number(version)
        if tag.key == REQUEST_TAG:
            self.submit(name, version, tag.value)
            return
        if tag.key.startswith(TAG_PREFIX):
            raise MlflowException(
                f"Tag {tag.key!r} is written by the unlearning plugin only; set {REQUEST_TAG!r} to submit a request",
                INVALID_PARAMETER_VALUE,
            )
        super().set_model_version_tag(name, version, tag)

    def delete_model_version_tag(self, name, version, key):
        """The request tag cannot be deleted while its request is queued or running; the plugin's other
        ``mlflow_unlearn.*`` tags (status, lineage, provenance) cannot be deleted at all."""
        version = version_number(version)
        if key.startswith(TAG_PREFIX) and key != REQUEST_TAG:
            raise MlflowException(f"Tag {key!r} is written by the unlearning plugin only and cannot be deleted",
                                  INVALID_PARAMETER_VALUE)
        if key == REQUEST_TAG:
            state = ledger.read_state(self, name, version)
            if state.active:
                raise ledger.ActiveRequestError(
                    f"Tag {key!r} of {name}/{version} belongs to a request that is {state.status}; wait until it "
                    "has finished"
                )
        super().delete_model_version_tag(name, version, key)

    def delete_registered_model(self, name):
        """A registered model cannot be deleted while an unlearning request on one of its versions is active."""
        busy = sorted(f"{s.name}/{s.version} ({s.status})" for s in ledger.active_requests(self) if s.name == name)
        if busy:
            raise ledger.ActiveRequestError(
                f"Registered model {name!r} has unlearning requests that are queued or running on "
                f"{', '.join(busy[:10])}; delete it after they have finished"
            )
        super().delete_registered_model(name)

    def delete_model_version(self, name, version):
        """A version cannot be deleted while its unlearning request is queued or running."""
        version = version_number(version)
        state = ledger.read_state(self, name, version)
        if state.active:
            raise ledger.ActiveRequestError(
                f"Model version {name}/{version} has an unlearning request that is {state.status}; delete it after "
                "the request has finished"
            )
        super().delete_model_version(name, version)

    # -- requests ---------------------------------------------------------------------------------------------
    def submit(self, name: str, version: int | str, value: str, *, store_value: bool = True) -> str | None:
        """Record a request on ``name``/``version`` and start its launcher; return the refusal reason, if any.

        Args:
            name: registered model name.
            version: model version.
            value: the request tag value.
            store_value: write ``value`` into the request tag (False when it is already there).

        Raises:
            MlflowException: if the version does not exist, or a different request is active on it.
        """
        version = version_number(version)
        refusal, keep = None, True
        try:
            parse_request(value, self.settings.policy)
        except RequestRefused as exc:
            refusal, keep = str(exc), exc.keep_value
        if refusal is None and self.settings.digest_key is None:
            refusal = (f"this server has no digest key ({DIGEST_KEY_ENV}), so it cannot sign the provenance of a "
                       "result and would refuse to register it; the operator must set one")
        request_id = uuid.uuid4().hex
        # a refused value that may be IDs is removed, also when it was stored before (e.g. at creation)
        stored = (value if store_value else None) if keep else ""
        if not ledger.open_request(self, name, version, stored, request_id=request_id, refusal=refusal):
            return None  # the same request is already queued or running
        if refusal:
            _logger.info("Unlearning request %s on %s/%s refused: %s", request_id, name, version, refusal)
            return refusal
        self._dispatch()
        return None

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
        """Resume every admitted or running request whose launcher is gone (a server restart, a killed launcher),
        then admit waiting requests into the free job slots.

        Args:
            leased_only: resume only requests whose launcher took its lease and died (the periodic check: a
                launcher just started may not hold its lease yet).
        """
        for state in ledger.active_requests(self):
            if not state.request_id:  # not written by the plugin (which always writes a request ID): repair
                if ledger.repair_foreign(self, state.name, state.version):
                    _logger.warning("Model version %s/%s had plugin tags the plugin did not write; marked failed",
                                    state.name, state.version)
                continue
            if state.waiting or (leased_only and not state.lease):
                continue
            if not ledger.lease_alive(state.lease, launcher.LAUNCHER_MARKER):
                _logger.info("Resuming unlearning request %s on %s/%s (%s)", state.request_id, state.name,
                             state.version, state.status)
                self._spawn(state.name, state.version, state.request_id)
        self._dispatch()

    def _dispatch(self) -> None:
        """Start the launchers of the waiting requests that fit in the free job slots."""
        try:
            tracking, registry = self.settings.job_uris(self.db_uri, self.tracking_uri, request_address())
        except ValueError as exc:
            for state in ledger.dispatch(self, self.settings.launcher.max_jobs):
                ledger.advance(self, state.name, state.version, state.request_id or "", expect=ledger.ACTIVE,
                               to="failed", tags={ERROR_TAG: f"the launcher process could not start: {exc}"})
            return
        for pid in launcher.dispatch(self, self.db_uri, self.settings, job_tracking_uri=absolute_sqlite_uri(tracking),
                                     job_registry_uri=absolute_sqlite_uri(registry)):
            _logger.info("Unlearning request admitted: launcher PID %s", pid)

    def _spawn(self, name: str, version: int, request_id: str) -> None:
        try:
            tracking, registry = self.settings.job_uris(self.db_uri, self.tracking_uri, request_address())
            pid = launcher.spawn(self.db_uri, name, version, request_id, settings=self.settings,
                                 job_tracking_uri=absolute_sqlite_uri(tracking),
                                 job_registry_uri=absolute_sqlite_uri(registry))
        except (OSError, ValueError) as exc:
            ledger.advance(self, name, version, request_id, expect=ledger.ACTIVE, to="failed",
                           tags={ERROR_TAG: f"the launcher process could not start: {exc}"})
            return
        launcher.provisional_lease(self, name, version, request_id, pid)
        _logger.info("Unlearning request %s on %s/%s: launcher PID %s", request_id, name, version, pid)
