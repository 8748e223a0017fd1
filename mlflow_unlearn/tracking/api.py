"""The Python API: train and register a model, unlearn a registered version, evaluate a version.

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
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow_unlearn.tracking import lineage as lin
from mlflow_unlearn.tracking import report as rep
from mlflow_unlearn.tracking import steps
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.configs import ConfigError, load_config
from mlflow_unlearn.tracking.evaluation import incompetent_copy
from mlflow_unlearn.tracking.gate import GateConfig, GateResult
from mlflow_unlearn.tracking.plan import RETAIN_EVAL_SIZE, DataResolutionError, UnlearnPlan, prepare, tracking_client
from mlflow_unlearn.tracking.runlog import (
    ONNX_DIFF_METRIC,
    ONNX_SAMPLE_SIZE,
    RunLogger,
    experiment_id,
    metric_dict,
    metrics_from_run,
    parent_run_id,
    set_run_tags,
)

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities.model_registry import ModelVersion
    from torch import nn

    from mlflow_unlearn.data import DataSplit
    from mlflow_unlearn.training import TrainConfig

__all__ = ["ConfigError", "DataResolutionError", "TrainOutcome", "UnlearnOutcome", "evaluate_version", "load_config",
           "log_model", "model_code_paths", "prepare", "train_model", "unlearn"]

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


@dataclass(frozen=True)
class TrainOutcome:
    """What :func:`train_model` did: the registered version (if a name was given), run, model, test accuracy."""

    version: ModelVersion | None
    run_id: str
    model: nn.Module = field(repr=False)
    test_accuracy: float
    onnx_max_abs_diff: float | None = None


def train_model(data: str = "digits", *, arch: str = "smallcnn", registered_model_name: str | None = None,
                config: Mapping[str, Any] | None = None, seed: int = 0, test_fraction: float = 0.2,
                device: str = "auto", onnx: bool = True, run_id: str | None = None, experiment: str | None = None,
                tracking_uri: str | None = None, registry_uri: str | None = None) -> TrainOutcome:
    """Train architecture ``arch`` on ``data``, log it with its lineage and (optionally) register it.

    The run records the whole recipe as params (``model.*``, ``train.*``, ``data.*``), the train and test
    sets as dataset inputs (sources and digests, which :func:`unlearn` reads to find the data again), the
    test accuracy, the model in the trainable pickle format and a checked ONNX copy.

    Args:
        data: a data source (see :func:`mlflow_unlearn.data.load_data`).
        arch: a registered architecture (see :func:`mlflow_unlearn.models.list_models`).
        registered_model_name: register the model under this name (None: log only).
        config: training overrides (:class:`mlflow_unlearn.training.TrainConfig` fields).
        seed: seed of the train/test split and (unless ``config`` sets it) of training.
        test_fraction: held-out fraction of the data.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        onnx: also log an ONNX copy (checked against onnxruntime).
        run_id: log into this existing run (e.g. ``MLFLOW_RUN_ID`` under ``mlflow run``) instead of a new one.
        experiment: experiment name or id for a new run.
        tracking_uri, registry_uri: the MLflow URIs (default: the current ones).

    Returns:
        A :class:`TrainOutcome`.

    Raises:
        ValueError: unknown data source or architecture, invalid config.
    """
    from mlflow_unlearn import runtime as rt
    from mlflow_unlearn.data import load_data
    from mlflow_unlearn.metrics import accuracy, collect_outputs
    from mlflow_unlearn.models import create_model
    from mlflow_unlearn.training import TrainConfig, train

    try:
        recipe = TrainConfig(**{"seed": seed, **dict(config or {})})
    except TypeError as exc:
        raise ConfigError(f"Invalid training config: {exc}") from None
    dev = rt.resolve_device(device)
    split = load_data(data, seed=seed, test_fraction=test_fraction)
    rt.seed_everything(recipe.seed)  # the initial weights too, so that one seed gives one model
    model = create_model(arch, in_channels=split.train.in_channels, num_classes=split.num_classes,
                         input_size=split.train.input_size, input_shape=split.train.input_shape)
    client = tracking_client(tracking_uri, registry_uri)
    with RunLogger(client, run_id=run_id, experiment_id=experiment_id(client, experiment, None),
                   run_name=f"train-{arch}-{data}", parent_run_id=parent_run_id()) as logger:
        _log_training_recipe(logger, split, recipe, data=data, arch=arch, seed=seed, test_fraction=test_fraction)
        model, history = train(model, split.train, recipe, device=dev)
        test_acc = 100 * accuracy(*collect_outputs(model, split.test, device=dev))
        logger.log_metrics({"test_accuracy": test_acc, "train_loss": history.records[-1]["loss"],
                            "time.train_s": history.wall_time_s})
        model = model.cpu().eval()
        with tempfile.TemporaryDirectory() as tmp:
            diff = logger.log_models(model, sample=split.test.x[:ONNX_SAMPLE_SIZE], num_classes=split.num_classes,
                                     onnx=onnx, tmp=Path(tmp))
        version = None
        if registered_model_name:
            version = logger.register(registered_model_name, tags=None,
                                      description=f"{arch} trained on {data} by mlflow-unlearn (test accuracy "
                                                  f"{test_acc:.2f}%)")
            logger.tag_result(version)
    return TrainOutcome(version, logger.run_id, model, test_acc, diff)


def _log_training_recipe(logger: RunLogger, split: DataSplit, recipe: TrainConfig, *, data: str, arch: str, seed: int,
                         test_fraction: float) -> None:
    """The model and training recipe as params, the train and test sets as lineage dataset inputs."""
    logger.log_params({
        "model.arch": arch, "model.in_channels": split.train.in_channels, "model.num_classes": split.num_classes,
        "model.input_size": split.train.input_size, **{f"train.{k}": v for k, v in recipe.to_dict().items()},
    })
    _log_data_lineage(logger, split, data=data, seed=seed, test_fraction=test_fraction)


def _log_data_lineage(logger: RunLogger, split: DataSplit, *, data: str, seed: int, test_fraction: float) -> None:
    """The data as params (``data.*``, ``data.split`` = explicit or seeded) and the train and test sets as the
    lineage dataset inputs that :func:`unlearn` reads to rebuild the data (source, split, ID digests; no IDs)."""
    from mlflow_unlearn.data import describe, ids_digest

    info = describe(split)
    lineage = lin.DataLineage(split.source, split.seed, split.test_fraction)
    logger.log_params({"data.source": data, "data.seed": seed, "data.test_fraction": test_fraction,
                       "data.split": info["split"], "data.n_train": info["n_train"], "data.n_test": info["n_test"]})
    logger.log_inputs([
        lin.lineage_dataset_input(lineage, context=vocab.TRAIN_CONTEXT, name=f"{data}-train",
                                  digest=info["train_ids_digest"], count=info["n_train"]),
        lin.lineage_dataset_input(lineage, context=vocab.TEST_CONTEXT, name=f"{data}-test",
                                  digest=ids_digest(split.test.ids), count=info["n_test"]),
    ])


def log_model(model: nn.Module, data: str, *, registered_model_name: str | None = None,
              code_paths: Sequence[str | os.PathLike] | None = None, seed: int = 0, test_fraction: float = 0.2,
              onnx: bool = False, run_id: str | None = None, experiment: str | None = None,
              tracking_uri: str | None = None, registry_uri: str | None = None) -> TrainOutcome:
    """Log (and register) a model trained by your own script so that :func:`unlearn` needs only its URI.

    Logs ``model`` in the trainable (pickle) format with its code (``code_paths``, or the file or package of
    its class when that is your own module) and tensor signature, and ``data``'s train and test sets as the
    lineage dataset inputs (source, split, ID digests) that :func:`unlearn` reads; also ``test_accuracy`` on
    the test side of the split. Use the data source you trained on, with its own split (an npz ``split``
    array, a manifest ``split`` column, ``train/`` and ``test/`` folders) or the seeded one of
    ``seed``/``test_fraction``. Logs into ``run_id``, else the active run, else a new run.

    Args:
        model: the trained ``nn.Module``.
        data: the data source it was trained on (see :func:`mlflow_unlearn.data.load_data`).
        registered_model_name: register the model under this name (None: log only).
        code_paths: files or folders of the model's code (default: inferred from its class, see
            :func:`model_code_paths`).
        seed, test_fraction: the seeded split, for a source without its own split.
        onnx: also log a checked ONNX copy.
        run_id, experiment, tracking_uri, registry_uri: where to log (default: the active run, the current URIs).

    Returns:
        A :class:`TrainOutcome` (the version is None without ``registered_model_name``).

    Raises:
        ValueError: a bad argument, data that cannot be loaded or does not fit the model; all before logging.
    """
    import mlflow

    from mlflow_unlearn import runtime as rt
    from mlflow_unlearn.data import load_data
    from mlflow_unlearn.metrics import accuracy, collect_outputs
    from mlflow_unlearn.tracking.plan import _check_seed, check_model_fits

    if registered_model_name is not None and not (isinstance(registered_model_name, str) and registered_model_name):
        raise ValueError(f"Expected argument `registered_model_name` to be a name or None but got "
                         f"{registered_model_name!r}")
    _check_seed(seed)
    try:
        split = load_data(data, seed=seed, test_fraction=test_fraction)
    except (ValueError, OSError) as exc:
        raise DataResolutionError(f"Cannot load the data source {data!r}: {exc}") from None
    model = model.cpu().eval()
    check_model_fits(model, split, data)
    paths = [str(p) for p in code_paths] if code_paths is not None else model_code_paths(model)
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise ValueError(f"Expected `code_paths` to name existing files or folders but got {missing[0]!r}")
    if run_id is None and mlflow.active_run() is not None:
        run_id = mlflow.active_run().info.run_id
    client = tracking_client(tracking_uri, registry_uri)
    with RunLogger(client, run_id=run_id, experiment_id=experiment_id(client, experiment, None),
                   run_name=f"log-{type(model).__name__}", parent_run_id=parent_run_id()) as logger:
        _log_data_lineage(logger, split, data=data, seed=seed, test_fraction=test_fraction)
        test_acc = 100 * accuracy(*collect_outputs(model, split.test, device=rt.resolve_device("cpu")))
        logger.log_metrics({"test_accuracy": test_acc})
        with tempfile.TemporaryDirectory() as tmp:
            diff = logger.log_models(model, sample=split.test.x[:ONNX_SAMPLE_SIZE], num_classes=split.num_classes,
                                     onnx=onnx, tmp=Path(tmp), code_paths=paths)
        version = None
        if registered_model_name:
            version = logger.register(registered_model_name, tags=None,
                                      description=f"{type(model).__name__} trained on {data} (test accuracy "
                                                  f"{test_acc:.2f}%), logged with mlflow_unlearn.log_model")
            logger.tag_result(version)
    return TrainOutcome(version, logger.run_id, model, test_acc, diff)


def model_code_paths(model: nn.Module) -> list[str]:
    """The file (or top-level package folder) of ``model``'s class when it is the user's own code.

    Empty for classes of installed packages (site-packages, the standard library), of ``torch`` and of
    ``mlflow_unlearn``, and for classes defined in the running script (``__main__``), which are pickled by
    value.

    >>> from torch import nn
    >>> model_code_paths(nn.Linear(2, 2))
    []
    """
    import sys
    import sysconfig

    top = type(model).__module__.split(".")[0]
    module = sys.modules.get(top)
    file = getattr(module, "__file__", None)
    if top in ("__main__", "builtins", "torch", "torchvision", "mlflow_unlearn") or not file:
        return []
    path = Path(file).resolve()
    installed = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    if any(root in path.parents for root in installed) or {"site-packages", "dist-packages"} & set(path.parts):
        return []
    return [str(path.parent if path.name == "__init__.py" else path)]


def unlearn(model_uri: str, *, forget: str, method: str = vocab.DEFAULT_METHOD, data: str | None = None,
            config: Any = None, reference: str = vocab.NO_REFERENCE, register: bool = True, force: bool = False,
            device: str = "auto", gate: GateConfig | Mapping[str, Any] | None = None, seed: int = 0,
            onnx: bool = True, retain_eval_size: int | None = RETAIN_EVAL_SIZE, run_id: str | None = None,
            experiment: str | None = None, tracking_uri: str | None = None,
            registry_uri: str | None = None) -> UnlearnOutcome:
    """Make registered model version ``model_uri`` forget ``forget``, prove it, and register the result.

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
        model_uri, forget, method, data, config, reference, gate, seed, device, retain_eval_size: what to
            unlearn and how; see :func:`~mlflow_unlearn.tracking.plan.prepare`.
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
    from mlflow_unlearn import runtime as rt

    result = rep.RunResult(run_id="", started_at=rep.utc_now())
    t_start = time.perf_counter()
    plan = prepare(model_uri, forget=forget, method=method, data=data, config=config, reference=reference,
                   gate=gate, seed=seed, device=device, retain_eval_size=retain_eval_size,
                   tracking_uri=tracking_uri, registry_uri=registry_uri)
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
    return UnlearnOutcome(result.version, logger.run_id, result.metrics, rep.report_uri(logger.artifact_uri),
                          verdict.verdict, gate=verdict, onnx_max_abs_diff=result.onnx_diff, model=unlearned.model)


