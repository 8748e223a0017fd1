"""One registry of unlearning methods (``register_method`` / ``get_method`` / ``list_methods``).

Every method is a function with the same signature::

    @register_method("finetune", FinetuneConfig, distributed=True)
    def finetune(model, *, forget, retain, config, context) -> tuple[nn.Module, History]

It receives a private deep copy of the model already moved to ``context.device`` (the caller's model is
never modified), the forget and retain ``Dataset``s of ``(x, y)`` pairs, its validated config dataclass
and an :class:`UnlearnContext`; it returns the unlearned model and a :class:`History`.
:func:`run_method` does the shared work: validation before any expensive step, the copy, device
placement, timing, and the final finite-output check.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.assess.collapse import check_not_collapsed
from mlflow_unlearn.models.interface import check_one_input, class_scores
from mlflow_unlearn.registries import Registry


@dataclass(frozen=True)
class UnlearnContext:
    """What a method may need besides its config.

    Args:
        device: where to run.
        num_classes: the model's number of outputs.
        forget_kind: ``"class"`` (whole classes are forgotten) or ``"sample"`` (individual samples).
        forget_classes: the forgotten classes for class-wise forgetting, else empty.
        seed: seed for all randomness of the method.
        nonmember: samples of the task that the model never trained on and that no metric will be computed on
            (:func:`mlflow_unlearn.data.nonmember.hold_out_nonmembers`), a Dataset of ``(x, y)``; None when the
            caller has none.
    """

    device: torch.device
    num_classes: int
    forget_kind: str = "sample"
    forget_classes: tuple[int, ...] = ()
    seed: int = 0
    nonmember: Dataset | None = field(default=None, repr=False)


@dataclass
class UnlearnResult:
    """A method's output: the new model, its history, and the resolved config."""

    model: nn.Module
    history: rt.History
    method: str
    config: Any

    @property
    def wall_time_s(self) -> float:
        return self.history.wall_time_s


