"""The one registry type (:class:`mlflow_unlearn.registries.Registry`) and its contract for each registry the engine
keeps: methods, models, data sources and forget-spec forms. Each registers an entry of its own, finds it through
the public names, refuses a second one under the same name, and removes it again through ``unregister``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from mlflow_unlearn import data, methods, models
from mlflow_unlearn.data import forget as forget_module
from mlflow_unlearn.data.sources import LOADERS
from mlflow_unlearn.methods.registry import METHODS
from mlflow_unlearn.models.registry import MODELS
from mlflow_unlearn.registries import Registry

NAME = "contract_test_entry"


@dataclass
class _NoConfig:
    pass


def _method(model, *, forget, retain, config, context):
    """Return the model as it is."""
    from mlflow_unlearn.runtime import History

    return model, History()


def _model(*, in_channels: int, num_classes: int, input_size: int, **kwargs) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size * input_size, num_classes))


def _source(argument: str, options: dict[str, str]) -> data.RawSamples:
    return data.RawSamples(np.zeros((20, 1, 2, 2), dtype=np.float32), np.arange(20) % 2, np.arange(20), 2)


def _select(split, spec):
    return forget_module._Selection(np.ones(len(split.train), dtype=bool), "sample")


@dataclass(frozen=True)
class Contract:
    """How one registry is used through its public names."""

    registry: Registry
    register: Callable[[], object]
    unregister: Callable[[], object]
    listed: Callable[[], list[str]]
    use: Callable[[], object]


CONTRACTS = {
    "methods": Contract(METHODS, lambda: methods.register_method(NAME, _NoConfig)(_method),
                        lambda: methods.unregister_method(NAME), methods.list_methods,
                        lambda: methods.get_method(NAME).fn),
    "models": Contract(MODELS, lambda: models.register_model(NAME)(_model),
                       lambda: models.unregister_model(NAME), models.list_models,
                       lambda: models.create_model(NAME, in_channels=1, num_classes=2, input_size=2)),
    "sources": Contract(LOADERS, lambda: data.register_source(NAME, syntax=NAME, takes_argument=False)(
                            _source),
                        lambda: data.unregister_source(NAME), data.list_sources, lambda: data.load_data(NAME)),
    "forget spec forms": Contract(forget_module.SPEC_FORM_REGISTRY,
                                  lambda: forget_module._register_spec_form(
                                      NAME, f"{NAME}:", lambda text, argument: forget_module.ForgetSpec(
                                          text, NAME))(_select),
                                  lambda: forget_module.SPEC_FORM_REGISTRY.unregister(NAME),
                                  forget_module.SPEC_FORM_REGISTRY.names,
                                  lambda: forget_module.parse_forget_spec(f"{NAME}:x")),
}


@pytest.mark.parametrize("contract", CONTRACTS.values(), ids=CONTRACTS.keys())
def test_register_list_use_refuse_duplicate_unregister(contract: Contract) -> None:
    before = contract.listed()
    assert NAME not in before
    contract.register()
    try:
        assert NAME in contract.listed() and NAME in contract.registry
        assert contract.use() is not None
        with pytest.raises(ValueError, match="already registered"):
            contract.register()
    finally:
        contract.unregister()
    assert contract.listed() == before
    with pytest.raises(ValueError):
        contract.use()
    with pytest.raises(ValueError, match=f"Unknown .*{NAME}.*expected one of"):
        contract.unregister()


def test_an_unregistered_source_is_gone_from_the_grammar_too() -> None:
    data.register_source(NAME, syntax=NAME, takes_argument=False)(_source)
    assert data.parse_source(NAME).name == NAME
    data.unregister_source(NAME)
    with pytest.raises(ValueError, match="Unknown data source"):
        data.parse_source(NAME)


def test_the_built_in_entries_are_registered() -> None:
    assert {"nitc", "retrain", "finetune", "scrub", "salun"} <= set(methods.list_methods())
    assert {"mlp", "smallcnn", "resnet18"} <= set(models.list_models())
    assert {"digits", "mnist5k", "npz", "imagefolder", "torchvision", "csv", "parquet", "factory"} <= set(
        data.list_sources())
    assert forget_module.SPEC_FORMS == ("classes", "ids", "random")


@pytest.mark.parametrize("name", ["", None, 3], ids=["empty", "none", "int"])
def test_a_bad_name_is_refused(name) -> None:
    with pytest.raises(ValueError, match="non-empty str"):
        Registry[int]("colour").register(name, 1)


def test_an_unknown_name_lists_the_known_ones() -> None:
    reg = Registry[torch.Tensor]("tensor")
    reg.register("b", torch.zeros(1))
    reg.register("a", torch.ones(1))
    assert list(reg) == ["a", "b"] and len(reg) == 2
    with pytest.raises(ValueError, match="Unknown tensor 'c'; expected one of: a, b"):
        reg.get("c")
