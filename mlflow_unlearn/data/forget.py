"""Forget specifications and the forget digest.

A forget specification names the training samples a model must forget, as ``KIND:ARGUMENT``:

=============================  =======================================================================================
``classes:3,7``                class-wise: every training sample whose label is listed (comma-separated ints).
``ids:<file>``                 sample-wise, the GDPR case: the sample IDs listed in ``<file>``, a ``.csv`` or
                               ``.parquet``/``.pq`` table with an ``id`` column, or a ``.txt`` file with one ID per
                               line (surrounding whitespace and blank lines ignored). An ID matches a sample when
                               their canonical text forms are equal (``7`` and ``"7"`` match; ``"007"`` does not
                               match ``7``). Every ID must be in the training split, and listed once.
``ids:keyed-<hex>``             the record of an ``ids:`` request (a keyed digest of its spec, see
                               :meth:`ForgetSpec.keyed_record`): what a lineage, a run and a report hold instead of
                               the file's path. It names no file, so it is never applied to data: an earlier
                               ``ids:`` step is replayed from the tombstones its run stored.
``random:<amount>[:<seed>]``   sample-wise, for benchmarks: a seeded random subset of the training split. ``amount``
                               with a decimal point is a fraction in (0, 1) (``random:0.1``); a plain integer is a
                               count (``random:100``). ``seed`` is a non-negative int, default 0.
=============================  =======================================================================================

:func:`parse_forget_spec` checks the grammar alone (strings only, no file or data is read) and returns a
:class:`ForgetSpec`; :func:`resolve_forget` parses the same way, then applies the spec to a split. Two words
are kept apart: a spec's *form* (:data:`SPEC_FORMS`: ``classes``, ``ids``, ``random``) is how it is written,
the *forgetting kind* (:data:`FORGETTING_KINDS`: ``class``, ``sample``) is what the engine does with it.

Privacy: the only traces of a forget set that this project records are its :func:`forget_digest` and its
size; for an ``ids:`` set, and for every later set of a lineage that holds one, the digest is keyed (HMAC-SHA256
with a secret ``key``), so that nobody without the key can test guessed IDs against it, and :func:`id_digests`
gives the keyed per-ID digests ("tombstones") with which :func:`forget_by_digests` selects the same samples again
without the request file. Error messages give counts and keyed digests, never IDs. A
:class:`~mlflow_unlearn.data.samples.ForgetSplit` keeps the spec as written (a file path, never IDs) and its repr
shows no IDs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlflow_unlearn.data._files import id_column, read_table, table_format
from mlflow_unlearn.registries import Registry

if TYPE_CHECKING:  # samples imports torch; the grammar (parse_forget_spec) must load without it
    from mlflow_unlearn.data.samples import DataSplit, ForgetSplit

#: Forgetting kinds, what the engine does (``ForgetSplit.kind``, a method's ``forget_kind``): forget whole
#: classes, or individual samples.
CLASS_FORGETTING = "class"
SAMPLE_FORGETTING = "sample"
FORGETTING_KINDS = (CLASS_FORGETTING, SAMPLE_FORGETTING)
#: Why a grammar error does not repeat the user's text.
_NOT_REPEATED = "not repeated: it may be sample IDs"
#: The argument of an ``ids:`` record: ``keyed-`` and the keyed digest of the request's spec.
_KEYED_PREFIX = "keyed-"
_KEYED = re.compile(r"[0-9a-f]{1,64}")


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
        keyed: ``ids:keyed-<hex>``: the keyed digest of the spec of an ``ids:`` request (its record; no path).
    """

    text: str
    form: str
    classes: tuple[int, ...] = ()
    path: str = ""
    fraction: float | None = None
    count: int | None = None
    seed: int = 0
    keyed: str = ""
    key: bytes | None = dataclasses.field(default=None, repr=False, compare=False)
    forgotten: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def forgetting_kind(self) -> str:
        """:data:`CLASS_FORGETTING` for a ``classes:`` spec, else :data:`SAMPLE_FORGETTING`."""
        return CLASS_FORGETTING if self.form == "classes" else SAMPLE_FORGETTING

    @property
    def by_ids(self) -> bool:
        """Whether the spec names sample IDs (an ``ids:`` file, or the keyed record of one).

        >>> parse_forget_spec("ids:forget.txt").by_ids, parse_forget_spec("ids:keyed-0a1b").by_ids
        (True, True)
        """
        return self.form == "ids"

    @classmethod
    def keyed_record(cls, hexdigest: str) -> ForgetSpec:
        """The record of an ``ids:`` request: ``ids:keyed-<hexdigest>`` (made by the digest key's holder).

        >>> ForgetSpec.keyed_record("0a1b").text
        'ids:keyed-0a1b'
        """
        if not _KEYED.fullmatch(hexdigest):
            raise ValueError("Expected a keyed spec digest of lower-case hex digits")
        return cls(f"ids:{_KEYED_PREFIX}{hexdigest}", "ids", keyed=hexdigest)

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
        if self.form != "ids" or self.keyed or os.path.isabs(self.path):
            return self
        path = os.path.abspath(self.path)
        return dataclasses.replace(self, text=f"ids:{path}", path=path)


