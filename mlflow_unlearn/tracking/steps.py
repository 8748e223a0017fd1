"""The steps of one unlearning run after :func:`~mlflow_unlearn.tracking.plan.prepare`, in order.

:func:`~mlflow_unlearn.tracking.api.unlearn` calls them one after the other: :func:`log_plan`, :func:`run`,
:func:`evaluate`, :func:`gate`, :func:`log_evaluation`, :func:`log_model`, :func:`register`, :func:`report`,
:func:`finish`. Each reads the frozen plan and records what it produced (and how long it took) in the
:class:`~mlflow_unlearn.tracking.report.RunResult` that the report is built from.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow_unlearn import assess as assessing
from mlflow_unlearn.data import ids_digest
from mlflow_unlearn.methods import run_method as run_engine_method
from mlflow_unlearn.tracking import lineage as lin
from mlflow_unlearn.tracking import report as rep
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.disclosure import disclosure
from mlflow_unlearn.tracking.formats import MODEL_ARTIFACT_PATH
from mlflow_unlearn.tracking.plan import tombstones
from mlflow_unlearn.tracking.provenance import Provenance, artifact_digest
from mlflow_unlearn.tracking.runlog import ONNX_SAMPLE_SIZE, RunLogger, metric_dict

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from torch import nn

    from mlflow_unlearn.assess import Assessment, GateResult
    from mlflow_unlearn.methods.registry import UnlearnResult
    from mlflow_unlearn.tracking.plan import UnlearnPlan

_logger = logging.getLogger("mlflow_unlearn")


def log_plan(logger: RunLogger, plan: UnlearnPlan, *, register: bool, force: bool) -> None:
    """The plan as the run's config-hash tag, params, retain/test dataset inputs (the new lineage) and, for an
    ``ids:`` request, the tombstones that replay it (:data:`~mlflow_unlearn.tracking.vocabulary.TOMBSTONES_ARTIFACT`).
    """
    fs, source = plan.forget, plan.lineage.source
    logger.set_tags({vocab.CONFIG_HASH_TAG: plan.config_hash})
    logger.log_params(plan.params(register=register, force=force))
    if plan.by_ids:
        folder, _, name = vocab.TOMBSTONES_ARTIFACT.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / name).write_text(json.dumps(tombstones(plan)))
            logger.log_artifacts(Path(tmp), folder)
    lineage = plan.lineage_for_run(logger.run_id or "")
    key = plan.digest_key.secret if plan.keyed else None
    logger.log_inputs([
        lin.lineage_dataset_input(lineage, context=vocab.RETAIN_CONTEXT, name=f"{source}-retain",
                                  digest=ids_digest(fs.retain.ids, key=key), count=len(fs.retain)),
        lin.lineage_dataset_input(lineage, context=vocab.TEST_CONTEXT, name=f"{source}-test",
                                  digest=ids_digest(fs.test.ids), count=len(fs.test)),
    ])


def run_method(plan: UnlearnPlan, method: str, config: Any) -> UnlearnResult:
    """Run ``method`` with ``config`` on a copy of the plan's model, forget and retain sets (and its non-members)."""
    fs = plan.forget
    return run_engine_method(method, plan.model, forget=fs.forget, retain=fs.retain, config=config,
                             device=plan.device, forget_kind=fs.kind, forget_classes=fs.forget_classes, seed=plan.seed,
                             nonmember=plan.nonmember)


def run(plan: UnlearnPlan, result: rep.RunResult | None = None) -> tuple[UnlearnResult, UnlearnResult | None]:
    """The method and, if the plan asks for it, the retrain reference (collective steps under ``torchrun``)."""
    _logger.info("Unlearning %d samples (%s) with %s", plan.forget.count, plan.forget.kind, plan.method)
    done = run_method(plan, plan.method, plan.config)
    reference = None
    if plan.retrain_config is not None:
        _logger.info("Training the retrain reference on the retain set")
        reference = run_method(plan, vocab.RETRAIN_METHOD, plan.retrain_config)
    if result is not None:
        result.timings["unlearn_s"] = done.wall_time_s
        if reference is not None:
            result.timings["reference_s"] = reference.wall_time_s
    return done, reference


def evaluate(plan: UnlearnPlan, unlearned: UnlearnResult, reference: UnlearnResult | None,
             result: rep.RunResult) -> Assessment:
    """The assessment (:func:`mlflow_unlearn.assess.assess`) of the original, the unlearned and (if trained) the
    reference model on the plan's split, its retain set cut to ``retain_eval_size``: the metrics table and the
    gate's verdict with the plan's thresholds."""
    t = time.perf_counter()
    models = {vocab.ORIGINAL_ROW: plan.model, vocab.UNLEARNED_ROW: unlearned.model}
    if reference is not None:
        models[vocab.RETRAIN_ROW] = reference.model
    assessment = assessing.assess(
        models, assessing.evaluation_split(plan.forget, plan.retain_eval_size, plan.seed),
        original=vocab.ORIGINAL_ROW, reference=vocab.RETRAIN_ROW, gate=plan.gate,
        incompetent=assessing.incompetent_copy(plan.model, plan.seed), device=plan.device, seed=plan.seed)
    result.metrics, result.retain_evaluated = assessment.metrics, len(assessment.split.retain)
    result.timings["evaluate_s"] = time.perf_counter() - t
    return assessment


