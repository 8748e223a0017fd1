"""What every data source shares: the :class:`RawSamples` a loader returns, the registry of loaders, and
:func:`load_data`, which checks a source's samples and splits them (the grammar and the built-in sources:
:mod:`mlflow_unlearn.data.sources`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mlflow_unlearn.data.grammar import (
    SourceSpec,
    SourceSyntax,
    known_sources,
    parse_source,
    register_syntax,
    unregister_syntax,
)
from mlflow_unlearn.data.inputs import ArrayInputs, ImageFiles, SampleInputs, scan_rows, with_preprocess
from mlflow_unlearn.data.preprocess import Preprocess
from mlflow_unlearn.data.samples import DataSplit, SampleSet, ids_digest, seeded_order
from mlflow_unlearn.registries import Registry

SPLIT_VALUES = ("train", "val", "test")
"""The values of an explicit split: the ``split`` array or column, the top-level folders of an image folder."""


@dataclass(frozen=True)
class RawSamples:
    """What a source loader returns: every sample of the source, before splitting.

    Args:
        inputs: the inputs, read on demand (a :class:`~mlflow_unlearn.data.inputs.SampleInputs`); an array or tensor
            (``NxCxHxW``, ``NxHxWxC``, ``NxHxW`` or ``NxF``; float, 8-bit pixels, or integer ``NxF`` token IDs) is
            checked and wrapped as one.
        y: int64 labels in ``[0, num_classes)``.
        ids: one stable, unique ID per sample (int64 or str).
        num_classes: number of classes of the task.
        classes: class names, when the source has them.
        split: the source's own split, one of :data:`SPLIT_VALUES` per sample, or None to split by the seed.
    """

    inputs: SampleInputs | np.ndarray | torch.Tensor
    y: np.ndarray
    ids: np.ndarray
    num_classes: int
    classes: list[str] | None = None
    split: np.ndarray | None = None


SourceLoader = Callable[[str, dict[str, str]], RawSamples]
LOADERS: Registry[SourceLoader] = Registry("data source")
"""The loader of every registered source by name (its grammar: :func:`~mlflow_unlearn.data.grammar.parse_source`)."""


def register_source(
    name: str, *, syntax: str, options: tuple[str, ...] = (), takes_argument: bool = True
) -> Callable[[SourceLoader], SourceLoader]:
    """Register ``loader(argument, options) -> RawSamples`` as the source ``name``.

    Every source also accepts the preprocessing options (``size``, ``crop``, ``mean``, ``std``), which
    :func:`load_data` applies to what the loader returns; ``options`` holds every option given.

    Args:
        name: the part of the source string before ``:``.
        syntax: how to write it, shown in error messages (e.g. ``"npz:<path>"``).
        options: the ``?key=value`` options it accepts besides the preprocessing ones; any other is rejected before
            loading.
        takes_argument: whether ``name:<argument>`` (a path) needs (True) or forbids (False) an argument.

    Raises:
        ValueError: (when decorating) a source named ``name`` is already registered.
    """

    def decorator(loader: SourceLoader) -> SourceLoader:
        register_syntax(SourceSyntax(name, syntax, tuple(options), argument="path" if takes_argument else "none"))
        return LOADERS.decorator(name)(loader)

    return decorator


def unregister_source(name: str) -> SourceLoader:
    """Remove source ``name`` (its grammar and its loader) and return its loader.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    loader = LOADERS.unregister(name)
    unregister_syntax(name)
    return loader


def _builtin_loader(name: str) -> Callable[[SourceLoader], SourceLoader]:
    """Attach the loader of a source whose grammar :mod:`~mlflow_unlearn.data.grammar` declares (built-in sources)."""
    return LOADERS.decorator(name)


def list_sources() -> list[str]:
    """Names of all registered sources, sorted.

    >>> {"digits", "mnist5k", "npz", "imagefolder", "torchvision", "csv", "parquet", "factory"} <= set(list_sources())
    True
    """
    return LOADERS.names()


