"""Any input and output type: the one rule for class scores (``models.class_scores``), integer inputs that pass
through untouched, flat manifest rows, UNSIR's noise for token IDs, the ONNX copy of such models, and bad outputs
refused in one line by the API, the CLI and the registry plugin's pre-flight with nothing run or registered."""

from __future__ import annotations

import collections
import sys
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow_unlearn_plugins.job import preflight
from mlflow_unlearn_plugins.request import RequestRefused, SecurityPolicy, parse_request
from torch import nn
from user_models import DictOutputNet, TextClassifier, token_sequences

import mlflow_unlearn
from mlflow_unlearn import runtime as rt
from mlflow_unlearn.data import SampleSet, load_data
from mlflow_unlearn.methods import run_method
from mlflow_unlearn.methods.eu_k import find_classifier
from mlflow_unlearn.methods.registry import UnlearnContext
from mlflow_unlearn.methods.unsir import (
    UnsirConfig,
    first_embedding,
    impair_and_repair,
    learn_embedding_noise,
)
from mlflow_unlearn.metrics import collect_outputs
from mlflow_unlearn.models import ModelInputError, ModelOutputError, check_one_input, class_scores
from mlflow_unlearn.models.surgery import reinitialize
from mlflow_unlearn.tracking.cli import cli
from mlflow_unlearn.tracking.formats import ONNX_TOLERANCE, export_onnx
from mlflow_unlearn.tracking.plan import DataResolutionError, check_model_fits

SCORES = torch.arange(6.0).reshape(2, 3)
Pair = collections.namedtuple("Pair", ["hidden", "logits"])


@dataclass
class HFStyle:
    logits: torch.Tensor
    hidden_states: tuple = ()


class ModelOutputDict(collections.OrderedDict):
    """Hugging Face's ``ModelOutput`` is an ordered dict whose keys are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


GOOD_OUTPUTS = {
    "tensor": SCORES,
    "tuple": (SCORES, torch.zeros(2, 5)),
    "list": [SCORES],
    "dict": {"hidden": torch.zeros(2, 5), "logits": SCORES},
    "namedtuple-logits-field": Pair(torch.zeros(2, 5), SCORES),  # the attribute wins over the first element
    "object-with-logits": HFStyle(SCORES),
    "model-output-dict": ModelOutputDict(logits=SCORES),
}


@pytest.mark.parametrize("output", GOOD_OUTPUTS.values(), ids=GOOD_OUTPUTS.keys())
def test_the_class_scores_are_read_by_one_rule(output):
    assert class_scores(output) is SCORES


BAD_OUTPUTS = {
    "string": ("positive", "The model returned a str;"),
    "dict-without-logits": ({"probs": SCORES}, "The model returned a dict with keys ['probs'] but no 'logits';"),
    "empty-tuple": ((), "The model returned an empty tuple;"),
    "tuple-of-strings": (("a", SCORES), "The model returned a tuple whose first element is a str;"),
    "none": (None, "The model returned a NoneType;"),
    "three-dim-scores": (SCORES[..., None], "class scores have dtype float32 and shape (2, 3, 1);"),
    "integer-scores": (SCORES.long(), "class scores have dtype int64 and shape (2, 3);"),
}


@pytest.mark.parametrize(("output", "message"), BAD_OUTPUTS.values(), ids=BAD_OUTPUTS.keys())
def test_anything_else_is_one_line_that_says_what_to_return(output, message):
    with pytest.raises(ModelOutputError) as info:
        class_scores(output)
    assert message in str(info.value) and "under the key 'logits' of a dict" in str(info.value)
    assert "\n" not in str(info.value) and "positive" not in str(info.value)  # never a value


def test_optional_arguments_are_fine_and_required_ones_are_refused():
    check_one_input(TextClassifier())  # forward(input_ids, attention_mask=None)

    class Star(nn.Module):
        def forward(self, *inputs, **options):
            return inputs[0]

    check_one_input(Star())

    class Pairwise(nn.Module):
        def forward(self, left, right, *, scale):
            return left

    with pytest.raises(ModelInputError, match=r"needs 3 inputs \(left, right, scale\).*multi-input models are not"):
        check_one_input(Pairwise())


class TupleNet(nn.Module):
    """A user's model that returns ``(logits, features)``; its classifier is ``out``."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.out = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x):
        features = self.body(x.flatten(1)).relu()
        return self.out(features), features


