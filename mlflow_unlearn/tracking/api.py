"""The Python API: unlearn a registered version, evaluate a version (training and logging: :mod:`.train`).

:func:`unlearn` turns a registered PyTorch version plus a forget specification into a new, audited
version::

    import mlflow_unlearn

    outcome = mlflow_unlearn.unlearn("models:/mnist/1", forget="classes:3")
    outcome.version          # ModelVersion 2, tagged with its lineage (or None if the gate refused it)
    outcome.metrics          # original / unlearned (/ retrain) x forget / retain / test / MIA ... (percent)
    outcome.report_uri       # the Markdown audit report in the run's artifacts

It reads as its steps: :func:`~mlflow_unlearn.tracking.plan.prepare` (every check, before anything is
logged), run the method (and the reference), evaluate, gate, log, register, report. Everything is logged
through an :class:`mlflow.MlflowClient` built from the current tracking and registry URIs (or the ones
passed in), so no global MLflow state is changed: no run is started or ended on the fluent API, no
experiment or URI is set. The new version is registered last, so that a failure leaves nothing
half-registered (a version created just before a failure is deleted again).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mlflow_unlearn import assess as assessing
from mlflow_unlearn import runtime as rt
from mlflow_unlearn.request import UnlearnRequest
from mlflow_unlearn.tracking import lineage as lin
from mlflow_unlearn.tracking import report as rep
from mlflow_unlearn.tracking import steps
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.configs import ConfigError, load_config
from mlflow_unlearn.tracking.disclosure import Disclosure
from mlflow_unlearn.tracking.plan import RETAIN_EVAL_SIZE, DataResolutionError, UnlearnPlan, prepare
from mlflow_unlearn.tracking.runlog import (
    ONNX_DIFF_METRIC,
    RunLogger,
    experiment_id,
    metric_dict,
    metrics_from_run,
    parent_run_id,
    set_run_tags,
)
from mlflow_unlearn.tracking.train import TrainOutcome, log_model, model_code_paths, train_model

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from torch import nn

    from mlflow_unlearn.assess import GateConfig, GateResult


__all__ = ["ConfigError", "DataResolutionError", "TrainOutcome", "UnlearnOutcome", "UnlearnRequest", "evaluate_version",
           "load_config", "log_model", "model_code_paths", "prepare", "train_model", "unlearn"]

_logger = logging.getLogger("mlflow_unlearn")


@dataclass(frozen=True)
class UnlearnOutcome:
    """What :func:`unlearn` did.

    Args:
        version: the new registered version, or None (gate refused it, or ``register=False``).
        run_id: the MLflow run that holds params, metrics, the report and the model artifacts.
        metrics: one row per model (``original``, ``unlearned``, ``retrain``), metrics in percent.
        report_uri: the artifact URI of ``unlearning_report.md``.
        verdict: ``"passed"`` or ``"failed"`` (the acceptance gate).
        reused: True when an identical earlier unlearning was found and its version returned.
        gate: the gate's checks (None when reused).
        onnx_max_abs_diff: max |torch - onnxruntime| logit difference of the ONNX copy, if one was logged.
        model: the unlearned ``nn.Module`` (None when reused).
        disclosure: which figures the run's records withhold (a small ``ids:`` request: every figure of the
            forget set, see :mod:`~mlflow_unlearn.tracking.disclosure`); ``metrics`` and ``gate`` hold them all,
            ``disclosure.metrics(metrics)`` and ``disclosure.gate(gate)`` are what was recorded.
    """

    version: ModelVersion | None
    run_id: str
    metrics: pd.DataFrame
    report_uri: str
    verdict: str
    reused: bool = False
    gate: GateResult | None = None
    onnx_max_abs_diff: float | None = None
    model: nn.Module | None = field(default=None, repr=False)
    disclosure: Disclosure = field(default_factory=Disclosure)


def unlearn(model_uri: str, *, forget: str, method: str = vocab.DEFAULT_METHOD, data: str | None = None,
            config: Any = None, reference: str = vocab.NO_REFERENCE, register: bool = True, force: bool = False,
            device: str = "auto", gate: GateConfig | Mapping[str, Any] | None = None, seed: int = 0,
            onnx: bool = True, retain_eval_size: int | None = RETAIN_EVAL_SIZE, run_id: str | None = None,
            experiment: str | None = None, tracking_uri: str | None = None,
            registry_uri: str | None = None) -> UnlearnOutcome:
    """Make registered model version ``model_uri`` forget ``forget``, prove it, and register the result.

    The keyword arguments that describe the request become one :class:`~mlflow_unlearn.request.UnlearnRequest`
    (its grammar checked: the forget spec, the data source, the reference, the seed, the device).
    Steps: :func:`~mlflow_unlearn.tracking.plan.prepare` (the version, its format, its training data rebuilt
    from its lineage, the forget set, the configs); return the existing version if this exact unlearning was
    done before; run the method (and with ``reference="retrain"`` a model retrained on the retain set with
    the original recipe); evaluate; gate; log the model (trainable pickle + checked ONNX copy); register it
    as the next version of the same registered model with the six lineage tags; write the audit report.
    Nothing records a forget sample or ID: only the forget digest and count.

    Under ``torchrun`` (an initialised process group) every rank prepares the same way and runs the method,
    and the reference, with DistributedDataParallel; rank 0 alone evaluates, logs and registers. The other
    ranks return an outcome with no version, no run and an empty metrics table, holding the unlearned model.

    Args:
        model_uri, forget, method, data, config, reference, seed, device: what to unlearn and how; see
            :class:`~mlflow_unlearn.request.UnlearnRequest`.
        gate, retain_eval_size: see :func:`~mlflow_unlearn.tracking.plan.prepare`.
        register: register the result (when the gate passes).
        force: register even when the gate fails (the version is tagged ``verdict=failed``).
        onnx: log an ONNX copy of the new version.
        run_id: log into this existing run (``mlflow run`` passes ``MLFLOW_RUN_ID``) instead of a new one.
        experiment: experiment name or id for a new run (default: the environment's, the active run's, or
            the parent version's).
        tracking_uri, registry_uri: the MLflow URIs (default: the current ones).

    Returns:
        An :class:`UnlearnOutcome`.

    Raises:
        The errors of :func:`~mlflow_unlearn.tracking.plan.prepare`, all before anything is logged;
        ModelFormatError also for a failed ONNX check.
    """
    result = rep.RunResult(run_id="", started_at=rep.utc_now())
    t_start = time.perf_counter()
    request = UnlearnRequest(forget, method=method, data=data, config=config, reference=reference, seed=seed,
                             device=device, onnx=onnx, register=register)
    plan = prepare(model_uri, request, gate=gate, retain_eval_size=retain_eval_size, tracking_uri=tracking_uri,
                   registry_uri=registry_uri)
    if register and (reused := _reuse(plan, run_id)) is not None:
        return reused
    result.timings["prepare_s"] = time.perf_counter() - t_start
    if rt.rank() != 0:  # another torchrun rank: the collective work only; rank 0 evaluates, logs, registers
        return _other_rank(plan)
    with RunLogger(plan.client, run_id=run_id, experiment_id=experiment_id(plan.client, experiment, plan.parent_run),
                   run_name=f"unlearn-{plan.parent.name}-v{plan.parent.version}-{plan.method}",
                   parent_run_id=parent_run_id()) as logger:
        result.run_id = logger.run_id
        steps.log_plan(logger, plan, register=register, force=force)
        unlearned, reference = steps.run(plan, result)
        evaluation = steps.evaluate(plan, unlearned, reference, result)
        verdict = steps.gate(plan, evaluation, result)
        steps.log_evaluation(logger, unlearned, result, verdict)
        with tempfile.TemporaryDirectory() as tmp:
            if verdict.passed or force:
                steps.log_model(logger, plan, unlearned.model, result, onnx=onnx and register, tmp=Path(tmp))
            if register and (verdict.passed or force):
                steps.register(logger, plan, verdict, result)
            steps.report(logger, plan, result, verdict, evaluation, tmp=Path(tmp))
        steps.finish(logger, result, t_start)
    return UnlearnOutcome(result.version, logger.run_id, evaluation.metrics, rep.report_uri(logger.artifact_uri),
                          verdict.verdict, gate=verdict, onnx_max_abs_diff=result.onnx_diff, model=unlearned.model,
                          disclosure=result.disclosure)


def _reuse(plan: UnlearnPlan, run_id: str | None) -> UnlearnOutcome | None:
    """The outcome of an identical earlier unlearning (same parent, forget set, method, config, seed, reference,
    gate and data), proven by its provenance record, if any."""
    found = lin.find_existing_version(plan.client, parent=plan.parent, method=plan.method,
                                      forget_digest=plan.forget.digest, chash=plan.config_hash, key=plan.digest_key)
    if found is None:
        return None
    existing, record = found
    run = plan.client.get_run(existing.run_id)
    _logger.info("Reusing %s/%s: the same unlearning was done in run %s", existing.name, existing.version,
                 existing.run_id)
    verdict = record.tags[vocab.VERDICT_TAG]
    if run_id:
        set_run_tags(plan.client, run_id, {vocab.VERDICT_TAG: verdict,
                                           vocab.RESULT_VERSION_TAG: vocab.version_ref(existing),
                                           vocab.REUSED_FROM_TAG: existing.run_id})
    return UnlearnOutcome(existing, existing.run_id, metrics_from_run(run), rep.report_uri(run.info.artifact_uri),
                          verdict, reused=True, onnx_max_abs_diff=run.data.metrics.get(ONNX_DIFF_METRIC))


def _other_rank(plan: UnlearnPlan) -> UnlearnOutcome:
    result, _ = steps.run(plan)
    return UnlearnOutcome(None, "", pd.DataFrame(), "", "", model=result.model)


def evaluate_version(model_uri: str, *, forget: str, data: str | None = None, reference: str = vocab.NO_REFERENCE,
                     device: str = "auto", seed: int = 0, run_id: str | None = None, tracking_uri: str | None = None,
                     registry_uri: str | None = None) -> pd.DataFrame:
    """Evaluate registered version ``model_uri`` on a forget split (and optionally a retrain reference).

    Args:
        model_uri: ``models:/<name>/<version>`` or ``models:/<name>@<alias>``.
        forget: a forget spec, applied to the version's training data; a spec that the version's lineage
            already forgot (a relative ``ids:`` path matches the absolute one ``unlearn`` recorded) is applied
            to the data as it was before that step (to measure the forgetting).
        data, reference, device, seed: see :func:`~mlflow_unlearn.tracking.plan.prepare`.
        run_id: also log the metrics (``model.*``, ``retrain.*``) into this run.
        tracking_uri, registry_uri: the MLflow URIs (default: the current ones).

    Returns:
        The metrics table of :func:`mlflow_unlearn.assess.assess` (rows ``model`` and optionally ``retrain``), in
        percent.

    Raises:
        The same input errors as :func:`unlearn`.
    """
    request = UnlearnRequest(forget, data=data, reference=reference, device=device, seed=seed)
    plan = prepare(model_uri, request, retain_eval_size=None, distributed=False, forgotten=True,
                   tracking_uri=tracking_uri, registry_uri=registry_uri)
    models = {vocab.MODEL_ROW: plan.model}
    if plan.retrain_config is not None:
        models[vocab.RETRAIN_ROW] = steps.run_method(plan, vocab.RETRAIN_METHOD, plan.retrain_config).model
    metrics = assessing.assess(models, plan.forget, reference=vocab.RETRAIN_ROW,
                               incompetent=assessing.incompetent_copy(plan.model, seed), device=plan.device,
                               seed=seed).metrics
    if run_id:
        with RunLogger(plan.client, run_id=run_id) as logger:
            logger.log_params({"evaluate.model_uri": model_uri, "forget.digest": plan.forget.digest,
                               "forget.count": plan.forget.count, "forget.kind": plan.forget.kind})
            logger.log_metrics(metric_dict(metrics))
    return metrics
