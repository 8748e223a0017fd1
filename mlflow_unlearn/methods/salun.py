"""SalUn: saliency-based unlearning, random-label unlearning restricted to the forget-salient weights.

Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image
Classification and Generation", ICLR 2024 (https://arxiv.org/abs/2310.12508). The saliency of a weight is
the magnitude of the gradient of the forget-set cross-entropy with respect to it, taken on the original
model in eval mode; the mask keeps the top ``mask_fraction`` of all weights (the paper's threshold, 0.5).
Then random-label unlearning (see :mod:`~mlflow_unlearn.methods.random_label`) runs with the gradients of
the other weights zeroed after every backward pass. Weight decay defaults to 0 so that weights outside the
mask stay exactly as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.methods._loops import fit
from mlflow_unlearn.methods.random_label import cross_entropy, relabeled_mix
from mlflow_unlearn.methods.registry import UnlearnContext, register_method
from mlflow_unlearn.methods.validation import check_fraction, check_non_negative, check_positive
from mlflow_unlearn.models.interface import class_scores


@dataclass
class SalunConfig:
    """Args:
    mask_fraction: fraction of the weights (largest forget-gradient magnitude) that may change.
    epochs: passes over forget (random labels) + retain subset.
    lr: SGD (momentum 0.9) learning rate, cosine-annealed.
    batch_size: samples per step.
    weight_decay: L2 penalty (non-zero values also shrink the weights outside the mask).
    retain_fraction: fraction of the retain set mixed in (a seeded random subset; 1 = all of it).
    """

    mask_fraction: float = 0.5
    epochs: int = 3
    lr: float = 0.01
    batch_size: int = 64
    weight_decay: float = 0.0
    retain_fraction: float = 0.3

    def __post_init__(self) -> None:
        check_fraction(self, "mask_fraction", allow_zero=False)
        check_positive(self, "epochs", "lr", "batch_size")
        check_non_negative(self, "weight_decay")
        check_fraction(self, "retain_fraction")


def saliency_mask(
    model: nn.Module, forget: Dataset, *, fraction: float, context: UnlearnContext, batch_size: int = 256
) -> list[torch.Tensor]:
    """One 0/1 mask per trainable parameter: 1 for the top ``fraction`` of ``|d CE(forget) / d theta|``.

    The threshold is global over all weights, as in the paper. Gradients are summed over one eval-mode pass.

    Raises:
        UnlearningDivergedError: if the forget-set gradient is not finite.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    for x, y in rt.make_loader(forget, batch_size=batch_size, shuffle=False, device=context.device):
        x, y = rt.to_device(x, context.device), y.to(context.device, non_blocking=True)
        with rt.autocast(context.device):
            loss = F.cross_entropy(class_scores(model(x)).float(), y, reduction="sum")
        loss.backward()
    model.train(was_training)
    saliency = [p.grad.detach().abs() if p.grad is not None else torch.zeros_like(p) for p in params]
    model.zero_grad(set_to_none=True)
    flat = torch.cat([s.flatten().float() for s in saliency])
    rt.check_finite(flat.sum(), where="salun saliency")
    keep = max(1, round(fraction * flat.numel()))
    threshold = torch.topk(flat, keep, sorted=False).values.min()
    return [((s >= threshold) & (s > 0)).to(s.dtype) for s in saliency]


@register_method("salun", SalunConfig)
def salun(
    model: nn.Module, *, forget: Dataset, retain: Dataset, config: SalunConfig, context: UnlearnContext
) -> tuple[nn.Module, rt.History]:
    """Random-label unlearning that updates only the weights most salient for the forget loss."""
    history = rt.History()
    mask = saliency_mask(model, forget, fraction=config.mask_fraction, context=context)
    history.extra["mask_fraction"] = float(sum(m.sum() for m in mask) / sum(m.numel() for m in mask))
    params = [p for p in model.parameters() if p.requires_grad]

    def mask_gradients(net: nn.Module) -> None:
        for p, m in zip(params, mask, strict=True):
            if p.grad is not None:
                p.grad.mul_(m)

    data = relabeled_mix(forget, retain, retain_fraction=config.retain_fraction, context=context)
    model = fit(model, data, cross_entropy, context=context, epochs=config.epochs, lr=config.lr,
                batch_size=config.batch_size, weight_decay=config.weight_decay, history=history,
                stage="salun", schedule="cosine", params=params, after_backward=mask_gradients)
    return model, history
