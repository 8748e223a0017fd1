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
  (:mod:`mlflow_unlearn.data.forget`), which defines them, on first use.

>>> from mlflow_unlearn.tracking import vocabulary as vocab
>>> vocab.DEFAULT_METHOD, vocab.REFERENCES, vocab.METRIC_ROWS
('nitc', ('none', 'retrain'), ('original', 'unlearned', 'retrain'))
>>> vocab.model_uri("mnist", 3), vocab.parse_model_uri("models:/mnist@champion")
('models:/mnist/3', ('mnist', None, 'champion'))
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

#: Prefix of every tag key this project writes.
TAG_PREFIX = "mlflow_unlearn."

# -- model-version tags: the lineage of an unlearned version -------------------------------------------------
PARENT_TAG = TAG_PREFIX + "parent"
METHOD_TAG = TAG_PREFIX + "method"
FORGET_DIGEST_TAG = TAG_PREFIX + "forget_digest"
FORGET_COUNT_TAG = TAG_PREFIX + "forget_count"
RUN_ID_TAG = TAG_PREFIX + "run_id"
#: The gate verdict (``passed``/``failed``): a tag of the unlearned version and of its run.
VERDICT_TAG = TAG_PREFIX + "verdict"
#: The tags of an unlearned model version, exactly these keys.
VERSION_TAG_KEYS = (PARENT_TAG, METHOD_TAG, FORGET_DIGEST_TAG, FORGET_COUNT_TAG, RUN_ID_TAG, VERDICT_TAG)

# -- run tags -------------------------------------------------------------------------------------------------
#: The registered result (``name/version``): a tag of the run that registered it, and of a request's version.
RESULT_VERSION_TAG = TAG_PREFIX + "result_version"
#: The hash of method + config + seed that makes unlearning idempotent.
CONFIG_HASH_TAG = TAG_PREFIX + "config_hash"
#: Set on a run whose unlearning was found done already: the run that did it.
REUSED_FROM_TAG = TAG_PREFIX + "reused_from_run"

# -- registry requests (the plugin): the request a person writes, and the state the plugin keeps --------------
#: The request a person writes on a version, e.g. ``forget=classes:3; method=nitc``.
REQUEST_TAG = TAG_PREFIX + "request"
STATUS_TAG = TAG_PREFIX + "status"
ERROR_TAG = TAG_PREFIX + "error"
REQUEST_ID_TAG = TAG_PREFIX + "request_id"
REQUEST_RUN_TAG = TAG_PREFIX + "request_run_id"
LEASE_TAG = TAG_PREFIX + "lease"
JOB_TAG = TAG_PREFIX + "job"
#: Tag of a request run recording which project folder was launched.
PROJECT_TAG = TAG_PREFIX + "project_uri"
#: Tag of a request run naming the job's own run when the backend created one (Kubernetes).
JOB_RUN_TAG = TAG_PREFIX + "job_run_id"

# -- dataset inputs -------------------------------------------------------------------------------------------
#: Context tag values of the dataset inputs we log.
TRAIN_CONTEXT = "train"
RETAIN_CONTEXT = "retain"
TEST_CONTEXT = "test"

# -- the metrics table ----------------------------------------------------------------------------------------
#: Rows of the table :func:`~mlflow_unlearn.tracking.api.unlearn` returns (and metric-key prefixes in its run).
ORIGINAL_ROW = "original"
UNLEARNED_ROW = "unlearned"
RETRAIN_ROW = "retrain"
METRIC_ROWS = (ORIGINAL_ROW, UNLEARNED_ROW, RETRAIN_ROW)
#: The row of the version under test in :func:`~mlflow_unlearn.tracking.api.evaluate_version`'s table.
MODEL_ROW = "model"

# -- choices --------------------------------------------------------------------------------------------------
#: The unlearning method used when none is named.
DEFAULT_METHOD = "nitc"
#: The engine's method that retrains from scratch on the retain set (the exact-unlearning reference).
RETRAIN_METHOD = "retrain"
NO_REFERENCE = "none"
RETRAIN_REFERENCE = "retrain"
#: What an unlearning is compared against: nothing, or a model retrained without the forget set.
REFERENCES = (NO_REFERENCE, RETRAIN_REFERENCE)

# -- registered-model URIs ------------------------------------------------------------------------------------
#: The accepted forms of a registered model URI.
MODEL_URI_FORMS = ("models:/<name>/<version>", "models:/<name>@<alias>")
_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+?)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))$")

#: Names re-exported from the engine on first use (importing it costs torch).
_ENGINE_NAMES = ("FORGETTING_KINDS", "CLASS_FORGETTING", "SAMPLE_FORGETTING", "SPEC_FORMS", "ForgetSpec",
                 "parse_forget_spec")


class ModelResolutionError(ValueError):
    """The model URI does not name an existing registered model version."""


def check_reference(reference: Any) -> str:
    """Return ``reference`` if it is one of :data:`REFERENCES`.

    Raises:
        ValueError: otherwise, listing the accepted ones.

    >>> check_reference("retrain")
    'retrain'
    """
    if reference not in REFERENCES:
        raise ValueError(f"Unknown reference {reference!r}; expected one of: {', '.join(REFERENCES)}")
    return reference


def model_uri(name: str, version: int | str) -> str:
    """``models:/<name>/<version>``.

    >>> model_uri("mnist", "2")
    'models:/mnist/2'
    """
    return f"models:/{name}/{version}"


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """Split ``models:/name/version`` or ``models:/name@alias`` into ``(name, version, alias)``.

    Raises:
        ModelResolutionError: for any other form.

    >>> parse_model_uri("models:/mnist/3")
    ('mnist', '3', None)
    >>> parse_model_uri("models:/mnist@champion")
    ('mnist', None, 'champion')
    """
    match = _URI_RE.match(uri or "")
    if not match:
        raise ModelResolutionError(f"Expected a registered model URI {' or '.join(map(repr, MODEL_URI_FORMS))} "
                                   f"but got {uri!r}")
    return match["name"], match["version"], match["alias"]


def version_ref(version: ModelVersion) -> str:
    """``name/version`` of a model version, the form used in lineage tags."""
    return f"{version.name}/{version.version}"


def resolve_model_version(client: MlflowClient, uri: str) -> ModelVersion:
    """The registered :class:`ModelVersion` that ``uri`` names.

    Raises:
        ModelResolutionError: malformed URI, unknown model, unknown version or unknown alias; the
            message lists what exists.
    """
    from mlflow.exceptions import MlflowException

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


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from mlflow_unlearn.data import forget

        return getattr(forget, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
