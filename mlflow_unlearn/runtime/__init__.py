"""Execution plumbing shared by training and every unlearning method.

Device choice, bf16 autocast on CUDA, seeding, data loaders that become distributed under ``torchrun``,
DistributedDataParallel wrapping and the finite-loss guard live here, once, so that each method module
only states its algorithm. Callers import the package (``from mlflow_unlearn import runtime as rt``); the
submodules group the names by concern:

- :mod:`~mlflow_unlearn.runtime.device`: device, autocast, memory layout, the inference copy;
- :mod:`~mlflow_unlearn.runtime.seeding`: seeding;
- :mod:`~mlflow_unlearn.runtime.loaders`: seeded, rank-sharded, streaming data loaders (worker processes for
  decoded data), labels from bookkeeping;
- :mod:`~mlflow_unlearn.runtime.distributed`: process-group start-up and shutdown, ranks, DDP wrapping;
- :mod:`~mlflow_unlearn.runtime.history`: :class:`History` and the progress bar;
- :mod:`~mlflow_unlearn.runtime.errors`: :class:`UnlearningDivergedError` and the finite-loss guard.
"""

from __future__ import annotations

from mlflow_unlearn.runtime.device import (
    InferenceRunner,
    autocast,
    inference_batch_size,
    inference_copy,
    prepare_model,
    resolve_device,
    to_device,
)
from mlflow_unlearn.runtime.distributed import (
    init_distributed_from_env,
    is_distributed,
    rank,
    shutdown_distributed,
    unwrap,
    world_size,
    wrap_distributed,
)
from mlflow_unlearn.runtime.errors import UnlearningDivergedError, check_finite
from mlflow_unlearn.runtime.history import History, progress
from mlflow_unlearn.runtime.loaders import batch_reader, data_workers, dataset_labels, inference_loader, make_loader
from mlflow_unlearn.runtime.seeding import seed_everything

__all__ = [
    "History",
    "InferenceRunner",
    "UnlearningDivergedError",
    "autocast",
    "batch_reader",
    "data_workers",
    "dataset_labels",
    "check_finite",
    "inference_batch_size",
    "inference_copy",
    "inference_loader",
    "init_distributed_from_env",
    "is_distributed",
    "make_loader",
    "prepare_model",
    "progress",
    "rank",
    "resolve_device",
    "seed_everything",
    "shutdown_distributed",
    "to_device",
    "unwrap",
    "world_size",
    "wrap_distributed",
]
