"""Bad teaching: distil a competent teacher on retain samples and an incompetent one on forget samples.

Chundawat, Tarun, Mandal & Kankanhalli, "Can Bad Teaching Induce Forgetting? Unlearning in Deep Networks
Using an Incompetent Teacher", AAAI 2023, https://arxiv.org/abs/2205.08096.

The student starts as the trained model. Every sample of one combined set (all forget samples plus a
random ``retain_fraction`` of the retain set) carries a flag that selects its teacher: the frozen original
model (competent) for retain samples, a randomly initialised network of the same architecture
(incompetent) for forget samples. The student minimises ``KL(teacher || student)`` at temperature ``T``,
per sample. Teachers are frozen and in eval mode, and the data has no augmentation, so the teacher
outputs are computed once, before training, and the flag is resolved then: the target of sample ``i`` is
the output of the teacher that its flag selects.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.methods._loops import Retargeted, fit, predict_logits, random_subset
from mlflow_unlearn.methods.registry import UnlearnContext, register_method
from mlflow_unlearn.methods.validation import check_choice, check_fraction, check_positive
from mlflow_unlearn.models.interface import class_scores
from mlflow_unlearn.models.surgery import reset_method
from mlflow_unlearn.training import OPTIMIZERS


def randomly_initialised_copy(model: nn.Module, *, seed: int) -> nn.Module:
    """A deep copy of ``model`` with every submodule's ``reset_parameters`` called (a fresh, seeded init)."""
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            reset = reset_method(module)
            if reset is not None:
                reset()
            if callable(getattr(module, "reset_running_stats", None)):
                module.reset_running_stats()
    return fresh.eval()


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  temperature: float | torch.Tensor) -> torch.Tensor:
    """``KL(softmax(t / T) || softmax(s / T))`` averaged over the batch, scaled by ``T**2`` (Hinton et al.).

    ``temperature`` is one float for the batch or a tensor of ``N`` per-sample temperatures (each sample's KL
    is then taken at, and scaled by the square of, its own).
    """
    if isinstance(temperature, torch.Tensor):
        temps = temperature.float()[:, None]
        log_p_student = F.log_softmax(student_logits.float() / temps, dim=1)
        log_p_teacher = F.log_softmax(teacher_logits.float() / temps, dim=1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(1)
        return (kl * temps.squeeze(1) ** 2).mean()
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def with_temperatures(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``teacher_logits`` with one more column holding ``temperature``: targets for ``distill(temperature=None)``."""
    return torch.cat([teacher_logits, teacher_logits.new_full((len(teacher_logits), 1), float(temperature))], dim=1)


def _kl_per_sample_temperature(net: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return kl_to_teacher(class_scores(net(x)), target[:, :-1], target[:, -1])


def distill(
    model: nn.Module,
    data: Dataset,
    *,
    temperature: float | None,
    context: UnlearnContext,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str | torch.optim.Optimizer,
    history: rt.History,
    stage: str,
    freeze_norm_stats: bool = False,
    max_steps: int | None = None,
) -> nn.Module:
    """Train ``model`` to match the teacher logits of ``data`` (a Dataset of ``(x, teacher_logits)``).

    ``temperature``: the distillation temperature of every sample, or ``None`` when each target row carries
    its own in a last column (see :func:`with_temperatures`). ``optimizer`` is a name or an optimizer instance
    to continue with; ``freeze_norm_stats`` and ``max_steps``: see :func:`._loops.fit`.
    """
    loss = (_kl_per_sample_temperature if temperature is None
            else lambda net, x, t: kl_to_teacher(class_scores(net(x)), t, temperature))
    return fit(model, data, loss, context=context, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
               history=history, stage=stage, freeze_norm_stats=freeze_norm_stats, max_steps=max_steps)


@dataclass
class BadTeacherConfig:
    """Bad-teacher hyperparameters (defaults from the paper, except the step size and batch).

    The paper's batch of 256 at lr 1e-4 gives ~80 Adam steps per epoch on CIFAR-10 (forget class plus 30% of
    retain); on data sets of a few thousand samples the same setting gives 2-5 steps and leaves the model
    unchanged (measured on digits: forget accuracy 0.99 after the epoch). Batch 32 at lr 1e-3 keeps the one
    epoch of the paper and forgets (digits ``classes:3``: forget accuracy 0.0, retain 0.99).

    Args:
        retain_fraction: fraction of the retain set mixed with the forget set (the paper: 0.3).
        temperature: distillation temperature (the paper: 1).
        epochs: epochs over the combined set (the paper: 1).
        lr: learning rate (the paper: 1e-4 with Adam at batch 256; see above).
        optimizer: one of ``sgd``, ``adam``, ``adamw``.
        batch_size: samples per step (the paper: 256; see above).
    """

    retain_fraction: float = 0.3
    temperature: float = 1.0
    epochs: int = 1
    lr: float = 1e-3
    optimizer: str = "adam"
    batch_size: int = 32

    def __post_init__(self) -> None:
        check_positive(self, "temperature", "epochs", "lr", "batch_size")
        check_fraction(self, "retain_fraction", allow_zero=False)
        check_choice(self, "optimizer", OPTIMIZERS)


@register_method("bad_teacher", BadTeacherConfig)
def bad_teacher(
    model: nn.Module, *, forget: Dataset, retain: Dataset, config: BadTeacherConfig, context: UnlearnContext
) -> tuple[nn.Module, rt.History]:
    """Bad teaching (Chundawat et al., AAAI 2023): KL to the original on retain, to a random network on forget."""
    history = rt.History()
    dev = context.device
    incompetent = randomly_initialised_copy(model, seed=context.seed + 1).to(dev)
    retain_part = random_subset(retain, config.retain_fraction, seed=context.seed)
    # The per-sample teacher flag (forget -> incompetent, retain -> competent) is resolved here, once. The
    # competent teacher is the original: the student before its first step (no frozen copy is needed).
    targets = torch.cat([
        predict_logits(incompetent, forget, device=dev),
        predict_logits(model, retain_part, device=dev),
    ]).cpu()
    history.log(stage="targets", forget=len(forget), retain=len(retain_part))
    model = distill(model, Retargeted(ConcatDataset([forget, retain_part]), targets), temperature=config.temperature,
                    context=context, epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                    optimizer=config.optimizer, history=history, stage="distill")
    return model, history
