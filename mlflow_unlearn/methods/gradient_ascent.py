"""Gradient ascent ("GA", also NegGrad): maximise the cross-entropy on the forget set.

Thudi et al., "Unrolling SGD: Understanding Factors Influencing Machine Unlearning", EuroS&P 2022
(https://arxiv.org/abs/2109.13398), as the "GA" baseline of Jia et al., "Model Sparsity Can Simplify Machine
Unlearning", NeurIPS 2023 (https://arxiv.org/abs/2304.04934): 5 epochs over the forget set, SGD at a small
learning rate. Jia et al. use 1e-4 on CIFAR-10, where a forgotten class gives hundreds of steps; a small
forget set gives only a few, hence the default 3e-3 (still small: on a converged model it forgets only
part of a class, the known weakness of plain GA). With
``retain_weight > 0`` a descent term on (part of) the retain set is added, as in NegGrad+ of Kurmanji
et al., NeurIPS 2023 (https://arxiv.org/abs/2302.09880).

Plain ascent is unbounded: the loss can be increased for ever and the network destroyed. Two guards keep
it from exploding: each forget sample's loss stops being ascended once it exceeds ``max_forget_loss``
(default ``2 ln C``, i.e. the true class has probability below ``1 / C**2``), and the gradient norm is
clipped to ``clip_grad_norm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.methods._loops import Tagged, fit, masked_mean, random_subset, split_tagged
from mlflow_unlearn.methods.registry import UnlearnContext, register_method
from mlflow_unlearn.methods.validation import check_fraction, check_non_negative, check_positive
from mlflow_unlearn.models.interface import class_scores


@dataclass
class GradientAscentConfig:
    """Args:
    epochs: passes over the forget set.
    lr: SGD (momentum 0.9) learning rate (constant).
    batch_size: samples per step.
    weight_decay: L2 penalty.
    retain_weight: weight of the retain descent term (0 = pure gradient ascent).
    retain_fraction: fraction of the retain set mixed in when ``retain_weight > 0``.
    max_forget_loss: per-sample cross-entropy above which a forget sample is no longer ascended
        (``None``: ``2 ln C`` for ``C`` classes).
    clip_grad_norm: maximum gradient norm per step.
    """

    epochs: int = 5
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    retain_weight: float = 0.0
    retain_fraction: float = 0.1
    max_forget_loss: float | None = None
    clip_grad_norm: float = 5.0

    def __post_init__(self) -> None:
        check_positive(self, "epochs", "lr", "batch_size", "clip_grad_norm")
        check_non_negative(self, "weight_decay", "retain_weight")
        check_fraction(self, "retain_fraction")
        if self.max_forget_loss is not None:
            check_positive(self, "max_forget_loss")


@register_method("gradient_ascent", GradientAscentConfig)
def gradient_ascent(
    model: nn.Module, *, forget: Dataset, retain: Dataset, config: GradientAscentConfig, context: UnlearnContext
) -> tuple[nn.Module, rt.History]:
    """Ascend the forget-set cross-entropy (bounded per sample), optionally descending on retain data."""
    history = rt.History()
    bound = config.max_forget_loss if config.max_forget_loss is not None else 2 * math.log(context.num_classes)
    with_retain = config.retain_weight > 0
    data = Tagged(forget, random_subset(retain, config.retain_fraction, seed=context.seed) if with_retain else None)

    def loss_fn(net: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels, is_forget = split_tagged(target)
        ce = F.cross_entropy(class_scores(net(x)).float(), labels, reduction="none")
        loss = -masked_mean(ce.clamp(max=bound), is_forget)
        if with_retain:
            loss = loss + config.retain_weight * masked_mean(ce, 1.0 - is_forget)
        return loss

    def clip(net: nn.Module) -> None:
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.clip_grad_norm)

    model = fit(model, data, loss_fn, context=context, epochs=config.epochs, lr=config.lr,
                batch_size=config.batch_size, weight_decay=config.weight_decay, history=history,
                stage="gradient_ascent", after_backward=clip)
    return model, history
