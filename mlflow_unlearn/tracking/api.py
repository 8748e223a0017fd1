"""The Python API: train and register a model, unlearn a registered version, evaluate a version.

:func:`unlearn` turns a registered PyTorch version plus a forget specification into a new, audited
version::

    import mlflow_unlearn

    outcome = mlflow_unlearn.unlearn("models:/mnist/1", forget="classes:3")
    outcome.version          # ModelVersion 2, tagged with its lineage (or None if the gate refused it)
    outcome.metrics          # original / unlearned (/ retrain) x forget / retain / test / MIA ... (percent)
    outcome.report_uri       # the Markdown audit report in the run's artifacts

Everything is logged through an :class:`mlflow.MlflowClient` built from the current tracking and
registry URIs (or the ones passed in), so no global MLflow state is changed: no run is started or ended on
the fluent API, no experiment or URI is set. Inputs are validated before any expensive step, and the new
version is registered last, so that a failure leaves nothing half-registered (a version created just
before a failure is deleted again).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow_unlearn.tracking import lineage as lin
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.experiments import get_or_create_experiment
from mlflow_unlearn.tracking.formats import (
    MODEL_ARTIFACT_PATH,
    ONNX_ARTIFACT_PATH,
    ONNX_TOLERANCE,
    export_onnx,
    load_trainable_module,
    save_onnx_model,
    save_trainable_module,
)
from mlflow_unlearn.tracking.gate import GateConfig, GateResult

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion
    from torch import nn

    from mlflow_unlearn.data import DataSplit, ForgetSplit

_logger = logging.getLogger("mlflow_unlearn")

#: Samples of the test set used to compare the ONNX copy with the PyTorch model.
ONNX_SAMPLE_SIZE = 32
_MAX_PARAM_LENGTH = 6000
#: Default cap on the retain samples that are evaluated (seeded subset): the retain set is most of the
#: data, and its accuracy is estimated to about +-1 pp from 1000 samples; the membership attack already
#: subsamples it to the test-set size.
RETAIN_EVAL_SIZE = 1000


class ConfigError(ValueError):
    """The method config (a mapping or a YAML file) is missing, malformed or invalid."""


class DataResolutionError(ValueError):
    """The data source cannot be loaded or does not fit the model."""


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


class _RunLogger:
    """Logs into one run through an MlflowClient: a given run (e.g. ``MLFLOW_RUN_ID``) or a new one it owns.

    Use it as a context manager around the run's work: on success an owned run ends ``FINISHED``; on any
    error the version :meth:`register` created in it is deleted again and an owned run ends ``FAILED``, so
    that a failure leaves nothing half-registered.
    """

    def __init__(self, client: MlflowClient, *, run_id: str | None, experiment_id: str, run_name: str,
                 parent_run_id: str | None = None) -> None:
        self.client = client
        self.owned = run_id is None
        if run_id is None:
            tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
            run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        self.run_id = run_id
        self.artifact_uri = client.get_run(run_id).info.artifact_uri
        self.registered: ModelVersion | None = None

    def __enter__(self) -> _RunLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.registered is not None:
            self.client.delete_model_version(self.registered.name, self.registered.version)
        if self.owned:
            self.client.set_terminated(self.run_id, "FINISHED" if exc_type is None else "FAILED")

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:_MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and math.isfinite(float(v))]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start:start + 1000])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def register(self, name: str, *, tags: Mapping[str, str] | None, description: str) -> ModelVersion:
        """Register the run's logged model as the next version of ``name`` (created if missing)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name)
        self.registered = self.client.create_model_version(name, f"{self.artifact_uri}/{MODEL_ARTIFACT_PATH}",
                                                           run_id=self.run_id, tags=dict(tags or {}),
                                                           description=description)
        return self.registered


def _tag(key: str, value: str):
    from mlflow.entities import RunTag

    return RunTag(key, value)


def _client(tracking_uri: str | None, registry_uri: str | None) -> MlflowClient:
    import mlflow
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri or mlflow.get_tracking_uri(), registry_uri=registry_uri)


def _load_version(client: MlflowClient, version: ModelVersion, model_uri: str) -> nn.Module:
    """Download ``version`` through ``client``'s registry and load it as a trainable module."""
    from mlflow.artifacts import download_artifacts

    source = client.get_model_version_download_uri(version.name, version.version)
    with tempfile.TemporaryDirectory() as tmp:
        local = download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=client.tracking_uri)
        return load_trainable_module(local, model_uri=model_uri)


