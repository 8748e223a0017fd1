"""Membership-inference attacks used to check forgetting, as pure functions on collected model outputs.

Two attacks from the unlearning literature, both fitted with scikit-learn:

* :func:`mia_efficacy` (Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023,
  https://arxiv.org/abs/2304.04934, and Fan et al., "SalUn", ICLR 2024, https://arxiv.org/abs/2310.12508):
  an RBF support-vector classifier on per-sample confidence features learns members (retain samples)
  versus non-members (test samples); the score is the fraction of forget samples it calls non-members.
* :func:`loss_mia` (the NeurIPS 2023 Machine Unlearning challenge starting kit,
  https://github.com/unlearning-challenge/starting-kit): a logistic regression on per-sample losses tells
  forget samples from an equal number of held-out samples; the score is its cross-validated accuracy/AUC.

For both, the ideal value of an unlearned model is the value of a model retrained without the forget set,
not 0 or 100.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from mlflow_unlearn.metrics.functional import ModelOutputs, confidence, entropy, modified_entropy, softmax

MIA_FEATURES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "confidence": confidence,
    "entropy": lambda probs, labels: entropy(probs),
    "modified_entropy": modified_entropy,
}
"""Per-sample features of :func:`mia_efficacy`, each ``(probs, labels) -> N`` tensor."""


class LossMIAResult(NamedTuple):
    """Cross-validated accuracy and ROC AUC (fractions, 0 to 1) of the loss-based attack."""

    accuracy: float
    auc: float


def mia_features(outputs: ModelOutputs | tuple[torch.Tensor, torch.Tensor], features: Sequence[str]) -> np.ndarray:
    """The ``N x len(features)`` attack features of one set of model outputs.

    Raises:
        ValueError: for an unknown feature name; the message lists the known ones.

    >>> mia_features((torch.tensor([[0.0, 0.0]]), torch.tensor([1])), ["confidence"])
    array([[0.5]])
    """
    unknown = [f for f in features if f not in MIA_FEATURES]
    if unknown or not features:
        raise ValueError(
            f"Unknown MIA feature(s) {unknown or list(features)!r}; expected a non-empty list of: "
            f"{', '.join(MIA_FEATURES)}"
        )
    logits, labels = outputs
    probs = softmax(logits)
    return torch.stack([MIA_FEATURES[f](probs, labels) for f in features], dim=1).numpy()


def _subsample(n_total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, size=n, replace=False))


def mia_efficacy(
    retain: ModelOutputs | tuple[torch.Tensor, torch.Tensor],
    test: ModelOutputs | tuple[torch.Tensor, torch.Tensor],
    forget: ModelOutputs | tuple[torch.Tensor, torch.Tensor],
    *,
    features: Sequence[str] = ("confidence",),
    seed: int = 0,
    max_samples: int = 5000,
) -> float:
    """MIA-efficacy: the fraction of forget samples that a membership attack calls non-members (0 to 1).

    The attack is the ``SVC_MIA`` "confidence" predictor of Jia et al. (NeurIPS 2023) and SalUn (ICLR 2024):
    ``sklearn.svm.SVC(C=3, gamma="auto", kernel="rbf")`` fitted on the chosen per-sample ``features`` of
    retain samples (members, label 1) and test samples (non-members, label 0), both subsampled (seeded) to
    the same size, at most ``max_samples`` each so that the fit stays fast on large sets. Higher means the
    forget samples look less like training data; the ideal is the retrained model's value.

    Args:
        retain: the model's ``(logits, labels)`` on the retain set.
        test: the model's ``(logits, labels)`` on held-out data.
        forget: the model's ``(logits, labels)`` on the forget set.
        features: names from :data:`MIA_FEATURES` (``confidence``, ``entropy``, ``modified_entropy``).
        seed: seeds the subsampling.
        max_samples: largest number of members (and of non-members) the attack is fitted on.

    Returns:
        The fraction of forget samples predicted non-member.

    Raises:
        ValueError: for an empty set, an unknown feature or a non-positive ``max_samples``.

    >>> g = torch.Generator().manual_seed(0)
    >>> def outputs(scale):  # confident (members) or hesitant (non-members) predictions of class 0
    ...     logits = torch.zeros(40, 2)
    ...     logits[:, 0] = scale + torch.rand(40, generator=g)
    ...     return logits, torch.zeros(40, dtype=torch.long)
    >>> mia_efficacy(outputs(8.0), outputs(0.0), outputs(0.0))
    1.0
    >>> mia_efficacy(outputs(8.0), outputs(0.0), outputs(8.0))
    0.0
    """
    from sklearn.svm import SVC

    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"Expected argument `max_samples` to be a positive int but got {max_samples!r}")
    for name, outputs in (("retain", retain), ("test", test), ("forget", forget)):
        if outputs[1].shape[0] == 0:
            raise ValueError(f"Expected a non-empty `{name}` set for the membership attack")
    x_member, x_nonmember, x_forget = (mia_features(o, features) for o in (retain, test, forget))
    rng = np.random.default_rng(seed)
    n = min(len(x_member), len(x_nonmember), max_samples)
    x_member = x_member[_subsample(len(x_member), n, rng)]
    x_nonmember = x_nonmember[_subsample(len(x_nonmember), n, rng)]
    attack = SVC(C=3, gamma="auto", kernel="rbf")
    attack.fit(np.concatenate([x_member, x_nonmember]), np.concatenate([np.ones(n), np.zeros(n)]))
    return float(1.0 - attack.predict(x_forget).mean())


def loss_mia(
    forget_losses: torch.Tensor | np.ndarray,
    test_losses: torch.Tensor | np.ndarray,
    *,
    n_splits: int = 10,
    seed: int = 0,
) -> LossMIAResult:
    """Loss-based membership attack of the NeurIPS 2023 unlearning challenge starting kit.

    A ``sklearn.linear_model.LogisticRegression`` on the per-sample loss learns forget samples (label 1)
    versus held-out samples (label 0). The larger of the two sets is subsampled (seeded) to the size of the
    smaller one so that chance is 50%; the score is the mean over stratified ``n_splits``-fold
    cross-validation (fewer folds when a side has fewer samples). Around 0.5 means the forget samples are
    indistinguishable from unseen data by their loss; the ideal is the retrained model's value.

    Args:
        forget_losses: per-sample losses of the forget set (see :func:`per_sample_loss`).
        test_losses: per-sample losses of held-out data.
        n_splits: cross-validation folds (at least 2).
        seed: seeds the subsampling and the fold assignment.

    Returns:
        :class:`LossMIAResult` with the mean held-out accuracy and ROC AUC (fractions).

    Raises:
        ValueError: when a side has fewer than 2 samples, losses are not finite, or ``n_splits`` < 2.

    >>> g = torch.Generator().manual_seed(0)
    >>> member_losses = torch.rand(50, generator=g) * 0.1
    >>> unseen_losses = 1.0 + torch.rand(50, generator=g)
    >>> loss_mia(member_losses, unseen_losses)
    LossMIAResult(accuracy=1.0, auc=1.0)
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_validate

    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 2:
        raise ValueError(f"Expected argument `n_splits` to be an int >= 2 but got {n_splits!r}")
    forget = np.asarray(forget_losses, dtype=np.float64).ravel()
    test = np.asarray(test_losses, dtype=np.float64).ravel()
    n = min(len(forget), len(test))
    if n < 2:
        raise ValueError(
            f"The loss-based attack needs at least 2 forget and 2 held-out samples but got {len(forget)} and "
            f"{len(test)}"
        )
    if not (np.isfinite(forget).all() and np.isfinite(test).all()):
        raise ValueError("Expected finite per-sample losses; the model's outputs contain NaN or infinite values")
    rng = np.random.default_rng(seed)
    forget = forget[_subsample(len(forget), n, rng)]
    test = test[_subsample(len(test), n, rng)]
    x = np.concatenate([test, forget])[:, None]
    y = np.concatenate([np.zeros(n, dtype=int), np.ones(n, dtype=int)])
    folds = StratifiedKFold(n_splits=min(n_splits, n), shuffle=True, random_state=seed)
    scores = cross_validate(LogisticRegression(), x, y, cv=folds, scoring=("accuracy", "roc_auc"))
    return LossMIAResult(float(scores["test_accuracy"].mean()), float(scores["test_roc_auc"].mean()))
