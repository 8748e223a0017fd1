"""The user's own train/test split: npz `split` array, manifest `split` column, imagefolder train/ and test/.

An explicit split wins over the seeded re-split, is recorded on the DataSplit, replays identically with any
seed, and is what `resolve_forget` (training side) and the metrics (test side) work on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from mlflow_unlearn.data import describe, load_data, resolve_forget
from mlflow_unlearn.metrics import evaluate

N = 40
IDS = np.array([f"person-{i:02d}" for i in range(N)])
LABELS = np.arange(N) % 2


def _pixels(n: int = N) -> np.ndarray:
    return ((np.arange(n * 16).reshape(n, 4, 4) * 7) % 256).astype(np.uint8)


def _seeded(tmp_path, seed: int = 0):
    """The tool's own seeded split of the same samples (no `split` array)."""
    np.savez(tmp_path / "seeded.npz", x=_pixels(), y=LABELS, ids=IDS)
    return load_data(f"npz:{tmp_path / 'seeded.npz'}", seed=seed)


def _user_split(tmp_path) -> np.ndarray:
    """A split that disagrees with the tool's seeded one: the seeded test samples are all 'train' here."""
    seeded_test = set(_seeded(tmp_path).test.ids.tolist())
    split = np.array(["train"] * N)
    # The user's test side: 6 samples that the seeded split put on its train side, three per class.
    candidates = [i for i in range(N) if IDS[i] not in seeded_test]
    for label in (0, 1):
        for i in [i for i in candidates if LABELS[i] == label][:3]:
            split[i] = "test"
    return split


def _write_npz(path, split, **extra):
    np.savez(path, x=_pixels(), y=LABELS, ids=IDS, split=split, **extra)
    return f"npz:{path}"


def _sides(split):
    return set(split.train.ids.tolist()), set(split.test.ids.tolist())


# ------------------------------------------------------------------------------------------- sources


def test_npz_split_array_wins_over_the_seed_and_replays_with_any_seed(tmp_path):
    user = _user_split(tmp_path)
    source = _write_npz(tmp_path / "own.npz", user)
    expected_train, expected_test = set(IDS[user == "train"]), set(IDS[user == "test"])
    first = load_data(source)
    assert first.explicit and _sides(first) == (expected_train, expected_test)
    assert not expected_test & set(_seeded(tmp_path).test.ids.tolist())  # it really differs from the seeded split
    for seed, fraction in [(1, 0.2), (7, 0.5), (123, 0.9)]:
        again = load_data(source, seed=seed, test_fraction=fraction)
        assert again.explicit and (again.seed, again.test_fraction) == (seed, fraction)
        assert np.array_equal(again.train.ids, first.train.ids) and np.array_equal(again.test.ids, first.test.ids)
        assert torch.equal(again.train.to_tensors()[0], first.train.to_tensors()[0])
        assert torch.equal(again.test.y, first.test.y)
    info = describe(first)
    assert info["split"] == "explicit" and (info["n_train"], info["n_test"]) == (34, 6)
    other = describe(load_data(source, seed=5))
    assert {k: v for k, v in other.items() if k != "seed"} == {k: v for k, v in info.items() if k != "seed"}
    assert describe(_seeded(tmp_path))["split"] == "seeded" and not _seeded(tmp_path).explicit


def test_npz_bytes_split_array(tmp_path):
    user = _user_split(tmp_path)
    split = load_data(_write_npz(tmp_path / "b.npz", user.astype("S")))
    assert split.explicit and _sides(split)[1] == set(IDS[user == "test"])


def test_csv_manifest_split_column_is_not_a_pixel_column(tmp_path):
    user = _user_split(tmp_path)
    table = pd.DataFrame(_pixels().reshape(N, -1), columns=[f"px{i}" for i in range(16)])
    table.insert(0, "split", user)
    table.insert(0, "label", LABELS)
    table.insert(0, "id", IDS)
    table.to_csv(tmp_path / "m.csv", index=False)
    split = load_data(f"csv:{tmp_path / 'm.csv'}", seed=3)
    assert split.explicit and split.train.input_shape == (1, 4, 4)
    assert _sides(split) == (set(IDS[user == "train"]), set(IDS[user == "test"]))
    k = int(split.test.ids[0].split("-")[1])
    assert np.allclose(split.test.to_tensors()[0][0].numpy(), _pixels()[k] / 255.0)