def _experiment_id(client: MlflowClient, experiment: str | None, fallback_run: Run | None) -> str:
    """``experiment`` (name or id) > MLFLOW_EXPERIMENT_ID/NAME > the active run's > ``fallback_run``'s > "0"."""
    import mlflow

    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if experiment and experiment.isdigit():
        return experiment
    if not experiment and os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    if name:
        return get_or_create_experiment(client, name)
    active = mlflow.active_run()
    if active is not None:
        return active.info.experiment_id
    if fallback_run is not None:
        return fallback_run.info.experiment_id
    return "0"


def _parent_run_id() -> str | None:
    import mlflow

    active = mlflow.active_run()
    return active.info.run_id if active is not None else None


def load_config(config: Any) -> tuple[Any, dict[str, Any] | None]:
    """Split ``config`` into the method config and the optional ``gate`` section.

    Args:
        config: None or ``""`` (defaults), a mapping, a method config dataclass, or a path to a YAML file
            holding a mapping of method hyperparameters (and optionally ``gate:`` thresholds).

    Returns:
        ``(method_config, gate_overrides)``.

    Raises:
        ConfigError: missing file, malformed YAML, or not a mapping.
    """
    import yaml

    if config is None or (isinstance(config, str) and not config.strip()):
        return None, None
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return config, None
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"Config file {str(path)!r} not found; pass a YAML file of method hyperparameters")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            raise ConfigError(f"Malformed config YAML {str(path)!r}{at}: {getattr(exc, 'problem', exc)}") from None
        config = {} if loaded is None else loaded
        if not isinstance(config, Mapping):
            raise ConfigError(f"Expected the config YAML {str(path)!r} to hold a mapping of hyperparameters "
                              f"(key: value lines) but got a {type(config).__name__}")
    if not isinstance(config, Mapping):
        raise ConfigError(f"Expected `config` to be a mapping, a config dataclass or a YAML path but got "
                          f"{type(config).__name__}")
    config = dict(config)
    gate = config.pop("gate", None)
    if gate is not None and not isinstance(gate, Mapping):
        raise ConfigError(f"Expected the `gate` section of the config to be a mapping but got {type(gate).__name__}")
    return config, (dict(gate) if gate is not None else None)


def _load_split(lineage: lin.DataLineage) -> tuple[DataSplit, lin.DataLineage]:
    """Load the lineage's source and replay its forget chain; return the current split."""
    from mlflow_unlearn.data import DataSplit, load_data, resolve_forget

    try:
        split = load_data(lineage.source, seed=lineage.seed, test_fraction=lineage.test_fraction)
    except (ValueError, OSError) as exc:
        raise DataResolutionError(f"Cannot load the data source {lineage.source!r}: {exc}") from None
    for step in lineage.chain:
        try:
            done = resolve_forget(split, step.spec)
        except (ValueError, OSError) as exc:
            raise lin.LineageError(f"Cannot replay the earlier forget step {step.spec!r} of this model's lineage: "
                                   f"{exc}") from None
        if done.digest != step.digest:
            raise lin.LineageError(
                f"The earlier forget step {step.spec!r} no longer selects the samples it selected then (digest "
                "mismatch), so the data this model was trained on cannot be rebuilt. Restore that forget "
                "request file or unlearn from an earlier version."
            )
        split = DataSplit(done.retain, split.test, split.source, split.seed, split.test_fraction)
    return split, lineage


def _absolute_forget_spec(forget: str) -> str:
    """``ids:<relative path>`` made absolute, so that the lineage can replay it from any working directory."""
    kind, _, argument = forget.partition(":")
    if kind == "ids" and argument and not os.path.isabs(argument):
        return f"ids:{os.path.abspath(argument)}"
    return forget


def _resolve_lineage(data: str | None, parent_run: Run | None) -> lin.DataLineage:
    recorded = None
    if parent_run is not None:
        try:
            recorded = lin.lineage_from_run(parent_run)
        except lin.LineageError:
            if not data:
                raise
    if not data:
        if recorded is None:
            raise lin.LineageError("The model version has no source run, so its training data is unknown. Pass the "
                                   "data explicitly (data='digits', 'npz:<path>', ...).")
        return recorded
    if recorded is not None and recorded.source == data:
        return recorded
    if recorded is not None:
        return lin.DataLineage(data, recorded.seed, recorded.test_fraction)
    return lin.DataLineage(data)


