"""Provenance that cannot be planted: the keyed record by which a run says "this version's model is my unlearning".

Tags of a model version can be written by anyone who can write the registry (a plain ``sqlite:`` URI bypasses any
plugin). So a version counts as an unlearning result only when the run that registered it holds a
:class:`Provenance` record, MAC'd with the deployment key (HMAC-SHA256 of a canonical JSON, under a key derived for
this purpose from ``MLFLOW_UNLEARN_DIGEST_KEY``), that binds:

* the version's lineage tags (parent, method, forget digest, key, count, run, verdict);
* the hash of everything that decided the result and its verdict (:func:`~.lineage.config_hash`);
* the model artifact itself: the URI registered as the version's source, and the SHA-256 of its files;
* the digest of the lineage chain the run recorded (every forget step so far).

The record is stored as a run tag and, so that a registry plugin can check it when the version is created, as a
version tag. :func:`check` is what ``verify`` and the reuse lookup ask: it re-derives the MAC and the digest of the
files the version points at. Without the key nothing verifies: a forged record, a copied record on another
version, changed weights or a changed chain all come out ``invalid``, never as a result.

>>> from mlflow_unlearn.tracking.keys import DigestKey
>>> key = DigestKey(b"0123456789abcdef")
>>> record = Provenance({"mlflow_unlearn.run_id": "r1"}, "c", "file:///a/model", "d" * 64, "e" * 64).sign(key)
>>> record.valid(key), Provenance.from_tag(record.to_tag()) == record
(True, True)
>>> forged = Provenance({"mlflow_unlearn.run_id": "r1"}, "c", "file:///b/model", "d" * 64, "e" * 64, record.mac)
>>> forged.valid(key)
False
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException

from mlflow_unlearn.tracking import vocabulary as vocab

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from mlflow_unlearn.tracking.keys import DigestKey

_MAC_TEXT = b"mlflow-unlearn/provenance/v1\0"
_FILE_TEXT = b"mlflow-unlearn/model-files/v1"
#: The states :func:`check` reports.
VALID, ABSENT, INVALID = "valid", "absent", "invalid"


@dataclass(frozen=True)
class Provenance:
    """The record of one registered unlearning result (no sample, no ID: digests and counts only).

    Args:
        tags: the version's lineage tags, exactly :data:`~mlflow_unlearn.tracking.vocabulary.LINEAGE_TAG_KEYS`.
        config_hash: the hash of the request (method, config, seed, reference, gate, evaluation, source).
        source: the artifact URI registered as the version's source.
        artifact_digest: SHA-256 of the model files at ``source`` (:func:`artifact_digest`).
        chain_digest: :meth:`~mlflow_unlearn.tracking.lineage.DataLineage.chain_digest` of the new lineage.
        mac: the HMAC of the rest under the deployment key ('' when no key was configured: never valid).
        key_fingerprint: the fingerprint of the key that made ``mac``.
    """

    tags: Mapping[str, str]
    config_hash: str
    source: str
    artifact_digest: str
    chain_digest: str
    mac: str = ""
    key_fingerprint: str = ""

    @property
    def run_id(self) -> str:
        """The run that registered the version (from the signed tags)."""
        return str(self.tags.get(vocab.RUN_ID_TAG, ""))

    def _payload(self) -> bytes:
        body = dataclasses.asdict(self)
        body.pop("mac")
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def _mac(self, key: DigestKey) -> str:
        return hmac.new(key.secret, _MAC_TEXT + self._payload(), hashlib.sha256).hexdigest()

    def sign(self, key: DigestKey | None) -> Provenance:
        """This record signed with ``key`` (unsigned, hence never valid, without one)."""
        if key is None:
            return dataclasses.replace(self, mac="", key_fingerprint="")
        signed = dataclasses.replace(self, key_fingerprint=key.fingerprint, mac="")
        return dataclasses.replace(signed, mac=signed._mac(key))

    def valid(self, key: DigestKey | None) -> bool:
        """Whether ``mac`` is this record's HMAC under ``key`` (False without a key or for another key)."""
        if key is None or not self.mac or self.key_fingerprint != key.fingerprint:
            return False
        return hmac.compare_digest(self.mac, self._mac(key))

    def to_tag(self) -> str:
        """The record as a tag value (compact JSON)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_tag(cls, text: str | None) -> Provenance | None:
        """The record in a tag value, or None when it is absent or malformed."""
        try:
            body = json.loads(text or "")
            record = cls(**body)
        except (TypeError, ValueError):
            return None
        if not isinstance(record.tags, Mapping) or not all(isinstance(v, str) for v in (
                record.config_hash, record.source, record.artifact_digest, record.chain_digest, record.mac,
                record.key_fingerprint)):
            return None
        return dataclasses.replace(record, tags={str(k): str(v) for k, v in record.tags.items()})


@dataclass(frozen=True)
class ProvenanceCheck:
    """The answer of :func:`check`: ``status`` (:data:`VALID`, :data:`ABSENT` or :data:`INVALID`), the record when
    valid, and one line saying why not (no ID, no path)."""

    status: str
    record: Provenance | None = field(default=None, repr=False)
    reason: str = ""

    @property
    def valid(self) -> bool:
        return self.status == VALID


def artifact_digest(local_dir: str | Path) -> str:
    """SHA-256 over the files under ``local_dir``: each relative path (POSIX form) and content, sorted by path,
    length-prefixed so that no two different trees hash alike.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = (pathlib.Path(tmp) / "a.bin").write_bytes(b"1")
    ...     first = artifact_digest(tmp)
    ...     _ = (pathlib.Path(tmp) / "a.bin").write_bytes(b"2")
    ...     first != artifact_digest(tmp)
    True
    """
    root = Path(local_dir)
    h = hashlib.sha256(_FILE_TEXT)
    for path in sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix()):
        name = path.relative_to(root).as_posix().encode()
        h.update(len(name).to_bytes(8, "big") + name)
        with open(path, "rb") as f:
            size = path.stat().st_size
            h.update(size.to_bytes(8, "big"))
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def version_artifact_digest(client: MlflowClient, version: ModelVersion) -> str:
    """:func:`artifact_digest` of the files ``version`` points at, downloaded through ``client``'s registry."""
    uri = client.get_model_version_download_uri(version.name, version.version)
    with tempfile.TemporaryDirectory() as tmp:
        local = download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=client.tracking_uri)
        return artifact_digest(local)


