"""Supervised training: the recipe for the original model and for the ``retrain`` reference."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from mlflow_unlearn import runtime as rt

OPTIMIZERS = ("sgd", "adam", "adamw")


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
    """The optimizer ``name`` (see ``OPTIMIZERS``) over ``params``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer {name!r}; expected one of: {', '.join(OPTIMIZERS)}")


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
    net = rt.wrap_distributed(model, dev)
    opt = make_optimizer(net.parameters(), name=config.optimizer, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, len(rt.make_loader(data, batch_size=config.batch_size, shuffle=True, seed=config.seed)))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.15
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    history = rt.History()
    start = time.perf_counter()
    for epoch in rt.progress(range(config.epochs), desc=desc):
        net.train()
        loader = rt.make_loader(data, batch_size=config.batch_size, shuffle=True, seed=config.seed, epoch=epoch)
        total = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev)
        seen = 0
        for x, y in loader:
            x, y = rt.to_device(x, dev), y.to(dev, non_blocking=True)
            with rt.autocast(dev):
                logits = net(x)
                loss = criterion(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * y.shape[0]
            correct += (logits.argmax(1) == y).sum()
            seen += y.shape[0]
        rt.check_finite(total, where=f"{desc} epoch {epoch}")
        history.log(epoch=epoch, loss=float(total) / max(seen, 1), train_accuracy=float(correct) / max(seen, 1))
    history.wall_time_s = time.perf_counter() - start
    model.eval()
    return rt.unwrap(net), history
