"""Fine-tuning on the retain set only ("catastrophic forgetting" baseline).

Warnecke et al., "Machine Unlearning of Features and Labels", NDSS 2023 (FT baseline); hyperparameters
as in Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.methods._loops import fit
from mlflow_unlearn.methods.registry import UnlearnContext, register_method
from mlflow_unlearn.methods.validation import check_positive
from mlflow_unlearn.models.interface import class_scores


@dataclass
class FinetuneConfig:
    """Args: epochs, lr, batch_size, weight_decay of plain SGD fine-tuning on the retain set."""

    epochs: int = 3
    lr: float = 0.02
    batch_size: int = 64
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        check_positive(self, "epochs", "lr", "batch_size")


@register_method("finetune", FinetuneConfig, distributed=True)
def finetune(
    model: nn.Module, *, forget: Dataset, retain: Dataset, config: FinetuneConfig, context: UnlearnContext
) -> tuple[nn.Module, rt.History]:
    """Fine-tune on the retain set: forgetting comes only from not seeing the forget data again."""
    history = rt.History()
    model = fit(model, retain, lambda net, x, y: F.cross_entropy(class_scores(net(x)).float(), y), context=context,
                epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, weight_decay=config.weight_decay,
                history=history, stage="finetune", schedule="cosine")
    return model, history
