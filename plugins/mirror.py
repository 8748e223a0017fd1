"""Version tags as the UI's view of the request ledger, written through the registry's public methods only.

The ledger (:mod:`mlflow_unlearn_plugins.ledger`) holds the state; the tags ``mlflow_unlearn.status``,
``.error``, ``.result_version``, ``.queue_position`` ... of the version only show it, for the stock MLflow UI and
API. :func:`mirror` writes the tags that differ from what it showed last (kept in the row, so that a mirror reads
no tags; a trigger that has just read the version's tags passes them instead), then records the row version it
showed (:meth:`~mlflow_unlearn_plugins.ledger.Ledger.mark_mirrored`); a row that changed meanwhile is mirrored
again, so the last writer always shows the latest state. A mirror cut short (a killed process) is redone by the next
recovery (:func:`mirror_pending`).

Two targets: :class:`StoreTags`, MLflow's SQL registry store (the plugin's store, or a stock store of the same
database in a launcher), through the public methods of
:class:`~mlflow.store.model_registry.sqlalchemy_store.SqlAlchemyStore` (the plugin store refuses these tags from
users, not from itself); and :class:`ClientTags`, a remote MLflow server through its REST API (the webhook
trigger, whose server cannot load the plugin).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import sqlalchemy.exc
from mlflow.entities.model_registry import ModelVersionTag
from mlflow.exceptions import MlflowException
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore
from mlflow_unlearn_plugins.ledger import ACTIVE, Ledger, RequestState

from mlflow_unlearn.tracking.vocabulary import QUEUE_POSITION_TAG, STATUS_TAG

#: Attempts of one mirror when the row keeps changing under it (the next change's writer mirrors it anyway) or a
#: tag write loses a lock race; backoff 0.05 s doubling, with jitter.
MIRROR_ATTEMPTS = 6
_PAGE = 1000
_logger = logging.getLogger(__name__)


class TagTarget(Protocol):
    """Where the tags of a version are read and written."""

    def read(self, name: str, version: int) -> dict[str, str] | None:
        """The version's tags, or None if the version does not exist."""

    def write(self, name: str, version: int, key: str, value: str | None) -> None:
        """Set tag ``key`` (``value`` None: delete it)."""


def _tags_or_none(get_version: Callable[[], Any]) -> dict[str, str] | None:
    """The tags of the version ``get_version()`` returns; None when the registry has no such version."""
    try:
        return get_version().tags
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


class StoreTags:
    """The tags of a SQL registry, through :class:`SqlAlchemyStore`'s public methods (the base class's, so that a
    plugin store does not refuse its own tags)."""

    def __init__(self, store: SqlAlchemyStore) -> None:
        self.store = store

    def read(self, name: str, version: int) -> dict[str, str] | None:
        return _tags_or_none(lambda: SqlAlchemyStore.get_model_version(self.store, name, str(version)))

    def write(self, name: str, version: int, key: str, value: str | None) -> None:
        if value is None:
            SqlAlchemyStore.delete_model_version_tag(self.store, name, str(version), key)
        else:
            SqlAlchemyStore.set_model_version_tag(self.store, name, str(version), ModelVersionTag(key, value))

    def legacy_states(self) -> Iterator[RequestState]:
        """The requests that the first ledger left queued or running, from the version tags it kept them in."""
        for status in ACTIVE:
            token = None
            while True:
                page = SqlAlchemyStore.search_model_versions(
                    self.store, filter_string=f"tags.`{STATUS_TAG}` = '{status}'", max_results=_PAGE,
                    page_token=token)
                for mv in page:
                    yield RequestState.from_tags(mv.name, int(mv.version), mv.tags)
                token = page.token
                if not token:
                    break


class ClientTags:
    """The tags of a remote MLflow server's registry, through :class:`~mlflow.MlflowClient`."""

    def __init__(self, registry_uri: str) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)

    def read(self, name: str, version: int) -> dict[str, str] | None:
        return _tags_or_none(lambda: self.client.get_model_version(name, str(version)))

    def write(self, name: str, version: int, key: str, value: str | None) -> None:
        if value is None:
            self.client.delete_model_version_tag(name, str(version), key)
        else:
            self.client.set_model_version_tag(name, str(version), key, value)


def tag_target(registry_uri: str) -> StoreTags | ClientTags:
    """:class:`ClientTags` for an ``http(s)://`` registry, else :class:`StoreTags` of a stock SQL store."""
    if registry_uri.startswith(("http://", "https://")):
        return ClientTags(registry_uri)
    return StoreTags(SqlAlchemyStore(registry_uri))


def mirror(ledger: Ledger, target: TagTarget, name: str, version: int | str, *,
           have: dict[str, str] | None = None) -> None:
    """Make the tags of ``name``/``version`` show its row in the ledger (nothing for a version never requested).

    Best effort: the ledger holds the state, so a mirror that keeps losing lock races (or a server that is down,
    for the webhook) is logged and left to the next recovery (:func:`mirror_pending`), never raised.

    Args:
        have: the version's tags, if the caller has just read them (a user may have changed the request tag).
    """
    version = int(version)
    for attempt in range(MIRROR_ATTEMPTS):
        try:
            state = ledger.read(name, version)
            if state.status is None or (have is None and state.mirrored_version >= state.row_version):
                return  # never requested, or the tags show this row already
            if have is None:
                have = json.loads(state.mirrored_tags) if state.mirrored_tags else target.read(name, version)
            if have is not None:
                for key, value in _in_safe_order(state.tags()):
                    if have.get(key) != value and (value is not None or key in have):
                        target.write(name, version, key, value)
            shown = {key: value for key, value in state.tags().items() if value is not None}
            if ledger.mark_mirrored(name, version, state.row_version, json.dumps(shown, sort_keys=True)):
                return
        except (MlflowException, sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as exc:
            if attempt == MIRROR_ATTEMPTS - 1:
                _logger.warning("Mirroring the status tags of %s/%s failed (%s); recovery tries again", name,
                                version, getattr(exc, "error_code", type(exc).__name__))
                return
            time.sleep(min(2.0, 0.05 * 2 ** attempt) * random.uniform(0.5, 1.0))
        have = None


def _in_safe_order(tags: dict[str, str | None]) -> list[tuple[str, str | None]]:
    """The tags in the order that keeps every intermediate state honest for a reader of several tags: a queue
    position is written before the ``queued`` status it qualifies (a queued request without a position reads as
    admitted, holding a job slot)."""
    return sorted(tags.items(), key=lambda item: item[0] != QUEUE_POSITION_TAG or item[1] is None)


def mirror_pending(ledger: Ledger, target: TagTarget) -> None:
    """Mirror every row whose tags may lag (see :meth:`~mlflow_unlearn_plugins.ledger.Ledger.unmirrored`)."""
    for state in ledger.unmirrored():
        mirror(ledger, target, state.name, state.version)
