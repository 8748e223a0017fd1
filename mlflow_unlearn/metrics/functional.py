"""Pure metric functions on model outputs (logits, probabilities, labels, per-sample losses).

Nothing here runs a model: :func:`mlflow_unlearn.metrics.collect_outputs` does that once per split, and
these functions turn the collected tensors into numbers. Probabilities are computed in float64 so that
the confidences of a well-fit model (``1 - 1e-9``) stay distinguishable, and every logarithm is taken
of a clamped probability (``eps``) so that no metric returns ``-inf`` or ``NaN`` when a softmax underflows
to an exact zero.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

EPS = 1e-12
"""Smallest probability a logarithm is taken of."""


class ModelOutputs(NamedTuple):
    """A model's logits (float32, ``N x C``, on CPU) and the true labels (int64, ``N``) of one data set.

    A plain ``(logits, labels)`` tuple works wherever a :class:`ModelOutputs` is expected.

    >>> out = ModelOutputs(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    >>> out.num_samples, out.probabilities().shape
    (1, torch.Size([1, 2]))
    """

    logits: torch.Tensor
    labels: torch.Tensor

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def probabilities(self) -> torch.Tensor:
        """Softmax of the logits in float64."""
        return softmax(self.logits)


def _check_pair(values: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if values.dim() != 2:
        raise ValueError(
            f"Expected `{what}` to be a 2-D tensor (samples x classes) but got shape {tuple(values.shape)}"
        )
    if labels.dim() != 1 or labels.shape[0] != values.shape[0]:
        raise ValueError(
            f"Expected `labels` to be a 1-D tensor with one label per row of `{what}` "
            f"({values.shape[0]}) but got shape {tuple(labels.shape)}"
        )
    if values.shape[0] == 0:
        raise ValueError(f"Expected at least one sample but `{what}` is empty")


def _check_same_shape(p: torch.Tensor, q: torch.Tensor) -> None:
    if p.shape != q.shape or p.dim() != 2:
        raise ValueError(
            f"Expected two 2-D probability tensors of the same shape but got {tuple(p.shape)} and {tuple(q.shape)}"
        )
    if p.shape[0] == 0:
        raise ValueError("Expected at least one sample but the probability tensors are empty")


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities (float64) from logits.

    >>> softmax(torch.tensor([[0.0, 0.0]]))
    tensor([[0.5000, 0.5000]], dtype=torch.float64)
    """
    return torch.softmax(logits.double(), dim=-1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose arg-max logit is the true label (0 to 1, higher is better).

    Raises:
        ValueError: for mismatched shapes or no samples.

    >>> accuracy(torch.tensor([[2.0, 0.1], [0.3, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]))
    0.6666666666666666
    """
    _check_pair(logits, labels, "logits")
    return float((logits.argmax(dim=-1) == labels).double().mean())


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each sample (float64, ``N``), the feature of the loss-based membership attack.

    >>> per_sample_loss(torch.tensor([[0.0, 0.0], [10.0, 0.0]]), torch.tensor([0, 0])).round(decimals=4)
    tensor([0.6931, 0.0000], dtype=torch.float64)
    """
    _check_pair(logits, labels, "logits")
    return F.cross_entropy(logits.double(), labels, reduction="none")


def membership_score(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` of the other classes' logits minus the true class's (float64, ``N``): the per-sample loss on a
    scale that does not saturate.

    It is ``log((1 - p) / p)`` of the true class's probability ``p`` (LiRA's logit-scaled confidence, negated), so
    it orders samples exactly as the cross-entropy ``log(1 + exp(score))`` does; but where a model is so sure that
    the cross-entropy rounds to 0 (a margin above about 37 in float64), the score still tells a memorised training
    sample from a confidently classified unseen one. Rank statistics (the membership AUC) use it.

    >>> membership_score(torch.tensor([[40.0, 0.0], [60.0, 0.0]]), torch.tensor([0, 0]))
    tensor([-40., -60.], dtype=torch.float64)
    >>> per_sample_loss(torch.tensor([[40.0, 0.0], [60.0, 0.0]]), torch.tensor([0, 0])).abs().tolist()  # both 0
    [0.0, 0.0]
    """
    _check_pair(logits, labels, "logits")
    z = logits.double()
    true = z.gather(1, labels.long().view(-1, 1)).squeeze(1)
    others = z.scatter(1, labels.long().view(-1, 1), float("-inf"))
    return torch.logsumexp(others, dim=1) - true


def confidence(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The probability given to the true class, per sample.

    >>> confidence(torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 0]))
    tensor([0.9000, 0.4000])
    """
    _check_pair(probs, labels, "probs")
    return probs.gather(1, labels[:, None]).squeeze(1)


def entropy(probs: torch.Tensor, *, eps: float = EPS) -> torch.Tensor:
    """Shannon entropy (nats) of each row, with ``0 log 0 = 0``.

    >>> entropy(torch.tensor([[0.5, 0.5], [1.0, 0.0]])).round(decimals=4)
    tensor([0.6931, 0.0000])
    """
    return 0.0 - (probs * probs.clamp_min(eps).log()).sum(dim=-1)  # 0.0 - x: no negative zeros


def modified_entropy(probs: torch.Tensor, labels: torch.Tensor, *, eps: float = EPS) -> torch.Tensor:
    """Song & Mittal's modified entropy, low for confident correct predictions, high for confident wrong ones.

    ``-(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)`` (Song & Mittal, "Systematic Evaluation of Privacy
    Risks of Machine Learning Models", USENIX Security 2021, https://arxiv.org/abs/2003.10595).

    >>> modified_entropy(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([0, 0])).round(decimals=4)
    tensor([0.0000, 0.6931])
    """
    _check_pair(probs, labels, "probs")
    true_class = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, labels[:, None], True)
    weight = torch.where(true_class, 1 - probs, probs)
    log_term = torch.where(true_class, probs, 1 - probs).clamp_min(eps).log()
    return 0.0 - (weight * log_term).sum(dim=-1)


def js_divergence_per_sample(p: torch.Tensor, q: torch.Tensor, *, eps: float = EPS) -> torch.Tensor:
    """Jensen-Shannon divergence (base 2, so within [0, 1]) between the rows of ``p`` and ``q``.

    ``JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2``. A zero probability contributes
    nothing (``0 log 0 = 0``); logarithms are taken of probabilities clamped to ``eps``, so the result is
    always finite.

    >>> p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    >>> js_divergence_per_sample(p, torch.tensor([[0.0, 1.0], [0.5, 0.5]]))
    tensor([1., 0.], dtype=torch.float64)
    """
    _check_same_shape(p, q)
    p, q = p.double(), q.double()
    m = (p + q) / 2
    log_m = m.clamp_min(eps).log2()
    kl_pm = (p * (p.clamp_min(eps).log2() - log_m)).sum(dim=-1)
    kl_qm = (q * (q.clamp_min(eps).log2() - log_m)).sum(dim=-1)
    return ((kl_pm + kl_qm) / 2).clamp(0.0, 1.0)


def js_divergence(p: torch.Tensor, q: torch.Tensor, *, eps: float = EPS) -> float:
    """Mean per-sample Jensen-Shannon divergence (base 2, 0 to 1) between two models' probabilities.

    0 means identical predictions; lower is closer. See :func:`js_divergence_per_sample`.

    >>> js_divergence(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([[0.0, 1.0], [0.5, 0.5]]))
    0.5
    """
    return float(js_divergence_per_sample(p, q, eps=eps).mean())


def activation_distance(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean L2 distance between two models' probability vectors, per sample (0 to sqrt(2), lower is closer).

    As in Chundawat et al., "Can Bad Teaching Induce Forgetting?" (AAAI 2023, https://arxiv.org/abs/2205.08096).

    >>> activation_distance(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([[0.0, 1.0], [0.5, 0.5]]))
    0.7071067811865476
    """
    _check_same_shape(p, q)
    return float((p.double() - q.double()).norm(dim=-1).mean())


def zrf_score(probs: torch.Tensor, incompetent_probs: torch.Tensor, *, eps: float = EPS) -> float:
    """Zero Retrain Forgetting score: ``1 - mean_i JS(model(x_i), incompetent(x_i))`` over a set (0 to 1).

    From Chundawat et al., "Can Bad Teaching Induce Forgetting?" (AAAI 2023,
    https://arxiv.org/abs/2205.08096). 1 means the model predicts like a randomly initialised (incompetent)
    model on the set; its ideal on the forget set is the retrained model's value. Unlike the published code,
    the divergence is computed per sample with clamped logarithms (base 2), so the score stays finite and
    within [0, 1] when probabilities are exactly zero.

    >>> zrf_score(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([[0.0, 1.0], [0.5, 0.5]]))
    0.5
    """
    return 1.0 - js_divergence(probs, incompetent_probs, eps=eps)
