"""Supervised training: the recipe for the original model and for the ``retrain`` reference."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.models.interface import class_scores

OptimizerFactory = Callable[..., torch.optim.Optimizer]
ScheduleFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler | None]
BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

#: Optimizer name -> factory ``(params, *, lr, weight_decay)``.
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": functools.partial(torch.optim.SGD, momentum=0.9),
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def _constant(opt: torch.optim.Optimizer, *, lr: float, total_steps: int) -> None:
    return None


def _cosine(opt: torch.optim.Optimizer, *, lr: float, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))


def _one_cycle(opt: torch.optim.Optimizer, *, lr: float, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=0.15)


#: Learning-rate schedule name -> factory ``(optimizer, *, lr, total_steps)`` (stepped once per optimizer step;
#: ``None`` keeps the rate constant). ``cosine`` anneals to zero; ``onecycle`` warms up over 15% of the run first.
SCHEDULES: dict[str, ScheduleFactory] = {"constant": _constant, "cosine": _cosine, "onecycle": _one_cycle}


@dataclass
class TrainConfig:
    """A training recipe.

    Args:
        epochs: passes over the data.
        lr: peak learning rate (cosine-annealed to 0 over the run).
        batch_size: samples per step (per process under ``torchrun``).
        optimizer: one of ``sgd`` (momentum 0.9), ``adam``, ``adamw``.
        weight_decay: L2 penalty.
        label_smoothing: cross-entropy label smoothing.
        seed: seeds initialisation order, shuffling and augmentation.
    """

    epochs: int = 15
    lr: float = 0.05
    batch_size: int = 64
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"Expected argument `epochs` to be a positive int but got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"Expected argument `batch_size` to be a positive int but got {self.batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"Expected argument `lr` to be a positive float but got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"Expected argument `weight_decay` to be >= 0 but got {self.weight_decay!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"Expected argument `label_smoothing` in [0, 1) but got {self.label_smoothing!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {self.optimizer!r}; expected one of: {', '.join(OPTIMIZERS)}")

    def to_dict(self) -> dict:
        return asdict(self)


def make_optimizer(params, *, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``params``.

    Args:
        params: the parameters (or parameter groups) to optimise.
        name: a key of :data:`OPTIMIZERS` (``sgd`` has momentum 0.9).
        lr: the learning rate.
        weight_decay: the L2 penalty.

    Returns:
        A new optimizer.

    Raises:
        ValueError: if ``name`` is not in :data:`OPTIMIZERS`.

    >>> make_optimizer([torch.zeros(1, requires_grad=True)], name="sgd", lr=0.1, weight_decay=0.0).defaults["momentum"]
    0.9
    >>> make_optimizer([], name="lbfgs", lr=0.1, weight_decay=0.0)
    Traceback (most recent call last):
    ...
    ValueError: Unknown optimizer 'lbfgs'; expected one of: sgd, adam, adamw
    """
    factory = OPTIMIZERS.get(name)
    if factory is None:
        raise ValueError(f"Unknown optimizer {name!r}; expected one of: {', '.join(OPTIMIZERS)}")
    return factory(params, lr=lr, weight_decay=weight_decay)


@dataclass(frozen=True)
class EpochStats:
    """What :func:`train_epochs` reports after each epoch.

    Args:
        epoch: the epoch's index, from 0.
        loss: the mean loss over the epoch's samples.
        samples: how many samples the epoch saw (on this rank).
        steps: optimizer steps taken so far, in total.
    """

    epoch: int
    loss: float
    samples: int
    steps: int


