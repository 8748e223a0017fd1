"""One unlearning request, typed: what every door (API, CLI, ``mlflow run``, a registry request) turns its input into.

:class:`UnlearnRequest` is the request parsed once at the door: the forget spec as a
:class:`~mlflow_unlearn.data.forget.ForgetSpec` (its keyed record included), the data source as a
:class:`~mlflow_unlearn.data.grammar.SourceSpec` (which declares its paths), the method, the config, the reference,
the seed, the device, the ONNX copy, whether to register, and a registry request's run-time limit. It checks
itself when it is built, and
:func:`~mlflow_unlearn.tracking.plan.prepare` takes it. The model URI is not a field: it is where the request goes
(a registry request sits on the version it names).

:data:`REQUEST_FIELDS` describes each field once, with the doors that take it; a test checks that the API's keyword
arguments, the CLI's options, the MLproject's ``unlearn`` parameters and the registry request's keys are exactly
these. :func:`parse_flag` (re-exported from the data grammar) is the one parser of yes/no text, and
:class:`RequestStatus` the states of a registry request.

This module imports neither torch nor MLflow: the registry plugin builds requests in the server's request threads.

>>> request = UnlearnRequest("classes:7,3", data="digits", seed=3)
>>> request.forget.classes, request.data.name, request.seed
((3, 7), 'digits', 3)
>>> UnlearnRequest("classes:3", reference="maybe")
Traceback (most recent call last):
...
ValueError: Unknown reference 'maybe'; expected one of: none, retrain
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass
from typing import Any

from mlflow_unlearn.data.forget import ForgetSpec, parse_forget_spec
from mlflow_unlearn.data.grammar import SourceSpec, parse_flag, parse_source

__all__ = ["DEFAULT_METHOD", "DOORS", "MODEL_URI_FORMS", "NO_REFERENCE", "REFERENCES", "REQUEST_FIELDS",
           "RETRAIN_REFERENCE", "ModelResolutionError", "RequestField", "RequestStatus", "UnlearnRequest",
           "check_reference", "check_seed", "door_fields", "format_duration", "model_uri", "parse_duration",
           "parse_flag", "parse_model_uri", "parse_seed"]

#: The unlearning method used when none is named.
DEFAULT_METHOD = "nitc"
#: What an unlearning is compared against: nothing, or a model retrained without the forget set.
REFERENCES = (NO_REFERENCE, RETRAIN_REFERENCE) = ("none", "retrain")
#: The devices a request may name (``cuda:N`` picks one GPU).
DEVICE_FORMS = ("auto", "cpu", "cuda", "cuda:<N>", "mps")
_DEVICE = re.compile(r"auto|cpu|cuda(?::\d+)?|mps")
_SEED = re.compile(r"\d{1,10}")
_DURATION = re.compile(r"(\d{1,7})\s*([smhd]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

#: The accepted forms of a registered model URI.
MODEL_URI_FORMS = ("models:/<name>/<version>", "models:/<name>@<alias>")
_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+?)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))$")

#: The doors a request comes through: the Python API (``unlearn()``), the ``mlflow-unlearn unlearn`` command, the
#: MLproject's ``unlearn`` entry point (``mlflow run``) and a registry request (the tag ``mlflow_unlearn.request``).
DOORS = (API, CLI, MLPROJECT, REGISTRY) = ("api", "cli", "mlproject", "registry")


class RequestStatus(str, enum.Enum):
    """The states of a registry request (the value of its ``mlflow_unlearn.status`` tag).

    ``cancelled``: someone cancelled it (who and when are recorded); ``timed_out``: it ran past its deadline and
    was stopped. Neither registers a result.

    >>> RequestStatus("queued").active, RequestStatus.SUCCEEDED.active, RequestStatus.FAILED == "failed"
    (True, False, True)
    >>> RequestStatus.CANCELLED.active, RequestStatus("timed_out").stopped
    (False, True)
    >>> RequestStatus.FAILED in {"failed"}, {RequestStatus.QUEUED: 1}["queued"]
    (True, 1)
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def active(self) -> bool:
        """Whether a job is waiting or running for the request (it is not finished)."""
        return self in (RequestStatus.QUEUED, RequestStatus.RUNNING)

    @property
    def stopped(self) -> bool:
        """Whether the request was stopped from outside its job (cancelled, or past its deadline)."""
        return self in (RequestStatus.CANCELLED, RequestStatus.TIMED_OUT)

    def __str__(self) -> str:
        return self.value

    # a member is its tag value everywhere: equal to it (str) and hashed as it (Enum hashes the member's name)
    __hash__ = str.__hash__


#: The states of a request that is not finished, and those of a finished one (tag values).
ACTIVE_STATUSES = tuple(s.value for s in RequestStatus if s.active)
TERMINAL_STATUSES = tuple(s.value for s in RequestStatus if not s.active)


class ModelResolutionError(ValueError):
    """The model URI does not name an existing registered model version."""


