"""Distributed execution under ``torchrun``: process-group start-up and shutdown, rank queries and the
DistributedDataParallel wrapper.

Outside an initialised process group every function here is a cheap no-op (``world_size() == 1``,
``rank() == 0``, models are returned unwrapped), so the methods call them unconditionally.
"""

from __future__ import annotations

import gc
import os

import torch
from torch import nn


def is_distributed() -> bool:
    """True inside an initialised ``torch.distributed`` process group (e.g. under ``torchrun``).

    >>> is_distributed(), world_size(), rank()  # a plain process
    (False, 1, 0)
    """
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    """The number of processes in the group; 1 when not distributed."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in the group; 0 when not distributed."""
    return torch.distributed.get_rank() if is_distributed() else 0


def init_distributed_from_env() -> bool:
    """Initialise the default process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    Uses NCCL when CUDA is available, gloo otherwise. Returns True if a group is (now) initialised.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend=backend)
    return True


def shutdown_distributed() -> None:
    """Destroy the default process group once nothing holds it any more.

    DistributedDataParallel wrappers sit in reference cycles (reducer hooks), so the methods' wrappers outlive
    their loops until a garbage collection. Without one here they, and the process group they hold, are
    destroyed during interpreter shutdown, where gloo's threads can abort a rank whose work had finished
    ("terminate called without an active exception", seen once in CI).
    """
    gc.collect()
    torch.distributed.destroy_process_group()


def wrap_distributed(model: nn.Module, device: torch.device) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel when a process group is initialised, else return it.

    >>> net = nn.Linear(2, 2)
    >>> unwrap(wrap_distributed(net, torch.device("cpu"))) is net
    True
    """
    if not is_distributed():
        return model
    if device.type == "cuda":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