def train_epochs(
    model: nn.Module,
    data: Dataset,
    loss_fn: BatchLoss,
    *,
    device: torch.device,
    seed: int,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str | torch.optim.Optimizer = "sgd",
    weight_decay: float = 0.0,
    schedule: str = "constant",
    params: list[torch.nn.Parameter] | None = None,
    after_backward: Callable[[nn.Module], None] | None = None,
    max_steps: int | None = None,
    freeze_norm_stats: bool = False,
    where: str = "train",
) -> Iterator[EpochStats]:
    """The one training loop: minimise ``loss_fn(net, x, y)`` over ``data``, in place, yielding after each epoch.

    Seeded (and, under ``torchrun``, sharded) loaders, DistributedDataParallel, bf16 autocast on CUDA, no host
    synchronisation inside an epoch, one finite-loss check per epoch. ``model`` is trained in place (on
    ``device`` already); ``loss_fn`` gets the (possibly DDP-wrapped) network and a batch on ``device``.

    Args:
        optimizer: a key of :data:`OPTIMIZERS`, or an optimizer instance over the model's parameters to continue
            with (its state carries over between calls; ``lr``, ``weight_decay`` and ``params`` are then ignored).
        schedule: a key of :data:`SCHEDULES`.
        params: the parameters to optimise (default: all of the model's).
        after_backward: called after ``backward`` and before the step (e.g. to mask gradients).
        max_steps: stop after this many optimizer steps in total (for sub-epoch budgets).
        freeze_norm_stats: keep normalization layers with running statistics (BatchNorm) in eval mode: they
            normalise with, and keep, the model's running statistics, so the loss is that of the model as it
            is evaluated; their affine weights still train.
        where: names the loop in the divergence error.

    Returns:
        An iterator of one :class:`EpochStats` per epoch; the training happens as it is consumed (the names,
        the optimizer and the schedule are checked and built before it is returned).

    Raises:
        ValueError: if ``optimizer`` or ``schedule`` is not a registered name.
        UnlearningDivergedError: if an epoch's loss is NaN or infinite.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; expected one of: {', '.join(SCHEDULES)}")
    net = rt.wrap_distributed(model, device)
    if isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
    else:
        opt = make_optimizer(params if params is not None else net.parameters(), name=optimizer, lr=lr,
                             weight_decay=weight_decay)
    steps_per_epoch = len(rt.make_loader(data, batch_size=batch_size, shuffle=True, seed=seed))
    total_steps = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    sched = SCHEDULES[schedule](opt, lr=lr, total_steps=total_steps)
    return _epochs(net, data, loss_fn, opt, sched, device=device, seed=seed, epochs=epochs, batch_size=batch_size,
                   total_steps=total_steps, after_backward=after_backward, freeze_norm_stats=freeze_norm_stats,
                   where=where)


def _epochs(
    net: nn.Module,
    data: Dataset,
    loss_fn: BatchLoss,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler | None,
    *,
    device: torch.device,
    seed: int,
    epochs: int,
    batch_size: int,
    total_steps: int,
    after_backward: Callable[[nn.Module], None] | None,
    freeze_norm_stats: bool,
    where: str,
) -> Iterator[EpochStats]:
    """The epochs of :func:`train_epochs`, which validated and built everything they use."""
    step = 0
    for epoch in range(epochs):
        net.train()
        if freeze_norm_stats:
            for module in net.modules():
                if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                    module.eval()
        batch_stats = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules())
        loader = rt.make_loader(data, batch_size=batch_size, shuffle=True, seed=seed, epoch=epoch, device=device)
        total = torch.zeros((), device=device)
        seen = 0
        for x, y in loader:
            if step >= total_steps:
                break
            if batch_stats and y.shape[0] == 1:  # BatchNorm cannot take batch statistics of one sample
                if seen:
                    continue  # the epoch's last, one-sample batch: skipped, as a loader with drop_last would
                raise ValueError(f"{where}: the model's BatchNorm layers need batches of at least 2 samples to train, "
                                 f"but its first batch has 1 (batch size {batch_size}, {len(data)} samples)")
            x, y = rt.to_device(x, device), y.to(device, non_blocking=True)
            with rt.autocast(device):
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
        rt.check_finite(total, where=f"{where} epoch {epoch}")
        yield EpochStats(epoch=epoch, loss=float(total) / max(seen, 1), samples=seen, steps=step)
        if step >= total_steps:
            break


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig | None = None,
    *,
    device: str | torch.device | None = None,
    desc: str = "train",
) -> tuple[nn.Module, rt.History]:
    """Train ``model`` in place on ``data`` (``(x, y)`` pairs) with cross-entropy and return it with a history.

    The device is chosen automatically (CUDA with bf16 autocast where present, else CPU). Under ``torchrun``
    the model is wrapped in DistributedDataParallel and the data sharded; the returned model is the plain
    module, identical on every rank.

    Raises:
        UnlearningDivergedError: if the loss becomes NaN or infinite.
    """
    config = config or TrainConfig()
    if len(data) == 0:
        raise ValueError("Cannot train on an empty dataset")
    dev = rt.resolve_device(device)
    rt.seed_everything(config.seed)
    model = rt.prepare_model(model, dev)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    correct = torch.zeros((), device=dev)

    def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = class_scores(net(x))
        correct.add_((logits.argmax(1) == y).sum())
        return criterion(logits.float(), y)

    history = rt.History()
    start = time.perf_counter()
    epochs = train_epochs(model, data, loss_fn, device=dev, seed=config.seed, epochs=config.epochs, lr=config.lr,
                          batch_size=config.batch_size, optimizer=config.optimizer,
                          weight_decay=config.weight_decay, schedule="onecycle", where=desc)
    for stats in rt.progress(epochs, desc=desc, total=config.epochs):
        history.log(epoch=stats.epoch, loss=stats.loss, train_accuracy=float(correct) / max(stats.samples, 1))
        correct.zero_()
    history.wall_time_s = time.perf_counter() - start
    model.eval()
    return model, history
