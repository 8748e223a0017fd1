"""UNSIR: error-maximizing noise, then impair and repair.

Tarun, Chundawat, Mandal & Kankanhalli, "Fast Yet Effective Machine Unlearning", IEEE TNNLS 2023,
https://arxiv.org/abs/2111.08947.

1. **Noise.** For every class to forget, a batch of inputs is learned that *maximizes* the frozen model's
   cross-entropy for that class, with an L2 penalty that keeps the noise bounded:
   ``min_noise  -CE(f(noise), c) + l2 * mean_i ||noise_i||^2``. The noise is also clipped to the value range
   of the retain inputs after every step: the paper works on standardized images where the L2 term alone
   keeps the noise at the data's scale; on [0, 1] inputs it grew to ~7x the data norm and the impair step
   then wrecked every class.
   The noise is labelled with the **real** forget class ``c`` (a widely copied reference notebook labels
   every class 0, which teaches class 0 instead of impairing the forgotten classes).
2. **Impair.** One epoch at a high learning rate on the noise (labelled ``c``) mixed with a retain subset:
   fitting inputs that are maximally "not ``c``" to the label ``c`` scrambles the weights that encode ``c``.
3. **Repair.** One epoch at a lower learning rate on a retain subset restores the retained classes.

**Sample-wise forgetting.** There is no forget *class*, so the noise is defined per class *present in the
forget set*: for each label ``c`` among the forget samples, ``noise_samples / #labels`` inputs (at least
one) are learned to maximize the loss of ``c``, and the impair set holds as many noise samples labelled
``c`` as there are forget samples labelled ``c`` (each forget sample is, in effect, replaced by
error-maximizing noise with its label). Because every such class is also in the retain set, the repair
step brings its accuracy back to the level that the retain data alone supports: the intent is a model
that generalises to the forget samples the way it does to unseen data, without their memorised detail.
(Whether it gets there depends on the impair strength: NITC scales it down for sample-wise forgetting.)

**Integer inputs (token IDs).** Error-maximizing noise needs inputs that a gradient can move; token IDs are not.
For integer inputs the noise lives where the model's inputs first become continuous: the output of its first
``nn.Embedding`` called on the input (:func:`first_embedding`). Each noise row is a real retain sequence (seeded)
plus a learned perturbation of its embedded tokens, added by a forward hook (:class:`EmbeddingNoise`), optimised
with the same objective, steps, learning rate and L2 weight (on the perturbation), and kept within the value range
of the embedding's weights (as image noise is kept within the retain inputs' range). The impair step trains on
those rows, the hook adding each row's perturbation. A model with integer inputs and no such embedding (one that
one-hot encodes its input itself, say) cannot be given error-maximizing noise: its noise rows are random sequences
of the token values seen in the retain subset (no optimisation). The history's ``noise`` record says which was
used (``noise_space``: ``input``, ``embedding:<module name>`` or ``random-tokens``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, TensorDataset

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.methods._loops import (
    Retargeted,
    first_inputs,
    fit,
    input_shape,
    inputs_at,
    labels_of,
    random_subset,
    value_range,
)
from mlflow_unlearn.methods.registry import UnlearnContext, register_method
from mlflow_unlearn.methods.validation import check_choice, check_fraction, check_non_negative, check_positive
from mlflow_unlearn.models.interface import class_scores
from mlflow_unlearn.training import OPTIMIZERS


class ErrorMaxNoise(nn.Module):
    """Learnable inputs, one row per noise sample, each tied to the class whose loss it maximizes.

    Args:
        labels: the class of every noise sample (the real forget classes).
        input_shape: shape of one model input, e.g. ``(1, 28, 28)``.
        generator: seeds the standard-normal initialisation (identical on every rank under ``torchrun``).
    """

    def __init__(self, labels: torch.Tensor, input_shape: tuple[int, ...], *, generator: torch.Generator) -> None:
        super().__init__()
        self.noise = nn.Parameter(torch.randn(len(labels), *input_shape, generator=generator))
        self.register_buffer("labels", labels.long().clone())

    def forward(self) -> torch.Tensor:
        return self.noise


def learn_error_max_noise(
    model: nn.Module,
    classes: list[int] | tuple[int, ...],
    *,
    input_shape: tuple[int, ...],
    per_class: int,
    steps: int,
    lr: float,
    l2: float,
    device: torch.device,
    bounds: tuple[float, float] | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Learn ``per_class`` error-maximizing inputs for each class in ``classes`` against the frozen ``model``.

    Minimizes ``-CE(model(noise), label) + l2 * mean_i sum(noise_i ** 2)`` with Adam; the model is in eval
    mode and receives no gradient. All classes are optimised together as one batch (each noise row only
    depends on its own label, so this equals per-class optimisation, in fewer steps).

    Returns:
        ``(noise, labels)`` on the CPU: ``len(classes) * per_class`` inputs and their (real) classes.

    Raises:
        UnlearningDivergedError: if the objective becomes NaN or infinite.
    """
    gen = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(list(classes), dtype=torch.long).repeat_interleave(per_class)
    noise = ErrorMaxNoise(labels, input_shape, generator=gen).to(device)
    if bounds is not None:
        with torch.no_grad():
            noise.noise.clamp_(*bounds)
    was_training = model.training
    model.eval()
    net = rt.InferenceRunner(model)  # the model as evaluated, faster; gradients flow to the inputs alone
    opt = torch.optim.Adam(noise.parameters(), lr=lr)
    loss = torch.zeros((), device=device)
    for _ in range(steps):
        x = noise()
        with rt.autocast(device):
            logits = net(x)  # the runner returns the class scores
        loss = -F.cross_entropy(logits.float(), noise.labels) + l2 * x.pow(2).flatten(1).sum(1).mean()
        (grad,) = torch.autograd.grad(loss, [noise.noise])
        noise.noise.grad = grad
        opt.step()
        if bounds is not None:
            with torch.no_grad():
                noise.noise.clamp_(*bounds)
    rt.check_finite(loss, where="UNSIR noise optimisation")
    model.train(was_training)
    return noise.noise.detach().cpu(), labels