def test_parquet_manifest_with_path_and_split_columns(tmp_path):
    rows = []
    for k in range(8):
        rel = f"imgs/{k}.png"
        (tmp_path / "imgs").mkdir(exist_ok=True)
        Image.fromarray(np.full((5, 5), 20 * k, dtype=np.uint8), mode="L").save(tmp_path / rel)
        rows.append({"id": 100 + k, "label": ["cat", "dog"][k % 2], "path": rel,
                     "split": "test" if k in (0, 3) else "train"})
    pd.DataFrame(rows).to_parquet(tmp_path / "m.parquet")
    split = load_data(f"parquet:{tmp_path / 'm.parquet'}", seed=9)
    assert split.explicit and split.train.meta["classes"] == ["cat", "dog"]
    assert _sides(split) == ({101, 102, 104, 105, 106, 107}, {100, 103})


def _image(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6), value, dtype=np.uint8), mode="L").save(path)


def test_imagefolder_train_and_test_folders(tmp_path):
    root = tmp_path / "imgs"
    # The same file name on both sides and in both classes: IDs keep the train/ or test/ prefix.
    for k, rel in enumerate(["train/cat/1.png", "train/cat/2.png", "train/dog/1.png", "train/dog/sub/3.png",
                             "train/emu/1.png", "test/cat/1.png", "test/dog/1.png"]):
        _image(root / rel, 30 * k)
    (root / "train" / "notes.txt").write_text("ignored")
    split = load_data(f"imagefolder:{root}", seed=4)
    assert split.explicit and split.num_classes == 3 and split.train.meta["classes"] == ["cat", "dog", "emu"]
    assert _sides(split) == ({"train/cat/1.png", "train/cat/2.png", "train/dog/1.png", "train/dog/sub/3.png",
                              "train/emu/1.png"}, {"test/cat/1.png", "test/dog/1.png"})
    # The test side may lack a class (emu); labels follow the class names of both sides.
    for subset in (split.train, split.test):
        for k, rel in enumerate(subset.ids.tolist()):
            assert split.train.meta["classes"][int(subset.y[k])] == rel.split("/")[1]
    assert split.test.classes_present() == [0, 1]
    again = load_data(f"imagefolder:{root}", seed=99, test_fraction=0.5)
    assert np.array_equal(again.test.ids, split.test.ids) and np.array_equal(again.train.ids, split.train.ids)


#: (name, image files as (path, pixel value), empty folders, message): image folders laid out wrongly.
BAD_LAYOUTS = [
    ("extra", [("train/cat/a.png", 1), ("test/cat/b.png", 2), ("valid/cat/c.png", 3)], [],
     r"holds test/ and train/ next to other folders \['valid'\].*only train/"),
    ("only_train", [("train/cat/a.png", 1), ("train/dog/b.png", 2)], [],
     r"all 2 samples on the 'train' side and none on the 'test' side"),
    ("new_class", [("train/cat/a.png", 1), ("train/cat/b.png", 1), ("test/cat/c.png", 2), ("test/yak/d.png", 3)], [],
     r"test samples of classes \['yak'\] but no training samples"),
    ("bare", [("train/cat/a.png", 1)], ["test"], r"test/ folder of the image folder .* has no class sub-folders"),
]


@pytest.mark.parametrize(("name", "images", "folders", "message"), BAD_LAYOUTS, ids=[b[0] for b in BAD_LAYOUTS])
def test_imagefolder_split_layout_errors(tmp_path, name, images, folders, message):
    for folder in folders:
        (tmp_path / name / folder).mkdir(parents=True)
    for path, value in images:
        _image(tmp_path / name / path, value)
    with pytest.raises(ValueError, match=message):
        load_data(f"imagefolder:{tmp_path / name}")


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({0: "valid", 1: "valid", 2: "Test"}, r"has 3 of 40 samples with the values 'Test', 'valid'; accepted "
                                              r"values: 'train', 'val', 'test'"),
        ({5: ""}, r"has 1 of 40 samples with the value empty; accepted values: 'train', 'val', 'test'"),
        ({i: f"person-{i:02d}" for i in range(10)}, r"has 10 of 40 samples with 10 different values \(not shown"),
        ({i: "test" for i in range(N)}, r"puts all 40 samples on the 'test' side and none on the 'train' side; "
                                        r"mark at least one sample 'train'"),
        ({i: "train" for i in range(N)}, r"none on the 'test' side; mark at least one sample 'test'"),
        ({i: "test" for i in range(1, N, 2)}, r"test samples of classes \[1\] but no training samples of them"),
    ],
)
def test_bad_explicit_split_is_one_line_without_ids(tmp_path, values, message):
    split = np.array(["train"] * N, dtype=object)
    split[[1, 2, 3]] = "test"
    for i, value in values.items():
        split[i] = value
    source = _write_npz(tmp_path / "bad.npz", split.astype(str))
    with pytest.raises(ValueError, match=message) as info:
        load_data(source)
    text = str(info.value)
    assert "\n" not in text and not any(sample_id in text for sample_id in IDS)


