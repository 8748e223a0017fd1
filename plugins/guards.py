"""What the registry store refuses, so that the plugin's state and a result's lineage stay trustworthy.

Each check raises an ``MlflowException`` with one line that names a tag key or a version, never a tag value:

* :func:`check_created_tags`: a version is created with a request tag only if the request would be accepted, and
  with ``mlflow_unlearn.*`` lineage tags only as an unlearning job registers its result (a provenance record of
  that run and source, signed with the deployment key, that signs those very values);
* :func:`refuse_plugin_tag`: the plugin's own tags (status, lineage, provenance) are read-only for users;
* :func:`refuse_busy_version`, :func:`refuse_busy_model`: a version (or model) whose request is queued or running
  is not deleted or renamed under it (HTTP 409);
* :func:`refuse_stopped_result`: a request's job registers no result once the request is cancelled or timed out.
"""

from __future__ import annotations

from collections.abc import Iterable

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow_unlearn_plugins.errors import ActiveRequestError
from mlflow_unlearn_plugins.ledger import STOPPED, Ledger
from mlflow_unlearn_plugins.request import RequestRefused, parse_request
from mlflow_unlearn_plugins.settings import PluginSettings

from mlflow_unlearn.tracking.keys import DIGEST_KEY_ENV
from mlflow_unlearn.tracking.provenance import Provenance, matches_tags
from mlflow_unlearn.tracking.vocabulary import PARENT_TAG, PROVENANCE_TAG, REQUEST_TAG, TAG_PREFIX, VERSION_TAG_KEYS


def check_created_tags(tags: Iterable, settings: PluginSettings, *, source: str, run_id: str | None) -> None:
    """Refuse the tags of a version about to be created (see the module docstring); nothing is created then.

    Raises:
        MlflowException: ``INVALID_PARAMETER_VALUE`` with one line that repeats no tag value.
    """
    lineage = {}
    for tag in tags or ():
        if tag.key == REQUEST_TAG:
            try:
                parse_request(tag.value, settings.policy)
            except RequestRefused as exc:
                raise MlflowException(f"Unlearning request refused, the version is not created: {exc}",
                                      INVALID_PARAMETER_VALUE) from None
        elif tag.key.startswith(TAG_PREFIX):
            lineage[tag.key] = tag.value
    if lineage:
        _check_result_tags(lineage, settings, source=source, run_id=run_id)


def _check_result_tags(tags: dict[str, str], settings: PluginSettings, *, source: str, run_id: str | None) -> None:
    foreign = sorted(set(tags) - set(VERSION_TAG_KEYS))
    if foreign:
        raise MlflowException(f"Tag {foreign[0]!r} is written by the unlearning plugin only; create the version "
                              f"without it (set {REQUEST_TAG!r} to submit a request)", INVALID_PARAMETER_VALUE)
    record = Provenance.from_tag(tags.get(PROVENANCE_TAG))
    if (record is None or not record.valid(settings.digest_key) or record.run_id != (run_id or "")
            or record.source != source or not matches_tags(record, tags)):
        first = sorted(set(tags) - {PROVENANCE_TAG}) or [PROVENANCE_TAG]
        raise MlflowException(
            f"Tag {first[0]!r} is an unlearning result's lineage, which only mlflow-unlearn's own unlearning "
            "runs write, with a provenance record of their run signed with this server's digest key "
            f"({DIGEST_KEY_ENV}); create the version without it", INVALID_PARAMETER_VALUE)


def refuse_plugin_tag(key: str, *, deleting: bool = False) -> None:
    """Refuse a user's write of one of the plugin's tags (every ``mlflow_unlearn.*`` key but the request tag)."""
    if key.startswith(TAG_PREFIX) and key != REQUEST_TAG:
        how = " and cannot be deleted" if deleting else f"; set {REQUEST_TAG!r} to submit a request"
        raise MlflowException(f"Tag {key!r} is written by the unlearning plugin only{how}", INVALID_PARAMETER_VALUE)


def refuse_busy_version(ledger: Ledger, name: str, version: int | str, *, tag: str | None = None) -> None:
    """Refuse deleting a version (or its request ``tag``) while its request is queued or running.

    Raises:
        ActiveRequestError: HTTP 409, naming the version and the request's status.
    """
    state = ledger.read(name, version)
    if not state.active:
        return
    if tag is not None:
        raise ActiveRequestError(f"Tag {tag!r} of {name}/{version} belongs to a request that is {state.status}; "
                                 "wait until it has finished")
    raise ActiveRequestError(f"Model version {name}/{version} has an unlearning request that is {state.status}; "
                             "delete it after the request has finished")


def refuse_busy_model(ledger: Ledger, name: str, action: str) -> None:
    """Refuse ``action`` (``delete``, ``rename``) of a registered model with a queued or running request.

    Raises:
        ActiveRequestError: HTTP 409, listing up to 10 busy versions.
    """
    busy = sorted(f"{s.name}/{s.version} ({s.status})" for s in ledger.active() if s.name == name)
    if busy:
        raise ActiveRequestError(f"Registered model {name!r} has unlearning requests that are queued or running on "
                                 f"{', '.join(busy[:10])}; {action} it after they have finished")


def refuse_stopped_result(ledger: Ledger, tags: Iterable | None, run_id: str | None) -> None:
    """Refuse to register the result of a request's job (its lineage names the parent, and it comes from the
    request's run) once that request was cancelled or timed out. A job that got there first has registered
    before the request was stopped, and its launcher deletes that version (:mod:`mlflow_unlearn_plugins.job`).

    Raises:
        MlflowException: ``INVALID_PARAMETER_VALUE`` naming the parent version and the request's status.
    """
    parent = next((tag.value for tag in tags or () if tag.key == PARENT_TAG), None)
    name, _, version = (parent or "").rpartition("/")
    if not run_id or not name or not version.isdigit():
        return
    state = ledger.read(name, version)
    if state.status in STOPPED and state.request_run_id == run_id:
        raise MlflowException(f"The unlearning request on {parent} is {state.status}; its job's result is not "
                              "registered", INVALID_PARAMETER_VALUE)
