"""The ``factory:`` source: the user's own ``torch.utils.data.Dataset`` code, named in the source string.

``factory:<module>:<callable>[?key=value...]`` imports ``<module>`` (a module of the model's logged code, an
installed one, or one on ``sys.path``) and ``factory:<file.py>:<callable>[?...]`` loads a Python file; the
callable is called with the options that are not preprocessing options (``size``, ``crop``, ``mean``, ``std``) as
keyword arguments, all strings: ``factory:mydata:make_datasets?root=/data/pets`` calls
``make_datasets(root="/data/pets")``.

The contract of the callable's return value:

* ``(train, test)``, ``(train, val, test)`` or a mapping with keys ``"train"``, ``"test"`` and optionally ``"val"``:
  each a map-style ``torch.utils.data.Dataset`` (``__len__`` and ``__getitem__``);
* ``dataset[i]`` is ``(input, label, ...)``: the input a tensor, a NumPy array or a Pillow image (as 8-bit pixels
  in [0, 1]), whatever transform the dataset applies already applied; the same shape on every side;
* each dataset has ``ids``: one stable, unique sample ID per index (ints or strings; unique across the sides),
  the IDs that deletion requests name;
* each dataset has ``targets`` (or ``labels``): the integer class of each index, so that the labels are known
  without decoding a sample. Without them every sample is read once when the data is loaded (slow for images);
* the train dataset may have ``classes``: the class names, in label order.

Samples are read per batch, in DataLoader worker processes, through the dataset itself, so what the model was
trained on is what every method, the evaluation and the ONNX check see. The source string (module, callable,
options) is recorded in the data lineage like any other source; ``mlflow_unlearn.log_model`` ships the factory's
module with the model's code (``code_paths``), so registry jobs and chained requests replay it from anywhere. A
factory that reads files must find them by absolute paths or through its options, not next to its own file.

Errors name the factory and the problem in one line, never a sample ID; an exception raised inside the factory is
reported by its type only (its message may name samples).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: The sides a factory may return, in position order.
FACTORY_SIDES = ("train", "val", "test")


def _factory_callable(argument: str) -> tuple[Any, str]:
    """The user's callable named by a factory source's ``argument`` (``<module|file.py>:<callable>``, checked by the
    grammar) and its name for messages."""
    target, _, function = argument.rpartition(":")
    label = f"factory {target}:{function}"
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"The {label}: the file {target!r} does not exist; give the path of a .py file (absolute, "
                             "so that it is found from any folder) or a module name")
        name = "mlflow_unlearn_factory_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # worker processes and pickling find it by this name
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # noqa: BLE001 - the user's code: any error is reported, in one line
            sys.modules.pop(name, None)
            raise ValueError(f"The {label} cannot be loaded: executing the file raised {type(err).__name__}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            if err.name and target.startswith(err.name):
                raise ValueError(f"The {label}: no module {target!r} can be imported here; ship it with the model "
                                 "(log_model adds the factory's module to code_paths), install it, or name its file "
                                 "(factory:/path/to/module.py:callable)") from None
            raise ValueError(f"The {label} cannot be imported: it needs the module {err.name!r}, which is not "
                             "installed here") from None
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"The {label} cannot be imported: importing it raised {type(err).__name__}") from None
    value: Any = module
    for part in function.split("."):
        value = getattr(value, part, None)
    if not callable(value):
        raise ValueError(f"The {label}: its module has no callable {function!r}")
    return value, label


def call_factory(argument: str, options: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    """Call the factory that ``argument`` names with ``options``; return its datasets by side and its name for messages.

    Raises:
        ValueError: the factory cannot be found, raises, or returns something other than the contract says.
    """
    factory, label = _factory_callable(argument)
    try:
        returned = factory(**dict(options))
    except Exception as err:  # noqa: BLE001 - its message may name samples: the type only
        raise ValueError(f"The {label} raised {type(err).__name__} when called with the options "
                         f"{sorted(options) or 'none'} (its message is not repeated: it may name samples; call it "
                         "yourself to see it)") from None
    if isinstance(returned, Mapping):
        unknown = sorted(set(map(str, returned)) - set(FACTORY_SIDES))
        if unknown or not {"train", "test"} <= set(returned):
            raise ValueError(f"The {label} returned a mapping with keys {sorted(map(str, returned))}; expected "
                             "'train', 'test' and optionally 'val'")
        sides = {side: returned[side] for side in FACTORY_SIDES if returned.get(side) is not None}
    elif isinstance(returned, (tuple, list)) and len(returned) in (2, 3):
        names = ("train", "test") if len(returned) == 2 else FACTORY_SIDES
        sides = dict(zip(names, returned, strict=True))
    else:
        raise ValueError(f"The {label} returned {_kind(returned)}; expected (train, test), (train, val, test) or a "
                         "mapping of 'train', 'test' (and 'val') to torch.utils.data.Dataset objects")
    for side, dataset in sides.items():
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")) or isinstance(dataset, (str, bytes)):
            raise ValueError(f"The {label} returned {_kind(dataset)} as its {side} set; expected a map-style "
                             "torch.utils.data.Dataset (with __len__ and __getitem__)")
        if len(dataset) == 0:
            raise ValueError(f"The {label} returned an empty {side} set")
    return sides, label


def side_ids(dataset: Any, *, side: str, label: str) -> np.ndarray:
    """The ``ids`` of one side's dataset, checked: one int or string per sample."""
    ids = getattr(dataset, "ids", None)
    if ids is None:
        raise ValueError(f"The {side} set of the {label} has no `ids`; give each dataset an `ids` attribute with one "
                         "stable, unique sample ID (int or string) per index")
    ids = np.asarray(ids.numpy() if hasattr(ids, "numpy") else list(ids) if not isinstance(ids, np.ndarray) else ids)
    if ids.ndim != 1 or len(ids) != len(dataset):
        raise ValueError(f"The {side} set of the {label} has {ids.size} `ids` for {len(dataset)} samples; give one ID "
                         "per index")
    if ids.dtype.kind not in "iuUS":
        raise ValueError(f"Expected the `ids` of the {side} set of the {label} to be ints or strings but got "
                         f"{ids.dtype.name if ids.dtype.kind != 'O' else 'objects of mixed types'}")
    return ids.astype(np.int64) if ids.dtype.kind in "iu" else ids.astype(str)