def test_tuple_outputs_train_evaluate_and_unlearn():
    digits = load_data("digits")
    model = TupleNet()
    collected = collect_outputs(model, digits.test, device="cpu")
    assert collected.logits.shape == (len(digits.test), 10)
    assert find_classifier(model, None, digits.train.first_inputs(2))[0] == "out"  # found through the tuple
    forget = digits.train.subset(digits.train.y.numpy() == 3)
    retain = digits.train.subset(digits.train.y.numpy() != 3)
    result = run_method("eu_k", model, forget=forget, retain=retain, device="cpu", forget_kind="class",
                        forget_classes=(3,), config={"epochs": 1})
    assert type(result.model) is TupleNet and isinstance(result.model(digits.test.first_inputs(2)), tuple)


# ------------------------------------------------------------------------------------------- integer inputs


def test_token_ids_pass_through_untouched(tmp_path):
    x, y = token_sequences(40, vocab=200)  # values up to 199: they are not 8-bit pixels to scale
    np.savez(tmp_path / "text.npz", x=x, y=y)
    split = load_data(f"npz:{tmp_path / 'text.npz'}")
    assert split.train.first_inputs(1).dtype == torch.int64 and split.train.input_shape == (12,)
    by_id = {int(i): row for i, row in zip(split.train.ids, split.train.to_tensors()[0].numpy(), strict=True)}
    assert all((by_id[i] == x[i]).all() for i in by_id)
    small = SampleSet(torch.tensor(x[:4], dtype=torch.int32), torch.tensor(y[:4]), np.arange(4), 4)
    assert small.first_inputs(1).dtype == torch.int64 and (small.to_tensors()[0].numpy() == x[:4]).all()
    np.savez(tmp_path / "pixels.npz", x=(x[:, :4] % 256).astype(np.uint8), y=y)  # uint8 stays 8-bit pixels
    assert load_data(f"npz:{tmp_path / 'pixels.npz'}").train.first_inputs(1).dtype == torch.float32


class Tabular(nn.Module):
    """A user's model on 16 flat features."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(x)


def _feature_table(tmp_path, values: np.ndarray) -> str:
    table = pd.DataFrame(values, columns=[f"f{i}" for i in range(values.shape[1])])
    table.insert(0, "label", np.arange(len(values)) % 3)
    table.insert(0, "id", [f"row-{i}" for i in range(len(values))])
    table.to_csv(tmp_path / "features.csv", index=False)
    return f"csv:{tmp_path / 'features.csv'}"


def test_a_manifest_says_its_features_are_flat(tmp_path):
    rng = np.random.default_rng(0)
    source = _feature_table(tmp_path, rng.normal(size=(30, 16)))
    guessed = load_data(source)
    assert guessed.train.input_shape == (1, 4, 4)  # the default: a square count of columns is an image
    with pytest.raises(DataResolutionError, match=r"1x4x4 image by default.*add \?shape=flat") as info:
        check_model_fits(Tabular(), guessed, source)
    assert "\n" not in str(info.value)
    flat = load_data(f"{source}?shape=flat")
    assert flat.train.input_shape == (16,) and flat.train.first_inputs(1).dtype == torch.float32
    check_model_fits(Tabular(), flat, f"{source}?shape=flat")
    tokens = load_data(_feature_table(tmp_path, rng.integers(0, 50, (30, 16))) + "?shape=flat")
    token_x = tokens.train.to_tensors()[0]
    assert token_x.dtype == torch.int64 and int(token_x.max()) < 50  # integer columns: untouched
    with pytest.raises(ValueError, match="Expected option `shape` to be CxHxW, HxW .*, flat or auto but got 'wide'"):
        load_data(f"{source}?shape=wide")


# ------------------------------------------------------------------------------------------- UNSIR on token IDs


@pytest.fixture(scope="module")
def text_task():
    x, y = token_sequences(200)
    data = SampleSet(torch.tensor(x), torch.tensor(y), np.arange(len(y)), 4)
    torch.manual_seed(0)
    from mlflow_unlearn.training import TrainConfig, train

    model = train(TextClassifier(), data, TrainConfig(epochs=6, batch_size=32), device="cpu")[0]
    return model.eval(), data


def test_the_noise_of_token_inputs_lives_in_the_token_embedding(text_task):
    model, data = text_task
    assert first_embedding(model, data.first_inputs(2)) == "embed"  # not `positions`, which is called on arange
    noise = learn_embedding_noise(model, [1], inputs=data, per_class=8, steps=10, lr=0.1, l2=0.1,
                                  device=torch.device("cpu"), seed=0)
    assert noise.name == "embed" and noise.base.dtype == torch.int64 and noise.labels.tolist() == [1] * 8
    weight = model.embed.weight.detach()
    with torch.no_grad():
        clean = class_scores(model(noise.base))
        with noise.added(model, torch.arange(8)):
            noisy = class_scores(model(noise.base))
        embedded = model.embed(noise.base) + noise.delta
    loss = torch.nn.functional.cross_entropy
    assert loss(noisy, noise.labels) > loss(clean, noise.labels) + 1.0  # error-maximising for the forget class
    assert weight.min() - 1e-5 <= embedded.min() and embedded.max() <= weight.max() + 1e-5
    with torch.no_grad():  # rows < 0 get nothing added; the hook is gone after the block
        with noise.added(model, torch.full((8,), -1)):
            assert torch.equal(class_scores(model(noise.base)), clean)
        assert torch.equal(class_scores(model(noise.base)), clean)


class OneHot(nn.Module):
    """Token IDs, one-hot encoded in ``forward``: no ``nn.Embedding`` to put noise into."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(48 * 12, 4)

    def forward(self, ids):
        return self.fc(nn.functional.one_hot(ids, 48).float().flatten(1))


