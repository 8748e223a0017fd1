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

:func:`parse_forget_spec` checks the grammar alone (strings only, no file or data is read) and returns a
:class:`ForgetSpec`; :func:`resolve_forget` parses the same way, then applies the spec to a split. Two words
are kept apart: a spec's *form* (:data:`SPEC_FORMS`: ``classes``, ``ids``, ``random``) is how it is written,
the *forgetting kind* (:data:`FORGETTING_KINDS`: ``class``, ``sample``) is what the engine does with it.

Privacy: the only traces of a forget set that this project records are its :func:`forget_digest` and its
size. A :class:`~mlflow_unlearn.data.samples.ForgetSplit` keeps the spec as written (a file path, never IDs)
and its repr shows no IDs.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlflow_unlearn.data._files import id_column, read_table, table_format
from mlflow_unlearn.data.samples import DataSplit, ForgetSplit, ids_digest, seeded_order

#: Forgetting kinds, what the engine does (``ForgetSplit.kind``, a method's ``forget_kind``): forget whole
#: classes, or individual samples.
CLASS_FORGETTING = "class"
SAMPLE_FORGETTING = "sample"
FORGETTING_KINDS = (CLASS_FORGETTING, SAMPLE_FORGETTING)
#: How much of the user's text a grammar error repeats (a spec may be pasted IDs).
_MAX_ECHO = 16


@dataclass(frozen=True)
class ForgetSpec:
    """A forget specification, parsed (by :func:`parse_forget_spec`) but not applied to any data.

    Args:
        text: the spec as written (a file path at most, never IDs).
        form: how it is written, one of :data:`SPEC_FORMS`: ``classes``, ``ids`` or ``random``.
        classes: ``classes:``: the class labels, sorted and unique.
        path: ``ids:``: the file listing the sample IDs.
        fraction: ``random:``: the fraction of the training split, or None when a count was given.
        count: ``random:``: the number of samples, or None when a fraction was given.
        seed: ``random:``: the seed of the subset.
    """

    text: str
    form: str
    classes: tuple[int, ...] = ()
    path: str = ""
    fraction: float | None = None
    count: int | None = None
    seed: int = 0

    @property
    def forgetting_kind(self) -> str:
        """:data:`CLASS_FORGETTING` for a ``classes:`` spec, else :data:`SAMPLE_FORGETTING`."""
        return CLASS_FORGETTING if self.form == "classes" else SAMPLE_FORGETTING

    @property
    def canonical(self) -> str:
        """The spec in one spelling: classes sorted and unique, everything else as written.

        >>> parse_forget_spec("classes:7, 3,7").canonical
        'classes:3,7'
        """
        if self.form == "classes":
            return "classes:" + ",".join(map(str, self.classes))
        return self.text

    def absolute(self) -> ForgetSpec:
        """This spec with a relative ``ids:`` path made absolute (from the current directory), so that a
        lineage that records it can replay it from anywhere; other specs are returned unchanged.

        >>> import os
        >>> parse_forget_spec("ids:forget.txt").absolute().text == "ids:" + os.path.abspath("forget.txt")
        True
        """
        if self.form != "ids" or os.path.isabs(self.path):
            return self
        path = os.path.abspath(self.path)
        return dataclasses.replace(self, text=f"ids:{path}", path=path)


@dataclass(frozen=True)
class _Selection:
    mask: np.ndarray
    kind: str
    classes: tuple[int, ...] = ()


_Parse = Callable[[str, str], ForgetSpec]
_Select = Callable[[DataSplit, ForgetSpec], _Selection]


@dataclass(frozen=True)
class _SpecForm:
    parse: _Parse
    select: _Select
    syntax: str


_SPEC_FORMS: dict[str, _SpecForm] = {}


def _register_spec_form(name: str, syntax: str, parse: _Parse) -> Callable[[_Select], _Select]:
    def decorator(select: _Select) -> _Select:
        _SPEC_FORMS[name] = _SpecForm(parse, select, syntax)
        return select

    return decorator


def _echo(text: Any) -> str:
    """``repr`` of what the user wrote, cut to :data:`_MAX_ECHO` characters."""
    if isinstance(text, str) and len(text) > _MAX_ECHO:
        return repr(text[:_MAX_ECHO]) + "..."
    return repr(text)


def list_forget_specs() -> list[str]:
    """The syntax of every forget-spec kind.

    >>> list_forget_specs()
    ['classes:<c1>,<c2>,...', 'ids:<file.csv|file.parquet|file.txt>', 'random:<fraction|count>[:<seed>]']
    """
    return [_SPEC_FORMS[name].syntax for name in sorted(_SPEC_FORMS)]


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


def parse_forget_spec(text: str) -> ForgetSpec:
    """Parse forget spec ``text`` (see the module docstring) without reading any file or data.

    Checks the grammar only: whether the classes exist, whether the ``ids:`` file exists and lists
    training samples, and whether the forget set is empty are questions for :func:`resolve_forget`.

    Args:
        text: e.g. ``"classes:3,7"``, ``"ids:/srv/forget.csv"``, ``"random:0.1:7"``, ``"random:100"``.

    Returns:
        The :class:`ForgetSpec`.

    Raises:
        ValueError: one line naming the bad part and the accepted forms; it repeats at most
            16 characters of ``text``, and nothing of an ``ids:`` argument that is not a file name.

    >>> parse_forget_spec("classes:7,3")
    ForgetSpec(text='classes:7,3', form='classes', classes=(3, 7), path='', fraction=None, count=None, seed=0)
    >>> spec = parse_forget_spec("random:100:5")
    >>> spec.form, spec.count, spec.fraction, spec.seed, spec.forgetting_kind
    ('random', 100, None, 5, 'sample')
    >>> parse_forget_spec("3,7")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Expected a forget spec like 'classes:3,7' but got '3,7'; accepted forms: ...
    """
    accepted = f"accepted forms: {', '.join(list_forget_specs())}"
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"Expected a forget spec like 'classes:3,7' but got {_echo(text)}; {accepted}")
    form, _, argument = text.partition(":")
    if form not in _SPEC_FORMS:
        raise ValueError(f"Unknown forget spec kind {_echo(form)}; {accepted}")
    return _SPEC_FORMS[form].parse(text, argument)


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
    parsed = parse_forget_spec(spec)
    selection = _SPEC_FORMS[parsed.form].select(split, parsed)
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


