"""The user's own ``Dataset`` code as a data source (``factory:``), the preprocessing options, the ``val`` side, and
the bad inputs of both: one line each, no sample ID, no file of a request."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.data import describe, load_data, resolve_forget
from mlflow_unlearn.data.grammar import parse_source

#: The factory module the tests write: the user's Dataset, counting the samples it was asked for.
FACTORY = '''
import numpy as np
import torch
from torch.utils.data import Dataset

READS = {"count": 0}


class Faces(Dataset):
    """``n`` 1x4x4 samples of ``classes`` classes, read one at a time; IDs are strings, labels known up front."""

    def __init__(self, n, classes, prefix, offset=0, shape=(1, 4, 4), scale="1"):
        self.ids = [f"{prefix}-{i + offset:04d}" for i in range(n)]
        self.targets = [i % classes for i in range(n)]
        self.classes = [f"class{c}" for c in range(classes)]
        self.shape, self.scale = shape, float(scale)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        READS["count"] += 1
        value = (self.targets[index] + 1) / 10 * self.scale
        return torch.full(self.shape, value), self.targets[index]


def make(n_train="40", n_test="20", scale="1"):
    return (Faces(int(n_train), 4, "user", scale=scale), Faces(int(n_test), 4, "user", offset=1000, scale=scale))


def with_val():
    return {"train": Faces(40, 4, "user"), "val": Faces(8, 4, "user", offset=500),
            "test": Faces(20, 4, "user", offset=1000)}


def raises():
    raise KeyError("user-0007")


def returns_one():
    return [Faces(4, 2, "user")]


def returns_number():
    return 3


def returns_strings():
    return "train", "test"


def no_ids():
    data = Faces(10, 2, "user")
    data.ids = None
    return data, Faces(10, 2, "user", offset=100)


def duplicate_ids():
    return Faces(10, 2, "user"), Faces(10, 2, "user", offset=5)


def short_ids():
    data = Faces(10, 2, "user")
    data.ids = data.ids[:9]
    return data, Faces(10, 2, "user", offset=100)


def shapes_differ():
    return Faces(10, 2, "user", shape=(1, 4, 4)), Faces(10, 2, "user", offset=100, shape=(1, 5, 5))


def rgb():
    return Faces(10, 2, "user", shape=(3, 4, 4)), Faces(10, 2, "user", offset=100, shape=(3, 4, 4))


def empty_test():
    return Faces(10, 2, "user"), Faces(0, 2, "user")


def late_failure():
    class Late(Faces):
        def __getitem__(self, index):
            if index == 37:
                raise KeyError("user-0037")
            return super().__getitem__(index)
    return Late(80, 2, "user"), Faces(10, 2, "user", offset=100)


def late_shape():
    class Late(Faces):
        def __getitem__(self, index):
            x, y = super().__getitem__(index)
            return (x[:, :3] if index == 37 else x), y
    return Late(80, 2, "user"), Faces(10, 2, "user", offset=100)


def broken_items():
    class Broken(Faces):
        def __getitem__(self, index):
            raise OSError("/secret/user-0001.png")
    return Broken(10, 2, "user"), Broken(10, 2, "user", offset=100)
'''


@pytest.fixture()
def factory_file(tmp_path: Path) -> Path:
    path = tmp_path / "code" / "userdata.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(FACTORY))
    return path


def _reads(factory_file: Path) -> int:
    module = next(m for m in sys.modules.values() if getattr(m, "__file__", None) == str(factory_file.resolve()))
    return module.READS["count"]


def test_a_factory_file_gives_the_users_split_ids_and_labels_without_reading_the_samples(factory_file):
    split = load_data(f"factory:{factory_file}:make?n_train=40&n_test=20", seed=3)
    assert split.explicit and split.val is None and len(split.train) == 40 and len(split.test) == 20
    assert split.train.ids[0] == "user-0000" and split.test.ids[0] == "user-1000"
    assert split.train.y.tolist()[:5] == [0, 1, 2, 3, 0] and split.train.meta["classes"][2] == "class2"
    assert split.train.input_shape == (1, 4, 4) and split.train.reads_files
    assert _reads(factory_file) == 2  # the first sample of each side (the shape check): labels came from `targets`
    x, y = split.train[5]
    assert torch.equal(x, torch.full((1, 4, 4), 0.2)) and int(y) == 1
    batches = list(rt.make_loader(split.test, batch_size=8, shuffle=False))
    assert [len(b[1]) for b in batches] == [8, 8, 4]
    # the split does not depend on the seed: the factory decides it
    again = load_data(f"factory:{factory_file}:make?n_train=40&n_test=20", seed=9)
    assert describe(again) == {**describe(split), "seed": 9}


def test_factory_samples_stream_through_worker_processes(factory_file, monkeypatch):
    monkeypatch.setenv(rt.loaders.DATA_WORKERS_ENV, "2")
    split = load_data(f"factory:{factory_file}:make?n_train=200&n_test=20")
    assert rt.make_loader(split.train, batch_size=32, shuffle=True).num_workers == 0  # quicker than starting workers
    monkeypatch.setattr(rt.loaders, "WORKER_WORTH_S", 0.0)  # as if each sample took long to read
    loader = rt.make_loader(split.train, batch_size=32, shuffle=True, seed=0)
    assert loader.num_workers == 2
    expected = rt.make_loader(split.train, batch_size=32, shuffle=True, seed=0)
    monkeypatch.setenv(rt.loaders.DATA_WORKERS_ENV, "0")
    in_process = list(rt.make_loader(split.train, batch_size=32, shuffle=True, seed=0))
    for (x, y), (ex, ey) in zip(expected, in_process, strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)


def test_a_factory_module_is_imported_from_the_search_path(factory_file, monkeypatch):
    monkeypatch.syspath_prepend(str(factory_file.parent))
    split = load_data("factory:userdata:with_val")
    assert split.val is not None and len(split.val) == 8 and split.val.ids[0] == "user-0500"
    assert describe(split)["n_val"] == 8
    fs = resolve_forget(split, "classes:1")  # the validation side is neither trained on nor forgotten
    assert len(fs.forget) + len(fs.retain) == 40 and len(fs.test) == 20


def test_the_factorys_options_are_its_keyword_arguments_and_preprocessing_applies_on_top(factory_file):
    split = load_data(f"factory:{factory_file}:make?scale=2&mean=0.5&std=0.25&size=6&crop=4")
    x, _ = split.train[0]  # value 0.1 * 2, resized (a constant image stays constant), normalised
    assert x.shape == (1, 4, 4) and torch.allclose(x, torch.full((1, 4, 4), (0.2 - 0.5) / 0.25))
    assert split.train.input_shape == (1, 4, 4)


def test_preprocessing_is_applied_wherever_a_sample_is_read(tmp_path):
    x = np.stack([np.full((3, 8, 8), v, dtype=np.uint8) for v in range(0, 240, 8)])
    np.savez(tmp_path / "rgb.npz", x=x, y=np.arange(30) % 3)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    split = load_data(f"npz:{tmp_path / 'rgb.npz'}?crop=6&mean=0.1,0.2,0.3&std=0.5,0.25,0.125")
    assert split.train.input_shape == (3, 6, 6)
    batch, _ = split.train.read_batch(np.arange(len(split.train)))
    single = torch.stack([split.train[i][0] for i in range(len(split.train))])
    loaded = torch.cat([b[0] for b in rt.make_loader(split.train, batch_size=7, shuffle=False)])
    assert torch.equal(batch, single) and torch.equal(batch, loaded) and torch.equal(batch, split.train.to_tensors()[0])
    raw = torch.from_numpy(x[split.train.positions]).float() / 255
    expected = (raw[:, :, 1:7, 1:7] - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(batch, expected)


def test_an_uncompressed_npz_is_memory_mapped_and_a_compressed_one_is_extracted_once(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (50, 1, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "plain.npz", x=x, y=np.arange(50) % 5)
    np.savez_compressed(tmp_path / "packed.npz", x=x, y=np.arange(50) % 5)
    plain, packed = load_data(f"npz:{tmp_path / 'plain.npz'}"), load_data(f"npz:{tmp_path / 'packed.npz'}")
    assert isinstance(plain.train.inputs.array, np.memmap) and Path(plain.train.inputs.array.filename).samefile(
        tmp_path / "plain.npz")
    assert isinstance(packed.train.inputs.array, np.memmap)
    assert Path(packed.train.inputs.array.filename).parent.name.startswith("mlflow-unlearn-npz-")
    assert plain.train.inputs.storage == "memory-mapped file"
    assert torch.equal(plain.train.to_tensors()[0], packed.train.to_tensors()[0])
    assert torch.equal(plain.train.to_tensors()[0], torch.from_numpy(x[plain.train.positions]).float() / 255)


def test_the_validation_side_of_an_npz_split_and_of_an_image_folder(tmp_path):
    from PIL import Image

    x = np.arange(40 * 16, dtype=np.float32).reshape(40, 1, 4, 4) / 640
    split = np.array(["train"] * 28 + ["val"] * 4 + ["test"] * 8)
    np.savez(tmp_path / "v.npz", x=x, y=np.arange(40) % 4, ids=np.arange(100, 140), split=split)
    data = load_data(f"npz:{tmp_path / 'v.npz'}")
    assert data.val.ids.tolist() == list(range(128, 132)) and len(data.train) == 28 and len(data.test) == 8
    request = tmp_path / "forget.txt"
    request.write_text("129\n")
    with pytest.raises(ValueError, match="1 of them are in its validation split") as info:
        resolve_forget(data, f"ids:{request}")
    assert "129" not in str(info.value) and str(request) not in str(info.value)
    for side, count in (("train", 4), ("val", 2), ("test", 2)):
        for c in ("cat", "dog"):
            (tmp_path / "folder" / side / c).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((4, 4), 40 * i, np.uint8)).save(tmp_path / "folder" / side / c / f"{i}.png")
    folder = load_data(f"imagefolder:{tmp_path / 'folder'}")
    assert len(folder.val) == 4 and all(i.startswith("val/") for i in folder.val.ids.tolist())
    assert len(folder.train) == 8 and len(folder.test) == 4


# ------------------------------------------------------------------------------------------- bad inputs

BAD = {
    "factory-raises": ("raises", r"^The factory .*:raises raised KeyError when called with the options none \(its "
                                 r"message is not repeated"),
    "returns-a-list-of-one": ("returns_one", r"returned a list of 1; expected \(train, test\)"),
    "returns-a-number": ("returns_number", r"returned a int; expected \(train, test\)"),
    "returns-strings": ("returns_strings", r"returned a str as its train set; expected a map-style"),
    "no-ids": ("no_ids", r"The train set of the factory .* has no `ids`"),
    "ids-not-one-per-sample": ("short_ids", r"has 9 `ids` for 10 samples"),
    "ids-not-unique": ("duplicate_ids", r"has 5 duplicate sample IDs; sample IDs must be unique$"),
    "shapes-differ-between-sides": ("shapes_differ", r"differ between its sides: train \(1, 4, 4\) \(float32\), "
                                                     r"test \(1, 5, 5\) \(float32\)"),
    "empty-side": ("empty_test", r"returned an empty test set"),
    "samples-unreadable": ("broken_items", r"reading a sample of the train set of the factory .* raised OSError$"),
    "no-such-callable": ("nope", r"its module has no callable 'nope'"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_factories_get_one_line_without_ids(factory_file, case):
    function, message = BAD[case]
    with pytest.raises(ValueError, match=message) as info:
        load_data(f"factory:{factory_file}:{function}")
    text = str(info.value)
    assert "\n" not in text and "user-0" not in text and "secret" not in text


@pytest.mark.parametrize("workers", ["0", "1"])
@pytest.mark.parametrize(("function", "message"), [
    ("late_failure", r"^Reading sample number 38 of the factory .*'s datasets raised KeyError \(its message is not "
                     r"repeated"),
    ("late_shape", r"^The samples of one batch have different shapes.*every sample of a data source must have one"),
], ids=["sample-raises-while-streaming", "sample-shape-changes-while-streaming"])
def test_a_sample_that_fails_while_streaming_is_one_line_from_a_worker_too(factory_file, monkeypatch, workers,
                                                                          function, message):
    monkeypatch.setenv(rt.loaders.DATA_WORKERS_ENV, workers)
    monkeypatch.setattr(rt.loaders, "WORKER_WORTH_S", 0.0)
    split = load_data(f"factory:{factory_file}:{function}")
    with pytest.raises(ValueError, match=message) as info:
        for _ in rt.make_loader(split.train, batch_size=16, shuffle=False):
            pass
    assert "\n" not in str(info.value) and "user-0" not in str(info.value)


BAD_SOURCES = {
    "normalisation-with-wrong-channel-count": ("factory:{file}:rgb?mean=0.5&std=0.2",
                                               r"`mean` and `std` give 1 values but the samples .* have 3 channels"),
    "normalisation-of-greyscale-with-three-values": ("digits?mean=0.5,0.5,0.5&std=0.2,0.2,0.2",
                                                     r"give 3 values but the samples .* have 1 channel .* give 1 value "
                                                     r"each"),
    "mean-without-std": ("digits?mean=0.5", r"Option `mean` needs `std` too"),
    "mean-and-std-of-different-lengths": ("digits?mean=0.5,0.5&std=0.2", r"same number of values"),
    "std-zero": ("digits?mean=0.5&std=0", r"`std` to be comma-separated positive numbers"),
    "crop-larger-than-the-images": ("digits?crop=9", r"crop=9x9 is larger than the images .* \(8x8\)"),
    "crop-not-a-size": ("digits?crop=big", r"option `crop` to be H or HxW"),
    "factory-without-callable": ("factory:userdata", r"Expected a factory written factory:<module\|file.py>"),
    "factory-module-missing": ("factory:no_such_module_27:make", r"no module 'no_such_module_27' can be imported"),
    "factory-file-missing": ("factory:/nowhere/data.py:make", r"the file '/nowhere/data.py' does not exist"),
}


@pytest.mark.parametrize("case", list(BAD_SOURCES), ids=list(BAD_SOURCES))
def test_bad_preprocessing_and_factory_sources_get_one_line(factory_file, case):
    source, message = BAD_SOURCES[case]
    with pytest.raises(ValueError, match=message) as info:
        load_data(source.format(file=factory_file))
    assert "\n" not in str(info.value)


def test_one_grammar_parses_what_the_data_layer_loads():
    spec = parse_source("factory:/code/data.py:make_sets?root=/data&mean=0.5&std=0.25")
    assert spec.factory == ("/code/data.py", "make_sets") and spec.factory_file == "/code/data.py"
    assert spec.source_options == {"root": "/data"} and spec.paths == {"argument": "/code/data.py"}
    assert parse_source("torchvision:MNIST?root=/d&download=no").paths == {"root": "/d"}
    moved = spec.replace(argument="/other/data.py")
    assert moved.text == "factory:/other/data.py:make_sets?root=/data&mean=0.5&std=0.25"


# ------------------------------------------------------------------------------------------- the doors

DOOR_CASES = {  # the bad inputs, as a user writes them at log_model and at unlearn(data=...)
    "factory-raises": ("factory:{file}:raises", "raised KeyError"),
    "factory-returns-wrong-types": ("factory:{file}:returns_number", "returned a int"),
    "ids-not-unique": ("factory:{file}:duplicate_ids", "5 duplicate sample IDs"),
    "transform-shapes-differ-between-sides": ("factory:{file}:shapes_differ", "differ between its sides"),
    "normalisation-with-wrong-channel-count": ("factory:{file}:make?mean=0.5,0.5,0.5&std=0.2,0.2,0.2",
                                               "give 3 values but the samples"),
}


@pytest.fixture(scope="module")
def door_registry(sqlite_store):
    """A model logged on a good factory (the version the CLI case unlearns with bad data)."""
    import mlflow_unlearn

    store = sqlite_store("doors")
    uri, experiment = store.uri, store.experiment
    path = store.root / "code" / "doordata.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(FACTORY))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    mlflow_unlearn.log_model(model, data=f"factory:{path}:make", registered_model_name="doors", experiment=experiment,
                             tracking_uri=uri, registry_uri=uri)
    return uri, experiment, path


@pytest.mark.parametrize("case", list(DOOR_CASES), ids=list(DOOR_CASES))
def test_bad_data_is_one_line_at_the_doors_and_nothing_is_logged(door_registry, case):
    from click.testing import CliRunner
    from mlflow import MlflowClient

    import mlflow_unlearn
    from mlflow_unlearn.tracking.cli import cli

    uri, experiment, path = door_registry
    client = MlflowClient(uri, uri)
    before = (len(client.search_runs([experiment])), len(client.search_model_versions("name='doors'")))
    source, message = DOOR_CASES[case]
    source = source.format(file=path)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    with pytest.raises(ValueError, match=message) as info:
        mlflow_unlearn.log_model(model, data=source, registered_model_name="doors", experiment=experiment,
                                 tracking_uri=uri, registry_uri=uri)
    assert "\n" not in str(info.value) and "user-0" not in str(info.value)
    result = CliRunner().invoke(cli, ["unlearn", "models:/doors/1", "--forget", "classes:1", "--data", source,
                                      "--device", "cpu", "--no-onnx"], env={"MLFLOW_TRACKING_URI": uri})
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "user-0" not in result.output
    assert (len(client.search_runs([experiment])), len(client.search_model_versions("name='doors'"))) == before
