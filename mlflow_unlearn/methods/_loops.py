"""Training loops shared by the unlearning methods.

Methods describe *what* to optimise as a per-batch loss closure; :func:`fit` does the rest the same way
for all of them with the one training loop, :func:`mlflow_unlearn.training.train_epochs`: seeded (and, under
``torchrun``, sharded) loaders, DistributedDataParallel, bf16 autocast on CUDA, no host synchronisation inside
the loop, one finite-loss check per epoch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
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
    stop_below: float | None = None,
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
        stop_below: end after the first epoch whose mean loss (averaged over the ranks under ``torchrun``) is at
            most this.
    """
    for stats in train_epochs(model, data, loss_fn, device=context.device, seed=context.seed, epochs=epochs, lr=lr,
                              batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay,
                              schedule=schedule, params=params, after_backward=after_backward,
                              max_steps=max_steps, freeze_norm_stats=freeze_norm_stats, where=stage):
        history.log(stage=stage, epoch=stats.epoch, loss=stats.loss, steps=stats.steps)
        if stop_below is not None and _mean_over_ranks(stats.loss, context.device) <= stop_below:
            break
    return model


def _mean_over_ranks(value: float, device: torch.device) -> float:
    """``value`` averaged over the ranks under ``torchrun`` (itself otherwise): every rank stops alike."""
    if not rt.is_distributed():
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    return float(total.item()) / rt.world_size()


def input_shape(data: Dataset) -> tuple[int, ...]:
    """The shape of one input of ``data`` (a :class:`~mlflow_unlearn.data.SampleSet`'s, through the usual wrappers,
    else its first sample's)."""
    shape = getattr(data, "input_shape", None)
    return tuple(shape) if shape is not None else tuple(torch.as_tensor(data[0][0]).shape)


def first_inputs(data: Dataset, count: int) -> torch.Tensor:
    """The inputs of the first ``count`` samples of ``data``, stacked (a sample for shape checks and hooks)."""
    return torch.stack([torch.as_tensor(data[i][0]) for i in range(min(count, len(data)))])


def inputs_at(data: Dataset, positions: np.ndarray) -> torch.Tensor:
    """The inputs of the samples of ``data`` at ``positions``, stacked in that order (one batch read where ``data``
    can read batches)."""
    positions = np.asarray(positions, dtype=np.int64)
    read = rt.batch_reader(data)
    if read is not None:
        return read(positions)[0]
    return torch.stack([torch.as_tensor(data[int(i)][0]) for i in positions.tolist()])


@torch.no_grad()
def value_range(data: Dataset, *, batch_size: int = 256) -> tuple[float, float]:
    """The smallest and largest input value over all samples of ``data``, in one streaming pass."""
    low, high = float("inf"), float("-inf")
    for batch in rt.inference_loader(data, batch_size=batch_size):
        low, high = min(low, float(batch[0].min())), max(high, float(batch[0].max()))
    return low, high


