"""Sample inputs read on demand: what a source holds, by position, one sample or one batch at a time.

A :class:`~mlflow_unlearn.data.samples.SampleSet` is a view (positions, labels, IDs) of one :class:`SampleInputs`;
nothing stacks a whole source. The kinds:

* :class:`TensorInputs`: a tensor already in memory (the bundled ``digits`` and ``mnist5k``, tests): a batch is one
  indexing.
* :class:`ArrayInputs`: a NumPy array, memory-mapped where it comes from a file (``npz``), else in memory (manifest
  pixel columns, the arrays torchvision keeps): a batch is one indexing of the rows it needs, converted to float32
  (8-bit pixels scaled to [0, 1]) as it is read.
* :class:`ImageFiles`: image files decoded per sample with Pillow (``imagefolder``, manifests with ``path``); the
  loaders decode them in DataLoader worker processes.
* :class:`DatasetInputs`: the user's own ``torch.utils.data.Dataset`` objects (a ``factory:`` source, torchvision
  datasets that keep no array), read per sample in worker processes too.

Each applies the source's :class:`~.preprocess.Preprocess` to what it reads, so every consumer sees the same inputs.
``batched`` says a batch is one cheap indexing (the loaders then read whole batches in the main process);
``parallel`` says reading a sample costs decoding (the loaders then use worker processes).
"""

from __future__ import annotations

import atexit
import logging
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from mlflow_unlearn.data.preprocess import Preprocess

_logger = logging.getLogger("mlflow_unlearn")
_IDENTITY = Preprocess()
#: Rows scanned at a time when an array is checked (pixel range, finite values): memory stays flat for any size.
SCAN_ROWS = 4096


