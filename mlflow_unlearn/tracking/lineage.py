"""Lineage: which registered version an unlearned model comes from, on which data, forgetting what.

Three kinds of record carry the lineage, and nothing in them names a forgotten sample:

* the new model version's tags, exactly :data:`~mlflow_unlearn.tracking.vocabulary.VERSION_TAG_KEYS`
  (parent ``name/version``, method, forget digest and count, run id, gate verdict);
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

from mlflow_unlearn.tracking.vocabulary import (
    CONFIG_HASH_TAG,
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
    from mlflow.entities import DatasetInput, Run
    from mlflow.entities.model_registry import ModelVersion


_LINEAGE_CONTEXTS = (TRAIN_CONTEXT, RETAIN_CONTEXT)
_SOURCE_TAG_PREFIX = TAG_PREFIX.rstrip(".")


class LineageError(ValueError):
    """The data lineage of a version cannot be found or no longer reproduces."""


@dataclass(frozen=True)
class ForgetStep:
    """One applied forget specification (no IDs, no paths: a class list, a seed, or for ``ids:`` a keyed digest of
    the spec) and its digest; an ``ids:`` step also names the fingerprint of its key and the run whose
    tombstones replay it."""

    spec: str
    digest: str
    count: int
    key_fingerprint: str = ""
    run_id: str = ""

    def to_record(self) -> list[Any]:
        """``[spec, digest, count]``, with ``key_fingerprint`` and ``run_id`` appended for a keyed step."""
        record: list[Any] = [self.spec, self.digest, self.count]
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
    """The lineage tags of an unlearned version (:data:`~mlflow_unlearn.tracking.vocabulary.VERSION_TAG_KEYS`)."""
    return {
        PARENT_TAG: version_ref(parent),
        METHOD_TAG: method,
        FORGET_DIGEST_TAG: forget_digest,
        FORGET_KEY_TAG: key_fingerprint or NO_KEY,
        FORGET_COUNT_TAG: str(int(forget_count)),
        RUN_ID_TAG: run_id,
        VERDICT_TAG: verdict,
    }


def config_hash(method: str, config: dict[str, Any], seed: int) -> str:
    """A short stable hash of the method, its resolved config and the seed (the idempotency key)."""
    payload = json.dumps({"method": method, "config": config, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def find_existing_version(client: MlflowClient, *, parent: ModelVersion, method: str, forget_digest: str,
                          chash: str) -> ModelVersion | None:
    """An earlier unlearned version of the same parent, forget set, method and config, if any."""
    parent_ref = version_ref(parent)
    for candidate in client.search_model_versions(f"name='{parent.name}'"):
        tags = candidate.tags or {}
        if (tags.get(PARENT_TAG) == parent_ref and tags.get(METHOD_TAG) == method
                and tags.get(FORGET_DIGEST_TAG) == forget_digest and candidate.run_id):
            run = client.get_run(candidate.run_id)
            if run.data.tags.get(CONFIG_HASH_TAG) == chash:
                return client.get_model_version(candidate.name, candidate.version)
    return None


def lineage_dataset_input(lineage: DataLineage, *, context: str, name: str, digest: str, count: int) -> DatasetInput:
    """A metadata-only dataset input carrying ``lineage`` in its source (no samples, no IDs)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

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