@torch.no_grad()
def predict_logits(model: nn.Module, data: Dataset | torch.Tensor, *, device: torch.device,
                   batch_size: int | None = None) -> torch.Tensor:
    """Logits of ``model`` on every sample of ``data`` (a Dataset of ``(x, ...)`` or a tensor of inputs), in
    order, as float32 on ``device``.

    Eval mode, no gradients and an unshuffled, unsharded, streaming pass (:func:`mlflow_unlearn.runtime.
    inference_loader`: every rank sees all samples under ``torchrun``), so that row ``i`` always belongs to sample
    ``i``; the batches (``batch_size``, default :func:`mlflow_unlearn.runtime.inference_batch_size` of ``device``)
    run through :class:`mlflow_unlearn.runtime.InferenceRunner` (BatchNorm folded, channels_last). The model's
    train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    if isinstance(data, torch.Tensor):
        data = torch.utils.data.TensorDataset(data)
    run = rt.InferenceRunner(model)
    outputs = []
    batch_size = batch_size or rt.inference_batch_size(device)
    for batch in rt.inference_loader(data, batch_size=batch_size, device=device):
        with rt.autocast(device):
            outputs.append(run(rt.to_device(batch[0], device)).float())
    model.train(was_training)
    return torch.cat(outputs)


@torch.no_grad()
def recalibrate_norm_stats(model: nn.Module, data: Dataset, *, device: torch.device,
                           batch_size: int | None = None) -> int:
    """Re-estimate, in place, the running statistics of ``model``'s BatchNorm layers on ``data`` (one streaming
    pass); return how many layers were re-estimated.

    Each batch counts by its number of samples (the means are those of ``data``, less a trailing single sample; the
    variances, as in ``torch.optim.swa_utils.update_bn``, average the batches' own). Only the BatchNorm layers are in
    training mode for the pass (dropout and the rest stay in eval mode); modes and momenta are restored, layers
    without running statistics are left alone, and so is every layer when ``data`` has fewer than 2 samples. A model
    trained on batches that were not all of ``data`` (a curriculum's last stage, say) then normalises as a model
    trained on ``data`` does.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    >>> recalibrate_norm_stats(net, torch.utils.data.TensorDataset(torch.ones(4, 2)), device=torch.device("cpu"))
    1
    >>> net[1].running_var.tolist()  # four equal inputs: no spread left
    [0.0, 0.0]
    """
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None]
    if not norms or len(data) < 2:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.train()
    seen = 0
    try:
        for batch in rt.inference_loader(data, batch_size=max(2, batch_size or rt.inference_batch_size(device)),
                                         device=device):
            x = batch[0]
            if len(x) < 2:  # a trailing single sample: BatchNorm cannot train on it, and it weighs 1 / len(data)
                continue
            seen += len(x)
            for m in norms:
                m.momentum = len(x) / seen  # running = the sample-weighted mean of the batches so far
            model(rt.to_device(x, device))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        for m, mode in modes.items():
            m.train(mode)
    return len(norms)


def labels_of(data: Dataset) -> torch.Tensor:
    """All labels of ``data`` as an int64 CPU tensor (see :func:`mlflow_unlearn.runtime.dataset_labels`)."""
    return rt.dataset_labels(data)


class Retargeted(Dataset):
    """``data``'s inputs with one row of ``targets`` each (e.g. a teacher's logits to distil from): what a
    ``TensorDataset`` of stacked inputs and targets would give, with the inputs still read from ``data`` per batch.
    """

    def __init__(self, data: Dataset, targets: torch.Tensor) -> None:
        if len(targets) != len(data):
            raise ValueError(f"Expected {len(data)} targets but got {len(targets)}")
        self.data, self.targets = data, targets

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data[index][0], self.targets[index]

    def parts(self) -> list[Dataset]:
        return [self.data]

    def batch_reader(self):
        inner = rt.batch_reader(self.data)
        if inner is None:
            return None
        return lambda index: (inner(index)[0], self.targets[torch.from_numpy(np.asarray(index, dtype=np.int64))])


class Relabeled(Retargeted):
    """``data`` with its labels replaced by ``labels`` (e.g. random labels for the forget set)."""

    def __init__(self, data: Dataset, labels: torch.Tensor) -> None:
        if len(labels) != len(data):
            raise ValueError(f"Expected {len(data)} labels but got {len(labels)}")
        super().__init__(data, labels.long())
        self.labels = self.targets


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

    def parts(self) -> list[Dataset]:
        return [self.forget] + ([self.retain] if self.retain is not None else [])

    def batch_reader(self):
        both = torch.utils.data.ConcatDataset(self.parts())
        inner = rt.batch_reader(both)
        if inner is None:
            return None
        n_forget = len(self.forget)

        def read(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = inner(index)[:2]
            flag = torch.from_numpy(np.asarray(index) < n_forget).long()
            return x, torch.stack([y.long(), flag], dim=1)

        return read


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