def _reuse(plan: UnlearnPlan, run_id: str | None) -> UnlearnOutcome | None:
    """The outcome of an identical earlier unlearning (same parent, forget set, method, config, seed), if any."""
    existing = lin.find_existing_version(plan.client, parent=plan.parent, method=plan.method,
                                         forget_digest=plan.forget.digest, chash=plan.config_hash)
    if existing is None:
        return None
    run = plan.client.get_run(existing.run_id)
    _logger.info("Reusing %s/%s: the same unlearning was done in run %s", existing.name, existing.version,
                 existing.run_id)
    verdict = existing.tags.get(vocab.VERDICT_TAG, "")
    if run_id:
        set_run_tags(plan.client, run_id, {vocab.VERDICT_TAG: verdict,
                                           vocab.RESULT_VERSION_TAG: vocab.version_ref(existing),
                                           vocab.REUSED_FROM_TAG: existing.run_id})
    return UnlearnOutcome(existing, existing.run_id, metrics_from_run(run), rep.report_uri(run.info.artifact_uri),
                          verdict, reused=True, onnx_max_abs_diff=run.data.metrics.get(ONNX_DIFF_METRIC))


def _other_rank(plan: UnlearnPlan) -> UnlearnOutcome:
    import pandas as pd

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
        The metrics table (rows ``model`` and optionally ``retrain``), in percent.

    Raises:
        The same input errors as :func:`unlearn`.
    """
    from mlflow_unlearn.metrics import evaluate

    plan = prepare(model_uri, forget=forget, data=data, reference=reference, device=device, seed=seed,
                   retain_eval_size=None, distributed=False, forgotten=True, tracking_uri=tracking_uri,
                   registry_uri=registry_uri)
    models = {vocab.MODEL_ROW: plan.model}
    if plan.retrain_config is not None:
        models[vocab.RETRAIN_ROW] = steps.run_method(plan, vocab.RETRAIN_METHOD, plan.retrain_config).model
    metrics = evaluate(models, plan.forget, reference=vocab.RETRAIN_ROW if vocab.RETRAIN_ROW in models else None,
                       incompetent=incompetent_copy(plan.model, seed), device=plan.device, seed=seed)
    if run_id:
        with RunLogger(plan.client, run_id=run_id) as logger:
            logger.log_params({"evaluate.model_uri": model_uri, "forget.digest": plan.forget.digest,
                               "forget.count": plan.forget.count, "forget.kind": plan.forget.kind})
            logger.log_metrics(metric_dict(metrics))
    return metrics