def gate(plan: UnlearnPlan, assessment: Assessment, result: rep.RunResult) -> GateResult:
    """The acceptance gate's verdict on the unlearned model (decided by the assessment); what the records may publish
    of the metrics (:mod:`~mlflow_unlearn.tracking.disclosure`): ``result.metrics`` from here on is the published
    table."""
    verdict = assessment.verdict(vocab.UNLEARNED_ROW)
    result.disclosure = disclosure(plan)
    result.metrics = result.disclosure.metrics(assessment.metrics)
    return verdict


def log_evaluation(logger: RunLogger, unlearned: UnlearnResult, result: rep.RunResult, verdict: GateResult) -> None:
    """The metrics table, the method's wall time and the verdict, as run metrics and the verdict tags: the
    verdict, the membership evidence and, for a failed gate, its reasons (numbers only, no sample, no ID: the
    registry plugin copies them into the request's error tag)."""
    logger.log_metrics({**metric_dict(result.metrics), "unlearn.wall_time_s": unlearned.wall_time_s,
                        "gate.passed": float(verdict.passed)})
    tags = {vocab.VERDICT_TAG: verdict.verdict, vocab.GATE_EVIDENCE_TAG: verdict.evidence}
    if not verdict.passed:
        reasons = result.disclosure.gate(verdict).failures()
        tags[vocab.GATE_REASON_TAG] = "; ".join(reasons)[:vocab.MAX_GATE_REASON_CHARS]
    logger.set_tags(tags)


def log_model(logger: RunLogger, plan: UnlearnPlan, model: nn.Module, result: rep.RunResult, *, onnx: bool,
              tmp: Path) -> None:
    """Log the unlearned model (and its checked ONNX copy) as the run's model artifacts; keep the digest of the
    model's files for its provenance record."""
    t = time.perf_counter()
    result.onnx_diff = logger.log_models(model, sample=plan.forget.test.first_inputs(ONNX_SAMPLE_SIZE),
                                         num_classes=plan.split.num_classes, onnx=onnx, tmp=tmp, code=plan.code)
    result.artifact_digest = artifact_digest(tmp / MODEL_ARTIFACT_PATH)
    result.timings["log_models_s"] = time.perf_counter() - t


def register(logger: RunLogger, plan: UnlearnPlan, verdict: GateResult, result: rep.RunResult) -> ModelVersion:
    """Register the logged model as the parent's next version, with its lineage tags and its provenance record
    (:mod:`~mlflow_unlearn.tracking.provenance`: signed with the deployment key, also set on the run first).

    Registered after everything that can fail on bad input; if the report fails, the run logger deletes the
    version again, so the report can name the new version.
    """
    fs, parent = plan.forget, plan.parent
    result.forced = not verdict.passed
    tags = lin.version_tags(parent=parent, method=plan.method, forget_digest=fs.digest, forget_count=fs.count,
                            run_id=logger.run_id, verdict=verdict.verdict, key_fingerprint=plan.key_fingerprint)
    record = Provenance(tags, plan.config_hash, logger.model_source, result.artifact_digest,
                        plan.lineage_for_run(logger.run_id).chain_digest()).sign(plan.digest_key)
    logger.set_tags({vocab.PROVENANCE_TAG: record.to_tag()})
    result.version = logger.register(parent.name, tags={**tags, vocab.PROVENANCE_TAG: record.to_tag()},
                                     description=f"Unlearned from {vocab.version_ref(parent)} with {plan.method}: "
                                                 f"forgot {fs.count} samples (digest {fs.digest[:12]}), gate "
                                                 f"{verdict.verdict}.")
    return result.version


def report(logger: RunLogger, plan: UnlearnPlan, result: rep.RunResult, verdict: GateResult,
           assessment: Assessment, *, tmp: Path) -> None:
    """Write the audit report (JSON, Markdown, plots) and log it as the run's ``report`` artifacts."""
    t = time.perf_counter()
    result.losses = {} if result.disclosure.limited else assessing.report_losses(assessment.outputs)
    rep.write_report(rep.build_report(plan, result, result.disclosure.gate(verdict)), result.metrics, result.losses,
                     tmp / rep.REPORT_ARTIFACT_PATH)
    logger.log_artifacts(tmp / rep.REPORT_ARTIFACT_PATH, rep.REPORT_ARTIFACT_PATH)
    result.timings["report_s"] = time.perf_counter() - t


def finish(logger: RunLogger, result: rep.RunResult, t_start: float) -> None:
    """The step timings as ``time.*`` metrics; the result tag last, once the run is complete."""
    result.timings["total_s"] = time.perf_counter() - t_start
    logger.log_metrics({f"time.{k}": v for k, v in result.timings.items()})
    if result.version is not None:
        logger.tag_result(result.version)
