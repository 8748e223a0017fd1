"""Model surgery: re-initialising a model's layers, and cutting the layers that end with its classifier out of it.

:func:`reinitialize` gives a module fresh, seeded weights (the ``retrain`` reference, eu_k's and NITC's new
classifier, the incompetent model of the ZRF metric). :func:`head_suffix` finds the run of layers that ends with a
classifier and holds a given share of the model's weights: within an ``nn.Sequential``, or along the model's
``torch.fx`` graph for a class whose ``forward`` calls its layers (:func:`traced_suffix`); NITC re-initialises that
run (:mod:`mlflow_unlearn.methods.nitc`).
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn


def reset_method(module: nn.Module):
    """The method that re-initialises ``module``'s own parameters: its ``reset_parameters``, or, for a torch module
    that names it ``_reset_parameters`` (``nn.MultiheadAttention``, inside every ``nn.TransformerEncoderLayer``), that
    one; ``None`` when it has neither.

    >>> reset_method(nn.MultiheadAttention(8, 2)).__name__, reset_method(nn.ReLU())
    ('_reset_parameters', None)
    """
    method = getattr(module, "reset_parameters", None)
    if method is None and type(module).__module__.startswith("torch."):
        method = getattr(module, "_reset_parameters", None)
    return method if callable(method) else None


def reinitialize(model: nn.Module, *, seed: int) -> nn.Module:
    """Re-initialise ``model`` in place, seeded, by calling every submodule's ``reset_parameters`` (see
    :func:`reset_method`).

    Raises:
        ValueError: if a module holds parameters of its own but has no ``reset_parameters`` (it would
            keep the trained weights, so the result would not be a retrained model).
    """
    stuck = sorted({type(m).__name__ for m in model.modules()
                    if reset_method(m) is None and any(True for _ in m.parameters(recurse=False))})
    if stuck:
        raise ValueError(
            f"Cannot re-initialise module type(s) {', '.join(stuck)}: they own parameters but define no "
            "`reset_parameters()`. Add one to retrain this architecture."
        )
    torch.manual_seed(seed)
    for module in model.modules():
        method = reset_method(module)
        if method is not None:
            method()
    return model


def _weights(modules: list[nn.Module]) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())


def head_suffix(model: nn.Module, name: str, head: nn.Module,
                min_share: float) -> tuple[str, nn.Module, nn.Module | None]:
    """The layers to re-initialise: ``head``, or (when it holds less than ``min_share`` of the model's weights) the
    shortest run of the layers that end with it, starting at a layer with weights, that holds ``min_share``; never
    every weight of the model (the longest run below that when none does).

    The run is found within the ``nn.Sequential`` whose last child is ``head``, else in the model's traced graph
    (:func:`traced_suffix`: a user's class whose layers are attributes, called in its ``forward``); ``head`` alone
    when neither finds one.

    Returns:
        ``(label, layers, start)``: ``layers`` is ``head``, or a module that runs the model's own layers from the
        input of ``start``, the first of them (shared, so training it trains the model); ``start`` is ``None``
        for ``head``.

    >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> [head_suffix(net, "4", net[4], share)[0] for share in (0.0, 0.3, 1.0)]
    ['4', '[2:]', '[2:]']
    """
    total = _weights([model])
    if total == 0 or _weights([head]) >= min_share * total:
        return name, head, None
    parent_name = name.rpartition(".")[0]
    parent = dict(model.named_modules()).get(parent_name)
    if not isinstance(parent, nn.Sequential) or not len(parent) or parent[-1] is not head:
        return traced_suffix(model, name, head, min_share) or (name, head, None)
    children = list(parent)
    starts = [j for j in range(len(children) - 2, -1, -1) if _weights([children[j]])]
    best = _shortest_run(starts, lambda j: _weights(children[j:]), total, min_share)
    if best is None:
        return name, head, None
    j = best[0]
    return f"{parent_name}[{j}:]", nn.Sequential(*children[j:]), children[j]


def _shortest_run(starts, weights, total: int, min_share: float, cut=lambda j: True) -> tuple | None:
    """``(j, cut(j))`` for the first start ``j`` (nearest the classifier first) whose run holds ``min_share`` of the
    ``total`` weights, else the last one that holds less than all of them; starts where ``cut`` gives ``None`` are
    passed over. ``None`` when no start qualifies."""
    best = None
    for j in starts:
        held = weights(j)
        if held >= total:
            break
        found = cut(j)
        if found is None:
            continue
        best = j, found
        if held >= min_share * total:
            break
    return best


def traced_suffix(model: nn.Module, name: str, head: nn.Module,
                  min_share: float) -> tuple[str, nn.Module, nn.Module] | None:
    """:func:`head_suffix` for a model that is not a chain of ``nn.Sequential`` children, from its ``torch.fx`` graph.

    The layers with weights are taken in the order the traced ``forward`` calls them; the run may start at one of
    them only where the rest of the graph needs nothing from below but that layer's input (a residual connection
    that skips over the start rules it out, one that starts there does not). The run is a ``GraphModule`` of the
    graph's rest, with that input as its argument, over the model's own layers.

    Returns:
        ``(label, layers, start)`` as :func:`head_suffix`, labelled ``"<start>..<name>"``; ``None`` when the model
        cannot be traced (control flow on tensor values, untraceable calls), when a layer with weights is called
        more than once or after ``head``, or when no layer below ``head`` can start a run below every weight.

    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv, self.fc1, self.fc2 = nn.Conv2d(1, 4, 3), nn.Linear(4, 32), nn.Linear(32, 2)
    ...     def forward(self, x):
    ...         return self.fc2(self.fc1(self.conv(x).mean((2, 3))).relu())
    >>> net = Net()
    >>> label, layers, start = traced_suffix(net, "fc2", net.fc2, 0.5)
    >>> label, start is net.fc1, layers(torch.ones(1, 4)).shape
    ('fc1..fc2', True, torch.Size([1, 2]))
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - tracing fails in many ways (TraceError, TypeError, ...): keep the classifier
        return None
    modules = dict(model.named_modules())
    nodes = list(graph.nodes)
    weighted = [n for n in nodes if n.op == "call_module" and _weights([modules[n.target]])]
    targets = [n.target for n in weighted]
    head_modules = set(head.modules())
    in_head = [modules[t] in head_modules for t in targets]
    if len(set(targets)) != len(targets) or True not in in_head or False in in_head[in_head.index(True):]:
        return None
    best = _shortest_run(range(in_head.index(True) - 1, 0, -1), lambda j: _weights([modules[t] for t in targets[j:]]),
                         _weights([model]), min_share, cut=lambda j: _cut(nodes, weighted[j]))
    if best is None:
        return None
    j, (source, rest) = best
    suffix = torch.fx.Graph()
    env = {source: suffix.placeholder("features")}
    for node in nodes:
        if node in rest:
            env[node] = suffix.node_copy(node, env.__getitem__)
    return f"{targets[j]}..{name}", torch.fx.GraphModule(model, suffix), modules[targets[j]]


def _cut(nodes: list, start) -> tuple | None:
    """``(source, rest)`` when the graph can be cut below the call ``start``: ``source`` is its one tensor argument
    and ``rest`` the nodes that do not lead to ``source`` (the output's included, unused inputs left out), none of
    which reads a node that does but ``source``, or an input of the model; ``None`` otherwise."""
    if len(start.args) != 1 or start.kwargs or not isinstance(start.args[0], torch.fx.Node):
        return None
    source = start.args[0]
    below, todo = set(), [source]
    while todo:
        node = todo.pop()
        if node not in below:
            below.add(node)
            todo.extend(node.all_input_nodes)
    rest = [n for n in nodes if n not in below and not (n.op == "placeholder" and not n.users)]
    if any(n.op == "placeholder" for n in rest) or any(
            i in below and i is not source for n in rest for i in n.all_input_nodes):
        return None  # the rest reads another input of the model, or a value from below but ``source``
    return source, set(rest)