@torch.no_grad()
def first_embedding(model: nn.Module, sample: torch.Tensor) -> str | None:
    """The name (as in ``named_modules()``) of the first ``nn.Embedding`` that ``model`` calls on a tensor shaped like
    its input ``sample`` (eval mode, one pass): the token embedding, not a positional one called on ``arange``;
    ``None`` when there is none.

    >>> net = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2))
    >>> first_embedding(net, torch.zeros(2, 3, dtype=torch.long))
    '0'
    """
    found: list[str] = []

    def note(name: str):
        def hook(_module: nn.Module, args: tuple, _output: torch.Tensor) -> None:
            if args and getattr(args[0], "shape", None) == sample.shape:
                found.append(name)
        return hook

    handles = [module.register_forward_hook(note(name)) for name, module in model.named_modules()
               if isinstance(module, nn.Embedding)]
    if not handles:
        return None
    was_training = model.training
    try:
        model.eval()(sample)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return found[0] if found else None


@dataclass
class EmbeddingNoise:
    """Error-maximizing noise for integer inputs: per noise row, a real input and a perturbation of its embedding.

    Args:
        name: the embedding's name in ``model.named_modules()`` (see :func:`first_embedding`).
        base: the noise rows' inputs (token IDs of retain samples), on the CPU.
        delta: the perturbations added to the embedding's output for each row, on the CPU.
        labels: the class each row maximizes the loss of (the real forget classes).
    """

    name: str
    base: torch.Tensor
    delta: torch.Tensor
    labels: torch.Tensor

    @contextlib.contextmanager
    def added(self, model: nn.Module, rows: torch.Tensor):
        """Within the block, ``model``'s embedding adds ``delta[rows]`` to its output row by row (no row: -1).

        ``rows`` is on the model's device; each batch row is one call's sample.
        """
        module = dict(rt.unwrap(model).named_modules())[self.name]
        rows = rows.long()
        delta = self.delta.to(rows.device)[rows.clamp(min=0)]
        delta = delta * (rows >= 0).to(delta.dtype).view(-1, *[1] * (delta.dim() - 1))
        handle = module.register_forward_hook(lambda _m, _a, out: out + delta.to(out.dtype))
        try:
            yield
        finally:
            handle.remove()