@pytest.mark.parametrize(("factory", "space"), [(TextClassifier, "embedding:embed"), (OneHot, "random-tokens")],
                         ids=["embedding", "no-embedding"])
def test_impair_and_repair_runs_on_token_ids_and_records_its_noise(text_task, factory, space):
    _, data = text_task
    history = rt.History()
    context = UnlearnContext(torch.device("cpu"), 4, "class", (1,), 0)
    model = impair_and_repair(factory(), forget_labels=torch.ones(20, dtype=torch.long), retain=data,
                              input_shape=(12,), config=UnsirConfig(noise_steps=3), context=context, history=history)
    assert isinstance(model, factory)
    (record,) = [r for r in history.records if r["stage"] == "noise"]
    assert record["noise_space"] == space and record["noise_samples"] == 32


def test_transformer_layers_are_reinitialised():
    model = TextClassifier()
    before = model.encoder.layers[0].self_attn.in_proj_weight.detach().clone()
    reinitialize(model, seed=1)
    assert not torch.equal(before, model.encoder.layers[0].self_attn.in_proj_weight)


@pytest.mark.parametrize(("factory", "sample"), [(TextClassifier, token_sequences(3)[0]),
                                                 (DictOutputNet, np.random.default_rng(0).random((3, 1, 8, 8)))],
                         ids=["tokens-object-output", "dict-output"])
def test_the_onnx_copy_holds_the_class_scores_and_the_input_dtype(tmp_path, factory, sample):
    import onnx

    model = factory().eval()
    sample = torch.as_tensor(sample, dtype=torch.int64 if sample.dtype.kind == "i" else torch.float32)
    check = export_onnx(model, sample, tmp_path / "model.onnx")
    assert check.max_abs_diff <= ONNX_TOLERANCE
    graph = onnx.load(str(check.path)).graph
    assert [o.name for o in graph.output] == ["logits"]
    expected = onnx.TensorProto.INT64 if sample.dtype == torch.int64 else onnx.TensorProto.FLOAT
    assert graph.input[0].type.tensor_type.elem_type == expected


# ------------------------------------------------------------------------------------------- bad outputs, every door