def _check_model_fits(model: nn.Module, split: DataSplit, source: str) -> None:
    """Fail early when the model cannot take the data's inputs or has another number of classes."""
    import torch

    sample = split.train.x[:2]
    try:
        with torch.no_grad():
            was_training = model.training
            out = model.eval()(sample)
            model.train(was_training)
    except (RuntimeError, ValueError) as exc:
        raise DataResolutionError(f"The model cannot take the inputs of {source!r} (shape "
                                  f"{tuple(split.train.input_shape)}): {str(exc).splitlines()[0]}") from None
    if out.dim() != 2:
        raise DataResolutionError(f"Expected the model to return (batch, classes) logits but got {tuple(out.shape)}")
    if int(out.shape[1]) != split.num_classes:
        raise DataResolutionError(
            f"Class-count mismatch: the model outputs {int(out.shape[1])} classes but the data {source!r} has "
            f"{split.num_classes}. Use the data the model was trained on."
        )


def _coerce(text: str, default: Any) -> Any:
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes")
    if isinstance(default, int):
        return int(float(text))
    if isinstance(default, float):
        return float(text)
    return text


def _retrain_config(recipe: Mapping[str, str]) -> Any:
    """The ``retrain`` method's config from the inherited ``train.*`` params (defaults where absent)."""
    from mlflow_unlearn.methods import build_config, get_method

    spec = get_method("retrain")
    defaults = spec.config_cls()
    overrides = {f.name: _coerce(recipe[f"train.{f.name}"], getattr(defaults, f.name))
                 for f in dataclasses.fields(spec.config_cls) if f"train.{f.name}" in recipe}
    return build_config("retrain", overrides)


def _incompetent(model: nn.Module, seed: int) -> nn.Module | None:
    """A randomly re-initialised copy of ``model`` for ZRF, or None when a module cannot be re-initialised."""
    import copy

    from mlflow_unlearn.methods.retrain import reinitialize

    try:
        return reinitialize(copy.deepcopy(model), seed=seed + 1).eval()
    except ValueError:
        _logger.info("ZRF skipped: %s cannot be re-initialised", type(model).__name__)
        return None


def _evaluation_split(split: ForgetSplit, retain_eval_size: int | None, seed: int) -> ForgetSplit:
    """``split`` with its retain set cut to a seeded random subset of ``retain_eval_size`` samples."""
    import numpy as np

    if retain_eval_size is None or len(split.retain) <= retain_eval_size:
        return split
    keep = np.sort(np.random.default_rng(seed).choice(len(split.retain), size=retain_eval_size, replace=False))
    return dataclasses.replace(split, retain=split.retain.subset(keep))


def _metric_dict(metrics: pd.DataFrame) -> dict[str, float]:
    return {f"{row}.{col}": float(value) for row, values in metrics.iterrows() for col, value in values.items()}


def _metrics_from_run(run: Run) -> pd.DataFrame:
    import pandas as pd

    rows: dict[str, dict[str, float]] = {}
    for key, value in run.data.metrics.items():
        row, _, col = key.partition(".")
        if row in (vocab.ORIGINAL_ROW, vocab.UNLEARNED_ROW, vocab.RETRAIN_ROW):
            rows.setdefault(row, {})[col] = value
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def _log_models(logger: _RunLogger, model: nn.Module, *, sample: torch.Tensor, num_classes: int,
                onnx: bool, tmp: Path) -> float | None:
    """Log the trainable model (and its checked ONNX copy); return the ONNX max abs diff."""
    input_shape = tuple(sample.shape[1:])
    diff = None
    save_trainable_module(model, tmp / MODEL_ARTIFACT_PATH, input_shape=input_shape, num_classes=num_classes)
    logger.log_artifacts(tmp / MODEL_ARTIFACT_PATH, MODEL_ARTIFACT_PATH)
    if onnx:
        check = export_onnx(model, sample, tmp / "model.onnx")
        save_onnx_model(check, tmp / ONNX_ARTIFACT_PATH, input_shape=input_shape, num_classes=num_classes)
        logger.log_artifacts(tmp / ONNX_ARTIFACT_PATH, ONNX_ARTIFACT_PATH)
        diff = check.max_abs_diff
        logger.log_metrics({"onnx.max_abs_diff": diff})
    return diff


