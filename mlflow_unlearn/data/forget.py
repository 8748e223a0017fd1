"""Forget specifications (``classes:3,7``, ``ids:<file>``, ``random:0.1[:seed]``) and the forget digest.

(Contract stub: only ``classes:`` so far; the data-layer work extends this module.)
"""

from __future__ import annotations

import hashlib

import numpy as np

from mlflow_unlearn.data.samples import DataSplit, ForgetSplit


def forget_digest(ids: np.ndarray, *, salt: str = "") -> str:
    """SHA-256 hex digest of the sorted sample IDs (optionally salted)."""
    h = hashlib.sha256(salt.encode())
    for i in sorted(str(v) for v in np.asarray(ids).tolist()):
        h.update(i.encode() + b"\n")
    return h.hexdigest()


def resolve_forget(split: DataSplit, spec: str, *, salt: str = "") -> ForgetSplit:
    """Apply forget ``spec`` to ``split.train``: forget / retain / test subsets."""
    kind, _, arg = spec.partition(":")
    if kind == "classes":
        classes = tuple(sorted({int(c) for c in arg.split(",")}))
        mask = np.isin(split.train.y.numpy(), classes)
        forget, retain = split.train.subset(mask), split.train.subset(~mask)
        return ForgetSplit(forget, retain, split.test, "class", spec, forget_digest(forget.ids, salt=salt),
                           len(forget), classes)
    raise ValueError(f"Unknown forget spec {spec!r}")
