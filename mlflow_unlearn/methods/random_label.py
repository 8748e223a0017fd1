"""Random-label unlearning ("RL"): fine-tune on the forget set relabelled at random, mixed with retain data.

Golatkar et al., "Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep Networks", CVPR 2020
(https://arxiv.org/abs/1911.04933), introduced random relabelling as a forgetting baseline; the recipe
here (fixed random labels for the forget set, trained together with the retain set, SGD at lr 0.01) is the
"RL" baseline of Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023
(https://arxiv.org/abs/2304.04934), also the unlearning step of SalUn (Fan et al., ICLR 2024).

Labels are drawn once, before training: for class-wise forgetting uniformly among the *retained* classes
(so the forgotten classes get no probability mass back), for sample-wise forgetting uniformly among the
classes other than each sample's true one. To keep the budget small (Jia et al. run 10 epochs over all of
it) only ``retain_fraction`` of the retain set, a seeded random subset, is mixed in, for 3 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.methods._loops import Relabeled, fit, labels_of, random_subset
from mlflow_unlearn.methods.registry import UnlearnContext, register_method
from mlflow_unlearn.methods.validation import check_fraction, check_non_negative, check_positive
from mlflow_unlearn.models.interface import class_scores


@dataclass
class RandomLabelConfig:
    """Args:
    epochs: passes over forget (random labels) + retain subset.
    lr: SGD (momentum 0.9) learning rate, cosine-annealed.
    batch_size: samples per step.
    weight_decay: L2 penalty.
    retain_fraction: fraction of the retain set mixed in (a seeded random subset; 1 = all of it).
    """

    epochs: int = 3
    lr: float = 0.01
    batch_size: int = 64
    weight_decay: float = 5e-4
    retain_fraction: float = 0.3

    def __post_init__(self) -> None:
        check_positive(self, "epochs", "lr", "batch_size")
        check_non_negative(self, "weight_decay")
        check_fraction(self, "retain_fraction")


def random_relabel(forget: Dataset, *, context: UnlearnContext) -> Relabeled:
    """``forget`` with seeded random wrong labels.

    Class-wise forgetting: uniform among the classes not being forgotten. Sample-wise: uniform among the
    classes other than the sample's own.

    Raises:
        ValueError: when fewer than two classes leave no wrong label to draw.
    """
    labels = labels_of(forget)
    gen = torch.Generator().manual_seed(context.seed + 104729)
    if context.forget_kind == "class":
        forgotten = set(context.forget_classes) or set(labels.tolist())
        allowed = torch.tensor([c for c in range(context.num_classes) if c not in forgotten], dtype=torch.int64)
        if len(allowed) == 0:
            raise ValueError("Every class is being forgotten: there is no retained class to relabel the forget set to")
        new = allowed[torch.randint(len(allowed), (len(labels),), generator=gen)]
    else:
        if context.num_classes < 2:
            raise ValueError("Random relabelling needs at least two classes")
        shift = torch.randint(1, context.num_classes, (len(labels),), generator=gen)
        new = (labels + shift) % context.num_classes
    return Relabeled(forget, new)


def relabeled_mix(forget: Dataset, retain: Dataset, *, retain_fraction: float, context: UnlearnContext) -> Dataset:
    """The randomly relabelled forget set together with a seeded ``retain_fraction`` of the retain set."""
    parts = [random_relabel(forget, context=context)]
    if retain_fraction > 0:
        parts.append(random_subset(retain, retain_fraction, seed=context.seed))
    return ConcatDataset(parts)


def cross_entropy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``net`` on a batch, computed in float32 (also under bf16 autocast)."""
    return F.cross_entropy(class_scores(net(x)).float(), y)


@register_method("random_label", RandomLabelConfig)
def random_label(
    model: nn.Module, *, forget: Dataset, retain: Dataset, config: RandomLabelConfig, context: UnlearnContext
) -> tuple[nn.Module, rt.History]:
    """Fine-tune on the forget set with random wrong labels, mixed with part of the retain set."""
    history = rt.History()
    data = relabeled_mix(forget, retain, retain_fraction=config.retain_fraction, context=context)
    model = fit(model, data, cross_entropy, context=context, epochs=config.epochs, lr=config.lr,
                batch_size=config.batch_size, weight_decay=config.weight_decay, history=history,
                stage="random_label", schedule="cosine")
    return model, history
