"""Answer the data owner, who holds the digest key: did a model version forget exactly this set of sample IDs?

The registry and the runs record an ``ids:`` forget step only as keyed digests (see
:mod:`mlflow_unlearn.tracking.keys`). :func:`verify` reads the IDs of a request file, digests them with the
deployment's key and looks for that digest in every forget step of the version's lineage (the steps of its
ancestors included). Without the key nothing can be checked: the digests do not reveal the IDs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlflow_unlearn.tracking import lineage as lin
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.keys import DigestKey, read_digest_key, require_key

if TYPE_CHECKING:
    from mlflow import MlflowClient


@dataclass(frozen=True)
class Verification:
    """The answer of :func:`verify`.

    Args:
        forgotten: whether a forget step of the version's lineage forgot exactly the given set.
        message: one line saying so (the step's position and count, or why not); no ID, no path.
    """

    forgotten: bool
    message: str

    def __bool__(self) -> bool:
        return self.forgotten


def verify(model_uri: str, *, forget: str, client: MlflowClient | None = None, tracking_uri: str | None = None,
           registry_uri: str | None = None, digest_key: DigestKey | None = None) -> Verification:
    """Whether version ``model_uri`` forgot exactly the IDs listed in ``forget`` (``ids:<file>``), in its lineage.

    Args:
        model_uri: ``models:/<name>/<version>`` or ``models:/<name>@<alias>``.
        forget: ``ids:<file>``, the request file (``.csv``/``.parquet`` with an ``id`` column, or ``.txt``).
        client: the MLflow client (default: one for ``tracking_uri`` and ``registry_uri``).
        tracking_uri: tracking URI (default: the current one).
        registry_uri: registry URI (default: the current one).
        digest_key: the key (default: the deployment's, :func:`~mlflow_unlearn.tracking.keys.read_digest_key`).

    Returns:
        A :class:`Verification` (true when forgotten).

    Raises:
        DigestKeyError: no key configured.
        ModelResolutionError: unknown model or version.
        LineageError: the version has no mlflow-unlearn lineage.
        ValueError: ``forget`` is not an ``ids:`` spec, or its file cannot be read.
    """
    from mlflow_unlearn.data import forget_digest, parse_forget_spec
    from mlflow_unlearn.data.forget import _read_forget_ids
    from mlflow_unlearn.tracking.plan import tracking_client

    spec = parse_forget_spec(forget)
    if spec.form != "ids":
        raise ValueError(f"Expected forget=ids:<file> (the IDs whose forgetting to verify) but got a {spec.form}: "
                         "spec; classes: and random: steps are recorded as written, see the version's lineage")
    key = require_key(digest_key if digest_key is not None else read_digest_key())
    client = client or tracking_client(tracking_uri, registry_uri)
    version = vocab.resolve_model_version(client, model_uri)
    if not version.run_id:
        raise lin.LineageError(f"{model_uri} has no source run, so it has no mlflow-unlearn lineage to verify")
    lineage = lin.lineage_from_run(client.get_run(version.run_id))
    ids = _read_forget_ids(spec.path)
    digest = forget_digest(ids, key=key.secret)
    ref = vocab.version_ref(version)
    keyed = [step for step in lineage.chain if step.key_fingerprint]
    for position, step in enumerate(lineage.chain, start=1):
        if step.digest == digest and step.key_fingerprint == key.fingerprint:
            return Verification(True, f"forgotten: {ref} forgot exactly these {len(ids)} IDs in forget step "
                                      f"{position} of {len(lineage.chain)} of its lineage (key {key.fingerprint})")
    other = {s.key_fingerprint for s in keyed} - {key.fingerprint}
    hint = f"; {len(other)} step(s) were recorded with another key ({', '.join(sorted(other))})" if other else ""
    return Verification(False, f"not forgotten: no forget step of {ref}'s lineage ({len(lineage.chain)} steps, "
                               f"{len(keyed)} by IDs) forgot exactly these {len(ids)} IDs with key "
                               f"{key.fingerprint}{hint}")
