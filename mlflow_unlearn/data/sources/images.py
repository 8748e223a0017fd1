"""Image files: ``imagefolder:<dir>`` (one sub-folder per class), and the files a manifest's ``path`` column names."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlflow_unlearn.data.inputs import ImageFiles
from mlflow_unlearn.data.sources.core import SPLIT_VALUES, RawSamples, _builtin_loader

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
"""File suffixes (lower case) that ``imagefolder`` reads as images."""

_GREYSCALE_MODES = frozenset({"1", "L", "LA"})


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
