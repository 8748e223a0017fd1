"""Forget specifications and the forget digest.

A forget specification names the training samples a model must forget, as ``KIND:ARGUMENT``:

=============================  =======================================================================================
``classes:3,7``                class-wise: every training sample whose label is listed (comma-separated ints).
``ids:<file>``                 sample-wise, the GDPR case: the sample IDs listed in ``<file>``, a ``.csv`` or
                               ``.parquet``/``.pq`` table with an ``id`` column, or a ``.txt`` file with one ID per
                               line (surrounding whitespace and blank lines ignored). An ID matches a sample when
                               their canonical text forms are equal (``7`` and ``"7"`` match; ``"007"`` does not
                               match ``7``). Every ID must be in the training split, and listed once.
``random:<amount>[:<seed>]``   sample-wise, for benchmarks: a seeded random subset of the training split. ``amount``
                               with a decimal point is a fraction in (0, 1) (``random:0.1``); a plain integer is a
                               count (``random:100``). ``seed`` is a non-negative int, default 0.
=============================  =======================================================================================

Privacy: the only traces of a forget set that this project records are its :func:`forget_digest` and its
size. A :class:`~mlflow_unlearn.data.samples.ForgetSplit` keeps the spec as written (a file path, never IDs)
and its repr shows no IDs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlflow_unlearn.data._files import id_column, read_table, table_format
from mlflow_unlearn.data.samples import DataSplit, ForgetSplit, ids_digest, seeded_order


@dataclass(frozen=True)
class _Selection:
    mask: np.ndarray
    kind: str
    classes: tuple[int, ...] = ()


_Select = Callable[[DataSplit, str], _Selection]


@dataclass(frozen=True)
class _SpecKind:
    select: _Select
    syntax: str


_SPEC_KINDS: dict[str, _SpecKind] = {}


def _register_spec_kind(name: str, syntax: str) -> Callable[[_Select], _Select]:
    def decorator(select: _Select) -> _Select:
        _SPEC_KINDS[name] = _SpecKind(select, syntax)
        return select

    return decorator


def list_forget_specs() -> list[str]:
    """The syntax of every forget-spec kind.

    >>> list_forget_specs()
    ['classes:<c1>,<c2>,...', 'ids:<file.csv|file.parquet|file.txt>', 'random:<fraction|count>[:<seed>]']
    """
    return [_SPEC_KINDS[name].syntax for name in sorted(_SPEC_KINDS)]


def forget_digest(ids: Any, *, salt: str = "") -> str:
    """SHA-256 hex digest of the forget IDs: stable, order-independent, changed by ``salt``.

    The one form in which a forget set may be recorded (with its count). The IDs are hashed in canonical
    text form, sorted; see :func:`~mlflow_unlearn.data.samples.ids_digest` for the exact encoding.

    Args:
        ids: the forget sample IDs (ints or strings).
        salt: optional secret, so that the digest cannot be checked against guessed ID lists.

    Returns:
        64 hex characters.

    Raises:
        ValueError: when ``salt`` is not a string.

    >>> forget_digest([3, 1]) == forget_digest([1, 3]) != forget_digest([1, 3], salt="s")
    True
    """
    if not isinstance(salt, str):
        raise ValueError(f"Expected argument `salt` to be a string but got {type(salt).__name__}")
    return ids_digest(ids, salt=salt)


def resolve_forget(split: DataSplit, spec: str, *, salt: str = "") -> ForgetSplit:
    """Apply forget ``spec`` to ``split.train``: the forget, retain and (untouched) test subsets.

    Args:
        split: the train/test split the model was trained on.
        spec: a forget specification (see the module docstring), e.g. ``"classes:3,7"``.
        salt: mixed into the digest (see :func:`forget_digest`).

    Returns:
        A :class:`ForgetSplit`: ``forget`` and ``retain`` disjoint and together the whole training split,
        ``kind`` ``"class"`` (with ``forget_classes``) or ``"sample"``, the digest and count of the forget IDs.

    Raises:
        ValueError: for an unknown kind (the message lists the accepted ones), a malformed argument, unknown
            classes or IDs, duplicate IDs, an unreadable file, or a forget set that is empty or the whole
            training split.

    >>> from mlflow_unlearn.data import load_data
    >>> split = load_data("digits")
    >>> fs = resolve_forget(split, "classes:3")
    >>> fs.kind, fs.forget_classes, fs.count == len(fs.forget), len(fs.forget) + len(fs.retain) == len(split.train)
    ('class', (3,), True, True)
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"Expected a forget spec like 'classes:3,7' but got {spec!r}; "
                         f"accepted forms: {', '.join(list_forget_specs())}")
    kind, _, argument = spec.partition(":")
    if kind not in _SPEC_KINDS:
        raise ValueError(f"Unknown forget spec kind {kind!r}; accepted forms: {', '.join(list_forget_specs())}")
    selection = _SPEC_KINDS[kind].select(split, argument)
    count = int(selection.mask.sum())
    if count == 0:
        raise ValueError(f"The forget spec {spec!r} selects no training samples (empty forget set); "
                         "name at least one training sample")
    if count == len(split.train):
        raise ValueError(f"The forget spec {spec!r} selects the whole training set ({count} samples); nothing would "
                         "be left to retain. Name a proper subset")
    forget, retain = split.train.subset(selection.mask), split.train.subset(~selection.mask)
    return ForgetSplit(forget, retain, split.test, selection.kind, spec, forget_digest(forget.ids, salt=salt), count,
                       selection.classes)


