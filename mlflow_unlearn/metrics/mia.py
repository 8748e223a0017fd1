"""Membership-inference attacks used to check forgetting, as pure functions on collected model outputs.

Two attacks from the unlearning literature, both fitted with scikit-learn:

* :func:`mia_efficacy` (Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023,
  https://arxiv.org/abs/2304.04934, and Fan et al., "SalUn", ICLR 2024, https://arxiv.org/abs/2310.12508):
  an RBF support-vector classifier on per-sample confidence features learns members (retain samples)
  versus non-members (test samples); the score is the fraction of forget samples it calls non-members.
* :func:`loss_mia` (the NeurIPS 2023 Machine Unlearning challenge starting kit,
  https://github.com/unlearning-challenge/starting-kit): a logistic regression on per-sample losses tells
  forget samples from an equal number of held-out samples; the score is its cross-validated accuracy/AUC.

And one membership *test*, the statistic the acceptance gate decides on:

* :func:`membership_auc`: the ROC AUC of the per-sample loss as a member score, forget set against held-out
  samples of the same classes (class-matched), with a seeded stratified-bootstrap confidence interval.
  0.5 is chance: the forget samples are indistinguishable from non-members by their loss.

For the attacks, the ideal value of an unlearned model is the value of a model retrained without the forget set,
not 0 or 100.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from mlflow_unlearn.metrics.functional import ModelOutputs, confidence, entropy, modified_entropy, softmax

#: The membership AUC of a forget set that cannot be told from non-members.
CHANCE = 0.5

MIA_FEATURES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "confidence": confidence,
    "entropy": lambda probs, labels: entropy(probs),
    "modified_entropy": modified_entropy,
}
"""Per-sample features of :func:`mia_efficacy`, each ``(probs, labels) -> N`` tensor."""


class MembershipTest(NamedTuple):
    """The class-matched loss membership test of :func:`membership_auc` (AUC and interval as fractions, 0 to 1).

    Args:
        auc: probability that a forget sample has a lower loss than a same-class held-out sample (ties count
            half); 0.5 is chance, above it the forget set looks like training data.
        low: lower bound of the confidence interval (bootstrap, widened to the permutation null's spread).
        high: upper bound of the confidence interval.
        confidence: the interval's confidence level (e.g. 0.95).
        n_forget: forget samples tested (those of a class with held-out samples).
        n_heldout: held-out samples of the forget set's classes.
        p_value: one-sided permutation p-value of "the forget set is more member-like than same-class
            non-members" (NaN when not computed).
    """

    auc: float
    low: float
    high: float
    confidence: float
    n_forget: int
    n_heldout: int
    p_value: float = float("nan")

    @property
    def separates(self) -> bool:
        """Whether the interval lies wholly above chance (0.5): the forget set is measurably member-like.

        >>> clear, unclear = MembershipTest(0.7, 0.6, 0.8, 0.95, 50, 50), MembershipTest(0.55, 0.45, 0.65, 0.95, 9, 9)
        >>> clear.separates, unclear.separates
        (True, False)
        """
        return self.low > 0.5


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


def _matched_weights(forget_labels: np.ndarray, heldout_labels: np.ndarray) -> np.ndarray:
    """Weights of the held-out samples that give them the forget set's class mix (0 outside its classes)."""
    classes, forget_counts = np.unique(forget_labels, return_counts=True)
    heldout_counts = np.array([(heldout_labels == c).sum() for c in classes])
    per_class = np.zeros(int(max(classes.max(initial=0), heldout_labels.max(initial=0))) + 1)
    present = heldout_counts > 0
    per_class[classes[present]] = forget_counts[present] / heldout_counts[present]
    return per_class[heldout_labels]


def _weighted_auc(forget: np.ndarray, heldout: np.ndarray, weights: np.ndarray) -> float:
    """P(forget loss < held-out loss) + P(equal) / 2, held-out samples weighted."""
    order = np.argsort(heldout, kind="stable")
    sorted_losses, cumulative = heldout[order], np.concatenate([[0.0], np.cumsum(weights[order])])
    total = cumulative[-1]
    right = np.searchsorted(sorted_losses, forget, side="right")
    left = np.searchsorted(sorted_losses, forget, side="left")
    above, tied = total - cumulative[right], cumulative[right] - cumulative[left]
    return float(np.mean((above + 0.5 * tied) / total))


def _auc_rows(forget: np.ndarray, heldout: np.ndarray, weights: np.ndarray, chunk: int = 64) -> np.ndarray:
    """:func:`_weighted_auc` of each row of ``forget`` (``B x F``) against the same row of ``heldout`` and
    ``weights`` (``B x H``), all at once: values are integer ranks (ties equal), so that one sort of each row, held-out
    samples placed before forget samples at a tie (then after), counts the weight below (and not above) each forget
    sample. Rows are done ``chunk`` at a time to bound memory."""
    out = np.empty(len(forget))
    n_h = heldout.shape[1]
    for start in range(0, len(forget), chunk):
        f, h, w = forget[start:start + chunk], heldout[start:start + chunk], weights[start:start + chunk]
        total = w.sum(axis=1)
        values = np.concatenate([h, f], axis=1) * 2
        cum_w = np.concatenate([w, np.zeros_like(f, dtype=float)], axis=1)
        counts = []
        for h_tag, f_tag in ((0, 1), (1, 0)):  # held-out first at ties (weight <= f), then after (weight < f)
            keys = values + np.concatenate([np.full(h.shape, h_tag), np.full(f.shape, f_tag)], axis=1)
            order = np.argsort(keys, axis=1, kind="stable")
            below = np.cumsum(np.take_along_axis(cum_w, order, axis=1), axis=1)
            is_forget = order >= n_h
            counts.append(below[is_forget].reshape(f.shape))
        at_most, less = counts
        above, tied = total[:, None] - at_most, at_most - less
        out[start:start + chunk] = ((above + 0.5 * tied) / total[:, None]).mean(axis=1)
    return out


def _replicates(forget: np.ndarray, heldout: np.ndarray, f_labels: np.ndarray, h_labels: np.ndarray,
                weights: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` stratified bootstrap replicates of the AUC, and ``n`` draws of its null distribution.

    Bootstrap: both sets resampled with replacement within each class (class counts, hence the weights, kept).
    Null: within each class, which of the pooled forget and held-out losses count as "forget" is drawn at random,
    i.e. the statistic under exchangeability: exactly its distribution for a model that never saw the forget set,
    when the forget set is a random part of the training split (a retrained model).
    """
    _, ranks = np.unique(np.concatenate([forget, heldout]), return_inverse=True)
    f_rank, h_rank = ranks[:len(forget)], ranks[len(forget):]
    boot_f, boot_h, null_f, null_h, null_w = [], [], [], [], []
    for c in np.unique(f_labels):
        f_idx, h_idx = np.flatnonzero(f_labels == c), np.flatnonzero(h_labels == c)
        boot_f.append(f_idx[rng.integers(0, len(f_idx), size=(n, len(f_idx)))])
        boot_h.append(h_idx[rng.integers(0, len(h_idx), size=(n, len(h_idx)))])
        pool = np.concatenate([f_rank[f_idx], h_rank[h_idx]])
        drawn = pool[np.argsort(rng.random((n, len(pool))), axis=1)]
        null_f.append(drawn[:, :len(f_idx)])
        null_h.append(drawn[:, len(f_idx):])
        null_w.append(np.broadcast_to(weights[h_idx], (n, len(h_idx))))
    bf, bh = np.concatenate(boot_f, axis=1), np.concatenate(boot_h, axis=1)
    bootstrap = _auc_rows(f_rank[bf], h_rank[bh], weights[bh])
    null = _auc_rows(np.concatenate(null_f, axis=1), np.concatenate(null_h, axis=1), np.concatenate(null_w, axis=1))
    return bootstrap, null


def membership_auc(
    forget_losses: torch.Tensor | np.ndarray,
    heldout_losses: torch.Tensor | np.ndarray,
    *,
    forget_labels: torch.Tensor | np.ndarray | None = None,
    heldout_labels: torch.Tensor | np.ndarray | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> MembershipTest:
    """A membership test of the forget set: the loss AUC against same-class non-members, with a bootstrap CI.

    The statistic is the ROC AUC of "lower loss means member" (the Mann-Whitney probability that a forget
    sample has a lower per-sample loss than a held-out sample, ties counting half). With labels, it is
    class-matched: only held-out samples of the forget set's classes are compared, each class weighted to its
    share of the forget set, so the test measures membership and not the class (a forgotten class, or the
    class mix of a sample-wise request). Forget samples of a class without held-out samples are left out.

    The interval is the percentile interval of ``n_bootstrap`` stratified bootstrap replicates (both sets
    resampled with replacement within each class, seeded), widened where needed to the spread of the statistic
    under exchangeability (``n_bootstrap`` within-class permutations of which samples count as the forget set):
    its lower bound is at most ``auc`` minus the distance from 0.5 to the null's upper quantile, its upper bound at
    least ``auc`` plus the distance to the null's lower quantile. A stratified bootstrap alone has no spread in a
    class with one forget sample, so on a small request it lay above chance for a retrained model in most runs;
    with the widening, "the interval lies above chance" implies that the permutation test rejects at
    ``(1 - confidence) / 2``, whatever the set sizes: a model that never saw a randomly chosen forget set is
    flagged at most that often. AUC is scale-free: it does not depend on the loss's units or the model's
    calibration, and its interval shrinks as the sets grow (one forget sample can only lie above chance when
    its loss is below that of nearly every same-class non-member).

    Direction and ideal value: 0.5 is chance; above 0.5 the forget set still looks like training data; below
    0.5 it looks *less* member-like than unseen data (e.g. mislabelled samples that a retrained model gets
    wrong). The ideal is the retrained model's value, which is 0.5 for random samples with correct labels.

    Args:
        forget_losses: per-sample losses of the forget set (see :func:`per_sample_loss`).
        heldout_losses: per-sample losses of non-members (the test set).
        forget_labels: the forget set's labels, to match classes (None: no matching).
        heldout_labels: the held-out samples' labels (required with ``forget_labels``).
        n_bootstrap: bootstrap replicates (at least 100).
        confidence: the interval's level, in (0, 1).
        seed: seeds the bootstrap.

    Returns:
        :class:`MembershipTest` (fractions).

    Raises:
        ValueError: non-finite losses, mismatched lengths, labels on one side only, no held-out sample of the
            forget set's classes, ``n_bootstrap`` < 100 or ``confidence`` outside (0, 1).

    >>> g = torch.Generator().manual_seed(0)
    >>> members, unseen = torch.rand(60, generator=g) * 0.1, 0.05 + torch.rand(60, generator=g)
    >>> test = membership_auc(members, unseen)
    >>> round(test.auc, 3), test.separates
    (0.98, True)
    >>> membership_auc(unseen[:30], unseen[30:]).separates  # two samples of the same distribution
    False
    >>> labels = torch.tensor([0, 1] * 30)  # class 1 is hard for everyone: matched, it is not membership
    >>> loss = torch.where(labels == 1, 2.0, 0.1) + torch.rand(60, generator=g) * 0.01
    >>> membership_auc(loss[:10], loss[10:], forget_labels=labels[:10], heldout_labels=labels[10:]).separates
    False
    """
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 100:
        raise ValueError(f"Expected argument `n_bootstrap` to be an int >= 100 but got {n_bootstrap!r}")
    if not isinstance(confidence, (int, float)) or isinstance(confidence, bool) or not 0 < confidence < 1:
        raise ValueError(f"Expected argument `confidence` to be a number in (0, 1) but got {confidence!r}")
    if (forget_labels is None) != (heldout_labels is None):
        raise ValueError("Expected labels for both the forget and the held-out set, or for neither")
    forget = np.asarray(forget_losses, dtype=np.float64).ravel()
    heldout = np.asarray(heldout_losses, dtype=np.float64).ravel()
    if forget_labels is None:
        f_labels, h_labels = np.zeros(len(forget), dtype=np.int64), np.zeros(len(heldout), dtype=np.int64)
    else:
        f_labels = np.asarray(forget_labels, dtype=np.int64).ravel()
        h_labels = np.asarray(heldout_labels, dtype=np.int64).ravel()
    if len(f_labels) != len(forget) or len(h_labels) != len(heldout):
        raise ValueError(f"Expected one label per loss but got {len(f_labels)} labels for {len(forget)} forget "
                         f"losses and {len(h_labels)} for {len(heldout)} held-out losses")
    if not (np.isfinite(forget).all() and np.isfinite(heldout).all()):
        raise ValueError("Expected finite per-sample losses; the model's outputs contain NaN or infinite values")
    keep_heldout = np.isin(h_labels, f_labels)
    heldout, h_labels = heldout[keep_heldout], h_labels[keep_heldout]
    keep_forget = np.isin(f_labels, h_labels)
    forget, f_labels = forget[keep_forget], f_labels[keep_forget]
    if len(forget) == 0 or len(heldout) == 0:
        raise ValueError("The membership test needs held-out samples of the forget set's classes but the held-out "
                         "set has none; use a test split that holds those classes")
    weights = _matched_weights(f_labels, h_labels)
    auc = _weighted_auc(forget, heldout, weights)
    replicates, null = _replicates(forget, heldout, f_labels, h_labels, weights, n_bootstrap,
                                   np.random.default_rng(seed))
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    # conservative quantiles of a discrete null: above `null_high` lies at most alpha of it
    null_low, null_high = np.quantile(null, alpha, method="lower"), np.quantile(null, 1.0 - alpha, method="higher")
    low, high = max(0.0, min(low, auc - (null_high - CHANCE))), min(1.0, max(high, auc + (CHANCE - null_low)))
    p_value = (1 + int(np.sum(null >= auc - 1e-12))) / (1 + n_bootstrap)
    return MembershipTest(auc, float(low), float(high), float(confidence), int(len(forget)), int(len(heldout)),
                          float(p_value))
