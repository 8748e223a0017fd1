"""Train or log a model so that it can be unlearned: the trainable format, its code, its data lineage.

:func:`train_model` trains one of the project's architectures; :func:`log_model` logs a model that your own
script trained. Both record what :func:`~mlflow_unlearn.tracking.api.unlearn` needs later: the model in the
trainable (pickle) format with its code, and the train and test sets as lineage dataset inputs (source,
split, ID digests; never IDs).
"""

from __future__ import annotations

import os
import sys
import sysconfig
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.data import describe, ids_digest, load_data
from mlflow_unlearn.data.grammar import parse_source
from mlflow_unlearn.metrics import accuracy, collect_outputs
from mlflow_unlearn.models import create_model
from mlflow_unlearn.request import check_seed
from mlflow_unlearn.tracking import lineage as lin
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.configs import ConfigError
from mlflow_unlearn.tracking.plan import DataResolutionError, check_model_fits, tracking_client
from mlflow_unlearn.tracking.runlog import ONNX_SAMPLE_SIZE, RunLogger, experiment_id, parent_run_id
from mlflow_unlearn.training import TrainConfig, train

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from torch import nn

    from mlflow_unlearn.data import DataSplit

__all__ = ["TrainOutcome", "log_model", "model_code_paths", "train_model"]


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
        outcome = _log_and_register(logger, model, split, test_acc, onnx=onnx,
                                    code_paths=factory_code_paths(data) or None, name=registered_model_name,
                                    description=f"{arch} trained on {data} by mlflow-unlearn (test accuracy "
                                                f"{test_acc:.2f}%)")
    return outcome


def _log_and_register(logger: RunLogger, model: nn.Module, split: DataSplit, test_acc: float, *, onnx: bool,
                      code_paths: list[str] | None, name: str | None, description: str) -> TrainOutcome:
    """Log ``model`` in the trainable format (and ONNX), and register it under ``name`` if one is given."""
    with tempfile.TemporaryDirectory() as tmp:
        diff = logger.log_models(model, sample=split.test.first_inputs(ONNX_SAMPLE_SIZE), num_classes=split.num_classes,
                                 onnx=onnx, tmp=Path(tmp), code_paths=code_paths)
    version = None
    if name:
        version = logger.register(name, tags=None, description=description)
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
        data: the data source it was trained on (see :func:`mlflow_unlearn.data.load_data`), with the preprocessing
            options the model was trained with (``?mean=..&std=..``, ``size``, ``crop``); a
            ``factory:<module>:<callable>`` source names your own ``Dataset`` code, whose module is logged with the
            model's code so that :func:`unlearn` replays it anywhere.
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
    if registered_model_name is not None and not (isinstance(registered_model_name, str) and registered_model_name):
        raise ValueError(f"Expected argument `registered_model_name` to be a name or None but got "
                         f"{registered_model_name!r}")
    check_seed(seed)
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
    paths += [p for p in factory_code_paths(data) if not _covered(p, paths)]
    if run_id is None and mlflow.active_run() is not None:
        run_id = mlflow.active_run().info.run_id
    client = tracking_client(tracking_uri, registry_uri)
    with RunLogger(client, run_id=run_id, experiment_id=experiment_id(client, experiment, None),
                   run_name=f"log-{type(model).__name__}", parent_run_id=parent_run_id()) as logger:
        _log_data_lineage(logger, split, data=data, seed=seed, test_fraction=test_fraction)
        test_acc = 100 * accuracy(*collect_outputs(model, split.test, device=rt.resolve_device("cpu")))
        logger.log_metrics({"test_accuracy": test_acc})
        outcome = _log_and_register(logger, model, split, test_acc, onnx=onnx, code_paths=paths,
                                    name=registered_model_name,
                                    description=f"{type(model).__name__} trained on {data} (test accuracy "
                                                f"{test_acc:.2f}%), logged with mlflow_unlearn.log_model")
    return outcome


def model_code_paths(model: nn.Module) -> list[str]:
    """The file (or top-level package folder) of ``model``'s class when it is the user's own code.

    Empty for classes of installed packages (site-packages, the standard library), of ``torch`` and of
    ``mlflow_unlearn``, and for classes defined in the running script (``__main__``), which are pickled by
    value.

    >>> from torch import nn
    >>> model_code_paths(nn.Linear(2, 2))
    []
    """
    return _user_code_paths(type(model).__module__)


def factory_code_paths(data: str) -> list[str]:
    """The file (or top-level package folder) of the module of a ``factory:<module>:<callable>`` data source when it
    is the user's own code (imported already: the data was loaded), so that it is logged with the model; empty for
    any other source, a factory given as a ``.py`` file (read from that path) or an installed module.

    >>> factory_code_paths("digits")
    []
    """
    spec = parse_source(data)
    if spec.name != "factory" or spec.factory_file is not None:
        return []
    return _user_code_paths(spec.factory[0])


def _covered(path: str, paths: list[str]) -> bool:
    """Whether ``path`` is one of ``paths`` or inside one of them."""
    resolved = Path(path).resolve()
    return any(resolved == Path(p).resolve() or Path(p).resolve() in resolved.parents for p in paths)


def _user_code_paths(module_name: str) -> list[str]:
    """:func:`model_code_paths` for the module named ``module_name``."""
    top = module_name.split(".")[0]
    module = sys.modules.get(top)
    file = getattr(module, "__file__", None)
    if top in ("__main__", "builtins", "torch", "torchvision", "mlflow_unlearn") or not file:
        return []
    path = Path(file).resolve()
    installed = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    if any(root in path.parents for root in installed) or {"site-packages", "dist-packages"} & set(path.parts):
        return []
    return [str(path.parent if path.name == "__init__.py" else path)]
