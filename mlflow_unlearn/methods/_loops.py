"""Training loops shared by the unlearning methods.

Methods describe *what* to optimise as a per-batch loss closure; :func:`fit` does the rest the same way
for all of them with the one training loop, :func:`mlflow_unlearn.training.train_epochs`: seeded (and, under
``torchrun``, sharded) loaders, DistributedDataParallel, bf16 autocast on CUDA, no host synchronisation inside
the loop, one finite-loss check per epoch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.methods.registry import UnlearnContext
from mlflow_unlearn.training import BatchLoss, train_epochs


def fit(
    model: nn.Module,
    data: Dataset,
    loss_fn: BatchLoss,
    *,
    context: UnlearnContext,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str | torch.optim.Optimizer = "sgd",
    weight_decay: float = 0.0,
    history: rt.History,
    stage: str,
    schedule: str = "constant",
    params: list[torch.nn.Parameter] | None = None,
    after_backward: Callable[[nn.Module], None] | None = None,
    max_steps: int | None = None,
    freeze_norm_stats: bool = False,
) -> nn.Module:
    """Minimise ``loss_fn(net, x, y)`` over ``data`` for ``epochs`` epochs; return the (unwrapped) model.

    The loop is :func:`mlflow_unlearn.training.train_epochs` on the context's device and seed; each epoch adds a
    ``stage, epoch, loss, steps`` record to ``history``.

    Args:
        optimizer: an optimizer name (see ``training.OPTIMIZERS``), or an optimizer instance over the model's
            parameters to continue with (its state carries over between calls; ``lr``, ``weight_decay`` and
            ``params`` are then ignored).
        schedule: ``"constant"`` or ``"cosine"`` (annealed to zero over the run); see ``training.SCHEDULES``.
        params: the parameters to optimise (default: all of the model's).
        after_backward: called after ``backward`` and before the step (e.g. to mask gradients).
        max_steps: stop after this many optimiser steps in total (for sub-epoch budgets).
        freeze_norm_stats: keep normalization layers with running statistics (BatchNorm) in eval mode: they
            normalise with, and keep, the model's running statistics, so the loss is that of the model as it
            is evaluated; their affine weights still train.
    """
    for stats in train_epochs(model, data, loss_fn, device=context.device, seed=context.seed, epochs=epochs, lr=lr,
                              batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay,
                              schedule=schedule, params=params, after_backward=after_backward,
                              max_steps=max_steps, freeze_norm_stats=freeze_norm_stats, where=stage):
        history.log(stage=stage, epoch=stats.epoch, loss=stats.loss, steps=stats.steps)
    return model


def as_tensors(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and targets of ``data`` as two CPU tensors, in dataset order.

    Uses the ``x`` / ``y`` attributes of a :class:`~mlflow_unlearn.data.SampleSet` (no copy) and otherwise
    reads the samples one by one.
    """
    x, y = getattr(data, "x", None), getattr(data, "y", None)
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return x, y
    pairs = [data[i] for i in range(len(data))]
    return torch.stack([torch.as_tensor(p[0]) for p in pairs]), torch.stack([torch.as_tensor(p[1]) for p in pairs])


@torch.no_grad()
def predict_logits(model: nn.Module, data: Dataset | torch.Tensor, *, device: torch.device,
                   batch_size: int = 256) -> torch.Tensor:
    """Logits of ``model`` on every sample of ``data`` (a Dataset of ``(x, ...)`` or a tensor of inputs), in
    order, as float32 on ``device``.

    Eval mode, no gradients and an unshuffled, unsharded pass (every rank sees all samples under ``torchrun``),
    so that row ``i`` always belongs to sample ``i``; the batches run through
    :class:`mlflow_unlearn.runtime.InferenceRunner` (BatchNorm folded, channels_last). The model's train/eval mode
    is restored.
    """
    was_training = model.training
    model.eval()
    if isinstance(data, torch.Tensor):  # slicing beats collating one sample at a time
        batches = (data[start:start + batch_size] for start in range(0, len(data), batch_size))
    else:
        batches = (batch[0] for batch in torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False))
    run = rt.InferenceRunner(model)
    outputs = []
    for x in batches:
        with rt.autocast(device):
            outputs.append(run(rt.to_device(x, device)).float())
    model.train(was_training)
    return torch.cat(outputs)


def labels_of(data: Dataset) -> torch.Tensor:
    """All labels of ``data`` as an int64 CPU tensor (``data.y`` when it has one, else one pass over it)."""
    labels = getattr(data, "y", None)
    if isinstance(labels, torch.Tensor):
        return labels.long().cpu()
    return torch.as_tensor([int(data[i][1]) for i in range(len(data))], dtype=torch.int64)


class Relabeled(Dataset):
    """``data`` with its labels replaced by ``labels`` (e.g. random labels for the forget set)."""

    def __init__(self, data: Dataset, labels: torch.Tensor) -> None:
        if len(labels) != len(data):
            raise ValueError(f"Expected {len(data)} labels but got {len(labels)}")
        self.data, self.labels = data, labels.long()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data[index][0], self.labels[index]


class Tagged(Dataset):
    """Forget and retain samples in one dataset; each target is ``[label, is_forget]`` (shape ``(2,)``).

    One loader over both sets lets a loss mix a forget term and a retain term per batch (split with
    :func:`split_tagged`) without a second loader or a host synchronisation.
    """

    def __init__(self, forget: Dataset, retain: Dataset | None = None) -> None:
        self.forget, self.retain = forget, retain

    def __len__(self) -> int:
        return len(self.forget) + (len(self.retain) if self.retain is not None else 0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < len(self.forget):
            x, y = self.forget[index]
            return x, torch.stack([torch.as_tensor(y, dtype=torch.int64), torch.ones((), dtype=torch.int64)])
        x, y = self.retain[index - len(self.forget)]
        return x, torch.stack([torch.as_tensor(y, dtype=torch.int64), torch.zeros((), dtype=torch.int64)])


def split_tagged(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels, forget_mask)`` of a batch of :class:`Tagged` targets; the mask is float (1 = forget)."""
    return target[:, 0], target[:, 1].float()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (0 when the mask is empty), without a host synchronisation."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def random_subset(data: Dataset, fraction: float, *, seed: int) -> Dataset:
    """A seeded random ``fraction`` of ``data`` (at least one sample; ``data`` itself when ``fraction >= 1``)."""
    if fraction >= 1:
        return data
    gen = torch.Generator().manual_seed(seed)
    count = max(1, round(fraction * len(data)))
    return torch.utils.data.Subset(data, torch.randperm(len(data), generator=gen)[:count].tolist())