def side_labels(dataset: Any, *, side: str, label: str) -> np.ndarray:
    """The labels of one side's dataset: its ``targets`` or ``labels``, else every sample's second element."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = getattr(dataset, "labels", None)
    if targets is None:
        try:
            return np.asarray([_item(dataset, i, side=side, label=label)[1] for i in range(len(dataset))])
        except (TypeError, ValueError) as err:
            raise ValueError(f"The {side} set of the {label} has no `targets` and its samples' labels cannot be read: "
                             f"{err}") from None
    targets = np.asarray(targets.numpy() if hasattr(targets, "numpy") else targets)
    if targets.ndim != 1 or len(targets) != len(dataset):
        raise ValueError(f"The {side} set of the {label} has {targets.size} `targets` for {len(dataset)} samples; "
                         "give one integer class per index")
    return targets


def _item(dataset: Any, index: int, *, side: str, label: str) -> tuple:
    try:
        item = dataset[index]
    except Exception as err:  # noqa: BLE001 - the user's code
        raise ValueError(f"reading a sample of the {side} set of the {label} raised {type(err).__name__}") from None
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise ValueError(f"a sample of the {side} set of the {label} is {_kind(item)}; expected (input, label, ...)")
    return tuple(item)


def first_input_shape(dataset: Any, *, side: str, label: str) -> tuple[tuple[int, ...], str]:
    """Shape and dtype of the first input of one side (the check that every side gives one shape)."""
    from mlflow_unlearn.data.inputs import as_input_tensor

    value = _item(dataset, 0, side=side, label=label)[0]
    try:
        tensor = as_input_tensor(value)
    except TypeError as err:
        raise ValueError(f"In the {side} set of the {label}, {err}") from None
    return tuple(tensor.shape), str(tensor.dtype).removeprefix("torch.")


def _kind(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return "None" if value is None else f"a {type(value).__name__}"
