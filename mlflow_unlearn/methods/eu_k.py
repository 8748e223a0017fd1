"""EU-k: exact unlearning of the model's classifier, retrained from scratch on the frozen layers below it.

Goel et al., "Towards Adversarial Evaluations for Inexact Machine Unlearning", arXiv 2022,
https://arxiv.org/abs/2201.06640 (the EU-k baseline): the last ``k`` layers are re-initialised and trained
from scratch on the retain set with the original recipe, while the layers below keep their weights. Here
the last layers are one named submodule of the model, its classifier (``module``), so that the method
needs no knowledge of the architecture beyond that name.

The layers below the classifier do not change, so their output is computed once, in eval mode, for the
whole retain set (the input that the classifier receives there, captured by a forward pre-hook); the
re-initialised classifier is then trained on those stored inputs for the recipe's epochs. One forward pass
over the retain set replaces ``epochs`` passes through the whole model, which is what makes the method
cheap.

What it forgets depends on the architecture. The classifier is exact: it has never seen the forget data.
The frozen layers below it are not. On ``smallcnn`` the two-layer head holds about 88% of the weights
(1024 -> 128 -> classes), and there it comes close to retraining (``benchmarks/RESULTS.md``). In
torchvision's ``resnet18``, ``fc`` holds under 0.1% of the weights, and what the model memorised stays in the
frozen layers. ``history.extra["module_weight_fraction"]`` records the retrained share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.methods._loops import first_inputs, fit, labels_of
from mlflow_unlearn.methods.registry import UnlearnContext, register_method
from mlflow_unlearn.methods.validation import check_choice, check_non_negative, check_positive
from mlflow_unlearn.models.interface import class_scores
from mlflow_unlearn.models.surgery import reinitialize
from mlflow_unlearn.training import OPTIMIZERS, TrainConfig

CLASSIFIER_NAMES = ("head", "fc", "classifier")
"""Submodule names tried, in order, when ``module`` is not given (smallcnn, torchvision ResNets, VGG...)."""


@dataclass
class EuKConfig:
    """EU-k hyperparameters: the classifier to retrain, and the recipe (the original's by default).

    Args:
        module: dotted name of the classifier submodule, as in ``model.named_modules()`` (e.g. ``"head"``,
            ``"fc"``, ``"net.5"``); ``None`` = found (see :func:`find_classifier`): the first of
            ``CLASSIFIER_NAMES`` that returns the model's output, else the last such ``nn.Linear``. It must
            be called once per forward pass with one tensor, and its output must be the model's output.
        epochs, lr, batch_size, optimizer, weight_decay, label_smoothing: the training recipe of the
            classifier; the defaults are those of :class:`mlflow_unlearn.training.TrainConfig` (EU-k retrains
            with the original recipe).
    """

    module: str | None = None
    epochs: int = TrainConfig.epochs
    lr: float = TrainConfig.lr
    batch_size: int = TrainConfig.batch_size
    optimizer: str = TrainConfig.optimizer
    weight_decay: float = TrainConfig.weight_decay
    label_smoothing: float = TrainConfig.label_smoothing

    def __post_init__(self) -> None:
        check_positive(self, "epochs", "lr", "batch_size")
        check_choice(self, "optimizer", OPTIMIZERS)
        check_non_negative(self, "weight_decay")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"Expected argument `label_smoothing` in [0, 1) but got {self.label_smoothing!r}")
        if self.module is not None and not (isinstance(self.module, str) and self.module):
            raise ValueError("Expected argument `module` to be a submodule name such as 'head' or None but got "
                             f"{self.module!r}; retraining the whole model is the `retrain` method")


def find_classifier(model: nn.Module, name: str | None, sample: torch.Tensor | None = None) -> tuple[str, nn.Module]:
    """The classifier submodule ``name`` of ``model``; found when ``name`` is None.

    Found: the first of ``CLASSIFIER_NAMES`` whose output is the model's output, else the last ``nn.Linear``
    whose output is the model's output (seen by forward hooks on one eval-mode pass over ``sample``), so a
    classifier named ``fc2``, ``out_proj`` or ``net.5`` is found too.

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> find_classifier(net, None, torch.zeros(2, 4))[0]
    '2'

    Raises:
        ValueError: no such submodule, one without parameters, or none found (the message says how to name it).
    """
    modules = dict(model.named_modules())
    modules.pop("", None)
    top = ", ".join(n for n, _ in model.named_children()) or "none"
    if name is None:
        producing = _output_producers(model, sample) if sample is not None else []
        name = next((n for n in CLASSIFIER_NAMES if n in producing), None)
        name = name or next((n for n in reversed(producing) if isinstance(modules[n], nn.Linear)), None)
        if name is None:
            raise ValueError(f"eu_k found no classifier in {type(model).__name__}: no submodule named "
                             f"{', '.join(CLASSIFIER_NAMES)} and no nn.Linear returns the model's output (its "
                             f"top-level modules: {top}); set config `module` to the name of the layers to retrain, "
                             "as in model.named_modules()")
    elif name not in modules:
        raise ValueError(f"eu_k: {type(model).__name__} has no submodule {name!r} (its top-level modules: {top})")
    module = modules[name]
    if not any(True for _ in module.parameters()):
        raise ValueError(f"eu_k: submodule {name!r} has no parameters, so there is nothing to retrain")
    return name, module


@torch.no_grad()
def _output_producers(model: nn.Module, sample: torch.Tensor) -> list[str]:
    """The names of the submodules whose output is the model's output on ``sample`` (eval mode), in call order."""
    calls: list[tuple[str, torch.Tensor]] = []
    handles = [module.register_forward_hook(lambda _m, _a, out, n=n: calls.append((n, out)))
               for n, module in model.named_modules() if n]
    was_training = model.training
    try:
        logits = class_scores(model.eval()(sample))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [n for n, out in calls if out is logits]


@torch.no_grad()
def classifier_inputs(model: nn.Module, module: nn.Module, name: str, x: torch.Tensor | Dataset, *,
                      device: torch.device, batch_size: int = 256, start: nn.Module | None = None) -> torch.Tensor:
    """What ``module`` receives for each input of ``x`` (a tensor of inputs, or a Dataset of ``(x, ...)`` read in one
    streaming pass) in the eval-mode ``model``, as float32 on the CPU, one row per sample.

    ``start``: a submodule called before ``module`` whose input is captured instead (the first layer of a
    re-initialised suffix that ends with ``module``, see :func:`mlflow_unlearn.models.surgery.head_suffix`).

    The batches run through the model's inference copy (:func:`mlflow_unlearn.runtime.inference_copy`: BatchNorm
    folded, channels_last; on mnist5k's smallcnn a third of the time), or through ``model`` itself when it has none
    or the copy fails.

    Raises:
        ValueError: the module was not called exactly once per forward pass with one tensor, or its output
            is not the model's output (then its inputs cannot stand in for the layers below it).
        UnlearningDivergedError: the layers below the module give non-finite outputs.
    """
    was_training = model.training
    model.eval()
    try:
        fast = rt.inference_copy(model)
        names = {id(m): n for n, m in rt.unwrap(model).named_modules()}
        twins = dict(fast.named_modules()) if fast is not None else {}
        twin = twins.get(names.get(id(module), ""))
        twin_start = twins.get(names.get(id(start), "")) if start is not None else twin
        features = None
        if twin is not None and twin_start is not None:
            try:
                features = _module_inputs(fast, twin, name, x, device=device, batch_size=batch_size,
                                          channels_last=True, start=twin_start)
            except (RuntimeError, ValueError):  # the model itself decides, and words any error
                features = None
        if features is None:
            features = _module_inputs(model, module, name, x, device=device, batch_size=batch_size, start=start)
    finally:
        model.train(was_training)
    if not torch.isfinite(features).all():
        raise rt.UnlearningDivergedError(f"the layers below {name!r} give non-finite outputs; check the model's "
                                         "weights and the data for NaN values")
    return features


def _module_inputs(model: nn.Module, module: nn.Module, name: str, x: torch.Tensor | Dataset, *, device: torch.device,
                   batch_size: int, channels_last: bool = False, start: nn.Module | None = None) -> torch.Tensor:
    """The inputs of ``module`` (or of ``start``, called before it) in the eval-mode ``model`` on ``x``, checked as
    :func:`classifier_inputs` says; ``channels_last`` feeds image batches in that memory format (an inference
    copy's)."""
    captured: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []

    def grab(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
            raise ValueError(f"eu_k: submodule {name!r} must be called with one tensor, not {len(args)} "
                             f"positional and {len(kwargs)} keyword argument(s)")
        captured.append(args[0].float().cpu().contiguous())

    def keep(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
        outputs.append(output)

    handles = [(start or module).register_forward_pre_hook(grab, with_kwargs=True), module.register_forward_hook(keep)]
    inputs = []
    try:
        data = TensorDataset(x) if isinstance(x, torch.Tensor) else x
        for batch_inputs, *_ in rt.inference_loader(data, batch_size=batch_size, device=device):
            captured.clear()
            outputs.clear()
            batch = rt.to_device(batch_inputs, device)
            if channels_last and batch.dim() == 4:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with rt.autocast(device):
                logits = class_scores(model(batch))
            if len(captured) != 1:
                raise ValueError(f"eu_k: submodule {name!r} must be the last step of the model's forward pass, "
                                 f"called once; it was called {len(captured)} time(s)")
            if outputs[0] is not logits:
                raise ValueError(f"eu_k: submodule {name!r} must be the last step of the model's forward pass; "
                                 "its output is not the model's output")
            inputs.append(captured[0])
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(inputs)


@register_method("eu_k", EuKConfig)
def eu_k(
    model: nn.Module, *, forget: Dataset, retain: Dataset, config: EuKConfig, context: UnlearnContext
) -> tuple[nn.Module, rt.History]:
    """Re-initialise the classifier submodule and train it from scratch on the retain set, layers below frozen."""
    history = rt.History()
    name, module = find_classifier(model, config.module, rt.to_device(first_inputs(retain, 2), context.device))
    features = classifier_inputs(model, module, name, retain, device=context.device)
    reinitialize(module, seed=context.seed)
    module = fit(module, TensorDataset(features, labels_of(retain)),
                 lambda net, x, y: F.cross_entropy(net(x).float(), y, label_smoothing=config.label_smoothing),
                 context=context, epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                 optimizer=config.optimizer, weight_decay=config.weight_decay, history=history, stage="eu_k",
                 schedule="cosine")
    total = sum(p.numel() for p in model.parameters())
    history.extra.update(module=name, module_weight_fraction=sum(p.numel() for p in module.parameters()) / total)
    return model, history