BAD_MODULE = "badnets"
BAD_SOURCE = '''
import torch
from torch import nn


class BadNet(nn.Module):
    """Flat digits in; ``forward`` returns what its kind says."""

    def __init__(self, kind):
        super().__init__()
        self.kind, self.fc = kind, nn.Linear(64, 10)

    def forward(self, x):
        scores = self.fc(x.flatten(1))
        return {"string": lambda: "positive", "dict-without-logits": lambda: {"probs": scores.softmax(1)},
                "empty-tuple": lambda: (), "scores-per-token": lambda: scores[..., None],
                "predicted-labels": lambda: scores.argmax(1)}[self.kind]()


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x, mask):
        return self.fc(x.flatten(1) * mask)
'''
BAD_CASES = {  # test id -> (constructor, message)
    "string": ("BadNet('string')", "The model returned a str;"),
    "dict-without-logits": ("BadNet('dict-without-logits')",
                            "The model returned a dict with keys ['probs'] but no 'logits';"),
    "empty-tuple": ("BadNet('empty-tuple')", "The model returned an empty tuple;"),
    "scores-per-token": ("BadNet('scores-per-token')", "class scores have dtype float32 and shape (2, 10, 1);"),
    "predicted-labels": ("BadNet('predicted-labels')", "class scores have dtype int64 and shape (2,);"),
    "two-inputs": ("TwoInputs()", "TwoInputs.forward needs 2 inputs (x, mask)"),
}


def _forget_bad_module() -> None:
    sys.modules.pop(BAD_MODULE, None)


@pytest.fixture(scope="module")
def bad_registry(sqlite_store):
    """One registered version per bad case, logged with MLflow's own ``log_model`` (``mlflow_unlearn.log_model``
    refuses them) in the trainable format with the module of its class."""
    store = sqlite_store("bad-outputs")
    root, uri, experiment = store.root, store.uri, store.experiment
    code = root / "user_code"
    code.mkdir()
    (code / f"{BAD_MODULE}.py").write_text(BAD_SOURCE)
    sys.path.insert(0, str(code))
    try:
        import badnets

        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        for case, (constructor, _) in BAD_CASES.items():
            with mlflow.start_run(experiment_id=experiment):
                mlflow.pytorch.log_model(eval(constructor, vars(badnets)), name="model",
                                         serialization_format="pickle", pip_requirements=["torch"],
                                         code_paths=[str(code / f"{BAD_MODULE}.py")], registered_model_name=case)
    finally:
        sys.path.remove(str(code))
        _forget_bad_module()
    return uri, root, experiment, code


def _counts(uri: str, experiment: str) -> tuple[int, int]:
    client = MlflowClient(uri, uri)
    return len(client.search_runs([experiment])), len(client.search_model_versions())


@pytest.mark.parametrize("case", BAD_CASES, ids=BAD_CASES)
def test_a_bad_output_is_one_line_from_every_door_and_nothing_is_registered(bad_registry, case):
    uri, root, experiment, code = bad_registry
    message = BAD_CASES[case][1]
    before = _counts(uri, experiment)
    target = f"models:/{case}/1"
    with pytest.raises(ValueError) as info:
        mlflow_unlearn.unlearn(target, forget="classes:3", data="digits", method="finetune", tracking_uri=uri,
                               registry_uri=uri)
    assert message in str(info.value) and "\n" not in str(info.value)
    result = CliRunner().invoke(cli, ["unlearn", target, "--forget", "classes:3", "--data", "digits", "--method",
                                      "finetune"], env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri})
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("Error: ") and message in result.output
    request = parse_request("forget=classes:3; method=finetune; data=digits", SecurityPolicy(allowed_roots=(root,)))
    with pytest.raises(RequestRefused) as refused:
        preflight(request, target, client=MlflowClient(uri, uri))  # refused before a job is launched
    assert message in str(refused.value)
    sys.path.insert(0, str(code))
    try:
        import badnets

        with pytest.raises(ValueError) as logged:  # mlflow_unlearn.log_model refuses it before logging anything
            mlflow_unlearn.log_model(eval(BAD_CASES[case][0], vars(badnets)), data="digits",
                                     registered_model_name=f"{case}-again", experiment=experiment, tracking_uri=uri,
                                     registry_uri=uri)
        assert message in str(logged.value)
    finally:
        sys.path.remove(str(code))
        _forget_bad_module()
    assert _counts(uri, experiment) == before, "no run or version may be left behind"
