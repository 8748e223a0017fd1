"""Curriculum ordering for unlearning: per-sample difficulty, memorization proxy, and staged pacing.

Everything here except :func:`sample_difficulty` is a pure function of tensors or arrays. Scores are
always computed from the *original* model in eval mode on an unshuffled pass (:func:`sample_difficulty`),
so that score ``i`` belongs to sample ``i`` of the dataset whatever loader the caller uses; a shuffled
pass would pair scores with the wrong samples and turn the curriculum into a random order.

Curriculum learning: Bengio et al., "Curriculum Learning", ICML 2009, https://doi.org/10.1145/1553374.1553380;
pacing functions: Hacohen & Weinshall, "On the Power of Curriculum Learning in Training Deep Networks",
ICML 2019, https://arxiv.org/abs/1904.03626; forgetting low-memorization samples first: Zhao et al.,
"What makes unlearning hard and what to do about it" (RUM), NeurIPS 2024, https://arxiv.org/abs/2406.01257.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mlflow_unlearn.methods._loops import labels_of, predict_logits

DIFFICULTY_CRITERIA = ("loss", "confidence")


def difficulty_scores(logits: torch.Tensor, labels: torch.Tensor, *, criterion: str = "loss") -> torch.Tensor:
    """Per-sample difficulty, higher = harder.

    Args:
        logits: ``N x C`` model outputs.
        labels: ``N`` true classes.
        criterion: ``"loss"`` (cross-entropy of the true class) or ``"confidence"`` (``1 - p(true class)``).

    Returns:
        A float tensor of ``N`` scores on the logits' device.

    Raises:
        ValueError: for an unknown criterion or mismatched shapes.

    >>> logits = torch.tensor([[4.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    >>> difficulty_scores(logits, torch.tensor([0, 0, 0])).argsort().tolist()
    [0, 1, 2]
    >>> [round(v, 2) for v in difficulty_scores(logits, torch.tensor([0, 0, 0]), criterion="confidence").tolist()]
    [0.02, 0.5, 0.95]
    """
    if criterion not in DIFFICULTY_CRITERIA:
        raise ValueError(
            f"Unknown difficulty criterion {criterion!r}; expected one of: {', '.join(DIFFICULTY_CRITERIA)}"
        )
    if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"Expected N x C logits and N labels but got {tuple(logits.shape)} and {tuple(labels.shape)}")
    logits, labels = logits.float(), labels.to(logits.device).long()
    if criterion == "loss":
        return F.cross_entropy(logits, labels, reduction="none")
    return 1.0 - logits.softmax(1).gather(1, labels[:, None]).squeeze(1)


def memorization_proxy(original_logits: torch.Tensor, reference_logits: torch.Tensor,
                       labels: torch.Tensor) -> torch.Tensor:
    """Confidence gap ``p_original(y|x) - p_reference(y|x)``: a cheap proxy of how much a sample was memorized.

    Feldman's memorization score is the drop in the probability of the true label when the sample is left
    out of training. With ``reference`` a model that has not memorized the sample (for NITC: the impaired and
    repaired teacher), the confidence gap estimates that drop without retraining (RUM, Zhao et al., 2024,
    use such proxies to order forgetting from low to high memorization).

    >>> orig = torch.tensor([[5.0, 0.0], [5.0, 0.0]])
    >>> ref = torch.tensor([[5.0, 0.0], [0.0, 0.0]])
    >>> [round(v, 2) for v in memorization_proxy(orig, ref, torch.tensor([0, 0])).tolist()]
    [0.0, 0.49]
    """
    labels = labels.to(original_logits.device).long()[:, None]
    p_orig = original_logits.float().softmax(1).gather(1, labels).squeeze(1)
    p_ref = reference_logits.float().softmax(1).gather(1, labels).squeeze(1)
    return p_orig - p_ref


def curriculum_order(scores: torch.Tensor | np.ndarray) -> np.ndarray:
    """Positions sorted by increasing score (easy to hard); ties keep dataset order (stable sort).

    >>> curriculum_order(np.array([0.3, 0.1, 0.3, 0.0])).tolist()
    [3, 1, 0, 2]
    """
    values = scores.detach().float().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    return np.argsort(values, kind="stable")


def pacing_sizes(n: int, num_stages: int) -> list[int]:
    """Linear pacing: stage ``s`` (1-based) uses the ``ceil(s / num_stages * n)`` easiest samples.

    The last stage always covers all ``n`` samples; every stage holds at least one sample when ``n > 0``.

    >>> pacing_sizes(10, 3)
    [4, 7, 10]
    >>> pacing_sizes(2, 3)
    [1, 2, 2]
    """
    if not isinstance(num_stages, int) or num_stages < 1:
        raise ValueError(f"Expected argument `num_stages` to be a positive int but got {num_stages!r}")
    return [min(n, max(1 if n else 0, math.ceil(s * n / num_stages))) for s in range(1, num_stages + 1)]


def staged_subsets(order: np.ndarray, num_stages: int, *, cumulative: bool = True) -> list[np.ndarray]:
    """Curriculum stages over ``order`` (easiest first), sized by :func:`pacing_sizes`.

    Cumulative (the usual pacing): stage ``s`` holds the first ``pacing_sizes[s]`` positions. Otherwise
    stage ``s`` holds only the positions added at ``s``: consecutive slices, each sample in one stage.

    >>> [s.tolist() for s in staged_subsets(np.array([3, 1, 0, 2]), 2)]
    [[3, 1], [3, 1, 0, 2]]
    >>> [s.tolist() for s in staged_subsets(np.array([3, 1, 0, 2]), 2, cumulative=False)]
    [[3, 1], [0, 2]]
    """
    sizes = pacing_sizes(len(order), num_stages)
    starts = [0] * len(sizes) if cumulative else [0, *sizes[:-1]]
    return [np.asarray(order[start:size]) for start, size in zip(starts, sizes, strict=True)]


def sample_difficulty(model: nn.Module, data: Dataset | DataLoader, *, criterion: str = "loss",
                      device: torch.device | str = "cpu", batch_size: int | None = None) -> torch.Tensor:
    """Difficulty of every sample of ``data`` under ``model``, in dataset order, as a CPU tensor.

    Runs ``model`` in eval mode over an *unshuffled* loader of its own. If a ``DataLoader`` is passed, its
    dataset is used and its sampler ignored, so a shuffled loader cannot scramble the pairing of scores
    and samples.

    Args:
        model: the model whose per-sample loss or confidence defines difficulty (the original model).
        data: the samples, a Dataset of ``(x, y)`` or a DataLoader over one.
        criterion: see :func:`difficulty_scores`.
        device: where to run the model.
        batch_size: evaluation batch size (default: the device's inference batch size).
    """
    dataset = data.dataset if isinstance(data, DataLoader) else data
    dev = torch.device(device)
    logits = predict_logits(model, dataset, device=dev, batch_size=batch_size)
    return difficulty_scores(logits, labels_of(dataset).to(dev), criterion=criterion).cpu()