def learn_embedding_noise(
    model: nn.Module,
    classes: list[int] | tuple[int, ...],
    *,
    inputs: Dataset | torch.Tensor,
    per_class: int,
    steps: int,
    lr: float,
    l2: float,
    device: torch.device,
    seed: int = 0,
) -> EmbeddingNoise | None:
    """:func:`learn_error_max_noise` for integer inputs, in the space of the model's first embedding.

    ``per_class`` rows per class, each a seeded draw from ``inputs`` (retain samples) whose embedded tokens get a
    perturbation ``delta`` that minimizes ``-CE(model, label) + l2 * mean_i sum(delta_i ** 2)`` (Adam, the model
    frozen in eval mode), the perturbed embedding kept within the range of the embedding's weights.

    Returns:
        The :class:`EmbeddingNoise`, or ``None`` when the model calls no ``nn.Embedding`` on its input.

    Raises:
        UnlearningDivergedError: if the objective becomes NaN or infinite.
    """
    if isinstance(inputs, torch.Tensor):
        inputs = TensorDataset(inputs)
    name = first_embedding(model, first_inputs(inputs, 2).to(device))
    if name is None:
        return None
    gen = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(list(classes), dtype=torch.long).repeat_interleave(per_class)
    base = inputs_at(inputs, torch.randint(len(inputs), (len(labels),), generator=gen).numpy())
    module = dict(model.named_modules())[name]
    was_training = model.training
    model.eval()
    clean: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _a, out: clean.append(out.detach().float()))
    try:
        with torch.no_grad():
            model(base.to(device))
    finally:
        handle.remove()
    weight = module.weight.detach().float()
    low, high = float(weight.min()) - clean[0], float(weight.max()) - clean[0]  # delta keeps clean + delta in range
    delta = (torch.randn(clean[0].shape, generator=gen) * float(weight.std())).to(device)
    delta = torch.maximum(torch.minimum(delta, high), low).requires_grad_()
    noise = EmbeddingNoise(name, base, delta, labels)
    target, inputs_on_device = labels.to(device), base.to(device)
    opt = torch.optim.Adam([delta], lr=lr)
    loss = torch.zeros((), device=device)
    handle = module.register_forward_hook(lambda _m, _a, out: out + delta.to(out.dtype))
    try:
        for _ in range(steps):
            with rt.autocast(device):
                logits = class_scores(model(inputs_on_device))
            loss = -F.cross_entropy(logits.float(), target) + l2 * delta.pow(2).flatten(1).sum(1).mean()
            (grad,) = torch.autograd.grad(loss, [delta])
            delta.grad = grad
            opt.step()
            with torch.no_grad():
                delta.copy_(torch.maximum(torch.minimum(delta, high), low))
    finally:
        handle.remove()
        model.train(was_training)
    rt.check_finite(loss, where="UNSIR embedding noise optimisation")
    noise.delta = delta.detach().cpu()
    return noise


def random_tokens(inputs: Dataset | torch.Tensor, count: int, *, seed: int) -> torch.Tensor:
    """``count`` random inputs shaped like ``inputs``' rows, each value drawn from the values that ``inputs`` hold
    (a tensor of rows, or a dataset of ``(input, ...)`` samples, read in one streaming pass).

    >>> random_tokens(torch.tensor([[3, 5], [5, 3]]), 4, seed=0).unique().tolist()
    [3, 5]
    """
    if isinstance(inputs, torch.Tensor):
        inputs = TensorDataset(inputs)
    seen = [torch.unique(batch[0]) for batch in rt.inference_loader(inputs, batch_size=1024)]
    values = torch.unique(torch.cat(seen))
    gen = torch.Generator().manual_seed(seed)
    return values[torch.randint(len(values), (count, *input_shape(inputs)), generator=gen)]


@dataclass
class UnsirConfig:
    """UNSIR hyperparameters (defaults from the paper's reference setup, learning rates scaled, see below).

    Args:
        noise_samples: distinct noise inputs learned in all, shared equally by the forget labels (at least
            one each), so that the cost does not grow with the number of classes touched.
        noise_steps: Adam steps of the noise optimisation (the paper: 5 epochs x 8 steps).
        noise_lr: Adam learning rate of the noise (the paper: 0.1).
        noise_l2: weight of the L2 penalty on the noise (the paper: 0.1).
        retain_fraction: fraction of the retain set used in the impair and repair steps.
        impair_epochs: epochs of the impair step (the paper: 1).
        impair_lr: learning rate of the impair step. The paper uses 0.02 with Adam for a ResNet-18 at batch
            size 256; at our batch size of 64 (4x the steps per epoch) on small CNNs that rate destroys every
            class (retain accuracy ~25% on mnist5k), so the default keeps the paper's impair/repair ratio
            of 2 at a quarter of its rates.
        repair_epochs: epochs of the repair step (the paper: 1).
        repair_lr: learning rate of the repair step (the paper: 0.01 with Adam; see ``impair_lr``).
        optimizer: optimizer of the impair and repair steps (one of ``sgd``, ``adam``, ``adamw``).
        batch_size: batch size of the impair and repair steps.
        noise_per_forget: noise rows in the impair set per forget sample of the same label (the paper: 1).
    """

    noise_samples: int = 32
    noise_steps: int = 40
    noise_lr: float = 0.1
    noise_l2: float = 0.1
    retain_fraction: float = 0.2
    impair_epochs: int = 1
    impair_lr: float = 0.005
    repair_epochs: int = 1
    repair_lr: float = 0.0025
    optimizer: str = "adam"
    batch_size: int = 64
    noise_per_forget: float = 1.0

    def __post_init__(self) -> None:
        check_positive(self, "noise_samples", "noise_steps", "noise_lr", "impair_epochs", "impair_lr",
                       "repair_epochs", "repair_lr", "batch_size", "noise_per_forget")
        for name in ("noise_samples", "noise_steps", "impair_epochs", "repair_epochs", "batch_size"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"Expected argument `{name}` to be a positive int but got {getattr(self, name)!r}")
        check_non_negative(self, "noise_l2")
        check_fraction(self, "retain_fraction", allow_zero=False)
        check_choice(self, "optimizer", OPTIMIZERS)