def load_data(source: str, *, seed: int = 0, test_fraction: float = 0.2) -> DataSplit:
    """Load ``source`` and split it, class by class, into train and test deterministically from ``seed``.

    Nothing is stacked: the split holds per-sample bookkeeping (positions, labels, IDs) and the source's inputs are
    read a batch at a time when used. A source that carries its own split (see "Explicit split" in the module
    docstring) is split that way instead, whatever ``seed`` and ``test_fraction`` say (both are still checked).

    Args:
        source: a source string (see the module docstring), e.g. ``"digits"`` or ``"npz:/data/faces.npz"``.
        seed: a non-negative int; the same source and seed give the same split.
        test_fraction: the fraction of each class put in the test set, in (0, 1).

    Returns:
        A :class:`DataSplit` recording ``source``, ``seed``, ``test_fraction`` and whether the split was
        ``explicit`` (with ``val`` when the explicit split has validation samples).

    Raises:
        ValueError: for an unknown source name (the message lists the known ones), bad options, a missing or
            malformed file, duplicate IDs, bad labels, a bad seed or fraction, an explicit split with values
            other than ``train``/``val``/``test``, an empty side, classes that only its test side holds, or
            preprocessing that does not fit the samples (crop larger than the images, a normalisation with
            another number of values than channels).

    >>> split = load_data("digits", seed=0)
    >>> len(split.train) + len(split.test), split.num_classes, split.train.input_shape
    (1797, 10, (1, 8, 8))
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"Expected argument `seed` to be a non-negative int but got {seed!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"Expected argument `test_fraction` to be a fraction in (0, 1) but got {test_fraction!r}")
    spec = parse_source(source)
    if spec.name not in LOADERS:  # a grammar registered without a loader in this process
        raise ValueError(f"Unknown data source {spec.name!r} in {source!r}; expected one of: {known_sources()}")
    raw = LOADERS.get(spec.name)(spec.argument, spec.option_dict)
    full = _to_sample_set(raw, spec)
    if raw.split is not None:
        sides = _explicit_sides(raw.split, full, source=source)
    else:
        test_mask = _stratified_test_mask(full, seed=int(seed), test_fraction=float(test_fraction))
        if test_mask.all() or not test_mask.any():
            raise ValueError(
                f"test_fraction={test_fraction} leaves an empty train or test set for the {len(full)} samples of "
                f"{source!r}; choose a fraction that puts at least one sample of some class on each side"
            )
        sides = {"train": ~test_mask, "test": test_mask}
    val = full.subset(sides["val"]) if sides.get("val") is not None and sides["val"].any() else None
    return DataSplit(full.subset(sides["train"]), full.subset(sides["test"]), source, int(seed), float(test_fraction),
                     explicit=raw.split is not None, val=val)


def describe(split: DataSplit) -> dict[str, Any]:
    """A flat summary of ``split`` for lineage: enough to recognise and reproduce it, no sample IDs.

    Returns:
        ``source``, ``seed``, ``test_fraction``, ``split`` (``"explicit"`` when the source carries its own
        split, so that ``seed`` and ``test_fraction`` were unused; ``"seeded"`` otherwise), ``n_train``,
        ``n_test``, ``n_val`` (0 without a validation side), ``num_classes``, ``input_shape`` (e.g. ``"1x8x8"``,
        after preprocessing) and ``train_ids_digest`` / ``test_ids_digest`` (SHA-256 of the sorted IDs, see
        :func:`~mlflow_unlearn.data.samples.ids_digest`). Digest the forget set only with
        :func:`~mlflow_unlearn.data.forget.forget_digest`.

    >>> info = describe(load_data("digits"))
    >>> info["n_train"] + info["n_test"], info["input_shape"], info["split"]
    (1797, '1x8x8', 'seeded')
    """
    return {
        "source": split.source,
        "seed": split.seed,
        "test_fraction": split.test_fraction,
        "split": "explicit" if split.explicit else "seeded",
        "n_train": len(split.train),
        "n_test": len(split.test),
        "n_val": len(split.val) if split.val is not None else 0,
        "num_classes": split.num_classes,
        "input_shape": "x".join(map(str, split.train.input_shape)),
        "train_ids_digest": ids_digest(split.train.ids),
        "test_ids_digest": ids_digest(split.test.ids),
    }


def _stratified_test_mask(samples: SampleSet, *, seed: int, test_fraction: float) -> np.ndarray:
    order = seeded_order(samples.ids, seed=seed, purpose="train-test-split")
    labels = samples.y.numpy()[order]
    test = np.zeros(len(samples), dtype=bool)
    for label in np.unique(labels):
        members = order[labels == label]
        test[members[: math.floor(len(members) * test_fraction + 0.5)]] = True
    return test


def _split_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _show_split_values(values: np.ndarray) -> str:
    """The offending values for a message: at most 3, each cut short; more may be a wrong column (IDs?): not shown."""
    if len(values) > 3:
        return f"{len(values)} different values (not shown; is `split` the right column?)"
    shown = [repr(v if len(v) <= 20 else v[:20] + "...") if v else "empty" for v in values.tolist()]
    return f"the value{'s' if len(shown) > 1 else ''} {', '.join(shown)}"


def _explicit_sides(values: Any, samples: SampleSet, *, source: str) -> dict[str, np.ndarray]:
    """The masks of a source's own split, checked: known values, train and test used, every class trained on."""
    accepted = ", ".join(map(repr, SPLIT_VALUES))
    values = np.asarray(values)
    if values.ndim != 1 or len(values) != len(samples):
        raise ValueError(f"The split of data source {source!r} has {values.size} values for {len(samples)} samples; "
                         f"expected one of {accepted} per sample")
    text = np.array([_split_value(v) for v in values.tolist()], dtype=object)
    bad = ~np.isin(text, SPLIT_VALUES)
    if bad.any():
        raise ValueError(f"The split of data source {source!r} has {int(bad.sum())} of {len(text)} samples with "
                         f"{_show_split_values(np.unique(text[bad].astype(str)))}; accepted values: {accepted} "
                         "(lower case, no empty cells)")
    sides = {side: text == side for side in SPLIT_VALUES}
    for side in ("train", "test"):
        if not sides[side].any():
            placed = ", ".join(repr(s) for s in SPLIT_VALUES if sides[s].any())
            raise ValueError(f"The split of data source {source!r} puts all {len(text)} samples on the {placed} side "
                             f"and none on the {side!r} side; mark at least one sample {side!r}")
    labels = samples.y.numpy()
    test_only = sorted(set(np.unique(labels[sides["test"]]).tolist()) - set(np.unique(labels[sides["train"]]).tolist()))
    if test_only:
        names = samples.meta.get("classes")
        shown = [names[c] for c in test_only] if names else test_only
        raise ValueError(f"The split of data source {source!r} has test samples of classes {shown} but no training "
                         "samples of them; a model cannot learn a class it never sees: mark some of their samples "
                         "'train' (the test side may lack a class, the train side may not)")
    return sides


