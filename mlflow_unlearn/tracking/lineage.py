"""Lineage: which registered version an unlearned model comes from, on which data, forgetting what.

Three kinds of record carry the lineage, and nothing in them names a forgotten sample:

* the new model version's tags, exactly :data:`~mlflow_unlearn.tracking.vocabulary.VERSION_TAG_KEYS`
  (parent ``name/version``, method, forget digest, key and count, run id, gate verdict, and the signed provenance
  record, :mod:`~mlflow_unlearn.tracking.provenance`);
* the run's dataset inputs (``mlflow.log_input``): a metadata-only dataset whose source records the data
  source, split seed, test fraction and the chain of forget specifications applied so far, each with its
  digest, so that ``unlearn`` can rebuild the retain data of any version without being told the data;
* the run's params: the model recipe (``model.*``) and training recipe (``train.*``), inherited by every
  unlearned descendant so that a ``retrain`` reference can be trained the way the original was.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag

from mlflow_unlearn.data.forget import ForgetSpec, parse_forget_spec
from mlflow_unlearn.tracking.provenance import check
from mlflow_unlearn.tracking.vocabulary import (
    FORGET_COUNT_TAG,
    FORGET_DIGEST_TAG,
    FORGET_KEY_TAG,
    METHOD_TAG,
    NO_KEY,
    PARENT_TAG,
    RETAIN_CONTEXT,
    RUN_ID_TAG,
    TAG_PREFIX,
    TRAIN_CONTEXT,
    VERDICT_TAG,
    version_ref,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion

    from mlflow_unlearn.tracking.keys import DigestKey
    from mlflow_unlearn.tracking.provenance import Provenance


_LINEAGE_CONTEXTS = (TRAIN_CONTEXT, RETAIN_CONTEXT)
_SOURCE_TAG_PREFIX = TAG_PREFIX.rstrip(".")


class LineageError(ValueError):
    """The data lineage of a version cannot be found or no longer reproduces."""


@dataclass(frozen=True)
class ForgetStep:
    """One applied forget specification (no IDs, no paths: a class list, a seed, or for ``ids:`` the keyed record
    ``ids:keyed-<hex>``) and its digest. A keyed step (an ``ids:`` step, and every later step of its lineage) names
    the fingerprint of the key of its digest; an ``ids:`` step also names the run whose tombstones replay it. A spec
    given as text (a recorded lineage) is parsed once, here.

    >>> ForgetStep("ids:keyed-0a1b", "d", 1, "fp", "run").by_ids, ForgetStep("classes:3", "d", 5, "fp").by_ids
    (True, False)
    """

    spec: ForgetSpec
    digest: str
    count: int
    key_fingerprint: str = ""
    run_id: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.spec, str):
            object.__setattr__(self, "spec", parse_forget_spec(self.spec))

    @property
    def by_ids(self) -> bool:
        """Whether the step forgot sample IDs (an ``ids:`` step, replayed from its tombstones)."""
        return self.spec.by_ids

    def to_record(self) -> list[Any]:
        """``[spec, digest, count]``, with ``key_fingerprint`` and ``run_id`` appended for a keyed step."""
        record: list[Any] = [self.spec.text, self.digest, self.count]
        return record + [self.key_fingerprint, self.run_id] if self.key_fingerprint else record


@dataclass(frozen=True)
class DataLineage:
    """Where a model's training data came from and what has been forgotten since.

    Args:
        source: the data source string accepted by :func:`mlflow_unlearn.data.load_data`.
        seed: the seed of the deterministic train/test split.
        test_fraction: the held-out fraction.
        chain: forget steps applied so far, oldest first.
    """

    source: str
    seed: int = 0
    test_fraction: float = 0.2
    chain: tuple[ForgetStep, ...] = field(default_factory=tuple)

    def then(self, step: ForgetStep) -> DataLineage:
        return DataLineage(self.source, self.seed, self.test_fraction, (*self.chain, step))

    @property
    def keyed(self) -> bool:
        """Whether the chain holds an ``ids:`` step: every digest of this lineage from then on is keyed, since each
        later set lacks the IDs forgotten before, and a plain digest of it would let anyone find them.

        >>> DataLineage("digits", chain=(ForgetStep("classes:3", "d", 5),)).keyed
        False
        """
        return any(step.by_ids for step in self.chain)

    @property
    def key_fingerprint(self) -> str:
        """The fingerprint of the key of the chain's keyed steps ('' when none is keyed)."""
        return next((step.key_fingerprint for step in self.chain if step.key_fingerprint), "")

    def chain_digest(self) -> str:
        """SHA-256 of the chain's records: what a provenance record binds (no ID is in a record)."""
        return hashlib.sha256(json.dumps([s.to_record() for s in self.chain]).encode()).hexdigest()

    def to_source_tags(self) -> dict[str, str]:
        p = _SOURCE_TAG_PREFIX
        return {
            f"{p}.source": self.source,
            f"{p}.seed": str(self.seed),
            f"{p}.test_fraction": repr(self.test_fraction),
            f"{p}.forget_chain": json.dumps([s.to_record() for s in self.chain]),
        }

    @classmethod
    def from_source_tags(cls, tags: dict[str, Any]) -> DataLineage:
        p = _SOURCE_TAG_PREFIX
        chain = tuple(ForgetStep(str(s), str(d), int(c), *map(str, rest))
                      for s, d, c, *rest in json.loads(tags.get(f"{p}.forget_chain", "[]")))
        return cls(str(tags[f"{p}.source"]), int(tags.get(f"{p}.seed", 0)), float(tags.get(f"{p}.test_fraction", 0.2)),
                   chain)


