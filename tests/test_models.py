"""Model registry: every registered architecture builds for several input shapes and rejects bad arguments."""

import pytest
import torch

from mlflow_unlearn.models import create_model, list_models, register_model


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(("channels", "size"), [(1, 8), (1, 28), (3, 32)])
def test_every_model_maps_inputs_to_class_logits(name, channels, size):
    model = create_model(name, in_channels=channels, num_classes=7, input_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_builtins_are_registered():
    assert {"mlp", "smallcnn", "resnet18"} <= set(list_models())


def test_resnet18_cifar_stem_keeps_spatial_resolution():
    model = create_model("resnet18", in_channels=3, num_classes=10, input_size=32)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    imagenet = create_model("resnet18", in_channels=1, num_classes=10, input_size=224)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.in_channels == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "vit_huge"}, "Unknown model 'vit_huge'; expected one of: bncnn, mlp, resnet18, smallcnn"),
        ({"num_classes": 0}, "`num_classes` to be a positive int but got 0"),
        ({"num_classes": 1}, "`num_classes` to be at least 2"),
        ({"in_channels": -1}, "`in_channels` to be a positive int but got -1"),
        ({"input_size": 2.5}, "`input_size` to be a positive int but got 2.5"),
    ],
)
def test_bad_model_arguments_are_named(kwargs, match):
    args = {"name": "smallcnn", "in_channels": 1, "num_classes": 10, "input_size": 8, **kwargs}
    name = args.pop("name")
    with pytest.raises(ValueError, match=match):
        create_model(name, **args)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp")(lambda **kw: None)


def test_sample_shape_flat_features_and_non_square_images():
    flat = create_model("mlp", in_channels=1, num_classes=3, input_size=20, input_shape=(20,))
    assert flat(torch.zeros(4, 20)).shape == (4, 3)
    wide = create_model("mlp", in_channels=2, num_classes=5, input_size=12, input_shape=(2, 6, 12))
    assert wide(torch.zeros(4, 2, 6, 12)).shape == (4, 5)
    cnn = create_model("smallcnn", in_channels=1, num_classes=4, input_size=28, input_shape=(1, 20, 28))
    assert cnn(torch.zeros(2, 1, 20, 28)).shape == (2, 4)
    for name in ("smallcnn", "resnet18"):
        with pytest.raises(ValueError, match="use 'mlp' for flat feature vectors"):
            create_model(name, in_channels=1, num_classes=3, input_size=20, input_shape=(20,))
    with pytest.raises(ValueError, match="`input_shape` to be a tuple of positive ints"):
        create_model("mlp", in_channels=1, num_classes=3, input_size=20, input_shape=(0, 20))