def _int_split(folder: Path) -> str:
    return _write_npz(folder / "ints.npz", np.arange(N) % 2)


def _short_split(folder: Path) -> str:
    np.savez(folder / "short.npz", x=_pixels(), y=LABELS, split=np.array(["train", "test"]))
    return f"npz:{folder / 'short.npz'}"


def _split_column_with_gaps(folder: Path) -> str:
    table = pd.DataFrame({"id": range(6), "label": [0, 1] * 3, "split": ["train", None, "test", "train", "x", "y"],
                          "p": range(6)})
    table.to_csv(folder / "gaps.csv", index=False)
    return f"csv:{folder / 'gaps.csv'}"


@pytest.mark.parametrize(("write", "message"), [
    (_int_split, r"40 of 40 samples with the values '0', '1'; accepted values: 'train'"),
    (_short_split, r"`split` array shaped \(2,\) for 40 samples"),
    (_split_column_with_gaps, r"3 of 6 samples with the values empty, 'x', 'y'"),
], ids=["ints", "short", "gaps"])
def test_bad_split_arrays_and_columns(tmp_path, write, message):
    with pytest.raises(ValueError, match=message):
        load_data(write(tmp_path))


# ------------------------------------------------------------------------------------------- forget + metrics


def test_ids_forget_set_resolves_against_the_users_training_side(tmp_path):
    user = _user_split(tmp_path)
    source = _write_npz(tmp_path / "own.npz", user)
    seeded_test = set(_seeded(tmp_path).test.ids.tolist())
    # IDs the user trained on that the tool's own seeded split would have put on its test side.
    trained_on = [i for i in IDS[user == "train"] if i in seeded_test][:3]
    assert len(trained_on) == 3
    (tmp_path / "forget.txt").write_text("\n".join(trained_on))
    with pytest.raises(ValueError, match=r"not in the training split.*in its test split"):
        resolve_forget(_seeded(tmp_path), f"ids:{tmp_path / 'forget.txt'}")
    for seed in (0, 11):
        split = load_data(source, seed=seed)
        fs = resolve_forget(split, f"ids:{tmp_path / 'forget.txt'}")
        assert set(fs.forget.ids.tolist()) == set(trained_on) and fs.count == 3
        assert set(fs.retain.ids.tolist()) == set(IDS[user == "train"]) - set(trained_on)
        assert set(fs.test.ids.tolist()) == set(IDS[user == "test"])
    # An ID on the user's test side is not a training sample: refused, and said so.
    held_out = IDS[user == "test"][0]
    (tmp_path / "held_out.txt").write_text(held_out)
    with pytest.raises(ValueError, match=r"1 of the 1 IDs .* not in the training split.*1 of them are in its test"):
        resolve_forget(load_data(source), f"ids:{tmp_path / 'held_out.txt'}")


class _RightOnUserTestSideOnly(nn.Module):
    """Predicts the true label of samples whose first feature is 1 (the user's test side), the other one else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        truth = x[:, 1:3]
        return torch.where(x[:, :1] > 0.5, truth, truth.flip(1))


def test_test_metrics_use_only_the_users_test_side(tmp_path):
    user = _user_split(tmp_path)
    is_test = (user == "test").astype(np.float32)
    x = np.stack([is_test, LABELS == 0, LABELS == 1], axis=1).astype(np.float32)
    np.savez(tmp_path / "flat.npz", x=x, y=LABELS, ids=IDS, split=user)
    (tmp_path / "forget.txt").write_text("\n".join(IDS[user == "train"][:4]))
    fs = resolve_forget(load_data(f"npz:{tmp_path / 'flat.npz'}", seed=2), f"ids:{tmp_path / 'forget.txt'}")
    table = evaluate({"m": _RightOnUserTestSideOnly()}, fs, reference=None, device="cpu")
    assert table.loc["m", "test_accuracy"] == 100.0
    assert table.loc["m", "retain_accuracy"] == 0.0 and table.loc["m", "forget_accuracy"] == 0.0
