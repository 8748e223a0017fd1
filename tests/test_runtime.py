"""mlflow_unlearn.runtime: device resolution, and the fast inference copy behind every inference pass (teacher
targets, curriculum scores, evaluation)."""

import copy

import pytest
import torch
from torch import nn

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.data import SampleSet
from mlflow_unlearn.methods._loops import predict_logits
from mlflow_unlearn.metrics import collect_outputs
from mlflow_unlearn.models import create_model, list_models
from mlflow_unlearn.runtime.loaders import batch_reader


def _with_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with non-trivial BatchNorm statistics and affine weights, so that folding them changes weights."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


def _eval_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", list_models())
def test_inference_copy_computes_the_same_outputs_and_leaves_the_model_alone(name):
    torch.manual_seed(0)
    model = _with_statistics(create_model(name, in_channels=1, num_classes=10, input_size=28))
    before, layers = copy.deepcopy(model.state_dict()), [type(m) for m in model.modules()]
    x = torch.rand(8, 1, 28, 28)
    expected = _eval_outputs(model, x)
    with torch.no_grad():
        got = rt.InferenceRunner(model)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert [type(m) for m in model.modules()] == layers


def test_smallcnn_copy_folds_its_batch_norms_and_uses_channels_last():
    model = _with_statistics(create_model("smallcnn", in_channels=1, num_classes=10, input_size=28))
    fast = rt.inference_copy(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2
    conv = next(m for m in fast.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(p.requires_grad for p in fast.parameters())


def test_linear_batch_norm_pairs_fold_and_plain_mlps_need_no_copy():
    with_norm = _with_statistics(nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.ReLU(),
                                               nn.Linear(6, 3)))
    fast = rt.inference_copy(with_norm)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in fast.modules())
    x = torch.rand(5, 3, 2, 2)
    torch.testing.assert_close(_eval_outputs(fast, x), _eval_outputs(with_norm, x), rtol=1e-5, atol=1e-5)
    assert rt.inference_copy(nn.Sequential(nn.Flatten(), nn.Linear(12, 3))) is None


def test_batch_norm_without_running_statistics_is_not_folded():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten(),
                          nn.LazyLinear(2)).eval()
    x = torch.rand(6, 1, 5, 5)
    expected = _eval_outputs(model, x)
    fast = rt.inference_copy(model)
    assert any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    with torch.no_grad():
        torch.testing.assert_close(rt.InferenceRunner(model)(x), expected, rtol=1e-5, atol=1e-5)


class _ViewHead(nn.Module):
    """Layout-dependent user code: ``.view`` on a convolution's output fails on channels_last tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.fc(h.view(h.shape[0], -1))


def test_layout_dependent_models_fall_back_to_the_model_itself():
    model = _ViewHead().eval()
    x = torch.rand(4, 1, 6, 6)
    with pytest.raises(RuntimeError):
        _eval_outputs(rt.inference_copy(model), x.contiguous(memory_format=torch.channels_last))
    run = rt.InferenceRunner(model)
    with torch.no_grad():
        torch.testing.assert_close(run(x), _eval_outputs(model, x))
        assert run.fast is None
        torch.testing.assert_close(run(x[:2]), _eval_outputs(model, x[:2]))


def test_predict_logits_and_collect_outputs_match_a_plain_eval_pass():
    torch.manual_seed(1)
    model = _with_statistics(create_model("smallcnn", in_channels=1, num_classes=10, input_size=8)).train()
    x = torch.rand(300, 1, 8, 8)
    model.eval()
    expected = _eval_outputs(model, x)
    model.train()
    logits = predict_logits(model, x, device=torch.device("cpu"), batch_size=128)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert model.training
    data = SampleSet(x, torch.zeros(300, dtype=torch.long), torch.arange(300).numpy(), num_classes=10)
    out = collect_outputs(model, data, device="cpu", batch_size=64)
    torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-4)
    assert model.training


def test_classifier_inputs_come_from_the_inference_copy_and_match_a_plain_pass():
    from mlflow_unlearn.methods.eu_k import _module_inputs, classifier_inputs

    cpu = torch.device("cpu")
    model = _with_statistics(create_model("smallcnn", in_channels=1, num_classes=10, input_size=8)).train()
    x = torch.rand(300, 1, 8, 8)
    features = classifier_inputs(model, model.head, "head", x, device=cpu, batch_size=128)
    model.eval()
    expected = _module_inputs(model, model.head, "head", x, device=cpu, batch_size=128)
    assert features.shape == (300, 64, 4, 4) and features.is_contiguous()
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)
    # Layout-dependent code fails on the copy: the model itself computes them.
    view = _ViewHead().eval()
    x = torch.rand(8, 1, 6, 6)
    torch.testing.assert_close(classifier_inputs(view, view.fc, "fc", x, device=cpu),
                               view.conv(x).detach().flatten(1))


class _PerSample(torch.utils.data.Dataset):
    """A user's dataset: samples one at a time (it may transform them), so the loader must ask for each."""

    def __init__(self, data: SampleSet) -> None:
        self.data, self.calls = data, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        self.calls += 1
        return self.data[index]


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [False, True])
def test_loaders_fetch_in_memory_samples_per_batch_and_give_the_same_batches(shuffle, drop_last):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(150, 1, 4, 4, generator=gen), torch.randint(0, 3, (150,), generator=gen)
    data = SampleSet(x, y, torch.arange(150).numpy(), num_classes=3)
    user = _PerSample(data)
    expected = [(bx, by) for bx, by in torch.utils.data.DataLoader(
        data, batch_size=32, shuffle=shuffle, drop_last=drop_last, generator=torch.Generator().manual_seed(5 + 7919))]
    for dataset in (data, torch.utils.data.TensorDataset(x, y), user):
        loader = rt.make_loader(dataset, batch_size=32, shuffle=shuffle, seed=5, epoch=1, drop_last=drop_last)
        batches = list(loader)
        assert len(loader) == len(batches) == len(expected) == (4 if drop_last else 5)
        for (bx, by), (ex, ey) in zip(batches, expected, strict=True):
            assert torch.equal(bx, ex) and torch.equal(by, ey) and by.dtype == ey.dtype
    assert user.calls == (128 if drop_last else 150)  # the user's dataset was asked sample by sample
    assert batch_reader(data) is not None and batch_reader(user) is None


def test_device_resolution():
    assert rt.resolve_device("cpu").type == "cpu"
    assert rt.resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="`device` to be 'auto', 'cpu' or 'cuda"):
        rt.resolve_device("tpu:banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available"):
            rt.resolve_device("cuda")


def test_errors_are_exported_from_the_package_root():
    import mlflow_unlearn

    assert mlflow_unlearn.UnlearningDivergedError is rt.UnlearningDivergedError
    assert "UnlearningDivergedError" in mlflow_unlearn.__all__
