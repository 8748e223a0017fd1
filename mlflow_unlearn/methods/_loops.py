"""Training loops shared by the unlearning methods.

Methods describe *what* to optimise as a per-batch loss closure; :func:`fit` does the rest the same way
for all of them: seeded (and, under ``torchrun``, sharded) loaders, DistributedDataParallel, bf16
autocast on CUDA, no host synchronisation inside the loop, one finite-loss check per epoch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from mlflow_unlearn import _runtime as rt
from mlflow_unlearn.methods.registry import UnlearnContext
from mlflow_unlearn.training import make_optimizer

BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def fit(
    model: nn.Module,
    data: Dataset,
    loss_fn: BatchLoss,
    *,
    context: UnlearnContext,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str = "sgd",
    weight_decay: float = 0.0,
    history: rt.History,
    stage: str,
    schedule: str = "constant",
    params: list[torch.nn.Parameter] | None = None,
    after_backward: Callable[[nn.Module], None] | None = None,
    max_steps: int | None = None,
) -> nn.Module:
    """Minimise ``loss_fn(net, x, y)`` over ``data`` for ``epochs`` epochs; return the (unwrapped) model.

    Args:
        schedule: ``"constant"`` or ``"cosine"`` (annealed to zero over the run).
        params: the parameters to optimise (default: all of the model's).
        after_backward: called after ``backward`` and before the step (e.g. to mask gradients).
        max_steps: stop after this many optimiser steps in total (for sub-epoch budgets).
    """
    dev = context.device
    net = rt.wrap_distributed(model, dev)
    opt = make_optimizer(params if params is not None else net.parameters(), name=optimizer, lr=lr,
                         weight_decay=weight_decay)
    steps_per_epoch = len(rt.make_loader(data, batch_size=batch_size, shuffle=True, seed=context.seed))
    total_steps = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
        if schedule == "cosine"
        else None
    )
    step = 0
    for epoch in range(epochs):
        net.train()
        loader = rt.make_loader(data, batch_size=batch_size, shuffle=True, seed=context.seed, epoch=epoch)
        total = torch.zeros((), device=dev)
        seen = 0
        for x, y in loader:
            if step >= total_steps:
                break
            x, y = rt.to_device(x, dev), y.to(dev, non_blocking=True)
            with rt.autocast(dev):
                loss = loss_fn(net, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if after_backward is not None:
                after_backward(net)
            opt.step()
            if sched is not None:
                sched.step()
            total += loss.detach().float() * y.shape[0]
            seen += y.shape[0]
            step += 1
        rt.check_finite(total, where=f"{stage} epoch {epoch}")
        history.log(stage=stage, epoch=epoch, loss=float(total) / max(seen, 1), steps=step)
        if step >= total_steps:
            break
    return rt.unwrap(net)