def _parse_classes(text: str, argument: str) -> ForgetSpec:
    items = [item.strip() for item in argument.split(",")]
    if not all(re.fullmatch(r"-?\d+", item) for item in items):
        raise ValueError(f"Malformed class list {_echo(argument)} in the forget spec; expected comma-separated ints, "
                         "e.g. classes:3,7")
    return ForgetSpec(text, "classes", classes=tuple(sorted({int(item) for item in items})))


@_register_spec_form("classes", "classes:<c1>,<c2>,...", _parse_classes)
def _classes(split: DataSplit, spec: ForgetSpec) -> _Selection:
    known = split.train.classes_present()
    unknown = [c for c in spec.classes if c not in known]
    if unknown:
        raise ValueError(f"Unknown classes {unknown} in the forget spec; the training set has classes {known}")
    return _Selection(np.isin(split.train.y.numpy(), spec.classes), CLASS_FORGETTING, spec.classes)


def _canonical(ids: np.ndarray) -> np.ndarray:
    """IDs in canonical text form (see :func:`~mlflow_unlearn.data.samples.canonical_id`), vectorised."""
    return ids.astype(str)


def _read_forget_ids(path: str) -> np.ndarray:
    """The IDs listed in a forget request file, in canonical text form."""
    table = read_table(path, table_format(path), what="forget request", required=("id",))
    return _canonical(id_column(table["id"], what=f"forget request {path!r}"))


def _parse_ids(text: str, argument: str) -> ForgetSpec:
    # A file name ends in a suffix of letters; anything else may be IDs pasted into the spec: never repeat it.
    if not re.search(r"\.[A-Za-z][A-Za-z0-9]*$", argument):
        raise ValueError("Expected ids:<file.csv|file.parquet|file.txt>, the path of a file that lists the sample "
                         "IDs, but the argument is not a file name; write the IDs into such a file, never into "
                         "the spec")
    table_format(argument)
    return ForgetSpec(text, "ids", path=argument)


@_register_spec_form("ids", "ids:<file.csv|file.parquet|file.txt>", _parse_ids)
def _ids(split: DataSplit, spec: ForgetSpec) -> _Selection:
    path = spec.path
    requested = _read_forget_ids(path)
    unique = np.unique(requested)
    if len(unique) != len(requested):
        raise ValueError(f"The forget request {path!r} lists {len(requested) - len(unique)} duplicate IDs; "
                         "list each ID once")
    train_ids = _canonical(split.train.ids)
    unknown = requested[~np.isin(requested, train_ids)]
    if len(unknown):
        in_test = int(np.isin(unknown, _canonical(split.test.ids)).sum())
        raise ValueError(
            f"{len(unknown)} of the {len(requested)} IDs in the forget request {path!r} are not in the training "
            f"split of {split.source!r} (seed {split.seed}), e.g. {unknown[:10].tolist()}"
            f"{f'; {in_test} of them are in its test split' if in_test else ''}. "
            f"Use IDs of training samples ({'int' if split.train.ids.dtype.kind == 'i' else 'str'} IDs)"
        )
    return _Selection(np.isin(train_ids, requested), SAMPLE_FORGETTING)


def _parse_random(text: str, argument: str) -> ForgetSpec:
    amount, _, seed_text = argument.partition(":")
    count = fraction = None
    if re.fullmatch(r"\d+", amount):
        count = int(amount)
    else:
        try:
            fraction = float(amount)
        except ValueError:
            fraction = float("nan")
        if not 0 < fraction < 1:
            raise ValueError(f"Expected the amount in random:{argument[:_MAX_ECHO]} to be a fraction in (0, 1) such "
                             f"as 0.1 or a count of samples such as 100 but got {_echo(amount)}")
    if seed_text and not re.fullmatch(r"\d+", seed_text):
        raise ValueError(f"Expected the seed in random:{argument[:_MAX_ECHO]} to be a non-negative int but got "
                         f"{_echo(seed_text)}")
    return ForgetSpec(text, "random", fraction=fraction, count=count, seed=int(seed_text or 0))


@_register_spec_form("random", "random:<fraction|count>[:<seed>]", _parse_random)
def _random(split: DataSplit, spec: ForgetSpec) -> _Selection:
    n_train = len(split.train)
    count = spec.count if spec.count is not None else round(spec.fraction * n_train)
    order = seeded_order(split.train.ids, seed=spec.seed, purpose="random-forget")
    mask = np.zeros(n_train, dtype=bool)
    mask[order[:count]] = True
    return _Selection(mask, SAMPLE_FORGETTING)


#: How a forget spec may be written (``ForgetSpec.form``): the part before the first ``:``.
SPEC_FORMS = tuple(sorted(_SPEC_FORMS))