MethodFn = Callable[..., "tuple[nn.Module, rt.History]"]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its function, config class, and whether it runs under ``torchrun``."""

    name: str
    fn: MethodFn
    config_cls: type
    distributed: bool = False
    is_reference: bool = False
    summary: str = field(default="")
    uses_nonmember: bool | tuple[str, ...] = False

    def reads_nonmember(self, forget_kind: str) -> bool:
        """Whether the method reads ``context.nonmember`` when it forgets ``forget_kind`` (``"class"``/``"sample"``).

        >>> MethodSpec("m", print, object, uses_nonmember=("sample",)).reads_nonmember("class")
        False
        """
        return forget_kind in self.uses_nonmember if isinstance(self.uses_nonmember, tuple) else self.uses_nonmember


METHODS: Registry[MethodSpec] = Registry("unlearning method")
"""Every registered method by name (:meth:`~mlflow_unlearn.registries.Registry.unregister` removes one again)."""


def register_method(
    name: str, config_cls: type, *, distributed: bool = False, is_reference: bool = False,
    uses_nonmember: bool | tuple[str, ...] = False,
) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn`` as unlearning method ``name`` configured by dataclass ``config_cls``.

    Args:
        name: the registry key (used on the command line and in MLflow tags).
        config_cls: a dataclass validated in its ``__post_init__``; every field has a default.
        distributed: the method supports DistributedDataParallel under ``torchrun``.
        is_reference: the method is a reference (``retrain``), not an approximate unlearning method.
        uses_nonmember: the method reads ``context.nonmember`` (``True``, or the forget kinds for which it does, e.g.
            ``("sample",)``): only then does a run set non-members aside from the test side (which shrinks what the
            metrics see).

    Raises:
        TypeError: ``config_cls`` is not a dataclass.
        ValueError: (when decorating) a method named ``name`` is already registered.
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config_cls for method {name!r} must be a dataclass, got {config_cls!r}")

    def spec(fn: MethodFn) -> MethodSpec:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        return MethodSpec(name, fn, config_cls, distributed, is_reference, summary, uses_nonmember)

    return METHODS.decorator(name, spec)


def unregister_method(name: str) -> MethodSpec:
    """Remove method ``name`` from the registry and return its spec (e.g. a test's own method, afterwards).

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    return METHODS.unregister(name)


def list_methods(*, include_reference: bool = True) -> list[str]:
    """Names of the registered methods, sorted.

    >>> {"nitc", "retrain", "finetune"} <= set(list_methods())
    True
    """
    return [n for n, s in METHODS.items() if include_reference or not s.is_reference]


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    return METHODS.get(name)


def build_config(name: str, config: Any = None) -> Any:
    """Resolve ``config`` (None, a mapping of overrides, or the method's dataclass) to a validated dataclass.

    Raises:
        ValueError: for unknown keys (listing the accepted ones) or invalid values.
    """
    spec = get_method(name)
    if config is None:
        return spec.config_cls()
    if isinstance(config, spec.config_cls):
        return config
    if not isinstance(config, Mapping):
        raise ValueError(
            f"Expected the config of method {name!r} to be a mapping or {spec.config_cls.__name__}, "
            f"got {type(config).__name__}"
        )
    fields = {f.name: f for f in dataclasses.fields(spec.config_cls)}
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise ValueError(
            f"Unknown config key(s) for method {name!r}: {', '.join(unknown)}; accepted: {', '.join(sorted(fields))}"
        )
    try:
        return spec.config_cls(**dict(config))
    except TypeError as exc:
        raise ValueError(f"Invalid config for method {name!r}: {exc}") from exc


def config_to_dict(config: Any) -> dict[str, Any]:
    """A flat dict of a config dataclass (nested dataclasses flattened with dots)."""
    out: dict[str, Any] = {}
    for key, value in dataclasses.asdict(config).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _infer_num_classes(model: nn.Module, sample: torch.Tensor) -> int:
    """The number of class scores of ``model`` on one ``sample``, read by :func:`~mlflow_unlearn.models.class_scores`.

    Raises:
        ModelInputError: ``forward`` needs more than one input.
        ModelOutputError: the output holds no ``(batch, classes)`` class scores.
    """
    check_one_input(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.as_tensor(sample).unsqueeze(0).to(next(model.parameters()).device))
    finally:
        model.train(was_training)
    return int(class_scores(out).shape[1])


def _max_label(data: Dataset) -> int:
    return int(rt.dataset_labels(data).max())


def run_method(
    name: str,
    model: nn.Module,
    *,
    forget: Dataset,
    retain: Dataset,
    config: Any = None,
    device: str | torch.device | None = None,
    forget_kind: str = "sample",
    forget_classes: tuple[int, ...] = (),
    seed: int = 0,
    nonmember: Dataset | None = None,
) -> UnlearnResult:
    """Run method ``name`` on a copy of ``model`` and return the result; ``model`` is left untouched.

    Args:
        name: a registered method (see :func:`list_methods`).
        model: the trained model.
        forget: the samples to forget, a Dataset of ``(x, y)``.
        retain: the samples to keep.
        config: None (defaults), a mapping of overrides, or the method's config dataclass.
        device: ``None``/``"auto"``, ``"cpu"``, ``"cuda"``.
        forget_kind: ``"class"`` or ``"sample"``.
        forget_classes: the forgotten classes when ``forget_kind == "class"``.
        seed: seed for the method's randomness.
        nonmember: samples the model never trained on, kept out of every metric (see
            :func:`mlflow_unlearn.data.nonmember.hold_out_nonmembers`); methods that use them (``nitc``) fall back
            to what they can do without when None.

    Raises:
        ValueError: unknown method, invalid config, empty forget or retain set, labels that the model's
            outputs cannot represent (class-count mismatch), unknown ``forget_kind``.
        UnlearningDivergedError: the method's loss became NaN or infinite, or it collapsed the model (see
            :func:`~mlflow_unlearn.assess.collapse.check_not_collapsed`).
    """
    spec = get_method(name)
    cfg = build_config(name, config)
    if forget_kind not in ("class", "sample"):
        raise ValueError(f"Expected `forget_kind` to be 'class' or 'sample' but got {forget_kind!r}")
    if len(forget) == 0:
        raise ValueError("The forget set is empty: there is nothing to unlearn. Check the forget specification.")
    if len(retain) == 0:
        raise ValueError("The retain set is empty: forgetting the whole training set is retraining from nothing.")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("The model has no trainable parameters (is it a pt2/exported or frozen module?)")
    dev = rt.resolve_device(device)
    student = copy.deepcopy(model)
    student = rt.prepare_model(student, dev)
    num_classes = _infer_num_classes(student, forget[0][0])
    nonmember = nonmember if nonmember is not None and len(nonmember) else None
    top = max(_max_label(forget), _max_label(retain), _max_label(nonmember) if nonmember is not None else 0)
    if top >= num_classes:
        raise ValueError(
            f"Class-count mismatch: the data has label {top} but the model outputs only {num_classes} classes. "
            "Use the data the model was trained on."
        )
    if nonmember is not None:
        shapes = tuple(torch.as_tensor(nonmember[0][0]).shape), tuple(torch.as_tensor(forget[0][0]).shape)
        if shapes[0] != shapes[1]:
            raise ValueError(f"The non-member samples have shape {shapes[0]} but the forget samples {shapes[1]}; "
                             "pass held-out samples of the same data")
    ctx = UnlearnContext(dev, num_classes, forget_kind, tuple(int(c) for c in forget_classes), seed, nonmember)
    rt.seed_everything(seed)
    start = time.perf_counter()
    out_model, history = spec.fn(student, forget=forget, retain=retain, config=cfg, context=ctx)
    history.wall_time_s = time.perf_counter() - start
    out_model = rt.unwrap(out_model)
    for p in out_model.parameters():
        if not torch.isfinite(p).all():
            raise rt.UnlearningDivergedError(f"Method {name!r} produced non-finite weights; its result was discarded.")
    out_model.eval()
    if not spec.is_reference:  # retraining starts from scratch: its accuracy is its budget's, not a collapse
        check_not_collapsed(name, model, out_model, retain, num_classes=num_classes, seed=seed)
    return UnlearnResult(out_model, history, name, cfg)
