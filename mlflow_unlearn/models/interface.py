"""What the project expects of a model: one input tensor in, class scores out.

**Inputs.** The model's ``forward`` is called with one tensor, a batch of samples (batch first), and nothing else:
float32 features or images, or int64 token IDs, which pass through untouched (no cast to float anywhere, so an
``nn.Embedding`` first works). Other arguments of ``forward`` need defaults (``attention_mask=None``); models that
need two or more inputs per batch are refused by :func:`check_one_input`.

**Outputs.** :func:`class_scores` is the one rule that says which part of a model's output holds the class scores
(the logits); every training loop, unlearning method, metric, membership attack, gate check and the ONNX copy read
the output through it. In order:

1. a tensor: the output itself;
2. an object with a tensor attribute ``logits`` (Hugging Face's ``ModelOutput``, a namedtuple with that field):
   ``output.logits``;
3. a mapping with the key ``"logits"``: ``output["logits"]``;
4. a tuple or list whose first element is a tensor: ``output[0]``.

The class scores must be a floating-point ``(batch, classes)`` tensor. Anything else raises
:class:`ModelOutputError` with one line naming what the model returned (its type, a dict's keys), never a value.
The model itself is never wrapped: the saved and registered model stays the user's own module.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

SCORES_KEY = "logits"
"""The key (of a mapping) or attribute (of an object) that holds the class scores."""

OUTPUT_RULE = ("return the class scores as a float (batch, classes) tensor: as is, as the first element of a tuple "
               f"or list, under the key '{SCORES_KEY}' of a dict, or as the attribute `{SCORES_KEY}` of an object "
               "(Hugging Face style)")
"""How to fix a model whose output holds no class scores (the end of every :class:`ModelOutputError`)."""


class ModelOutputError(ValueError):
    """The model's output holds no class scores that :func:`class_scores` can read."""


class ModelInputError(ValueError):
    """The model cannot be called with one batch tensor."""


def _describe(output: Any) -> str:
    """What the model returned, for a message: its type and, for a mapping, its keys (names, never values)."""
    if isinstance(output, Mapping):
        keys = [str(k)[:40] for k in list(output)[:10]]
        more = ", ..." if len(output) > 10 else ""
        return f"a {type(output).__name__} with keys [{', '.join(map(repr, keys))}{more}] but no {SCORES_KEY!r}"
    if isinstance(output, (tuple, list)) and output:
        return f"a {type(output).__name__} whose first element is a {type(output[0]).__name__}"
    if isinstance(output, (tuple, list)):
        return f"an empty {type(output).__name__}"
    return f"a {type(output).__name__}"


def class_scores(output: Any) -> torch.Tensor:
    """The class scores (logits) in a model's output, by the rule of this module's docstring.

    Args:
        output: what the model's ``forward`` returned.

    Returns:
        The ``(batch, classes)`` floating-point tensor of class scores (the very tensor, not a copy).

    Raises:
        ModelOutputError: the output holds no such tensor; one line that says what the model returned and how to
            return class scores.

    >>> scores = torch.zeros(2, 3)
    >>> all(class_scores(out) is scores for out in (scores, (scores, None), [scores], {"logits": scores}))
    True
    >>> class_scores({"probs": scores})
    Traceback (most recent call last):
    ...
    mlflow_unlearn.models.interface.ModelOutputError: The model returned a dict with keys ['probs'] but no 'logits'; \
return the class scores as a float (batch, classes) tensor: as is, as the first element of a tuple or list, under \
the key 'logits' of a dict, or as the attribute `logits` of an object (Hugging Face style)
    """
    scores = output
    if not isinstance(output, torch.Tensor):
        attribute = getattr(output, SCORES_KEY, None)
        if isinstance(attribute, torch.Tensor):
            scores = attribute
        elif isinstance(output, Mapping) and isinstance(output.get(SCORES_KEY), torch.Tensor):
            scores = output[SCORES_KEY]
        elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            scores = output[0]
        else:
            raise ModelOutputError(f"The model returned {_describe(output)}; {OUTPUT_RULE}")
    if scores.dim() != 2 or not scores.is_floating_point():
        raise ModelOutputError(f"The model's class scores have dtype {str(scores.dtype).removeprefix('torch.')} and "
                               f"shape {tuple(scores.shape)}; {OUTPUT_RULE}")
    return scores


def check_one_input(model: nn.Module) -> None:
    """Refuse a model whose ``forward`` needs more than one argument: the project calls it with one batch tensor.

    Arguments with defaults (``attention_mask=None``) and ``*args``/``**kwargs`` are fine; a ``forward`` whose
    signature cannot be read is not refused here (calling it decides).

    Raises:
        ModelInputError: one line naming the required arguments and what to do.

    >>> check_one_input(nn.Linear(2, 2))
    >>> class TwoInputs(nn.Module):
    ...     def forward(self, input_ids, attention_mask):
    ...         return input_ids
    >>> check_one_input(TwoInputs())
    Traceback (most recent call last):
    ...
    mlflow_unlearn.models.interface.ModelInputError: TwoInputs.forward needs 2 inputs (input_ids, attention_mask) \
but mlflow-unlearn calls a model with one batch tensor: multi-input models are not supported; give the other \
arguments defaults (e.g. attention_mask=None) and derive them from the input inside forward
    """
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return
    required = [p.name for p in parameters
                if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if len(required) > 1:
        raise ModelInputError(
            f"{type(model).__name__}.forward needs {len(required)} inputs ({', '.join(required[:5])}) but "
            "mlflow-unlearn calls a model with one batch tensor: multi-input models are not supported; give the "
            "other arguments defaults (e.g. attention_mask=None) and derive them from the input inside forward")


class ScoresOnly(nn.Module):
    """A view of ``model`` whose ``forward`` returns :func:`class_scores` of ``model``'s output.

    For exporting the class scores (the ONNX copy has one output, ``logits``); never saved or registered in place of
    the model, which stays the user's own module.

    >>> ScoresOnly(nn.Linear(2, 3))(torch.zeros(4, 2)).shape
    torch.Size([4, 3])
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return class_scores(self.model(x))