def _to_sample_set(raw: RawSamples, spec: SourceSpec) -> SampleSet:
    """The whole source as one sample set, checked: lengths, unique IDs, preprocessing that fits the samples."""
    source = spec.text
    inputs = raw.inputs if isinstance(raw.inputs, SampleInputs) else _as_inputs(raw.inputs, where=f"{source!r}")
    ids = np.asarray(raw.ids)
    if len(ids) != len(raw.y) or len(inputs) != len(raw.y):
        raise ValueError(f"Source {source!r} gave {len(inputs)} inputs, {len(raw.y)} labels and {len(ids)} IDs")
    if len(ids) < 2:
        raise ValueError(f"Source {source!r} holds {len(ids)} samples; a train/test split needs at least 2")
    unique = np.unique(ids)
    if len(unique) != len(ids):  # how many, never which: an ID may name a person
        raise ValueError(f"Source {source!r} has {len(ids) - len(unique)} duplicate sample IDs; sample IDs must be "
                         "unique")
    preprocess = Preprocess(None if isinstance(inputs, ImageFiles) else spec.size, spec.crop, spec.mean, spec.std)
    preprocess.check(inputs.raw_shape, where=f"data source {source!r}")
    inputs = with_preprocess(inputs, preprocess)
    meta: dict[str, Any] = {"source": source}
    if raw.classes is not None:
        meta["classes"] = list(raw.classes)
    return SampleSet(inputs, torch.from_numpy(np.asarray(raw.y, dtype=np.int64)), ids, int(raw.num_classes), meta)


