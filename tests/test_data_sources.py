"""Data sources: every source form, stable IDs, deterministic stratified splits, and the promised errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mlflow_unlearn.data import describe, list_sources, load_data
from mlflow_unlearn.data.samples import ids_digest


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def _grid_images(n: int, side: int = 4) -> np.ndarray:
    """``n`` distinct uint8 greyscale images (``n x side x side``)."""
    return ((np.arange(n * side * side).reshape(n, side, side) * 7) % 256).astype(np.uint8)


def _write_image_folder(root, *, sizes=None, rgb_file=None):
    """Two classes (``cat``: 3 images, ``dog``: 2 images) of 6x6 greyscale PNGs; returns {relative path: pixels}."""
    written = {}
    for k, rel in enumerate(["cat/a.png", "cat/b.png", "cat/sub/c.png", "dog/x.png", "dog/y.png"]):
        size = (sizes or {}).get(rel, (6, 6))
        pixels = np.full(size, 10 * k + 5, dtype=np.uint8)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels, mode="L")
        if rel == rgb_file:
            image = image.convert("RGB")
        image.save(path)
        written[rel] = pixels
    (root / "dog" / "notes.txt").write_text("not an image")
    return written


def _write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) in the big-endian IDX format that torchvision's MNIST reads."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _assert_partition(split, n_total):
    train_ids, test_ids = set(split.train.ids.tolist()), set(split.test.ids.tolist())
    assert not train_ids & test_ids
    assert len(train_ids) + len(test_ids) == len(split.train) + len(split.test) == n_total


# --------------------------------------------------------------------------------------------------- built-ins


def test_list_sources_names_every_form():
    assert set(list_sources()) == {"csv", "digits", "factory", "imagefolder", "mnist5k", "npz", "parquet",
                                   "torchvision"}


def test_digits_source():
    split = load_data("digits", seed=0, test_fraction=0.2)
    _assert_partition(split, 1797)
    assert split.train.input_shape == (1, 8, 8) and split.num_classes == 10
    assert split.train.ids.dtype == np.int64
    assert sorted(np.concatenate([split.train.ids, split.test.ids]).tolist()) == list(range(1797))
    x = split.train.to_tensors()[0]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # IDs are the index in load_digits(): the sample with ID i is load_digits() row i.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    i = int(split.test.ids[5])
    assert torch.allclose(split.test[5][0].flatten(), torch.tensor(bunch.data[i] / 16.0, dtype=torch.float32))
    assert int(split.test.y[5]) == bunch.target[i]


def test_mnist5k_source_is_real_mnist():
    split = load_data("mnist5k", seed=1)
    _assert_partition(split, 5000)
    assert split.train.input_shape == (1, 28, 28) and split.num_classes == 10
    x = split.train.to_tensors()[0]
    assert float(x.max()) == 1.0 and float(x.min()) == 0.0
    assert sorted(np.concatenate([split.train.ids, split.test.ids]).tolist()) == list(range(5000))
    assert np.bincount(split.test.y.numpy(), minlength=10).tolist() == [100] * 10


# ----------------------------------------------------------------------------------------------- splitting


def test_split_is_deterministic_stratified_and_recorded():
    a, b, c = load_data("digits", seed=3), load_data("digits", seed=3), load_data("digits", seed=4)
    assert (a.source, a.seed, a.test_fraction) == ("digits", 3, 0.2)
    assert np.array_equal(a.train.ids, b.train.ids) and np.array_equal(a.test.ids, b.test.ids)
    assert torch.equal(a.train.to_tensors()[0], b.train.to_tensors()[0]) and torch.equal(a.test.y, b.test.y)
    assert set(a.test.ids.tolist()) != set(c.test.ids.tolist())
    # Each class is split on its own: its test share is its count times the fraction, rounded.
    counts = np.bincount(np.concatenate([a.train.y.numpy(), a.test.y.numpy()]))
    assert np.bincount(a.test.y.numpy()).tolist() == [int(np.floor(n * 0.2 + 0.5)) for n in counts]


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_split_fraction(fraction):
    split = load_data("digits", seed=0, test_fraction=fraction)
    _assert_partition(split, 1797)
    assert abs(len(split.test) / 1797 - fraction) < 0.01


def test_split_does_not_depend_on_sample_order(tmp_path):
    x, y, ids = _grid_images(40), np.arange(40) % 2, np.array([f"s{i:02d}" for i in range(40)])
    perm = np.random.default_rng(0).permutation(40)
    one = load_data(_write_npz(tmp_path / "a.npz", x=x, y=y, ids=ids), seed=7)
    two = load_data(_write_npz(tmp_path / "b.npz", x=x[perm], y=y[perm], ids=ids[perm]), seed=7)
    assert set(one.test.ids.tolist()) == set(two.test.ids.tolist())


def test_describe_is_lineage_without_ids(tmp_path):
    ids = np.array([f"person-{i}" for i in range(30)])
    source = _write_npz(tmp_path / "p.npz", x=_grid_images(30), y=np.arange(30) % 3, ids=ids)
    split = load_data(source, seed=2, test_fraction=0.3)
    info = describe(split)
    assert info == {
        "source": source, "seed": 2, "test_fraction": 0.3, "split": "seeded", "n_train": len(split.train),
        "n_test": len(split.test), "n_val": 0,
        "num_classes": 3, "input_shape": "1x4x4",
        "train_ids_digest": ids_digest(split.train.ids), "test_ids_digest": ids_digest(split.test.ids),
    }
    assert describe(load_data(source, seed=2, test_fraction=0.3)) == info
    assert describe(load_data(source, seed=5, test_fraction=0.3))["train_ids_digest"] != info["train_ids_digest"]
    text = json.dumps(info)
    assert not any(sample_id in text for sample_id in ids)


def test_split_is_the_documented_pure_function_of_ids_and_seed(tmp_path):
    """Per class, the test part is the round(n * fraction) samples with the smallest SHA-256 rank of their ID."""
    ids = np.array([f"u{i}" for i in range(30)])
    labels = np.arange(30) % 3
    split = load_data(_write_npz(tmp_path / "s.npz", x=_grid_images(30), y=labels, ids=ids), seed=9,
                      test_fraction=0.3)

    def rank(sample_id):
        return int.from_bytes(hashlib.sha256(f"train-test-split\0{9}\0{sample_id}".encode()).digest()[:8], "big")

    expected = set()
    for label in range(3):
        expected |= set(sorted(ids[labels == label].tolist(), key=rank)[:3])
    assert set(split.test.ids.tolist()) == expected


@pytest.mark.slow
def test_ids_and_split_stable_across_processes(tmp_path):
    source = _write_npz(tmp_path / "s.npz", x=_grid_images(20), y=np.arange(20) % 2,
                        ids=np.array([f"u{i}" for i in range(20)]))
    script = (
        "import json, sys; from mlflow_unlearn.data import describe, load_data;"
        "print(json.dumps([describe(load_data(s, seed=11)) for s in sys.argv[1:]]))"
    )
    # A fresh interpreter with another str-hash seed: nothing may depend on process state such as hash().
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script, "digits", source], env=env, capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout) == [describe(load_data(s, seed=11)) for s in ("digits", source)]


# --------------------------------------------------------------------------------------------------- npz


@pytest.mark.parametrize(
    ("x", "shape"),
    [
        (_grid_images(10), (1, 4, 4)),
        (_grid_images(10)[:, None], (1, 4, 4)),
        (np.repeat(_grid_images(10)[..., None], 3, axis=-1), (3, 4, 4)),
        (np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32), (5,)),
    ],
    ids=["NxHxW", "NxCxHxW", "NxHxWxC", "NxF"],
)
def test_npz_shapes(tmp_path, x, shape):
    split = load_data(_write_npz(tmp_path / "d.npz", x=x, y=np.arange(10) % 2), seed=0, test_fraction=0.2)
    assert split.train.input_shape == shape
    assert sorted(np.concatenate([split.train.ids, split.test.ids]).tolist()) == list(range(10))
    expected = np.asarray(x[int(split.train.ids[0])], dtype=np.float32)
    if x.dtype == np.uint8:  # 8-bit pixels are scaled to [0, 1]; channels-last is moved to channels-first
        expected = expected / 255.0
        expected = expected.transpose(2, 0, 1) if expected.shape[-1] == 3 else expected.reshape(shape)
    assert np.allclose(split.train.to_tensors()[0][0].numpy(), expected)


def test_npz_string_ids_and_string_labels(tmp_path):
    ids = np.array([f"id-{i}" for i in range(12)])
    labels = np.array(["cat", "dog", "emu"] * 4)
    split = load_data(_write_npz(tmp_path / "d.npz", x=_grid_images(12), y=labels, ids=ids), test_fraction=0.25)
    assert split.train.ids.dtype.kind == "U" and split.num_classes == 3
    assert split.train.meta["classes"] == ["cat", "dog", "emu"]
    by_id = dict(zip(ids.tolist(), labels.tolist(), strict=True))
    for sample_id, label in zip(split.train.ids.tolist(), split.train.y.tolist(), strict=True):
        assert ["cat", "dog", "emu"][label] == by_id[sample_id]
    assert np.bincount(split.test.y.numpy()).tolist() == [1, 1, 1]


# ------------------------------------------------------------------------------------------- imagefolder


def test_imagefolder_ids_labels_and_pixels(tmp_path):
    written = _write_image_folder(tmp_path / "imgs")
    split = load_data(f"imagefolder:{tmp_path / 'imgs'}", test_fraction=0.4)
    _assert_partition(split, 5)
    assert split.train.meta["classes"] == ["cat", "dog"] and split.num_classes == 2
    assert split.train.input_shape == (1, 6, 6)
    for subset in (split.train, split.test):
        for k, rel in enumerate(subset.ids.tolist()):
            assert int(subset.y[k]) == (0 if rel.startswith("cat/") else 1)
            assert np.allclose(subset.to_tensors()[0][k, 0].numpy(), written[rel] / 255.0)
    assert set(np.concatenate([split.train.ids, split.test.ids]).tolist()) == set(written)


def test_imagefolder_size_and_mode_options(tmp_path):
    _write_image_folder(tmp_path / "imgs", sizes={"dog/y.png": (9, 7)}, rgb_file="cat/a.png")
    with pytest.raises(ValueError, match=r"different sizes.*\?size="):
        load_data(f"imagefolder:{tmp_path / 'imgs'}")
    rgb = load_data(f"imagefolder:{tmp_path / 'imgs'}?size=8")
    assert rgb.train.input_shape == (3, 8, 8)
    grey = load_data(f"imagefolder:{tmp_path / 'imgs'}?size=8x5&mode=L")
    assert grey.train.input_shape == (1, 8, 5)


# ------------------------------------------------------------------------------------------- manifests


def _pixel_table(n=12, side=4):
    pixels = _grid_images(n, side).reshape(n, -1)
    table = pd.DataFrame(pixels, columns=[f"px{i}" for i in range(side * side)])
    table.insert(0, "label", np.arange(n) % 3)
    table.insert(0, "id", [f"row-{i:03d}" for i in range(n)])
    return table, pixels


def test_csv_manifest_with_pixel_columns(tmp_path):
    table, pixels = _pixel_table()
    table.to_csv(tmp_path / "m.csv", index=False)
    split = load_data(f"csv:{tmp_path / 'm.csv'}", test_fraction=0.25)
    assert split.train.input_shape == (1, 4, 4) and split.num_classes == 3
    assert split.train.ids.dtype.kind == "U"  # "row-000" stays a string
    k = int(split.train.ids[0].split("-")[1])
    assert np.allclose(split.train.to_tensors()[0][0].numpy().ravel(), pixels[k] / 255.0)
    flat = load_data(f"csv:{tmp_path / 'm.csv'}?shape=2x8")
    assert flat.train.input_shape == (1, 2, 8)


def test_csv_manifest_keeps_leading_zero_ids_as_strings_and_plain_ints_as_ints(tmp_path):
    table, _ = _pixel_table()
    table["id"] = [f"{i:03d}" for i in range(12)]
    table.to_csv(tmp_path / "zeros.csv", index=False)
    assert load_data(f"csv:{tmp_path / 'zeros.csv'}").train.ids.dtype.kind == "U"
    table["id"] = [100 + i for i in range(12)]
    table.to_csv(tmp_path / "ints.csv", index=False)
    split = load_data(f"csv:{tmp_path / 'ints.csv'}")
    assert split.train.ids.dtype == np.int64
    assert sorted(np.concatenate([split.train.ids, split.test.ids]).tolist()) == list(range(100, 112))


def test_csv_manifest_with_path_column(tmp_path):
    written = _write_image_folder(tmp_path / "imgs")
    rows = [{"id": 10 + k, "label": "cat" if rel.startswith("cat") else "dog", "path": f"imgs/{rel}"}
            for k, rel in enumerate(written)]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    split = load_data(f"csv:{tmp_path / 'manifest.csv'}?size=3", test_fraction=0.4)
    assert split.train.input_shape == (1, 3, 3) and split.train.meta["classes"] == ["cat", "dog"]
    assert split.train.ids.dtype == np.int64
    by_id = {row["id"]: written[row["path"][5:]] for row in rows}
    for k, sample_id in enumerate(split.train.ids.tolist()):
        assert np.allclose(split.train.to_tensors()[0][k].numpy(), by_id[sample_id][0, 0] / 255.0)  # uniform images


def test_parquet_manifest(tmp_path):
    table, pixels = _pixel_table()
    table["id"] = np.arange(12) * 3
    table.to_parquet(tmp_path / "m.parquet")
    split = load_data(f"parquet:{tmp_path / 'm.parquet'}", seed=1)
    _assert_partition(split, 12)
    assert split.train.ids.dtype == np.int64
    assert np.allclose(split.train.to_tensors()[0][0].numpy().ravel(), pixels[int(split.train.ids[0]) // 3] / 255.0)


# ------------------------------------------------------------------------------------------- torchvision


def _write_fake_mnist(root):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = _grid_images(10, 28)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0], dtype=np.uint8)
    _write_idx(raw / "train-images-idx3-ubyte", images[:6])
    _write_idx(raw / "train-labels-idx1-ubyte", labels[:6])
    _write_idx(raw / "t10k-images-idx3-ubyte", images[6:])
    _write_idx(raw / "t10k-labels-idx1-ubyte", labels[6:])
    return images, labels


def test_torchvision_mnist_from_local_root(tmp_path):
    images, labels = _write_fake_mnist(tmp_path)
    split = load_data(f"torchvision:MNIST?root={tmp_path}", test_fraction=0.3)
    _assert_partition(split, 10)
    assert split.train.input_shape == (1, 28, 28) and split.num_classes == 10
    for subset in (split.train, split.test):
        for k, sample_id in enumerate(subset.ids.tolist()):  # train part first, then the t10k part
            assert int(subset.y[k]) == labels[sample_id]
            assert np.allclose(subset.to_tensors()[0][k, 0].numpy(), images[sample_id] / 255.0)


def test_torchvision_dataset_without_in_memory_arrays(tmp_path):
    written = _write_image_folder(tmp_path / "imgs")
    split = load_data(f"torchvision:ImageFolder?root={tmp_path / 'imgs'}", test_fraction=0.4)
    _assert_partition(split, 5)
    assert split.train.input_shape == (3, 6, 6) and split.train.meta["classes"] == ["cat", "dog"]
    order = sorted(written)  # ImageFolder lists files sorted by class, then path: the IDs are those positions
    for k, sample_id in enumerate(split.train.ids.tolist()):
        assert np.allclose(split.train.to_tensors()[0][k].numpy(), written[order[sample_id]] / 255.0)
    with pytest.raises(ValueError, match=r"torchvision:ImageFolder cannot download.*drop the option download=1"):
        load_data(f"torchvision:ImageFolder?root={tmp_path / 'imgs'}&download=1")


@pytest.mark.parametrize(("source", "message"), [
    ("torchvision:MNIST", r"needs a local root.*torchvision:MNIST\?root="),
    ("torchvision:MNIST?root={root}/nowhere", r"root .*does not exist.*download=1"),
    # the root exists but holds no files, and downloading is off
    ("torchvision:MNIST?root={root}", r"Cannot load torchvision:MNIST.*download=1"),
    ("torchvision:Mnist?root={root}", r"Unknown torchvision dataset 'Mnist'"),
    ("torchvision:MNIST?root={root}&download=maybe", r"option `download` to be 1/0.*'maybe'"),
], ids=["no-root", "missing-root", "empty-root", "unknown-dataset", "bad-download"])
def test_torchvision_root_errors(tmp_path, source, message):
    with pytest.raises(ValueError, match=message):
        load_data(source.format(root=tmp_path))


# --------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_source_files(tmp_path_factory):
    """The folder of the broken files that :data:`BAD_SOURCES` name as ``{files}``."""
    files = tmp_path_factory.mktemp("bad-sources")
    good_x, good_y = _grid_images(6), np.arange(6) % 2
    np.savez(files / "no_y.npz", x=good_x)
    np.savez(files / "short.npz", x=good_x, y=good_y[:5])
    np.savez(files / "dupes.npz", x=good_x, y=good_y, ids=np.array([1, 2, 3, 3, 4, 5]))
    np.save(files / "single.npy", good_x)
    (files / "bad.parquet").write_bytes(b"not parquet at all")
    pd.DataFrame({"ident": [1, 2], "label": [0, 1], "p": [0, 1]}).to_csv(files / "no_id.csv", index=False)
    pd.DataFrame({"id": [1, 2], "label": [0, -1], "p": [0, 1]}).to_csv(files / "neg.csv", index=False)
    (files / "broken" / "cat").mkdir(parents=True)
    (files / "broken" / "cat" / "x.png").write_bytes(b"\x89PNG not really")
    return files


#: (data source, message): ``{files}`` is the folder of :func:`bad_source_files`.
BAD_SOURCES = [
    ("mnist", r"Unknown data source 'mnist'.*digits.*mnist5k.*npz:<path>"),
    ("digits:extra", r"takes no argument but got 'extra'"),
    ("npz:", r"needs an argument: npz:<path>"),
    ("npz:{files}/missing.npz", r"Cannot read the npz file"),
    ("npz:{files}/no_y.npz", r"lacks array\(s\) \['y'\]"),
    ("npz:{files}/short.npz", r"mismatched lengths: x 6, y 5"),
    ("npz:{files}/dupes.npz", r"1 duplicate sample IDs.*must be unique"),
    ("npz:{files}/single.npy", r"single \.npy array"),
    ("parquet:{files}/bad.parquet", r"Cannot read the parquet manifest file"),
    ("csv:{files}/no_id.csv", r"has no column 'id'"),
    ("csv:{files}/neg.csv", r"non-negative class labels.*-1"),
    ("imagefolder:{files}/missing", r"does not exist or is not a directory"),
    ("imagefolder:{files}/broken", r"Cannot read image file number 1 of the 1 of the image folder"),
    ("imagefolder:{files}/broken?mode=CMYK", r"option `mode` to be one of auto, L, RGB but got 'CMYK'"),
    ("digits?shape=3", r"unknown options \['shape'\].*accepted options: size, crop, mean, std$"),
    ("imagefolder:{files}?size=0", r"option `size` to be H or HxW"),
    ("csv:{files}/no_id.csv?root", r"Malformed options 'root'"),
]


@pytest.mark.parametrize(("source", "message"), BAD_SOURCES, ids=[source for source, _ in BAD_SOURCES])
def test_bad_sources_raise_clear_errors(bad_source_files, source, message):
    with pytest.raises(ValueError, match=message):
        load_data(source.format(files=bad_source_files))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, r"`seed` to be a non-negative int but got -1"),
        ({"seed": 1.5}, r"`seed` to be a non-negative int but got 1.5"),
        ({"test_fraction": 0.0}, r"`test_fraction` to be a fraction in \(0, 1\) but got 0.0"),
        ({"test_fraction": 1}, r"`test_fraction` to be a fraction in \(0, 1\) but got 1"),
        ({"test_fraction": 0.001}, r"leaves an empty train or test set"),
    ],
)
def test_bad_split_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_data("digits", **kwargs)