def check(client: MlflowClient, version: ModelVersion, key: DigestKey | None, *,
          chain_digest: str | None = None, files_digest: str | None = None) -> ProvenanceCheck:
    """Whether ``version`` is, provably, the unlearning result its run recorded.

    Args:
        client: the MLflow client of the version's registry and tracking store.
        version: the version to check.
        key: the deployment key (None: nothing can be verified).
        chain_digest: the digest of the lineage chain the version's run logged, to check against the record.
        files_digest: :func:`artifact_digest` of the version's files when the caller has them already (default:
            they are downloaded).

    Returns:
        :data:`VALID` with the record; :data:`ABSENT` when the version's run holds no record (not an unlearning
        result); :data:`INVALID` with the reason otherwise (no key, a MAC that does not verify, a record of another
        run or another artifact, model files that are not those the run produced, a changed lineage chain).
    """
    if not version.run_id:
        return ProvenanceCheck(ABSENT, reason="the version has no source run")
    try:
        tags = client.get_run(version.run_id).data.tags
    except MlflowException:
        return ProvenanceCheck(INVALID, reason="its source run cannot be read")
    text = tags.get(vocab.PROVENANCE_TAG)
    if text is None:
        return ProvenanceCheck(ABSENT, reason="its run holds no unlearning provenance record")
    record = Provenance.from_tag(text)
    if record is None:
        return ProvenanceCheck(INVALID, reason="its run's provenance record is malformed")
    if key is None:
        return ProvenanceCheck(INVALID, reason="no digest key is configured, so its provenance cannot be checked")
    if not record.valid(key):
        return ProvenanceCheck(INVALID, reason=f"its provenance record does not verify with key {key.fingerprint} "
                                               "(forged, altered, or made with another key)")
    if record.run_id != version.run_id:
        return ProvenanceCheck(INVALID, reason="its run's provenance record belongs to another run")
    if record.source != version.source:
        return ProvenanceCheck(INVALID, reason="the version points at other model files than its run registered")
    if chain_digest is not None and chain_digest != record.chain_digest:
        return ProvenanceCheck(INVALID, reason="the lineage its run records is not the one the record signed")
    if (files_digest or version_artifact_digest(client, version)) != record.artifact_digest:
        return ProvenanceCheck(INVALID, reason="its model files are not the ones its unlearning run produced")
    return ProvenanceCheck(VALID, record)


def matches_tags(record: Provenance, tags: Mapping[str, Any]) -> bool:
    """Whether every lineage tag in ``tags`` has the value the record signed (and the record signs all of them)."""
    lineage = {k: str(v) for k, v in tags.items() if k in vocab.LINEAGE_TAG_KEYS}
    return set(record.tags) == set(vocab.LINEAGE_TAG_KEYS) and all(record.tags[k] == v for k, v in lineage.items())