@dataclass(frozen=True)
class _Selection:
    mask: np.ndarray
    kind: str
    classes: tuple[int, ...] = ()


_Parse = Callable[[str, str], ForgetSpec]
_Select = Callable[["DataSplit", ForgetSpec], _Selection]


@dataclass(frozen=True)
class _SpecForm:
    parse: _Parse
    select: _Select
    syntax: str


SPEC_FORM_REGISTRY: Registry[_SpecForm] = Registry("forget spec form")
"""How each form of forget spec (:data:`SPEC_FORMS`) is parsed and selects its samples."""


def _register_spec_form(name: str, syntax: str, parse: _Parse) -> Callable[[_Select], _Select]:
    return SPEC_FORM_REGISTRY.decorator(name, lambda select: _SpecForm(parse, select, syntax))


def _shape(text: Any) -> str:
    """What the user wrote, described without repeating it (a spec may be pasted IDs)."""
    if not isinstance(text, str):
        return f"a {type(text).__name__}"
    return f"{len(text)} characters, {_NOT_REPEATED}" if text else "an empty text"


def list_forget_specs() -> list[str]:
    """The syntax of every forget-spec kind.

    >>> list_forget_specs()
    ['classes:<c1>,<c2>,...', 'ids:<file.csv|file.parquet|file.txt>', 'random:<fraction|count>[:<seed>]']
    """
    return [form.syntax for _, form in SPEC_FORM_REGISTRY.items()]


def forget_digest(ids: Any, *, salt: str = "", key: bytes | None = None) -> str:
    """SHA-256 (HMAC-SHA256 with ``key``) hex digest of the forget IDs: stable, order-independent.

    The one form in which a forget set may be recorded (with its count). The IDs are hashed in canonical
    text form, sorted; see :func:`~mlflow_unlearn.data.samples.ids_digest` for the exact encoding.

    Args:
        ids: the forget sample IDs (ints or strings).
        salt: optional string mixed in (it is public wherever the digest is: it protects nothing).
        key: secret key; with it the digest is an HMAC that cannot be checked against guessed ID lists.

    Returns:
        64 hex characters.

    Raises:
        ValueError: when ``salt`` is not a string or ``key`` not non-empty bytes.

    >>> forget_digest([3, 1]) == forget_digest([1, 3]) != forget_digest([1, 3], key=b"secret")
    True
    """
    if not isinstance(salt, str):
        raise ValueError(f"Expected argument `salt` to be a string but got {type(salt).__name__}")
    _check_key(key)
    from mlflow_unlearn.data.samples import ids_digest

    return ids_digest(ids, salt=salt, key=key)