class SampleInputs(Dataset):
    """Every input of one source, by position: ``inputs[i]`` is sample ``i``'s input tensor.

    Subclasses set :attr:`sample_shape` (after preprocessing) and implement :meth:`_read` (one raw sample) and,
    when ``batched``, :meth:`_read_many`.
    """

    #: A batch is one indexing of memory (or of a memory map): read whole batches, in the main process.
    batched: ClassVar[bool] = False
    #: Reading a sample decodes a file or runs the user's code: worth DataLoader worker processes.
    parallel: ClassVar[bool] = False
    #: Where the inputs live, for messages and logs: ``"memory"``, ``"memory-mapped file"``, ``"files"``, ``"code"``.
    storage: ClassVar[str] = "memory"

    def __init__(self, sample_shape: tuple[int, ...], preprocess: Preprocess | None = None) -> None:
        self.preprocess = preprocess or _IDENTITY
        self.raw_shape = tuple(sample_shape)
        self.sample_shape = self.preprocess.output_shape(self.raw_shape)

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, position: int) -> torch.Tensor:
        return self.preprocess(self._read(int(position)))

    def read_many(self, positions: np.ndarray) -> torch.Tensor:
        """The inputs at ``positions``, stacked, in that order."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.batched:
            return self.preprocess.batch(self._read_many(positions))
        return torch.stack([self[p] for p in positions.tolist()])

    def _read(self, position: int) -> torch.Tensor:
        return self._read_many(np.array([position]))[0]

    def _read_many(self, positions: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, sample_shape={self.sample_shape})"


class TensorInputs(SampleInputs):
    """Inputs held as one tensor (``N x ...``), used as they are: for small sets known to fit in memory (the bundled
    ``digits`` and ``mnist5k``, tests), read a whole batch per indexing (see :mod:`mlflow_unlearn.runtime.loaders`).
    """

    batched = True

    def __init__(self, tensor: torch.Tensor, preprocess: Preprocess | None = None) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.dim() < 2:
            raise ValueError(f"Expected the inputs to be a tensor of N samples (N x ...) but got "
                             f"{type(tensor).__name__} {tuple(getattr(tensor, 'shape', ()))}")
        self.tensor = model_dtype(tensor)
        super().__init__(tuple(tensor.shape[1:]), preprocess)

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    def _read(self, position: int) -> torch.Tensor:
        return self.tensor[position]

    def _read_many(self, positions: np.ndarray) -> torch.Tensor:
        return self.tensor[torch.from_numpy(positions)]


class ArrayInputs(SampleInputs):
    """Inputs in a NumPy array (a memory map or in memory) in one of the layouts a source may hold, converted per batch.

    Args:
        array: ``N x C x H x W``, ``N x H x W x C`` (``layout="nhwc"``), ``N x H x W`` (``layout="nhw"``, one
            channel) or ``N x F`` (flat features).
        layout: ``"nchw"``, ``"nhwc"``, ``"nhw"`` or ``"flat"``.
        divisor: divide by it as read (255 for 8-bit pixels); None keeps the values.
        preprocess: applied after the conversion.
    """

    batched = True

    def __init__(self, array: np.ndarray, *, layout: str, divisor: float | None = None,
                 preprocess: Preprocess | None = None) -> None:
        self.array, self.layout, self.divisor = array, layout, divisor
        shape = tuple(array.shape[1:])
        if layout == "nhwc":
            shape = (shape[2], shape[0], shape[1])
        elif layout == "nhw":
            shape = (1, *shape)
        super().__init__(shape, preprocess)

    @property
    def storage(self) -> str:  # type: ignore[override]
        return "memory-mapped file" if isinstance(self.array, np.memmap) else "memory"

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def _read_many(self, positions: np.ndarray) -> torch.Tensor:
        order = np.argsort(positions, kind="stable")
        rows = np.asarray(self.array[positions[order]])  # ascending rows: sequential reads of a memory map
        rows = rows[np.argsort(order, kind="stable")]
        if self.layout == "nhwc":
            rows = rows.transpose(0, 3, 1, 2)
        elif self.layout == "nhw":
            rows = rows[:, None]
        x = torch.from_numpy(np.ascontiguousarray(rows))
        if self.divisor is not None:
            return x.float() / self.divisor
        return model_dtype(x)


class ImageFiles(SampleInputs):
    """Image files decoded with Pillow when read: ``mode`` (``L`` or ``RGB``), resized to ``size`` (bilinear) if given,
    as float32 ``C x H x W`` in [0, 1], then preprocessed.

    Args:
        paths: one file per position (a NumPy string array: worker processes share it without copying).
        mode: Pillow's mode, ``"L"`` (1 channel) or ``"RGB"`` (3).
        size: ``(height, width)`` to resize to, or None (every image already has ``image_size``).
        image_size: ``(height, width)`` of the images as read.
        where: the source, for messages.
    """

    parallel = True
    storage = "files"

    def __init__(self, paths: np.ndarray, *, mode: str, size: tuple[int, int] | None, image_size: tuple[int, int],
                 where: str, preprocess: Preprocess | None = None) -> None:
        self.paths, self.mode, self.size, self.where = np.asarray(paths, dtype=str), mode, size, where
        height, width = size or image_size
        super().__init__((1 if mode == "L" else 3, height, width), preprocess)

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, position: int) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.paths[position]) as image:
                image = image.convert(self.mode)
        except (OSError, UnidentifiedImageError) as err:  # neither the path nor the ID: both may name a person
            raise ValueError(f"Cannot read image file number {position + 1} of the {len(self)} of the {self.where}: "
                             f"{type(err).__name__}") from None
        if self.size is not None and image.size != (self.size[1], self.size[0]):
            image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
        return pixels_to_tensor(image)


def pixels_to_tensor(image: Any) -> torch.Tensor:
    """A Pillow image (mode ``L`` or ``RGB``) as float32 ``C x H x W`` in [0, 1] (8-bit values / 255).

    Converted with NumPy: torch's elementwise ops on one image cost several times more under a loaded CPU's
    intra-op threads (0.5 ms against 1.5-7 ms per 224-px image measured on 2 busy cores).
    """
    pixels = np.asarray(image, dtype=np.float32)
    pixels /= 255
    return torch.from_numpy(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))


class DatasetInputs(SampleInputs):
    """The inputs of the user's own datasets, concatenated (e.g. a factory's train, validation and test sets): the
    first element of ``dataset[i]``, as a tensor (NumPy arrays converted; Pillow images as 8-bit pixels in [0, 1]).

    Args:
        parts: the datasets, in position order.
        sample_shape: the shape of a sample (of the first, checked by the source).
        where: the datasets, for messages (an error in them is reported by its type only).
    """

    parallel = True
    storage = "code"

    def __init__(self, parts: list[Dataset], sample_shape: tuple[int, ...], *, where: str = "the data source",
                 preprocess: Preprocess | None = None) -> None:
        self.parts, self.where = list(parts), where
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        super().__init__(sample_shape, preprocess)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _read(self, position: int) -> torch.Tensor:
        part = int(np.searchsorted(self.offsets, position, side="right")) - 1
        try:
            return as_input_tensor(self.parts[part][position - int(self.offsets[part])][0])
        except Exception as err:  # noqa: BLE001 - the user's code; its message may name the sample
            raise ValueError(f"Reading sample number {position + 1} of {self.where} raised {type(err).__name__} (its "
                             "message is not repeated: it may name samples)") from None


def model_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype a model receives: integers (token IDs) as int64 with their values untouched, floating-point
    and boolean values as float32.

    >>> model_dtype(torch.tensor([3], dtype=torch.int32)).dtype, model_dtype(torch.tensor([True])).dtype
    (torch.int64, torch.float32)
    """
    integer = not x.is_floating_point() and x.dtype != torch.bool
    wanted = torch.int64 if integer else torch.float32
    return x if x.dtype == wanted else x.to(wanted)