def _log_inputs(client, run_id: str, datasets: list) -> None:
    """``client.log_inputs`` that survives a concurrent job inserting the same dataset row first.

    Jobs on one experiment share the test split, so two of them may race on MLflow's unique dataset row
    (``UNIQUE constraint failed`` / ``Duplicate entry``); the second attempt reuses the row the other inserted.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(3):
        try:
            client.log_inputs(run_id, datasets=datasets)
            return
        except MlflowException as exc:
            duplicate = any(m in str(exc) for m in ("UNIQUE constraint", "Duplicate entry", "duplicate key"))
            if attempt == 2 or not duplicate:
                raise


def train_model(
    data: str = "digits",
    *,
    arch: str = "smallcnn",
    registered_model_name: str | None = None,
    config: Mapping[str, Any] | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    device: str = "auto",
    onnx: bool = True,
    run_id: str | None = None,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
) -> TrainOutcome:
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
        tracking_uri: tracking URI (default: the current one).
        registry_uri: registry URI (default: the current one).

    Returns:
        A :class:`TrainOutcome`.

    Raises:
        ValueError: unknown data source or architecture, invalid config.
    """
    from mlflow_unlearn import runtime as rt
    from mlflow_unlearn.data import describe, ids_digest, load_data
    from mlflow_unlearn.metrics import accuracy, collect_outputs
    from mlflow_unlearn.models import create_model
    from mlflow_unlearn.training import TrainConfig, train

    overrides = dict(config or {})
    overrides.setdefault("seed", seed)
    try:
        recipe = TrainConfig(**overrides)
    except TypeError as exc:
        raise ConfigError(f"Invalid training config: {exc}") from None
    dev = rt.resolve_device(device)
    split = load_data(data, seed=seed, test_fraction=test_fraction)
    model = create_model(arch, in_channels=split.train.in_channels, num_classes=split.num_classes,
                         input_size=split.train.input_size, input_shape=split.train.input_shape)
    client = _client(tracking_uri, registry_uri)
    logger = _RunLogger(client, run_id=run_id, experiment_id=_experiment_id(client, experiment, None),
                        run_name=f"train-{arch}-{data}", parent_run_id=_parent_run_id())
    version = None
    with logger:
        info = describe(split)
        lineage = lin.DataLineage(split.source, split.seed, split.test_fraction)
        logger.log_params({
            "model.arch": arch, "model.in_channels": split.train.in_channels, "model.num_classes": split.num_classes,
            "model.input_size": split.train.input_size, "data.source": data, "data.seed": seed,
            "data.test_fraction": test_fraction, "data.n_train": info["n_train"], "data.n_test": info["n_test"],
            **{f"train.{k}": v for k, v in recipe.to_dict().items()},
        })
        _log_inputs(client, logger.run_id, [
            lin.lineage_dataset_input(lineage, context=vocab.TRAIN_CONTEXT, name=f"{data}-train",
                                      digest=info["train_ids_digest"], count=info["n_train"]),
            lin.lineage_dataset_input(lineage, context=vocab.TEST_CONTEXT, name=f"{data}-test",
                                      digest=ids_digest(split.test.ids), count=info["n_test"]),
        ])
        model, history = train(model, split.train, recipe, device=dev)
        test_acc = 100 * accuracy(*collect_outputs(model, split.test, device=dev))
        logger.log_metrics({"test_accuracy": test_acc, "train_loss": history.records[-1]["loss"],
                            "time.train_s": history.wall_time_s})
        model = model.cpu().eval()
        with tempfile.TemporaryDirectory() as tmp:
            diff = _log_models(logger, model, sample=split.test.x[:ONNX_SAMPLE_SIZE], num_classes=split.num_classes,
                               onnx=onnx, tmp=Path(tmp))
        if registered_model_name:
            version = logger.register(registered_model_name, tags=None,
                                      description=f"{arch} trained on {data} by mlflow-unlearn (test accuracy "
                                                  f"{test_acc:.2f}%)")
            logger.set_tags({vocab.RESULT_VERSION_TAG: vocab.version_ref(version)})
    return TrainOutcome(version, logger.run_id, model, test_acc, diff)