def _check_key(key: Any) -> None:
    if key is not None and (not isinstance(key, bytes) or not key):
        raise ValueError(f"Expected argument `key` to be non-empty bytes or None but got {type(key).__name__}")


def id_digests(ids: Any, *, key: bytes) -> np.ndarray:
    """The keyed digest of each ID (HMAC-SHA256 of its canonical text form): a forget step's tombstones.

    Whoever holds ``key`` can select the same samples again (:func:`forget_by_digests`); without it, the
    digests reveal nothing about the IDs.

    Args:
        ids: sample IDs (ints or strings).
        key: the secret key (non-empty bytes).

    Returns:
        An array of 64-hex-character strings, one per ID, in the order of ``ids``.

    Raises:
        ValueError: when ``key`` is missing or not bytes.

    >>> d = id_digests([7, "7", 8], key=b"k")
    >>> d[0] == d[1] != d[2], len(d[0])
    (True, 64)
    """
    if key is None:
        raise ValueError("Expected argument `key` to be non-empty bytes but got None")
    _check_key(key)
    values = np.asarray(ids).reshape(-1).tolist()
    return np.array([hmac.new(key, b"mlflow-unlearn/sample-id/v1\0" + str(v).encode(), hashlib.sha256).hexdigest()
                     for v in _canonical(np.asarray(values)).tolist()], dtype=object)


def parse_forget_spec(text: str) -> ForgetSpec:
    """Parse forget spec ``text`` (see the module docstring) without reading any file or data.

    Checks the grammar only: whether the classes exist, whether the ``ids:`` file exists and lists
    training samples, and whether the forget set is empty are questions for :func:`resolve_forget`.

    Args:
        text: e.g. ``"classes:3,7"``, ``"ids:/srv/forget.csv"``, ``"random:0.1:7"``, ``"random:100"``.

    Returns:
        The :class:`ForgetSpec`.

    Raises:
        ValueError: one line naming the bad part and the accepted forms; it repeats nothing of ``text`` but a
            number that parsed (a bad fraction), since a malformed spec may be sample IDs.

    >>> parse_forget_spec("classes:7,3")
    ForgetSpec(text='classes:7,3', form='classes', classes=(3, 7), path='', fraction=None, count=None, seed=0, keyed='')
    >>> spec = parse_forget_spec("random:100:5")
    >>> spec.form, spec.count, spec.fraction, spec.seed, spec.forgetting_kind
    ('random', 100, None, 5, 'sample')
    >>> parse_forget_spec("3,7")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Expected a forget spec like 'classes:3,7' but got text without a '<kind>:' prefix (3 characters, ...
    """
    accepted = f"accepted forms: {', '.join(list_forget_specs())}"
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"Expected a forget spec like 'classes:3,7' but got text without a '<kind>:' prefix "
                         f"({_shape(text)}); {accepted}")
    form, _, argument = text.partition(":")
    if form not in SPEC_FORM_REGISTRY:
        raise ValueError(f"Unknown forget spec kind before ':' ({_shape(form)}); {accepted}")
    return SPEC_FORM_REGISTRY.get(form).parse(text, argument)


