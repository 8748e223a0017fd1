"""The words shared by the MLflow layer and the registry plugin, each defined once.

Tag keys (of model versions and runs), the rows of the metrics table, the reference options, the default
method and the registered-model URI forms live here, so that ``tracking`` and ``plugins`` import them instead
of repeating string literals. Importing this module is cheap: no MLflow, torch or engine import happens
until a function needs one.

Two words called "kind" elsewhere get two names here:

* a **forgetting kind** (:data:`FORGETTING_KINDS`) is what the engine does: ``class`` (class-wise) or
  ``sample`` (sample-wise) forgetting (``ForgetSplit.kind``, the methods' ``forget_kind`` argument);
* a **spec form** (:data:`SPEC_FORMS`) is how a forget spec is written: ``classes:...``, ``ids:...`` or
  ``random:...`` (``ForgetSpec.form``). These two are re-exported from the engine
  (:mod:`mlflow_unlearn.data.forget`, which defines them and imports no torch).

The request's own words (default method, references, model-URI forms) are defined with the typed request in
:mod:`mlflow_unlearn.request`, below this layer, and re-exported here.

>>> from mlflow_unlearn.tracking import vocabulary as vocab
>>> vocab.DEFAULT_METHOD, vocab.REFERENCES, vocab.METRIC_ROWS
('nitc', ('none', 'retrain'), ('original', 'unlearned', 'retrain'))
>>> vocab.model_uri("mnist", 3), vocab.parse_model_uri("models:/mnist@champion")
('models:/mnist/3', ('mnist', None, 'champion'))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# The rows of the table unlearn() returns (and metric-key prefixes in its run) are the assessment's: re-exported.
from mlflow_unlearn.assess.rows import METRIC_ROWS, ORIGINAL_ROW, RETRAIN_ROW, UNLEARNED_ROW  # noqa: F401
from mlflow_unlearn.data.forget import (  # noqa: F401 - the engine's forget words, re-exported (no torch)
    CLASS_FORGETTING,
    FORGETTING_KINDS,
    SAMPLE_FORGETTING,
    SPEC_FORMS,
    ForgetSpec,
    parse_forget_spec,
)
from mlflow_unlearn.request import (  # noqa: F401 - the request's words, re-exported with the layer's others
    DEFAULT_METHOD,
    MODEL_URI_FORMS,
    NO_REFERENCE,
    REFERENCES,
    RETRAIN_REFERENCE,
    ModelResolutionError,
    check_reference,
    model_uri,
    parse_model_uri,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

#: Prefix of every tag key this project writes.
TAG_PREFIX = "mlflow_unlearn."


def _tags(*names: str) -> tuple[str, ...]:
    return tuple(TAG_PREFIX + name for name in names)


#: The lineage tags of an unlearned model version: the parent (``name/version``), the method, the forget digest, the
#: fingerprint of the key that made it (``none`` for an unkeyed digest) and the count, the run that made it, and the
#: gate verdict (``passed``/``failed``, also a run tag).
LINEAGE_TAG_KEYS = (PARENT_TAG, METHOD_TAG, FORGET_DIGEST_TAG, FORGET_KEY_TAG, FORGET_COUNT_TAG, RUN_ID_TAG,
                    VERDICT_TAG) = _tags("parent", "method", "forget_digest", "forget_key", "forget_count", "run_id",
                                         "verdict")
#: The fingerprint value of a digest made without a key (``classes:`` and ``random:`` sets of a lineage without an
#: ``ids:`` step).
NO_KEY = "none"
#: The keyed provenance record of an unlearned version (:mod:`~mlflow_unlearn.tracking.provenance`): a tag of the
#: run that registered it and of the version itself. ``verify`` and the reuse lookup trust this record, not the tags.
PROVENANCE_TAG = TAG_PREFIX + "provenance"
#: The tags of an unlearned model version, exactly these keys: its lineage tags and the provenance record that
#: signs them.
VERSION_TAG_KEYS = (*LINEAGE_TAG_KEYS, PROVENANCE_TAG)
#: Run artifact of an ``ids:`` forget step: its keyed per-ID digests (tombstones), never the IDs.
TOMBSTONES_ARTIFACT = "forget/tombstones.json"

#: Run tags: the registered result (``name/version``, also on a request's version), the hash of method +
#: config + seed that makes unlearning idempotent, and on a run whose unlearning was found done already, the
#: run that did it.
RESULT_VERSION_TAG, CONFIG_HASH_TAG, REUSED_FROM_TAG = _tags("result_version", "config_hash", "reused_from_run")
#: Run tags of the acceptance gate: the membership evidence (``measured``/``none``/``not tested``) and, when it
#: failed, its reasons (numbers and fixed words only; the registry plugin stores them as the request's error).
GATE_EVIDENCE_TAG, GATE_REASON_TAG = _tags("gate_evidence", "gate_reason")
#: Longest gate reason stored in a tag.
MAX_GATE_REASON_CHARS = 1000

#: Registry requests (the plugin): the request a person writes on a version (e.g. ``forget=classes:3;
#: method=nitc``); the state the plugin keeps on it (status, error, request ID, request run, launcher lease,
#: job); on a request run, the project folder launched and the job's own run (Kubernetes).
(REQUEST_TAG, STATUS_TAG, ERROR_TAG, REQUEST_ID_TAG, REQUEST_RUN_TAG, LEASE_TAG, JOB_TAG, PROJECT_TAG,
 JOB_RUN_TAG) = _tags("request", "status", "error", "request_id", "request_run_id", "lease", "job", "project_uri",
                      "job_run_id")
#: A request waiting for a job slot (``MLFLOW_UNLEARN_MAX_JOBS``): its place in the queue, 1 = next to start.
QUEUE_POSITION_TAG = TAG_PREFIX + "queue_position"
#: Setting this tag on a version cancels its queued or running request (the value: who cancels, or empty); the
#: plugin records who cancelled and when (UTC, ISO 8601) in the other two.
CANCEL_TAG, CANCELLED_BY_TAG, CANCELLED_AT_TAG = _tags("cancel", "cancelled_by", "cancelled_at")

#: Context tag values of the dataset inputs we log.
TRAIN_CONTEXT, RETAIN_CONTEXT, TEST_CONTEXT = "train", "retain", "test"

#: The row of the version under test in :func:`~mlflow_unlearn.tracking.api.evaluate_version`'s table.
MODEL_ROW = "model"

#: The engine's method that retrains from scratch on the retain set (the exact-unlearning reference).
RETRAIN_METHOD = "retrain"

def version_ref(version: ModelVersion) -> str:
    """``name/version`` of a model version, the form used in lineage tags."""
    return f"{version.name}/{version.version}"


def resolve_model_version(client: MlflowClient, uri: str) -> ModelVersion:
    """The registered :class:`ModelVersion` that ``uri`` names.

    Raises:
        ModelResolutionError: malformed URI, unknown model, unknown version or unknown alias; the
            message lists what exists.
    """
    from mlflow.exceptions import MlflowException  # lazy: the plugin's request threads import this module

    name, version, alias = parse_model_uri(uri)
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
        raise ModelResolutionError(f"Expected a version number in {uri!r} but got {version!r}")
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        known = ", ".join(sorted((str(v.version) for v in client.search_model_versions(f"name='{name}'")), key=int))
        raise ModelResolutionError(
            f"Model {name!r} has no version {version}; versions: {known or 'none'}"
        ) from exc
