"""Model formats: load a registered version as a trainable ``nn.Module``, save one the same way, ONNX copies.

Unlearning fine-tunes the model, so it needs the eager ``nn.Module`` (MLflow's ``pickle`` serialization
format of the ``pytorch`` flavor). MLflow 3's default ``pt2`` format (``torch.export``) is an inference
graph that cannot be trained, and other flavors are not PyTorch modules: both get a clear error that says
how to re-log the model. New versions are written in the pickle format again, so that chained unlearning
(v1 -> v2 -> v3) works, together with an ONNX copy checked against onnxruntime.

Pickled models execute code when loaded. MLflow refuses to unpickle unless
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` is set; this module loads the versions the caller names in the
caller's own registry (the same trust as that setting) without changing any environment variable.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cloudpickle
import mlflow.pytorch
import numpy as np
import torch
from mlflow.models import Model, ModelSignature
from mlflow.types import Schema, TensorSpec

from mlflow_unlearn._version import __version__
from mlflow_unlearn.models import ScoresOnly

if TYPE_CHECKING:
    from torch import nn

#: Artifact folder names inside a run.
MODEL_ARTIFACT_PATH = "model"
ONNX_ARTIFACT_PATH = "onnx_model"
#: File names MLflow's pytorch flavor writes into the model's data folder.
PICKLED_MODEL_FILE = "model.pth"
EXPORTED_MODEL_FILE = "model.pt2"
PICKLE_MODULE_INFO_FILE = "pickle_module_info.txt"
#: Pickle modules MLflow's pytorch flavor uses; anything else in ``pickle_module_info.txt`` is refused.
ALLOWED_PICKLE_MODULES = ("mlflow.pytorch.pickle_module", "cloudpickle", "pickle")
#: Largest accepted |torch - onnxruntime| difference of the logits on the sample batch.
ONNX_TOLERANCE = 1e-4

RELOG_HINT = (
    "Re-log it as a trainable PyTorch module: "
    "mlflow.pytorch.log_model(model, name='model', serialization_format='pickle', pip_requirements=['torch']) "
    "and register that version."
)


class ModelFormatError(ValueError):
    """The model version is not a trainable PyTorch module, or its ONNX copy disagrees with it."""


@dataclass(frozen=True)
class OnnxCheck:
    """The result of exporting a model to ONNX: the file and the max |torch - onnxruntime| logit difference."""

    path: Path
    max_abs_diff: float


def load_trainable_module(local_model_dir: str | os.PathLike, *, model_uri: str = "") -> nn.Module:
    """Load the MLflow model in ``local_model_dir`` as an eager, trainable ``nn.Module`` on the CPU.

    Args:
        local_model_dir: a downloaded MLflow model folder (holding ``MLmodel``).
        model_uri: the URI it came from, for messages.

    Raises:
        ModelFormatError: not an MLflow model, not the ``pytorch`` flavor, saved as ``pt2``, or no trainable
            parameters.
    """
    root = Path(local_model_dir)
    mlmodel = root / "MLmodel"
    if not mlmodel.is_file():
        raise ModelFormatError(f"{model_uri or root} is not an MLflow model (no MLmodel file). {RELOG_HINT}")
    flavors = Model.load(str(mlmodel)).flavors
    if "pytorch" not in flavors:
        others = ", ".join(sorted(f for f in flavors if f != "python_function")) or "python_function"
        raise ModelFormatError(
            f"{model_uri or root} is a {others} model, but mlflow-unlearn needs a PyTorch (pytorch flavor) model. "
            f"{RELOG_HINT}"
        )
    flavor = flavors["pytorch"]
    data = root / flavor.get("model_data", "data")
    if (data / EXPORTED_MODEL_FILE).is_file():
        raise ModelFormatError(
            f"{model_uri or root} was saved in MLflow's 'pt2' (torch.export) format, an inference graph that "
            f"cannot be trained. {RELOG_HINT}"
        )
    weights = data / PICKLED_MODEL_FILE if data.is_dir() else data
    if not weights.is_file():
        raise ModelFormatError(f"{model_uri or root} has no serialized PyTorch model at {weights}. {RELOG_HINT}")
    module_name = "mlflow.pytorch.pickle_module"
    info = data / PICKLE_MODULE_INFO_FILE
    if info.is_file():
        module_name = info.read_text().strip()
    if module_name not in ALLOWED_PICKLE_MODULES:
        raise ModelFormatError(f"{model_uri or root} was pickled with {module_name!r}; expected one of "
                               f"{', '.join(ALLOWED_PICKLE_MODULES)}. {RELOG_HINT}")
    code = flavor.get("code")
    model = _unpickle(weights, importlib.import_module(module_name), root / code if code else None,
                      where=model_uri or str(root))
    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        raise ModelFormatError(f"{model_uri or root} does not hold an eager torch.nn.Module. {RELOG_HINT}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelFormatError(f"{model_uri or root} has no trainable parameters. {RELOG_HINT}")
    return model.eval()


def _unpickle(weights: Path, pickle_module, code_dir: Path | None, *, where: str) -> nn.Module:
    """``torch.load`` with the model's logged code folder importable, as ``mlflow.pytorch.load_model`` does.

    MLflow puts the folder of the model's ``code_paths`` first on ``sys.path`` while loading
    (``mlflow.utils.model_utils._add_code_from_conf_to_system_path``); so does this, for the load only: the
    modules it imports stay in ``sys.modules`` for the rest of the process.

    Raises:
        ModelFormatError: the model's class lives in a module that is neither importable nor logged with it.
    """
    added = code_dir is not None and code_dir.is_dir()
    if added:
        sys.path.insert(0, str(code_dir))
    try:
        return torch.load(weights, map_location="cpu", weights_only=False, pickle_module=pickle_module)
    except ModuleNotFoundError as exc:
        missing = exc.name or str(exc)
        raise ModelFormatError(
            f"{where} cannot be loaded: its class needs the Python module {missing!r}, which is neither installed "
            f"here nor logged with the model. Log the model with code_paths=['<path to {missing.split('.')[0]}.py or "
            "its package folder>'] (mlflow_unlearn.log_model does it) and register that version."
        ) from None
    except AttributeError as exc:  # pickle's "Can't get attribute 'Net' on <module ...>": an older module
        raise ModelFormatError(f"{where} cannot be loaded: {str(exc).splitlines()[0]}. Log the model with the "
                               "code_paths=[...] of the module that defines its class.") from None
    finally:
        if added:
            sys.path.remove(str(code_dir))


def read_code(local_model_dir: str | os.PathLike) -> dict[str, bytes]:
    """The files of the model's logged ``code_paths`` folder (relative path -> content); empty without one.

    An unlearned version is saved with the same code (see :func:`save_trainable_module`), so that chained
    unlearning loads it anywhere.
    """
    root = Path(local_model_dir)
    code = Model.load(str(root / "MLmodel")).flavors.get("pytorch", {}).get("code")
    folder = root / code if code else None
    if folder is None or not folder.is_dir():
        return {}
    return {f.relative_to(folder).as_posix(): f.read_bytes() for f in sorted(folder.rglob("*"))
            if f.is_file() and "__pycache__" not in f.parts}


_CODE_FOLDERS: dict[str, Path] = {}


@contextlib.contextmanager
def code_importable(code: Mapping[str, bytes]) -> Iterator[None]:
    """The model's logged code (from :func:`read_code`) importable during the block: first on ``sys.path``, as
    MLflow does while loading the model, so that a ``factory:<module>:<callable>`` data source shipped with the
    model is found from any folder.

    The files are written once per process and content into a temporary folder removed at exit (the modules
    imported from it stay in ``sys.modules``, and the data's worker processes may read them later).
    """
    if not code:
        yield
        return
    digest = hashlib.sha256(b"".join(rel.encode() + b"\0" + code[rel] for rel in sorted(code))).hexdigest()
    folder = _CODE_FOLDERS.get(digest)
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="mlflow-unlearn-code-"))
        write_code(code, folder)
        atexit.register(shutil.rmtree, folder, True)
        _CODE_FOLDERS[digest] = folder
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def write_code(code: Mapping[str, bytes], folder: str | os.PathLike) -> list[str]:
    """Write ``code`` (from :func:`read_code`) under ``folder``; return its top-level entries as ``code_paths``."""
    folder = Path(folder)
    for rel, content in code.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return sorted({str(folder / rel.split("/")[0]) for rel in code})


def pip_requirements(model: nn.Module) -> list[str]:
    """Pinned requirements of a saved model, stated explicitly (MLflow's inference costs seconds)."""
    reqs = [f"torch=={torch.__version__.split('+')[0]}", f"cloudpickle=={cloudpickle.__version__}"]
    if type(model).__module__.startswith("mlflow_unlearn."):
        reqs.append(f"mlflow-unlearn=={__version__}")
    return reqs


def tensor_signature(input_shape: tuple[int, ...], num_classes: int, input_dtype: str = "float32"):
    """An MLflow tensor signature: ``input_dtype`` (float32, or int64 for token IDs) ``(-1, *input_shape)`` in, float32
    ``(-1, num_classes)`` logits (the class scores, see :func:`mlflow_unlearn.models.class_scores`) out."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(input_dtype), (-1, *input_shape), "x")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes), "logits")]),
    )


def save_trainable_module(model: nn.Module, path: str | os.PathLike, *, input_shape: tuple[int, ...],
                          num_classes: int, code_paths: Sequence[str | os.PathLike] | None = None,
                          input_dtype: str = "float32") -> Path:
    """Save ``model`` as an MLflow pytorch-flavor model in the trainable (pickle) format at ``path``.

    The module itself is saved, whatever its ``forward`` returns (a tensor, a tuple, a dict with ``logits``...): the
    user's own class loads it unchanged.

    Args:
        model: the module (saved from the CPU, in eval mode).
        path: the new model folder.
        input_shape, num_classes, input_dtype: the tensor signature (``input_dtype`` ``(-1, *input_shape)`` ->
            float32 ``(-1, num_classes)``).
        code_paths: files or folders of the model's own code (MLflow's ``code_paths``), importable when loaded.
    """
    model = model.cpu().eval()
    # MLflow warns about pickle on every such save; pickle is chosen on purpose (trainability), so the
    # warning is silenced for this call only and the logger's level restored.
    logger = logging.getLogger("mlflow.pytorch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mlflow.pytorch.save_model(model, str(path), serialization_format="pickle",
                                      pip_requirements=pip_requirements(model),
                                      signature=tensor_signature(input_shape, num_classes, input_dtype),
                                      code_paths=[str(c) for c in code_paths] if code_paths else None)
    finally:
        logger.setLevel(level)
    return Path(path)


def export_onnx(model: nn.Module, sample: torch.Tensor, path: str | os.PathLike) -> OnnxCheck:
    """Export ``model``'s class scores to ONNX (dynamic batch) and compare them with onnxruntime's on ``sample``.

    The ONNX graph takes ``sample``'s dtype (float32, or int64 token IDs) and has one output, ``logits``: the class
    scores that :func:`mlflow_unlearn.models.class_scores` reads from the model's output (a tuple's first element, a
    dict's ``logits``...).

    Raises:
        ModelFormatError: if the export fails or the max absolute difference exceeds :data:`ONNX_TOLERANCE`.
    """
    import onnxruntime as ort  # lazy: an optional, heavy runtime, loaded only for an ONNX copy

    name = type(model).__name__
    model = ScoresOnly(model.cpu().eval())
    sample = sample.cpu()
    path = Path(path)
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (sample,), str(path), dynamo=True, verbose=False, input_names=["x"],
                              output_names=["logits"], dynamic_shapes=({0: batch},), external_data=False)
    except Exception as exc:  # the exporter raises many types; all mean "this model does not export"
        raise ModelFormatError(f"ONNX export of {name} failed: {type(exc).__name__}: {exc}") from exc
    with torch.no_grad():
        expected = model(sample).float().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: sample.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= ONNX_TOLERANCE:
        raise ModelFormatError(
            f"The ONNX copy disagrees with the PyTorch model: max |torch - onnxruntime| = {diff:.3g} > "
            f"{ONNX_TOLERANCE:g} on a sample batch."
        )
    return OnnxCheck(path, diff)


def save_onnx_model(check: OnnxCheck, path: str | os.PathLike, *, input_shape: tuple[int, ...],
                    num_classes: int, input_dtype: str = "float32") -> Path:
    """Save the exported ONNX file as an MLflow onnx-flavor model at ``path``."""
    import mlflow.onnx  # lazy, as onnx and onnxruntime: optional and heavy, loaded only for an ONNX copy
    import onnx  # lazy: as above
    import onnxruntime  # lazy: as above

    mlflow.onnx.save_model(onnx.load(str(check.path)), str(path),
                           pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"],
                           signature=tensor_signature(input_shape, num_classes, input_dtype),
                           save_as_external_data=False)
    return Path(path)
