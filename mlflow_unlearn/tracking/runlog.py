"""Logging one run through an :class:`mlflow.MlflowClient`, without touching MLflow's global (fluent) state.

:class:`RunLogger` logs params, metrics, tags, artifacts, dataset inputs and models into one run and registers
its model last; the MLflow settings of the environment are read by
:class:`~mlflow_unlearn.tracking.experiments.TrackingEnv`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.experiments import TrackingEnv, get_or_create_experiment
from mlflow_unlearn.tracking.formats import (
    MODEL_ARTIFACT_PATH,
    ONNX_ARTIFACT_PATH,
    export_onnx,
    save_onnx_model,
    save_trainable_module,
    write_code,
)

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, Run
    from mlflow.entities.model_registry import ModelVersion
    from torch import nn

#: Samples of the test set used to compare the ONNX copy with the PyTorch model.
ONNX_SAMPLE_SIZE = 32
#: Metric key of the ONNX copy's max |torch - onnxruntime| logit difference.
ONNX_DIFF_METRIC = "onnx.max_abs_diff"
_MAX_PARAM_LENGTH = 6000
_DUPLICATE_ROW_ERRORS = ("UNIQUE constraint", "Duplicate entry", "duplicate key")


def experiment_id(client: MlflowClient, experiment: str | None, fallback_run: Run | None,
                  env: TrackingEnv | None = None) -> str:
    """``experiment`` (name or id) > the environment's id or name > the active run's > ``fallback_run``'s > "0"."""
    env = TrackingEnv.read() if env is None else env
    if experiment and experiment.isdigit():
        return experiment
    if not experiment and env.experiment_id:
        return env.experiment_id
    name = experiment or env.experiment_name
    if name:
        return get_or_create_experiment(client, name)
    active = mlflow.active_run()
    if active is not None:
        return active.info.experiment_id
    if fallback_run is not None:
        return fallback_run.info.experiment_id
    return "0"


def parent_run_id() -> str | None:
    """The active fluent run's ID (the new run becomes its child), or None."""
    active = mlflow.active_run()
    return active.info.run_id if active is not None else None


def metric_dict(metrics: pd.DataFrame) -> dict[str, float]:
    """The metrics table as run metrics ``<row>.<column>``."""
    return {f"{row}.{col}": float(value) for row, values in metrics.iterrows() for col, value in values.items()}


def metrics_from_run(run: Run) -> pd.DataFrame:
    """The metrics table an unlearning run logged (the inverse of :func:`metric_dict`)."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in run.data.metrics.items():
        row, _, col = key.partition(".")
        if row in vocab.METRIC_ROWS:
            rows.setdefault(row, {})[col] = value
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


class RunLogger:
    """Logs into one run through an MlflowClient: a given run (e.g. ``MLFLOW_RUN_ID``) or a new one it owns.

    Use it as a context manager around the run's work: on success an owned run ends ``FINISHED``; on any
    error the version :meth:`register` created in it is deleted again and an owned run ends ``FAILED``, so
    that a failure leaves nothing half-registered. Constructing it starts nothing; entering it creates the
    run when none was given.
    """

    def __init__(self, client: MlflowClient, *, run_id: str | None, experiment_id: str = "", run_name: str = "",
                 parent_run_id: str | None = None) -> None:
        self.client = client
        self.owned = run_id is None
        self.run_id = run_id
        self._create = {"experiment_id": experiment_id, "run_name": run_name,
                        "tags": {"mlflow.parentRunId": parent_run_id} if parent_run_id else None}
        self.artifact_uri = ""
        self.registered: ModelVersion | None = None

    def __enter__(self) -> RunLogger:
        if self.run_id is None:
            self.run_id = self.client.create_run(**self._create).info.run_id
        self.artifact_uri = self.client.get_run(self.run_id).info.artifact_uri
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.registered is not None:
            self.client.delete_model_version(self.registered.name, self.registered.version)
        if self.owned:
            self.client.set_terminated(self.run_id, "FINISHED" if exc_type is None else "FAILED")

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(str(k), str(v)[:_MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and math.isfinite(float(v))]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start:start + 1000])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        set_run_tags(self.client, self.run_id, tags)

    def log_artifacts(self, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_inputs(self, datasets: list[DatasetInput]) -> None:
        """``client.log_inputs`` that survives a concurrent job inserting the same dataset row first.

        Jobs on one experiment share the test split, so two of them may race on MLflow's unique dataset row
        (``UNIQUE constraint failed`` / ``Duplicate entry``); the second attempt reuses the row the other
        inserted.
        """
        for attempt in range(3):
            try:
                self.client.log_inputs(self.run_id, datasets=datasets)
                return
            except MlflowException as exc:
                if attempt == 2 or not any(m in str(exc) for m in _DUPLICATE_ROW_ERRORS):
                    raise

    def log_models(self, model: nn.Module, *, sample: torch.Tensor, num_classes: int, onnx: bool, tmp: Path,
                   code: Mapping[str, bytes] | None = None, code_paths: Sequence[str] | None = None) -> float | None:
        """Log the trainable model (and its checked ONNX copy); return the ONNX max abs diff.

        ``code`` (a parent's logged code, see :func:`~.formats.read_code`) or ``code_paths`` (files and folders)
        are logged with the model as MLflow's ``code_paths``.
        """
        input_shape, input_dtype = tuple(sample.shape[1:]), str(sample.dtype).removeprefix("torch.")
        if code:
            code_paths = [*(code_paths or ()), *write_code(code, tmp / "code_paths")]
        save_trainable_module(model, tmp / MODEL_ARTIFACT_PATH, input_shape=input_shape, num_classes=num_classes,
                              code_paths=code_paths, input_dtype=input_dtype)
        self.log_artifacts(tmp / MODEL_ARTIFACT_PATH, MODEL_ARTIFACT_PATH)
        if not onnx:
            return None
        check = export_onnx(model, sample, tmp / "model.onnx")
        save_onnx_model(check, tmp / ONNX_ARTIFACT_PATH, input_shape=input_shape, num_classes=num_classes,
                        input_dtype=input_dtype)
        self.log_artifacts(tmp / ONNX_ARTIFACT_PATH, ONNX_ARTIFACT_PATH)
        self.log_metrics({ONNX_DIFF_METRIC: check.max_abs_diff})
        return check.max_abs_diff

    @property
    def model_source(self) -> str:
        """The artifact URI of the run's logged model: the source of the version :meth:`register` creates."""
        return f"{self.artifact_uri}/{MODEL_ARTIFACT_PATH}"

    def register(self, name: str, *, tags: Mapping[str, str] | None, description: str) -> ModelVersion:
        """Register the run's logged model as the next version of ``name`` (created if missing)."""
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name)
        self.registered = self.client.create_model_version(name, self.model_source, run_id=self.run_id,
                                                           tags=dict(tags or {}), description=description)
        return self.registered

    def tag_result(self, version: ModelVersion) -> None:
        """Name the registered ``version`` in the run's result tag (last: the run is complete)."""
        self.set_tags({vocab.RESULT_VERSION_TAG: vocab.version_ref(version)})


def set_run_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    """Set ``tags`` on run ``run_id`` in one batch."""
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
