"""SCRUB: a student moves away from its teacher on the forget set and stays close to it on the retain set.

Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023 (https://arxiv.org/abs/2302.09880).
The student starts as the original model, the frozen teacher *is* the original model. Each epoch first
(for the first ``msteps`` epochs only) does max-steps on the forget set, maximising
``KL(teacher || student)`` at temperature ``T``, then min-steps on the retain set, minimising
``alpha * KL(teacher || student) + gamma * CE``. Defaults follow the authors' CIFAR configuration
(Adam at 5e-4, ``T = 4``, ``alpha = 0.001``, ``gamma = 0.99``, forget batches of 32, retain batches of
128); the optional smoothing / SWA of their code is left out. ``retain_fraction`` bounds each min-step
epoch to a random fraction of the retain set to keep the budget small.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.methods._loops import fit
from mlflow_unlearn.methods.registry import UnlearnContext, register_method
from mlflow_unlearn.methods.validation import check_fraction, check_non_negative, check_positive
from mlflow_unlearn.models.interface import class_scores
from mlflow_unlearn.training import make_optimizer


@dataclass
class ScrubConfig:
    """Args:
    epochs: SCRUB epochs (each: optional max-steps, then min-steps).
    msteps: number of leading epochs that include max-steps on the forget set (<= ``epochs``).
    lr: Adam learning rate.
    weight_decay: L2 penalty.
    temperature: distillation temperature ``T``.
    alpha: weight of the KL term in the min-steps.
    gamma: weight of the cross-entropy term in the min-steps.
    forget_batch_size: batch size of the max-steps.
    batch_size: batch size of the min-steps.
    retain_fraction: fraction of the retain set seen per min-step epoch.
    clip_grad_norm: maximum gradient norm per step (keeps the max-steps from exploding).
    """

    epochs: int = 3
    msteps: int = 2
    lr: float = 5e-4
    weight_decay: float = 5e-4
    temperature: float = 4.0
    alpha: float = 0.001
    gamma: float = 0.99
    forget_batch_size: int = 32
    batch_size: int = 128
    retain_fraction: float = 0.5
    clip_grad_norm: float = 5.0

    def __post_init__(self) -> None:
        check_positive(self, "epochs", "lr", "temperature", "forget_batch_size", "batch_size", "clip_grad_norm")
        check_non_negative(self, "msteps", "weight_decay", "alpha", "gamma")
        check_fraction(self, "retain_fraction", allow_zero=False)
        if self.msteps > self.epochs:
            raise ValueError(f"Expected argument `msteps` to be at most `epochs` ({self.epochs}) but got {self.msteps}")


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(softmax(teacher / T) || softmax(student / T)) * T**2``, averaged over the batch (Hinton et al.)."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


@register_method("scrub", ScrubConfig)
def scrub(
    model: nn.Module, *, forget: Dataset, retain: Dataset, config: ScrubConfig, context: UnlearnContext
) -> tuple[nn.Module, rt.History]:
    """Max-steps away from the original on the forget set, min-steps towards it (plus CE) on the retain set."""
    history = rt.History()
    teacher = copy.deepcopy(model).eval().requires_grad_(False)

    def teacher_logits(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return class_scores(teacher(x))

    def max_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -distill_kl(class_scores(net(x)), teacher_logits(x), config.temperature)

    def min_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = class_scores(net(x))
        kl = distill_kl(logits, teacher_logits(x), config.temperature)
        return config.alpha * kl + config.gamma * F.cross_entropy(logits.float(), y)

    def clip(net: nn.Module) -> None:
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.clip_grad_norm)

    opt = make_optimizer(model.parameters(), name="adam", lr=config.lr, weight_decay=config.weight_decay)
    min_steps = math.ceil(config.retain_fraction * math.ceil(len(retain) / rt.world_size() / config.batch_size))
    for epoch in range(config.epochs):
        ctx = dataclasses.replace(context, seed=context.seed + epoch)
        if epoch < config.msteps:
            model = fit(model, forget, max_loss, context=ctx, epochs=1, lr=config.lr,
                        batch_size=config.forget_batch_size, optimizer=opt, history=history,
                        stage=f"scrub_max_{epoch}", after_backward=clip)
        model = fit(model, retain, min_loss, context=ctx, epochs=1, lr=config.lr, batch_size=config.batch_size,
                    optimizer=opt, history=history, stage=f"scrub_min_{epoch}", after_backward=clip,
                    max_steps=max(1, min_steps))
    return model, history
