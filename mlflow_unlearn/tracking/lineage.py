"""Lineage: which registered version an unlearned model comes from, on which data, forgetting what.

Three kinds of record carry the lineage, and nothing in them names a forgotten sample:

* the new model version's tags, exactly :data:`VERSION_TAG_KEYS` (parent ``name/version``, method, forget
  digest and count, run id, gate verdict);
* the run's dataset inputs (``mlflow.log_input``): a metadata-only dataset whose source records the data
  source, split seed, test fraction and the chain of forget specifications applied so far, each with its
  digest, so that ``unlearn`` can rebuild the retain data of any version without being told the data;
* the run's params: the model recipe (``model.*``) and training recipe (``train.*``), inherited by every
  unlearned descendant so that a ``retrain`` reference can be trained the way the original was.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, Run
    from mlflow.entities.model_registry import ModelVersion

PARENT_TAG = "mlflow_unlearn.parent"
METHOD_TAG = "mlflow_unlearn.method"
FORGET_DIGEST_TAG = "mlflow_unlearn.forget_digest"
FORGET_COUNT_TAG = "mlflow_unlearn.forget_count"
RUN_ID_TAG = "mlflow_unlearn.run_id"
VERDICT_TAG = "mlflow_unlearn.verdict"
#: The tags of an unlearned model version, exactly these keys.
VERSION_TAG_KEYS = (PARENT_TAG, METHOD_TAG, FORGET_DIGEST_TAG, FORGET_COUNT_TAG, RUN_ID_TAG, VERDICT_TAG)

#: Run tags: the gate verdict (``passed``/``failed``), the registered result (``name/version``), the hash
#: of method + config + seed that makes unlearning idempotent.
RUN_VERDICT_TAG = VERDICT_TAG
RUN_RESULT_VERSION_TAG = "mlflow_unlearn.result_version"
RUN_CONFIG_HASH_TAG = "mlflow_unlearn.config_hash"
#: Set on a run whose unlearning was found done already: the run that did it.
RUN_REUSED_FROM_TAG = "mlflow_unlearn.reused_from_run"

#: Context tag values of the dataset inputs we log.
TRAIN_CONTEXT = "train"
RETAIN_CONTEXT = "retain"
TEST_CONTEXT = "test"
_LINEAGE_CONTEXTS = (TRAIN_CONTEXT, RETAIN_CONTEXT)
_SOURCE_TAG_PREFIX = "mlflow_unlearn"

_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+?)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))$")


class ModelResolutionError(ValueError):
    """The model URI does not name an existing registered model version."""


class LineageError(ValueError):
    """The data lineage of a version cannot be found or no longer reproduces."""


@dataclass(frozen=True)
class ForgetStep:
    """One applied forget specification (no IDs: file paths, class lists or seeds) and its digest."""

    spec: str
    digest: str
    count: int


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
            f"{p}.forget_chain": json.dumps([[s.spec, s.digest, s.count] for s in self.chain]),
        }

    @classmethod
    def from_source_tags(cls, tags: dict[str, Any]) -> DataLineage:
        p = _SOURCE_TAG_PREFIX
        chain = tuple(ForgetStep(str(s), str(d), int(c)) for s, d, c in json.loads(tags.get(f"{p}.forget_chain", "[]")))
        return cls(str(tags[f"{p}.source"]), int(tags.get(f"{p}.seed", 0)), float(tags.get(f"{p}.test_fraction", 0.2)),
                   chain)


def parse_model_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """Split ``models:/name/version`` or ``models:/name@alias`` into ``(name, version, alias)``.

    Raises:
        ModelResolutionError: for any other form.

    >>> parse_model_uri("models:/mnist/3")
    ('mnist', '3', None)
    >>> parse_model_uri("models:/mnist@champion")
    ('mnist', None, 'champion')
    """
    match = _URI_RE.match(model_uri or "")
    if not match:
        raise ModelResolutionError(
            f"Expected a registered model URI 'models:/<name>/<version>' or 'models:/<name>@<alias>' "
            f"but got {model_uri!r}"
        )
    return match["name"], match["version"], match["alias"]


def resolve_model_version(client: MlflowClient, model_uri: str) -> ModelVersion:
    """The registered :class:`ModelVersion` that ``model_uri`` names.

    Raises:
        ModelResolutionError: malformed URI, unknown model, unknown version or unknown alias; the
            message lists what exists.
    """
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_model_uri(model_uri)
    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        raise ModelResolutionError(
            f"Registered model {name!r} not found in the model registry; register it first or check the name "
            "and the tracking/registry URI."
        ) from exc
    if alias is not None:
        try:
            return client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            known = ", ".join(sorted(registered.aliases)) or "none"
            raise ModelResolutionError(f"Model {name!r} has no alias {alias!r}; its aliases: {known}") from exc
    if not version.isdigit():
        raise ModelResolutionError(f"Expected a version number in {model_uri!r} but got {version!r}")
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        known = ", ".join(sorted((str(v.version) for v in client.search_model_versions(f"name='{name}'")), key=int))
        raise ModelResolutionError(
            f"Model {name!r} has no version {version}; versions: {known or 'none'}"
        ) from exc


def version_ref(version: ModelVersion) -> str:
    """``name/version`` of a model version, the form used in lineage tags."""
    return f"{version.name}/{version.version}"


def version_tags(*, parent: ModelVersion, method: str, forget_digest: str, forget_count: int, run_id: str,
                 verdict: str) -> dict[str, str]:
    """The six lineage tags of an unlearned version (:data:`VERSION_TAG_KEYS`)."""
    return {
        PARENT_TAG: version_ref(parent),
        METHOD_TAG: method,
        FORGET_DIGEST_TAG: forget_digest,
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
            if run.data.tags.get(RUN_CONFIG_HASH_TAG) == chash:
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
