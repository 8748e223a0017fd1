"""Answer the data owner, who holds the digest key: did a model version forget exactly this set of sample IDs?

The registry and the runs record an ``ids:`` forget step only as keyed digests (see
:mod:`mlflow_unlearn.tracking.keys`). :func:`verify` first checks that the version is, provably, an unlearning
result (:mod:`mlflow_unlearn.tracking.provenance`), then reads the IDs of a request file, digests them with the
deployment's key and looks for that digest in every forget step of the version's lineage (the steps of its
ancestors included). Without the key nothing can be checked: the digests do not reveal the IDs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlflow_unlearn.data import forget_digest, parse_forget_spec
from mlflow_unlearn.data.forget import _read_forget_ids
from mlflow_unlearn.tracking import lineage as lin
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.keys import DigestKey, read_digest_key, require_key
from mlflow_unlearn.tracking.plan import tracking_client
from mlflow_unlearn.tracking.provenance import ABSENT, check

if TYPE_CHECKING:
    from mlflow import MlflowClient


#: The answers of :func:`verify`, and the ``mlflow-unlearn verify`` exit code of each (2 is any error: no key, an
#: unknown version, an unreadable request file).
FORGOTTEN, NOT_FORGOTTEN, UNVERIFIABLE = "forgotten", "not forgotten", "unverifiable"
EXIT_CODES = {FORGOTTEN: 0, NOT_FORGOTTEN: 1, UNVERIFIABLE: 3}


@dataclass(frozen=True)
class Verification:
    """The answer of :func:`verify`.

    Args:
        status: :data:`FORGOTTEN` (a forget step of the version's proven lineage forgot exactly the given set),
            :data:`NOT_FORGOTTEN` (its proven lineage holds no such step, or it is no unlearning result), or
            :data:`UNVERIFIABLE` (it claims to be an unlearning result, but its provenance does not verify: forged
            tags, another run's record, changed model files, a record made without or with another key).
        message: one line saying so (the step's position and count, or why not); no ID, no path.
    """

    status: str
    message: str

    @property
    def forgotten(self) -> bool:
        return self.status == FORGOTTEN

    def __bool__(self) -> bool:
        return self.forgotten


def verify(model_uri: str, *, forget: str, client: MlflowClient | None = None, tracking_uri: str | None = None,
           registry_uri: str | None = None, digest_key: DigestKey | None = None) -> Verification:
    """Whether version ``model_uri`` forgot exactly the IDs listed in ``forget`` (``ids:<file>``), in its lineage.

    The version must prove that it is an unlearning result: its run's provenance record
    (:mod:`~mlflow_unlearn.tracking.provenance`) must verify with the key, name this run and these model files,
    and sign the lineage chain the run recorded. Only then is the chain searched for the set's keyed digest.

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
        ValueError: ``forget`` is not an ``ids:`` spec, or the forget request file cannot be read.
    """
    spec = parse_forget_spec(forget)
    if spec.form != "ids":
        raise ValueError(f"Expected forget=ids:<file> (the IDs whose forgetting to verify) but got a {spec.form}: "
                         "spec; classes: and random: steps are recorded as written, see the version's lineage")
    key = require_key(digest_key if digest_key is not None else read_digest_key())
    client = client or tracking_client(tracking_uri, registry_uri)
    version = vocab.resolve_model_version(client, model_uri)
    ref = vocab.version_ref(version)
    ids = _read_forget_ids(spec.path)
    digest = forget_digest(ids, key=key.secret)
    try:
        lineage = lin.lineage_from_run(client.get_run(version.run_id)) if version.run_id else None
    except lin.LineageError:
        lineage = None
    found = check(client, version, key, chain_digest=lineage.chain_digest() if lineage is not None else None)
    if found.status == ABSENT and vocab.PARENT_TAG not in (version.tags or {}):
        return Verification(NOT_FORGOTTEN, f"not forgotten: {ref} is not an unlearning result ({found.reason})")
    if not found.valid or lineage is None:
        return Verification(UNVERIFIABLE, f"unverifiable: {ref} claims to be an unlearning result, but "
                                          f"{found.reason or 'its run records no lineage'}")
    # a valid record was signed with this key, and a chain is continued only with the key of its keyed steps
    chain = lineage.chain
    for position, step in enumerate(chain, start=1):
        if step.by_ids and step.digest == digest:
            return Verification(FORGOTTEN, f"forgotten: {ref} forgot exactly these {len(ids)} IDs in forget step "
                                           f"{position} of {len(chain)} of its lineage (key {key.fingerprint})")
    by_ids = sum(step.by_ids for step in chain)
    return Verification(NOT_FORGOTTEN, f"not forgotten: no forget step of {ref}'s lineage ({len(chain)} steps, "
                                       f"{by_ids} by IDs) forgot exactly these {len(ids)} IDs (key {key.fingerprint})")
