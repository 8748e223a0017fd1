"""Registry requests from Python: cancel a version's queued or running unlearning request.

A registry request (the tag ``mlflow_unlearn.request`` on a version, see docs/registry_plugin.md) runs on the
server, under the registry plugin or ``mlflow-unlearn-serve``. :func:`cancel_request` sets the version's cancel
tag, which both of them act on, and waits for the request's status to say how it ended::

    import mlflow_unlearn

    mlflow_unlearn.cancel_request("models:/mnist/3")   # RequestStatus.CANCELLED

This module imports no torch: it only talks to the registry.
"""

from __future__ import annotations

import getpass
import re
import time
from typing import TYPE_CHECKING

from mlflow_unlearn.request import RequestStatus
from mlflow_unlearn.tracking import vocabulary as vocab

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: How long :func:`cancel_request` waits by default for the request to leave ``queued``/``running``.
CANCEL_WAIT_S = 30.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}")


def _local_user() -> str:
    """This process's login name if it fits the server's grammar of names (as MLflow records a run's user)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        return ""
    return user if _NAME.fullmatch(user) else ""


def cancel_request(model_uri: str, *, by: str | None = None, wait_s: float = CANCEL_WAIT_S,
                   client: MlflowClient | None = None, tracking_uri: str | None = None,
                   registry_uri: str | None = None) -> RequestStatus:
    """Cancel the queued or running unlearning request on a registered version.

    A queued request leaves the queue; a running one has its job stopped (its whole process group, SIGTERM then
    SIGKILL). The request ends ``cancelled``, with who cancelled and when in the version's tags, and no result is
    registered. Cancelling a cancelled request does nothing.

    Args:
        model_uri: ``models:/<name>/<version>`` or ``models:/<name>@<alias>``.
        by: who cancels, recorded unless the server authenticates its users (then the authenticated user is);
            default: this process's login name.
        wait_s: how long to wait for the request's status to leave ``queued``/``running`` (the webhook receiver
            acts a moment after the tag is set; the plugin store at once). 0: do not wait.
        client: the MLflow client (default: one for ``tracking_uri`` and ``registry_uri``).
        tracking_uri: tracking URI (default: the current one).
        registry_uri: registry URI (default: the current one).

    Returns:
        The request's status after the wait: ``cancelled``, or the final status of a job that finished first
        (the registry's compare-and-set decided), or ``queued``/``running`` if ``wait_s`` ran out.

    Raises:
        ModelResolutionError: if ``model_uri`` names no registered version.
        ValueError: if the version has no request, or its request has already finished.
        MlflowException: if the registry refuses the cancel (e.g. the request finished a moment ago).
    """
    import mlflow
    from mlflow import MlflowClient

    client = client or MlflowClient(tracking_uri=tracking_uri or mlflow.get_tracking_uri(), registry_uri=registry_uri)
    version = vocab.resolve_model_version(client, model_uri)
    ref = vocab.version_ref(version)
    status = version.tags.get(vocab.STATUS_TAG)
    if status is None:
        raise ValueError(f"Model version {ref} has no unlearning request to cancel")
    if status == RequestStatus.CANCELLED:
        return RequestStatus.CANCELLED
    if not RequestStatus(status).active:
        raise ValueError(f"The unlearning request on {ref} has already finished ({status}); there is nothing to "
                         "cancel")
    client.set_model_version_tag(version.name, version.version, vocab.CANCEL_TAG, _local_user() if by is None else by)
    deadline = time.monotonic() + wait_s
    while True:
        status = client.get_model_version(version.name, version.version).tags.get(vocab.STATUS_TAG, status)
        if not RequestStatus(status).active or time.monotonic() >= deadline:
            return RequestStatus(status)
        time.sleep(0.5)