def version_tags(*, parent: ModelVersion, method: str, forget_digest: str, forget_count: int, run_id: str,
                 verdict: str, key_fingerprint: str = "") -> dict[str, str]:
    """The lineage tags of an unlearned version (:data:`~mlflow_unlearn.tracking.vocabulary.LINEAGE_TAG_KEYS`)."""
    return {
        PARENT_TAG: version_ref(parent),
        METHOD_TAG: method,
        FORGET_DIGEST_TAG: forget_digest,
        FORGET_KEY_TAG: key_fingerprint or NO_KEY,
        FORGET_COUNT_TAG: str(int(forget_count)),
        RUN_ID_TAG: run_id,
        VERDICT_TAG: verdict,
    }


def config_hash(method: str, config: dict[str, Any], seed: int, *, reference: str, gate: dict[str, float],
                retain_eval_size: int | None, source: str) -> str:
    """A short stable hash of everything that decides a result and its verdict (the idempotency key): the method,
    its resolved config, the seed, the reference, the gate's thresholds, the retain evaluation size and the data
    source. A request that differs in any of them is not answered with an earlier version.

    >>> args = dict(reference="none", gate={"max_retain_drop": 5.0}, retain_eval_size=1000, source="digits")
    >>> config_hash("nitc", {}, 0, **args) != config_hash("nitc", {}, 0, **{**args, "reference": "retrain"})
    True
    """
    payload = json.dumps({"method": method, "config": config, "seed": seed, "reference": reference, "gate": gate,
                          "retain_eval_size": retain_eval_size, "source": source}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def find_existing_version(client: MlflowClient, *, parent: ModelVersion, method: str, forget_digest: str,
                          chash: str, key: DigestKey | None) -> tuple[ModelVersion, Provenance] | None:
    """An earlier unlearned version of the same parent, forget set, method and request hash, if its provenance
    proves it (:func:`~mlflow_unlearn.tracking.provenance.check`), with the record; None otherwise.

    Tags only narrow the search: a version whose run holds no valid record for exactly this request (a planted
    version, one made without a key, one whose files were replaced) is never returned.
    """
    parent_ref = version_ref(parent)
    wanted = {PARENT_TAG: parent_ref, METHOD_TAG: method, FORGET_DIGEST_TAG: forget_digest}
    if key is None:
        return None
    for candidate in client.search_model_versions(f"name='{parent.name}'"):
        tags = candidate.tags or {}
        if any(tags.get(k) != v for k, v in wanted.items()) or not candidate.run_id:
            continue
        found = check(client, candidate, key)
        if (found.valid and found.record.config_hash == chash
                and all(found.record.tags.get(k) == v for k, v in wanted.items())):
            return client.get_model_version(candidate.name, candidate.version), found.record
    return None


def lineage_dataset_input(lineage: DataLineage, *, context: str, name: str, digest: str, count: int) -> DatasetInput:
    """A metadata-only dataset input carrying ``lineage`` in its source (no samples, no IDs)."""
    tags = {**lineage.to_source_tags(), f"{_SOURCE_TAG_PREFIX}.count": str(count)}
    dataset = MetaDataset(CodeDatasetSource(tags), name=name, digest=digest[:36])
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])


def lineage_from_run(run: Run) -> DataLineage:
    """The data lineage recorded in ``run``'s train (or retain) dataset input.

    Raises:
        LineageError: when the run logged no such input (e.g. a model trained outside mlflow-unlearn).
    """
    for dataset_input in run.inputs.dataset_inputs if run.inputs else ():
        context = {t.key: t.value for t in dataset_input.tags}.get("mlflow.data.context")
        if context not in _LINEAGE_CONTEXTS:
            continue
        try:
            source = json.loads(dataset_input.dataset.source)
        except (TypeError, ValueError):
            continue
        tags = source.get("tags") or {}
        if f"{_SOURCE_TAG_PREFIX}.source" in tags:
            return DataLineage.from_source_tags(tags)
    raise LineageError(
        f"Run {run.info.run_id} logged no mlflow-unlearn dataset input, so the training data of this model is "
        "unknown. Pass the data explicitly (data='digits', 'npz:<path>', ...)."
    )


def inherited_params(run: Run) -> dict[str, str]:
    """The ``model.*`` and ``train.*`` params of ``run`` (the recipe that descendants inherit)."""
    return {k: v for k, v in run.data.params.items() if k.startswith(("model.", "train."))}