@dataclass(frozen=True)
class RequestField:
    """One field of :class:`UnlearnRequest` and the doors that take it.

    Args:
        name: the field's name: the API's keyword argument, the registry request's key, the MLproject parameter;
            the CLI option is ``--<name>`` with ``_`` as ``-``.
        help: what it means, for help texts.
        doors: the doors that take it; a door that does not says why in ``why_not``.
        why_not: why the other doors do not take it.
    """

    name: str
    help: str
    doors: tuple[str, ...] = DOORS
    why_not: str = ""


#: Every field of :class:`UnlearnRequest`, in order (a test checks this against the class and the four doors).
REQUEST_FIELDS = (
    RequestField("forget", "Forget spec: classes:3,7 | ids:<file.csv|file.parquet|file.txt> | random:<fraction|count>"
                           "[:<seed>]. Use a file for IDs: the spec is logged, the IDs never are."),
    RequestField("method", "Unlearning method (see `mlflow-unlearn methods`)."),
    RequestField("data", "Data source (digits, mnist5k, npz:<path>, ...). Default: the data the model version was "
                         "trained on."),
    RequestField("config", "YAML file of method hyperparameters (optionally with a `gate:` section of thresholds)."),
    RequestField("reference", "Also train the retrain-from-scratch reference and compare against it (slower)."),
    RequestField("seed", "Seed of the method, the reference and the attacks (a non-negative int)."),
    RequestField("device", "Where to run: auto, cpu, cuda[:N] or mps.", (API, CLI, MLPROJECT),
                 why_not="a registry request runs where the server's administrator says (MLFLOW_UNLEARN_DEVICE)"),
    RequestField("onnx", "Also log an ONNX copy of the model, checked against onnxruntime."),
    RequestField("register", "Register the unlearned model as the next version when the gate passes.",
                 (API, CLI, MLPROJECT), why_not="a registry request exists to register its result"),
    RequestField("timeout", "Longest run time of the request from when it takes a job slot (e.g. 90s, 30m, 2h), "
                            "within the server's MLFLOW_UNLEARN_MAX_RUN_S; past it the job is stopped and the request "
                            "ends timed_out.", (REGISTRY,),
                 why_not="a scheduling field: only the registry's launcher owns the job's processes and can stop "
                         "them; an API call, a CLI command or an `mlflow run` is stopped by whoever started it (a "
                         "process supervisor, `timeout 2h mlflow-unlearn unlearn ...`)"),
)


def door_fields(door: str) -> tuple[str, ...]:
    """The names of the fields that ``door`` takes.

    >>> door_fields("registry")
    ('forget', 'method', 'data', 'config', 'reference', 'seed', 'onnx', 'timeout')
    """
    if door not in DOORS:
        raise ValueError(f"Unknown door {door!r}; expected one of: {', '.join(DOORS)}")
    return tuple(f.name for f in REQUEST_FIELDS if door in f.doors)


def check_reference(reference: Any) -> str:
    """Return ``reference`` if it is one of :data:`REFERENCES`.

    Raises:
        ValueError: otherwise, listing the accepted ones.

    >>> check_reference("retrain")
    'retrain'
    """
    if reference not in REFERENCES:
        raise ValueError(f"Unknown reference {reference!r}; expected one of: {', '.join(REFERENCES)}")
    return reference