def as_input_tensor(value: Any) -> torch.Tensor:
    """One sample's input as a tensor (see :func:`model_dtype`): tensors and NumPy arrays converted, Pillow images
    as float32 ``C x H x W`` in [0, 1].

    Raises:
        TypeError: for anything else.
    """
    if isinstance(value, torch.Tensor):
        return model_dtype(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return model_dtype(torch.from_numpy(np.ascontiguousarray(value)))
    if type(value).__module__.startswith("PIL."):
        return pixels_to_tensor(value)
    raise TypeError(f"a sample's input is a {type(value).__name__}; expected a tensor, a NumPy array or a Pillow image")


def with_preprocess(inputs: SampleInputs, preprocess: Preprocess) -> SampleInputs:
    """``inputs`` with ``preprocess`` applied after its own preprocessing (the same object when it is the identity)."""
    if preprocess.identity:
        return inputs
    if inputs.preprocess.identity:
        inputs.preprocess = preprocess
        inputs.sample_shape = preprocess.output_shape(inputs.raw_shape)
        return inputs
    raise ValueError("the inputs are already preprocessed")


# ----------------------------------------------------------------------------------------------- npz members

_EXTRACTED: list[Path] = []


def npz_member(path: str | Path, name: str) -> np.ndarray:
    """Array ``name`` of the ``.npz`` archive at ``path`` as a read-only memory map, without reading it into memory.

    A member stored uncompressed (``np.savez``) is mapped where it lies in the archive. A compressed one
    (``np.savez_compressed``) cannot be mapped: it is decompressed once, in chunks, into a temporary ``.npy`` file
    that is mapped instead and deleted when the process ends (memory stays flat; it costs the disk space of the
    uncompressed array and one decompression pass, as long as reading it into memory: a 55 MB array took 1.1 s, 0.27 s
    of CPU, where ``np.load`` took 1.2 s, on a busy 2-core EPYC).

    Raises:
        ValueError: a missing member, an object array, or an archive that is not a zip file.
    """
    path = Path(path)
    member = f"{name}.npy"
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                f.seek(info.header_offset + 30 + name_len + extra_len)
                shape, fortran, dtype = _npy_header(f)
                offset = f.tell()
            if dtype.hasobject:
                raise ValueError(f"array `{name}` holds Python objects, which are not accepted")
            if int(np.prod(shape)) == 0:
                return np.zeros(shape, dtype)
            return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=offset)
        folder = Path(tempfile.mkdtemp(prefix="mlflow-unlearn-npz-"))
        if not _EXTRACTED:
            atexit.register(_remove_extracted)
        _EXTRACTED.append(folder)
        target = folder / member
        with archive.open(info) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, length=16 << 20)
    _logger.info("Array %r of an npz file is compressed and cannot be memory-mapped: decompressed once into a "
                 "temporary file (%.0f MB) that is mapped instead; save it with np.savez to skip this", name,
                 target.stat().st_size / 1e6)
    array = np.load(target, mmap_mode="r", allow_pickle=False)
    return array


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def _remove_extracted() -> None:
    for folder in _EXTRACTED:
        shutil.rmtree(folder, ignore_errors=True)


def scan_rows(array: np.ndarray, rows: int = SCAN_ROWS):
    """The array in chunks of ``rows`` rows (each read into memory in turn), for checks over the whole of it."""
    for start in range(0, len(array), rows):
        yield np.asarray(array[start:start + rows])