@_register_spec_kind("classes", "classes:<c1>,<c2>,...")
def _classes(split: DataSplit, argument: str) -> _Selection:
    items = [item.strip() for item in argument.split(",")]
    if not all(re.fullmatch(r"-?\d+", item) for item in items):
        raise ValueError(f"Malformed class list {argument!r} in the forget spec; expected comma-separated ints, "
                         "e.g. classes:3,7")
    classes = tuple(sorted({int(item) for item in items}))
    known = split.train.classes_present()
    unknown = [c for c in classes if c not in known]
    if unknown:
        raise ValueError(f"Unknown classes {unknown} in the forget spec; the training set has classes {known}")
    return _Selection(np.isin(split.train.y.numpy(), classes), "class", classes)


def _canonical(ids: np.ndarray) -> np.ndarray:
    """IDs in canonical text form (see :func:`~mlflow_unlearn.data.samples.canonical_id`), vectorised."""
    return ids.astype(str)


def _read_forget_ids(path: str) -> np.ndarray:
    """The IDs listed in a forget request file, in canonical text form."""
    table = read_table(path, table_format(path), what="forget request", required=("id",))
    return _canonical(id_column(table["id"], what=f"forget request {path!r}"))


@_register_spec_kind("ids", "ids:<file.csv|file.parquet|file.txt>")
def _ids(split: DataSplit, argument: str) -> _Selection:
    requested = _read_forget_ids(argument)
    unique = np.unique(requested)
    if len(unique) != len(requested):
        raise ValueError(f"The forget request {argument!r} lists {len(requested) - len(unique)} duplicate IDs; "
                         "list each ID once")
    train_ids = _canonical(split.train.ids)
    unknown = requested[~np.isin(requested, train_ids)]
    if len(unknown):
        in_test = int(np.isin(unknown, _canonical(split.test.ids)).sum())
        raise ValueError(
            f"{len(unknown)} of the {len(requested)} IDs in the forget request {argument!r} are not in the training "
            f"split of {split.source!r} (seed {split.seed}), e.g. {unknown[:10].tolist()}"
            f"{f'; {in_test} of them are in its test split' if in_test else ''}. "
            f"Use IDs of training samples ({'int' if split.train.ids.dtype.kind == 'i' else 'str'} IDs)"
        )
    return _Selection(np.isin(train_ids, requested), "sample")


@_register_spec_kind("random", "random:<fraction|count>[:<seed>]")
def _random(split: DataSplit, argument: str) -> _Selection:
    amount, _, seed_text = argument.partition(":")
    n_train = len(split.train)
    if re.fullmatch(r"\d+", amount):
        count = int(amount)
    else:
        try:
            fraction = float(amount)
        except ValueError:
            fraction = float("nan")
        if not 0 < fraction < 1:
            raise ValueError(f"Expected the amount in random:{argument} to be a fraction in (0, 1) such as 0.1 or a "
                             f"count of samples such as 100 but got {amount!r}")
        count = round(fraction * n_train)
    if seed_text and not re.fullmatch(r"\d+", seed_text):
        raise ValueError(f"Expected the seed in random:{argument} to be a non-negative int but got {seed_text!r}")
    order = seeded_order(split.train.ids, seed=int(seed_text or 0), purpose="random-forget")
    mask = np.zeros(n_train, dtype=bool)
    mask[order[:count]] = True
    return _Selection(mask, "sample")