def unlearn(
    model_uri: str,
    *,
    forget: str,
    method: str = vocab.DEFAULT_METHOD,
    data: str | None = None,
    config: Any = None,
    reference: str = "none",
    register: bool = True,
    force: bool = False,
    device: str = "auto",
    gate: GateConfig | Mapping[str, Any] | None = None,
    seed: int = 0,
    onnx: bool = True,
    retain_eval_size: int | None = RETAIN_EVAL_SIZE,
    run_id: str | None = None,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
) -> UnlearnOutcome:
    """Make registered model version ``model_uri`` forget ``forget``, prove it, and register the result.

    Steps: resolve the version; check it is a trainable PyTorch model; rebuild its training data (from the
    dataset input its run logged, replaying earlier forget steps, unless ``data`` is given); resolve the
    forget set; return the existing version if this exact unlearning was done before; run the method;
    evaluate the original, the unlearned model and (``reference="retrain"``) a model retrained on the
    retain set with the original recipe; apply the acceptance gate; write the audit report; log the model
    (trainable pickle + checked ONNX copy); register it as the next version of the same registered model
    with the six lineage tags. Nothing records a forget sample or ID: only the forget digest and count.

    Under ``torchrun`` (an initialised process group; the ``mlflow-unlearn unlearn`` command initialises it
    from the environment) every rank prepares the same way and runs the method, and the retrain reference,
    with DistributedDataParallel; rank 0 alone evaluates, logs and registers. The other ranks return an
    outcome with no version, no run and an empty metrics table, holding the unlearned ``model``.

    Args:
        model_uri: ``models:/<name>/<version>`` or ``models:/<name>@<alias>``.
        forget: a forget spec: ``classes:3,7``, ``ids:<file>``, ``random:0.1[:seed]``.
        method: a registered method (see :func:`mlflow_unlearn.methods.list_methods`).
        data: the data source; None to use the one the parent version was trained on.
        config: method hyperparameters: None, a mapping, the method's config dataclass, or a YAML path (which
            may hold a ``gate:`` section of thresholds).
        reference: ``"none"`` or ``"retrain"`` (also train the exact-unlearning reference; slower).
        register: register the result (when the gate passes).
        force: register even when the gate fails (the version is tagged ``verdict=failed``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        gate: gate thresholds (see :class:`~mlflow_unlearn.tracking.gate.GateConfig`): a mapping overrides the
            config YAML's ``gate:`` keys one by one, a ``GateConfig`` replaces them.
        seed: seed of the method (and of the reference).
        onnx: log an ONNX copy of the new version.
        retain_eval_size: evaluate retain metrics on a seeded subset of at most this many retain samples
            (None: all of them); the forget and test sets are always evaluated whole.
        run_id: log into this existing run (``mlflow run`` passes ``MLFLOW_RUN_ID``) instead of a new one.
        experiment: experiment name or id for a new run (default: the environment's, the active run's, or
            the parent version's).
        tracking_uri: tracking URI (default: the current one).
        registry_uri: registry URI (default: the current one).

    Returns:
        An :class:`UnlearnOutcome`.

    Raises:
        ModelResolutionError: unknown model, version or alias, malformed URI.
        ModelFormatError: not a PyTorch model, a ``pt2`` model, or a failed ONNX check.
        LineageError: the training data cannot be found or rebuilt.
        DataResolutionError: the data cannot be loaded or does not fit the model (class count, input shape).
        ConfigError: a missing or malformed config.
        ValueError: unknown method, reference, invalid thresholds, bad forget spec (unknown IDs, empty set), or
            a method that does not support DistributedDataParallel under ``torchrun``.
    """
    import numpy as np

    from mlflow_unlearn import runtime as rt
    from mlflow_unlearn.data import ids_digest, resolve_forget
    from mlflow_unlearn.methods import build_config, get_method, run_method
    from mlflow_unlearn.methods.registry import config_to_dict
    from mlflow_unlearn.metrics import collect_outputs, collect_split_outputs, evaluate_outputs
    from mlflow_unlearn.tracking import evaluation
    from mlflow_unlearn.tracking import gate as gating
    from mlflow_unlearn.tracking import report as rep

    started, t_start = rep.utc_now(), time.perf_counter()
    timings: dict[str, float] = {}

    # 1. Everything cheap first: arguments, config, registry, data, forget set, model format.
    spec = get_method(method)
    if rt.is_distributed() and not spec.distributed:
        from mlflow_unlearn.methods import list_methods

        supported = [m for m in list_methods(include_reference=False) if get_method(m).distributed]
        raise ValueError(f"Method {method!r} does not run under torchrun (DistributedDataParallel); methods that "
                         f"do: {', '.join(supported)}")
    vocab.check_reference(reference)
    if not isinstance(forget, str) or not forget.strip():
        raise ValueError("Expected `forget` to be a forget spec such as 'classes:3' or 'ids:forget.csv' but got "
                         f"{forget!r}")
    if retain_eval_size is not None and (isinstance(retain_eval_size, bool) or not isinstance(retain_eval_size, int)
                                         or retain_eval_size < 1):
        raise ValueError(f"Expected argument `retain_eval_size` to be a positive int or None but got "
                         f"{retain_eval_size!r}")
    method_config, gate_overrides = load_config(config)
    try:
        cfg = build_config(method, method_config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if isinstance(gate, GateConfig):
        gate_cfg = gate
    else:
        gate_cfg = gating.build_gate_config({**(gate_overrides or {}), **dict(gate or {})})
    dev = rt.resolve_device(device)
    client = _client(tracking_uri, registry_uri)
    parent = vocab.resolve_model_version(client, model_uri)
    model = _load_version(client, parent, model_uri)
    parent_run = client.get_run(parent.run_id) if parent.run_id else None
    lineage = _resolve_lineage(data, parent_run)
    split, lineage = _load_split(lineage)
    split_forget = resolve_forget(split, _absolute_forget_spec(forget))
    _check_model_fits(model, split, lineage.source)
    recipe = lin.inherited_params(parent_run) if parent_run is not None else {}
    retrain_cfg = _retrain_config(recipe) if reference == "retrain" else None
    cfg_dict = config_to_dict(cfg)
    chash = lin.config_hash(method, cfg_dict, seed)
    if register:
        existing = lin.find_existing_version(client, parent=parent, method=method,
                                             forget_digest=split_forget.digest, chash=chash)
        if existing is not None:
            run = client.get_run(existing.run_id)
            _logger.info("Reusing %s/%s: the same unlearning was done in run %s", existing.name, existing.version,
                         existing.run_id)
            if run_id:
                client.log_batch(run_id, tags=[_tag(vocab.VERDICT_TAG, existing.tags.get(vocab.VERDICT_TAG, "")),
                                               _tag(vocab.RESULT_VERSION_TAG, vocab.version_ref(existing)),
                                               _tag(vocab.REUSED_FROM_TAG, existing.run_id)])
            return UnlearnOutcome(existing, existing.run_id, _metrics_from_run(run),
                                  f"{run.info.artifact_uri}/{rep.REPORT_ARTIFACT_PATH}/{rep.MD_REPORT}",
                                  existing.tags.get(vocab.VERDICT_TAG, ""), reused=True,
                                  onnx_max_abs_diff=run.data.metrics.get("onnx.max_abs_diff"))
    timings["prepare_s"] = time.perf_counter() - t_start

    def run_methods():
        """The method and, if asked for, the retrain reference (collective steps under ``torchrun``)."""
        _logger.info("Unlearning %d samples (%s) with %s", split_forget.count, split_forget.kind, method)
        done = run_method(method, model, forget=split_forget.forget, retain=split_forget.retain, config=cfg,
                          device=dev, forget_kind=split_forget.kind, forget_classes=split_forget.forget_classes,
                          seed=seed)
        if retrain_cfg is None:
            return done, None
        _logger.info("Training the retrain reference on the retain set")
        return done, run_method("retrain", model, forget=split_forget.forget, retain=split_forget.retain,
                                config=retrain_cfg, device=dev, forget_kind=split_forget.kind,
                                forget_classes=split_forget.forget_classes, seed=seed)

    if rt.rank() != 0:  # another torchrun rank: the collective work only; rank 0 evaluates, logs, registers
        import pandas as pd

        result, _ = run_methods()
        return UnlearnOutcome(None, "", pd.DataFrame(), "", "", model=result.model)

    # 2. The run: method, reference, evaluation, gate, report, models; registration last.
    logger = _RunLogger(client, run_id=run_id, experiment_id=_experiment_id(client, experiment, parent_run),
                        run_name=f"unlearn-{parent.name}-v{parent.version}-{method}", parent_run_id=_parent_run_id())
    version = None
    with logger:
        step = lin.ForgetStep(split_forget.spec, split_forget.digest, split_forget.count)
        new_lineage = lineage.then(step)
        logger.set_tags({vocab.CONFIG_HASH_TAG: chash})
        logger.log_params({
            "unlearn.parent": vocab.version_ref(parent), "unlearn.parent_run_id": parent.run_id or "",
            "unlearn.method": method, "unlearn.reference": reference, "unlearn.seed": seed,
            "unlearn.device": str(dev), "unlearn.register": register, "unlearn.force": force,
            "data.source": lineage.source, "data.seed": lineage.seed, "data.test_fraction": lineage.test_fraction,
            "data.forget_steps_before": len(lineage.chain),
            "data.retain_eval_count": min(len(split_forget.retain), retain_eval_size or len(split_forget.retain)),
            "forget.spec": split_forget.spec, "forget.kind": split_forget.kind, "forget.count": split_forget.count,
            "forget.digest": split_forget.digest,
            "forget.classes": ",".join(map(str, split_forget.forget_classes)),
            **recipe,
            **{f"config.{k}": v for k, v in cfg_dict.items()},
            **{f"gate.{k}": v for k, v in gate_cfg.to_dict().items()},
        })
        _log_inputs(client, logger.run_id, [
            lin.lineage_dataset_input(new_lineage, context=vocab.RETAIN_CONTEXT, name=f"{lineage.source}-retain",
                                      digest=ids_digest(split_forget.retain.ids), count=len(split_forget.retain)),
            lin.lineage_dataset_input(new_lineage, context=vocab.TEST_CONTEXT, name=f"{lineage.source}-test",
                                      digest=ids_digest(split_forget.test.ids), count=len(split_forget.test)),
        ])
        result, reference_result = run_methods()
        timings["unlearn_s"] = result.wall_time_s
        models = {vocab.ORIGINAL_ROW: model, vocab.UNLEARNED_ROW: result.model}
        if reference_result is not None:
            models[vocab.RETRAIN_ROW] = reference_result.model
            timings["reference_s"] = reference_result.wall_time_s
        t = time.perf_counter()
        eval_split = _evaluation_split(split_forget, retain_eval_size, seed)
        # One forward pass per (model, split) feeds both the metrics and the report's loss histograms.
        outputs = collect_split_outputs(models, eval_split, device=dev)
        incompetent = _incompetent(model, seed)
        metrics = evaluate_outputs(
            outputs, reference=vocab.RETRAIN_ROW if vocab.RETRAIN_ROW in models else None, seed=seed,
            incompetent_forget=None if incompetent is None else collect_outputs(incompetent, eval_split.forget,
                                                                                device=dev))
        test_share = float(np.isin(split_forget.test.y.numpy(), split_forget.forget_classes).mean())
        verdict = gating.apply_gate(metrics, config=gate_cfg, forget_kind=split_forget.kind,
                                    num_classes=split.num_classes, test_forget_share=test_share)
        timings["evaluate_s"] = time.perf_counter() - t
        logger.log_metrics({**_metric_dict(metrics), "unlearn.wall_time_s": result.wall_time_s,
                            "gate.passed": float(verdict.passed)})
        logger.set_tags({vocab.VERDICT_TAG: verdict.verdict})
        will_register = register and (verdict.passed or force)
        diff = None
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            if verdict.passed or force:
                t = time.perf_counter()
                diff = _log_models(logger, result.model, sample=split_forget.test.x[:ONNX_SAMPLE_SIZE],
                                   num_classes=split.num_classes, onnx=onnx and will_register, tmp=tmp)
                timings["log_models_s"] = time.perf_counter() - t
            if will_register:
                # Registered after everything that can fail on bad input; if the report below fails, the
                # except clause deletes the version again, so the report can name the new version.
                tags = lin.version_tags(parent=parent, method=method, forget_digest=split_forget.digest,
                                        forget_count=split_forget.count, run_id=logger.run_id,
                                        verdict=verdict.verdict)
                version = logger.register(parent.name, tags=tags,
                                          description=f"Unlearned from {vocab.version_ref(parent)} with {method}: "
                                                      f"forgot {split_forget.count} samples (digest "
                                                      f"{split_forget.digest[:12]}), gate {verdict.verdict}.")
            t = time.perf_counter()
            losses = evaluation.report_losses(outputs, num_test=len(eval_split.test), seed=seed)
            report = {
                "schema_version": rep.REPORT_SCHEMA_VERSION,
                "run_id": logger.run_id,
                "started_at": started,
                "finished_at": rep.utc_now(),
                "parent": {"name": parent.name, "version": str(parent.version), "uri": model_uri,
                           "run_id": parent.run_id},
                "result": {"name": version.name, "version": str(version.version)} if version is not None else None,
                "method": method,
                "config": cfg_dict,
                "config_hash": chash,
                "seed": seed,
                "device": str(dev),
                "reference": reference,
                "data": {"source": lineage.source, "seed": lineage.seed, "test_fraction": lineage.test_fraction,
                         "forget_steps_before": len(lineage.chain), "retain_count": len(split_forget.retain),
                         "retain_evaluated": len(eval_split.retain), "test_count": len(split_forget.test)},
                "forget": {"spec": split_forget.spec, "kind": split_forget.kind, "digest": split_forget.digest,
                           "count": split_forget.count, "classes": list(split_forget.forget_classes)},
                "metrics": rep.metrics_to_dict(metrics),
                "verdict": verdict.verdict,
                "forced": bool(force and not verdict.passed and will_register),
                "gate": {"verdict": verdict.verdict, "thresholds": gate_cfg.to_dict(),
                         "checks": verdict.checks.to_dict(orient="records")},
                "onnx": {"max_abs_diff": diff, "tolerance": ONNX_TOLERANCE} if diff is not None else None,
                "timings": timings,
                "code_version": rep.code_version(),
            }
            rep.write_report(report, metrics, losses, tmp / rep.REPORT_ARTIFACT_PATH)
            logger.log_artifacts(tmp / rep.REPORT_ARTIFACT_PATH, rep.REPORT_ARTIFACT_PATH)
            timings["report_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_start
        logger.log_metrics({f"time.{k}": v for k, v in timings.items()})
        if version is not None:
            logger.set_tags({vocab.RESULT_VERSION_TAG: vocab.version_ref(version)})
    return UnlearnOutcome(version, logger.run_id, metrics,
                          f"{logger.artifact_uri}/{rep.REPORT_ARTIFACT_PATH}/{rep.MD_REPORT}", verdict.verdict,
                          gate=verdict, onnx_max_abs_diff=diff, model=result.model)


def evaluate_version(
    model_uri: str,
    *,
    forget: str,
    data: str | None = None,
    reference: str = "none",
    device: str = "auto",
    seed: int = 0,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
) -> pd.DataFrame:
    """Evaluate registered version ``model_uri`` on a forget split (and optionally a retrain reference).

    Args:
        model_uri: ``models:/<name>/<version>`` or ``models:/<name>@<alias>``.
        forget: a forget spec, applied to the version's training data; a spec that the version's lineage
            already forgot is applied to the data as it was before that step (to measure the forgetting).
        data: the data source; None to use the one the version was trained on.
        reference: ``"none"`` or ``"retrain"``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        seed: seed of the attacks and the reference.
        run_id: also log the metrics (``model.*``, ``retrain.*``) into this run.
        tracking_uri: tracking URI (default: the current one).
        registry_uri: registry URI (default: the current one).

    Returns:
        The metrics table (rows ``model`` and optionally ``retrain``), in percent.

    Raises:
        The same input errors as :func:`unlearn`.
    """
    from mlflow_unlearn import runtime as rt
    from mlflow_unlearn.data import resolve_forget
    from mlflow_unlearn.methods import run_method
    from mlflow_unlearn.metrics import evaluate

    vocab.check_reference(reference)
    dev = rt.resolve_device(device)
    client = _client(tracking_uri, registry_uri)
    version = vocab.resolve_model_version(client, model_uri)
    model = _load_version(client, version, model_uri)
    version_run = client.get_run(version.run_id) if version.run_id else None
    lineage = _resolve_lineage(data, version_run)
    earlier = [step.spec for step in lineage.chain]
    if forget in earlier:
        # Evaluating a version on a set it already forgot: rebuild the data as it was before that step.
        lineage = lin.DataLineage(lineage.source, lineage.seed, lineage.test_fraction,
                                  lineage.chain[:earlier.index(forget)])
    split, lineage = _load_split(lineage)
    split_forget = resolve_forget(split, forget)
    _check_model_fits(model, split, lineage.source)
    models = {vocab.MODEL_ROW: model}
    if reference == "retrain":
        recipe = lin.inherited_params(version_run) if version_run is not None else {}
        models[vocab.RETRAIN_ROW] = run_method("retrain", model, forget=split_forget.forget, retain=split_forget.retain,
                                       config=_retrain_config(recipe), device=dev, forget_kind=split_forget.kind,
                                       forget_classes=split_forget.forget_classes, seed=seed).model
    metrics = evaluate(models, split_forget, reference=vocab.RETRAIN_ROW if vocab.RETRAIN_ROW in models else None,
                       incompetent=_incompetent(model, seed), device=dev, seed=seed)
    if run_id:
        logger = _RunLogger(client, run_id=run_id, experiment_id="", run_name="")
        logger.log_params({"evaluate.model_uri": model_uri, "forget.digest": split_forget.digest,
                           "forget.count": split_forget.count, "forget.kind": split_forget.kind})
        logger.log_metrics(_metric_dict(metrics))
    return metrics