def _layout(shape: tuple[int, ...], *, where: str) -> str:
    """How an array of ``shape`` holds its samples: ``nchw``, ``nhwc``, ``nhw`` or ``flat``."""
    if len(shape) == 3:
        return "nhw"
    if len(shape) == 4 and shape[1] not in (1, 3) and shape[-1] in (1, 3):
        return "nhwc"
    if len(shape) in (2, 4):
        return "flat" if len(shape) == 2 else "nchw"
    raise ValueError(f"Expected inputs in {where} shaped NxCxHxW, NxHxWxC, NxHxW or NxF but got shape {tuple(shape)}")


def _as_inputs(x: np.ndarray | torch.Tensor, *, where: str) -> ArrayInputs:
    """``x`` as :class:`ArrayInputs`: float32 ``CxHxW`` (from ``NxHxW``, ``NxHxWxC`` or ``NxCxHxW``, 8-bit integers
    divided by 255) or ``F`` samples (float32, or int64 for integers but uint8: token IDs are not scaled). A
    memory-mapped ``x`` is checked in chunks and stays mapped."""
    x = x.numpy() if isinstance(x, torch.Tensor) else x if isinstance(x, np.ndarray) else np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"Expected numeric inputs in {where} but got dtype {x.dtype}")
    layout = _layout(x.shape, where=where)
    if x.dtype.kind == "b":
        return ArrayInputs(x, layout=layout, divisor=1.0)
    if layout == "flat" and x.dtype.kind in "iu" and x.dtype != np.uint8:
        return ArrayInputs(x, layout=layout)
    if x.dtype == np.uint8:
        return ArrayInputs(x, layout=layout, divisor=255.0)
    if x.dtype.kind in "iu":
        low, high = 0, 0
        for rows in scan_rows(x):
            low, high = min(low, int(rows.min(initial=0))), max(high, int(rows.max(initial=0)))
        return ArrayInputs(x, layout=layout, divisor=255.0 if low >= 0 and high <= 255 else 1.0)
    if not all(np.isfinite(rows).all() for rows in scan_rows(x)):
        raise ValueError(f"Inputs in {where} contain NaN or infinite values")
    return ArrayInputs(x, layout=layout)


def _encode_labels(values: Any, *, where: str) -> tuple[np.ndarray, int, list[str] | None]:
    """Labels as int64 codes plus ``num_classes`` and, for string labels, the sorted class names."""
    labels = np.asarray(values)
    if labels.ndim != 1:
        raise ValueError(f"Expected one label per sample in {where} but got labels shaped {tuple(labels.shape)}")
    if labels.dtype.kind in "biuf":
        if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
            raise ValueError(f"Expected integer class labels in {where} but got fractional or missing values")
        codes = labels.astype(np.int64)
        if codes.size and codes.min() < 0:
            raise ValueError(f"Expected non-negative class labels in {where} but got {int(codes.min())}")
        return codes, int(codes.max()) + 1 if codes.size else 0, None
    names = labels.astype(str)
    classes, codes = np.unique(names, return_inverse=True)
    return codes.astype(np.int64), len(classes), classes.tolist()