def impair_and_repair(
    model: nn.Module,
    *,
    forget_labels: torch.Tensor,
    retain: Dataset,
    input_shape: tuple[int, ...],
    config: UnsirConfig,
    context: UnlearnContext,
    history: rt.History,
    stage_prefix: str = "",
    lr_scale: float = 1.0,
) -> nn.Module:
    """The UNSIR procedure (noise, impair, repair) on ``model`` in place; returns the (unwrapped) model.

    ``forget_labels`` are the labels of the forget samples: one noise class per distinct label, and
    ``config.noise_per_forget`` noise rows per forget sample with that label (at least one per label). The impair
    and repair sets use the same seeded ``config.retain_fraction`` subset of ``retain``; ``lr_scale`` multiplies
    both learning rates (NITC's milder sample-wise teacher).
    """
    dev = context.device
    retain_part = random_subset(retain, config.retain_fraction, seed=context.seed)
    classes, counts = torch.unique(forget_labels.cpu(), return_counts=True)
    # The noise budget is shared by the classes: a fixed cost however many classes the forget set touches.
    per_class = max(1, config.noise_samples // len(classes))
    # Repeat each class's noise rows cyclically: noise_per_forget rows per forget sample of that class.
    rows = [max(1, round(count * config.noise_per_forget)) for count in counts.tolist()]
    pick = torch.cat([i * per_class + torch.arange(n) % per_class for i, n in enumerate(rows)])

    def ce(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(class_scores(net(x)).float(), y)

    impair_loss, embedded = ce, None
    if first_inputs(retain_part, 1).is_floating_point():
        space = "input"
        noise, noise_y = learn_error_max_noise(
            model, classes.tolist(), input_shape=input_shape, per_class=per_class, steps=config.noise_steps,
            lr=config.noise_lr, l2=config.noise_l2, device=dev, bounds=value_range(retain_part), seed=context.seed,
        )
    else:  # token IDs: noise in the embedding space, else random tokens (see the module docstring)
        embedded = learn_embedding_noise(model, classes.tolist(), inputs=retain_part, per_class=per_class,
                                         steps=config.noise_steps, lr=config.noise_lr, l2=config.noise_l2, device=dev,
                                         seed=context.seed)
        if embedded is None:
            space = "random-tokens"
            noise_y = torch.as_tensor(classes.tolist(), dtype=torch.long).repeat_interleave(per_class)
            noise = random_tokens(retain_part, len(noise_y), seed=context.seed)
        else:
            space, noise, noise_y = f"embedding:{embedded.name}", embedded.base, embedded.labels
    history.log(stage=f"{stage_prefix}noise", classes=len(classes), noise_samples=len(noise_y), noise_space=space)
    # The retain samples stream from their source; only the noise rows are held.
    impair_set: Dataset = ConcatDataset([TensorDataset(noise[pick], noise_y[pick]), retain_part])
    if embedded is not None:
        # Targets [label, noise row or -1]: the hook adds each noise row's perturbation to its embedded tokens.
        no_row = torch.full((len(retain_part),), -1, dtype=torch.long)
        impair_set = ConcatDataset([TensorDataset(noise[pick], torch.stack([noise_y[pick], pick], dim=1)),
                                    Retargeted(retain_part, torch.stack([labels_of(retain_part), no_row], dim=1))])

        def impair_loss(net: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            with embedded.added(net, target[:, 1]):
                return ce(net, x, target[:, 0])

    repair_set = retain_part
    model = fit(model, impair_set, impair_loss, context=context, epochs=config.impair_epochs,
                lr=config.impair_lr * lr_scale, batch_size=config.batch_size, optimizer=config.optimizer,
                history=history, stage=f"{stage_prefix}impair")
    return fit(model, repair_set, ce, context=context, epochs=config.repair_epochs,
               lr=config.repair_lr * lr_scale, batch_size=config.batch_size, optimizer=config.optimizer,
               history=history, stage=f"{stage_prefix}repair")


@register_method("unsir", UnsirConfig)
def unsir(
    model: nn.Module, *, forget: Dataset, retain: Dataset, config: UnsirConfig, context: UnlearnContext
) -> tuple[nn.Module, rt.History]:
    """UNSIR (Tarun et al., TNNLS 2023): error-maximizing noise for the forget labels, impair, then repair."""
    history = rt.History()
    model = impair_and_repair(model, forget_labels=labels_of(forget), retain=retain, input_shape=input_shape(forget),
                              config=config, context=context, history=history)
    return model, history