def resolve_forget(split: DataSplit, spec: ForgetSpec | str, *, salt: str = "", key: bytes | None = None,
                   forgotten: Any = None) -> ForgetSplit:
    """Apply forget ``spec`` to ``split.train``: the forget, retain and (untouched) test subsets.

    Args:
        split: the train/test split the model was trained on.
        spec: a forget specification (see the module docstring), e.g. ``"classes:3,7"``, or one already parsed by
            :func:`parse_forget_spec` (it is not parsed again).
        salt: mixed into the digest (see :func:`forget_digest`).
        key: secret key of the digest (HMAC-SHA256), and of the digest of unknown IDs in an error. Required for an
            ``ids:`` set; given for a ``classes:`` or ``random:`` set, whose spec names the set anyway, only when the
            model's lineage holds an ``ids:`` step (the set then lacks the IDs forgotten before, which a plain
            digest would let anyone find by trying each candidate).
        forgotten: the IDs that earlier forget steps of the model's lineage removed from ``split.train``: an
            ``ids:`` request naming one of them is told so (by count), instead of "not in the training split".

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
    _check_key(key)
    parsed = spec if isinstance(spec, ForgetSpec) else parse_forget_spec(spec)
    earlier = np.asarray([] if forgotten is None else forgotten).reshape(-1)
    select = SPEC_FORM_REGISTRY.get(parsed.form).select
    selection = select(split, dataclasses.replace(parsed, key=key, forgotten=earlier))
    return _forget_split(split, selection, parsed.text, by_ids=parsed.by_ids, salt=salt, key=key)


def forget_by_digests(split: DataSplit, digests: Any, *, key: bytes, spec: ForgetSpec) -> ForgetSplit:
    """The forget split of the training samples whose :func:`id_digests` are in ``digests`` (a replay from
    tombstones: no ID file needed).

    Args:
        split: the train/test split.
        digests: keyed per-ID digests made with the same ``key``.
        key: the secret key.
        spec: the spec to record for this forget split (its keyed record, ``ids:keyed-<hex>``, never a path).

    Returns:
        A :class:`ForgetSplit` of kind ``"sample"`` with the keyed digest of the selected IDs.

    Raises:
        ValueError: when some digests match no training sample (another key, or other data), or the set
            is empty or the whole training split.
    """
    wanted = np.unique(np.asarray(list(digests), dtype=object).astype(str))
    train = id_digests(split.train.ids, key=key).astype(str)
    mask = np.isin(train, wanted)
    missing = len(wanted) - len(np.unique(train[mask]))
    if missing:
        raise ValueError(f"{missing} of the {len(wanted)} recorded ID digests match no training sample of "
                         f"{split.source!r}: the key or the data differ from those of the forget step")
    return _forget_split(split, _Selection(mask, SAMPLE_FORGETTING), spec.text, by_ids=True, key=key)


def _forget_split(split: DataSplit, selection: _Selection, spec: str, *, by_ids: bool, salt: str = "",
                  key: bytes | None = None) -> ForgetSplit:
    count = int(selection.mask.sum())
    what = "The forget request file" if by_ids else f"The forget spec {spec!r}"
    if count == 0:
        raise ValueError(f"{what} selects no training samples (empty forget set); name at least one training sample")
    if count == len(split.train):
        raise ValueError(f"{what} selects the whole training set ({count} samples); nothing would be left to "
                         "retain. Name a proper subset")
    forget, retain = split.train.subset(selection.mask), split.train.subset(~selection.mask)
    from mlflow_unlearn.data.samples import ForgetSplit

    return ForgetSplit(forget, retain, split.test, selection.kind, spec, forget_digest(forget.ids, salt=salt, key=key),
                       count, selection.classes)


def _parse_classes(text: str, argument: str) -> ForgetSpec:
    items = [item.strip() for item in argument.split(",")]
    bad = sum(not re.fullmatch(r"-?\d+", item) for item in items)
    if bad:
        raise ValueError(f"Malformed class list in the forget spec: {bad} of its {len(items)} comma-separated items "
                         f"are not ints ({_NOT_REPEATED}); expected comma-separated ints, e.g. classes:3,7")
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
    what = "forget request"
    table = read_table(path, table_format(path, what=what, show_path=False), what=what, required=("id",),
                       show_path=False)
    return _canonical(id_column(table["id"], what="forget request file"))


def _parse_ids(text: str, argument: str) -> ForgetSpec:
    if argument.startswith(_KEYED_PREFIX) and _KEYED.fullmatch(argument.removeprefix(_KEYED_PREFIX)):
        return ForgetSpec.keyed_record(argument.removeprefix(_KEYED_PREFIX))
    # A file name ends in a suffix of letters; anything else may be IDs pasted into the spec: never repeat it.
    if not re.search(r"\.[A-Za-z][A-Za-z0-9]*$", argument):
        raise ValueError("Expected ids:<file.csv|file.parquet|file.txt>, the path of a file that lists the sample "
                         "IDs, but the argument is not a file name; write the IDs into such a file, never into "
                         "the spec")
    table_format(argument, what="forget request", show_path=False)
    return ForgetSpec(text, "ids", path=argument)


@_register_spec_form("ids", "ids:<file.csv|file.parquet|file.txt>", _parse_ids)
def _ids(split: DataSplit, spec: ForgetSpec) -> _Selection:
    if spec.keyed:
        raise ValueError("A forget spec ids:keyed-<digest> is the record of an earlier ids: request, not a request: "
                         "it names no file. Give ids:<file> (the holder of the digest key replays a recorded step "
                         "from its tombstones)")
    path = spec.path
    requested = _read_forget_ids(path)
    unique = np.unique(requested)
    if len(unique) != len(requested):
        raise ValueError(f"The forget request file lists {len(requested) - len(unique)} duplicate IDs; "
                         "list each ID once")
    train_ids = _canonical(split.train.ids)
    unknown = requested[~np.isin(requested, train_ids)]
    earlier = np.isin(unknown, _canonical(np.asarray(spec.forgotten))) if spec.forgotten is not None and len(
        spec.forgotten) else np.zeros(len(unknown), dtype=bool)
    if earlier.any():
        raise ValueError(f"{int(earlier.sum())} of the {len(requested)} IDs in the forget request file were already "
                         "forgotten by an earlier forget step of this model's lineage; list only IDs it still holds")
    if len(unknown):
        in_test = int(np.isin(unknown, _canonical(split.test.ids)).sum())
        in_val = int(np.isin(unknown, _canonical(split.val.ids)).sum()) if split.val is not None else 0
        named = (f" (keyed digest of the unknown IDs {forget_digest(unknown, key=spec.key)[:16]}, which the key holder "
                 "can check with mlflow_unlearn.data.forget_digest)") if spec.key else ""
        raise ValueError(
            f"{len(unknown)} of the {len(requested)} IDs in the forget request file are not in the training "
            f"split of {split.source!r} (seed {split.seed}){named}"
            f"{f'; {in_test} of them are in its test split' if in_test else ''}"
            f"{f'; {in_val} of them are in its validation split' if in_val else ''}. "
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
            got = repr(amount) if re.fullmatch(r"-?\d*\.?\d+(?:[eE]-?\d+)?", amount) else f"({_shape(amount)})"
            raise ValueError("Expected the amount in random:<amount>[:<seed>] to be a fraction in (0, 1) such as 0.1 "
                             f"or a count of samples such as 100 but got {got}")
    if seed_text and not re.fullmatch(r"\d+", seed_text):
        raise ValueError("Expected the seed in random:<amount>:<seed> to be a non-negative int but got "
                         f"({_shape(seed_text)})")
    return ForgetSpec(text, "random", fraction=fraction, count=count, seed=int(seed_text or 0))


@_register_spec_form("random", "random:<fraction|count>[:<seed>]", _parse_random)
def _random(split: DataSplit, spec: ForgetSpec) -> _Selection:
    n_train = len(split.train)
    count = spec.count if spec.count is not None else round(spec.fraction * n_train)
    from mlflow_unlearn.data.samples import seeded_order

    order = seeded_order(split.train.ids, seed=spec.seed, purpose="random-forget")
    mask = np.zeros(n_train, dtype=bool)
    mask[order[:count]] = True
    return _Selection(mask, SAMPLE_FORGETTING)


#: How a forget spec may be written (``ForgetSpec.form``): the part before the first ``:``.
SPEC_FORMS = tuple(SPEC_FORM_REGISTRY.names())