def check_seed(seed: Any) -> int:
    """Return ``seed`` if it is a non-negative int below 2**32 (numpy and torch take nothing else).

    >>> check_seed("a")
    Traceback (most recent call last):
    ...
    ValueError: Expected argument `seed` to be a non-negative int but got 'a'
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"Expected argument `seed` to be a non-negative int but got {seed!r}"[:200])
    return seed


def parse_seed(text: str) -> int:
    """A seed written as text (a CLI option, an MLproject parameter, a registry request's ``seed=``).

    >>> parse_seed("7")
    7
    """
    if not isinstance(text, str) or not _SEED.fullmatch(text.strip()):
        raise ValueError(f"Expected argument `seed` to be a non-negative int but got {str(text)[:40]!r}")
    return check_seed(int(text))


def parse_duration(text: str, *, what: str = "timeout") -> int:
    """A duration written as ``<n>[s|m|h|d]`` (bare digits: seconds), in whole seconds above 0.

    Raises:
        ValueError: for anything else, naming ``what``.

    >>> parse_duration("90"), parse_duration("30m"), parse_duration("2h")
    (90, 1800, 7200)
    """
    match = _DURATION.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    seconds = int(match[1]) * _DURATION_UNITS[match[2]] if match else 0
    if seconds <= 0:
        raise ValueError(f"Expected `{what}` to be a positive duration such as 90s, 30m or 2h but got "
                         f"{str(text)[:40]!r}")
    return seconds


def format_duration(seconds: int) -> str:
    """``seconds`` in the largest unit that writes it exactly (the inverse of :func:`parse_duration`).

    >>> format_duration(7200), format_duration(90), format_duration(1800)
    ('2h', '90s', '30m')
    """
    for unit in ("d", "h", "m"):
        if seconds % _DURATION_UNITS[unit] == 0:
            return f"{seconds // _DURATION_UNITS[unit]}{unit}"
    return f"{seconds}s"


def model_uri(name: str, version: int | str) -> str:
    """``models:/<name>/<version>``.

    >>> model_uri("mnist", "2")
    'models:/mnist/2'
    """
    return f"models:/{name}/{version}"


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """Split ``models:/name/version`` or ``models:/name@alias`` into ``(name, version, alias)``.

    Raises:
        ModelResolutionError: for any other form.

    >>> parse_model_uri("models:/mnist/3")
    ('mnist', '3', None)
    >>> parse_model_uri("models:/mnist@champion")
    ('mnist', None, 'champion')
    """
    match = _URI_RE.match(uri or "") if isinstance(uri, str) else None
    if not match:
        raise ModelResolutionError(f"Expected a registered model URI {' or '.join(map(repr, MODEL_URI_FORMS))} "
                                   f"but got {uri!r}")
    return match["name"], match["version"], match["alias"]


@dataclass(frozen=True)
class UnlearnRequest:
    """An unlearning request, parsed and checked (the grammar; what needs the registry, the engine or the data is
    :func:`~mlflow_unlearn.tracking.plan.prepare`'s).

    Text is parsed once, here: ``forget`` into a :class:`~mlflow_unlearn.data.forget.ForgetSpec` (a relative
    ``ids:`` path made absolute), ``data`` into a :class:`~mlflow_unlearn.data.grammar.SourceSpec`.

    Args:
        forget: the forget spec (``classes:3,7``, ``ids:<file>``, ``random:<fraction|count>[:<seed>]``).
        method: a registered unlearning method's name.
        data: the data source; None (or ``""``) for the one the version was trained on.
        config: the method's hyperparameters: None (or ``""``), a YAML path, a mapping, or the method's config
            dataclass.
        reference: one of :data:`REFERENCES`.
        seed: seed of the method, the reference and the attacks.
        device: one of :data:`DEVICE_FORMS`.
        onnx: log an ONNX copy; None means the door's default (the API's and the CLI's: yes; a registry request's:
            the server's ``MLFLOW_UNLEARN_ONNX``).
        register: register the result when the gate passes.
        timeout: a registry request's longest run time in seconds (None: the server's maximum); the job itself
            never reads it (see :data:`REQUEST_FIELDS`).

    Raises:
        ValueError: a field outside its grammar (the forget and source grammars' own messages, which repeat no ID).
    """

    forget: ForgetSpec
    method: str = DEFAULT_METHOD
    data: SourceSpec | None = None
    config: Any = None
    reference: str = NO_REFERENCE
    seed: int = 0
    device: str = "auto"
    onnx: bool | None = None
    register: bool = True
    timeout: int | None = None

    def __post_init__(self) -> None:
        forget = self.forget if isinstance(self.forget, ForgetSpec) else parse_forget_spec(self.forget)
        object.__setattr__(self, "forget", forget.absolute())
        if isinstance(self.data, str):
            object.__setattr__(self, "data", parse_source(self.data) if self.data.strip() else None)
        elif self.data is not None and not isinstance(self.data, SourceSpec):
            raise ValueError(f"Expected argument `data` to be a data source string but got {type(self.data).__name__}")
        if isinstance(self.config, str) and not self.config.strip():
            object.__setattr__(self, "config", None)
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"Expected argument `method` to be a method name but got {self.method!r}")
        check_reference(self.reference)
        check_seed(self.seed)
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise ValueError(f"Expected `device` to be 'auto', 'cpu' or 'cuda[:N]' (or 'mps') but got "
                             f"{self.device!r}"[:200])
        for name in ("onnx", "register"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name == "onnx" and value is None):
                raise ValueError(f"Expected argument `{name}` to be True or False but got {value!r}")
        if self.timeout is not None and (isinstance(self.timeout, bool) or not isinstance(self.timeout, int)
                                         or self.timeout <= 0):
            raise ValueError(f"Expected argument `timeout` to be a positive number of seconds but got "
                             f"{self.timeout!r}"[:200])

    @property
    def source(self) -> str | None:
        """The data source as written (None: the version's own)."""
        return self.data.text if self.data is not None else None

    def replace(self, **changes: Any) -> UnlearnRequest:
        """This request with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def project_parameters(self, model_uri: str, *, onnx: bool = True) -> dict[str, str]:
        """The parameters of the MLproject's ``unlearn`` entry point for this request on ``model_uri``.

        Args:
            model_uri: the version to unlearn.
            onnx: the ONNX copy when the request leaves it to the door (``onnx=None``).

        Raises:
            ValueError: a config that is not a YAML path (a mapping or a dataclass has no text form).

        >>> UnlearnRequest("classes:3", onnx=False, seed=2).project_parameters("models:/m/1")["seed"]
        '2'
        """
        if self.config is not None and not isinstance(self.config, str):
            raise ValueError("Expected a YAML file as the config of a request run as an MLflow Project but got a "
                             f"{type(self.config).__name__}")
        export = onnx if self.onnx is None else self.onnx
        return {"model_uri": model_uri, "forget": self.forget.text, "method": self.method, "data": self.source or "",
                "config": self.config or "", "reference": self.reference, "seed": str(self.seed),
                "device": self.device, "onnx": "true" if export else "false",
                "register": "true" if self.register else "false"}
