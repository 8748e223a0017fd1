"""Strict parsing and security validation of an unlearning request written as a model-version tag.

A request is the value of the tag ``mlflow_unlearn.request`` on a registered model version, for example::

    forget=classes:3; method=nitc
    forget=ids:/srv/forget/erasure-2024-07.txt; method=scrub; data=digits; config=/srv/unlearn/scrub.yaml

It is a ``;``-separated list of ``key=value`` pairs, the keys being the fields of
:class:`mlflow_unlearn.request.UnlearnRequest` that a registry request takes (:data:`REQUEST_KEYS`, generated from
:data:`mlflow_unlearn.request.REQUEST_FIELDS`). ``forget`` is required; ``method`` (default ``nitc``), ``data``,
``config``, ``reference`` (``none`` or ``retrain``), ``seed`` (a non-negative int, default 0), ``timeout`` (a
duration such as ``90s``, ``30m`` or ``2h``, within the server's ``MLFLOW_UNLEARN_MAX_RUN_S``) and ``onnx`` (yes/no
text read by :func:`mlflow_unlearn.data.grammar.parse_flag`, as everywhere; default: the server's
``MLFLOW_UNLEARN_ONNX``) are optional. The device is the server's, and a request always registers its result. Anyone
who may edit tags in the MLflow UI can write a request, so the value is treated as untrusted input:

* the value is at most :data:`MAX_REQUEST_CHARS` printable ASCII characters, each key at most once;
* ``forget`` follows the one forget grammar of the project (:func:`mlflow_unlearn.data.forget.parse_forget_spec`,
  the same as on the command line and in the API); an ``ids:`` file must be an absolute path, and a spec that
  fails the grammar other than as ``classes:`` or ``random:`` is not stored (it may be pasted IDs);
* a method is a bare registered name, never a module path;
* data follows the one source grammar of the project (:func:`mlflow_unlearn.data.grammar.parse_source`, the same
  as on the command line and in the API): a built-in source name (``digits``) or ``<format>:<absolute path>[?options]``
  whose paths (the ones the source declares, :attr:`~mlflow_unlearn.data.grammar.SourceSpec.paths`) lie under one of
  the allowed roots configured on the server (:data:`ALLOWED_ROOTS_ENV`); a download (``download=1``, and only that:
  ``download=no`` is no download) is refused unless :data:`ALLOW_URLS_ENV` is true, a URL is not a source of the
  grammar, and a ``factory:`` source (code) always is refused: a job
  without ``data=`` replays the version's own lineage, factory included;
* files (``ids:`` forget lists, ``config=`` YAML files) must lie under an allowed root; ``..`` and ``~`` are
  refused before any path is resolved, and symbolic links may not lead outside the roots.

Everything here is pure string and path work, cheap enough to run in a request thread. The checks that need
the engine (is the method registered, do the forgotten classes exist) run later, in the launcher, through
:func:`mlflow_unlearn.tracking.plan.prepare`.
Error messages never repeat forget IDs: an ``ids:`` request names a file, and only the file is mentioned. A value
that fails the grammar (an unknown key, a forget spec, method, reference or onnx value outside the grammar,
non-ASCII text, an oversized value) is refused without repeating any of it, and is not stored
(``RequestRefused.keep_value`` is False): it may be sample IDs pasted into the request.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mlflow_unlearn.data.forget import ForgetSpec
from mlflow_unlearn.data.grammar import SourceSpec, parse_flag, parse_source
from mlflow_unlearn.request import REGISTRY, UnlearnRequest, door_fields, parse_duration, parse_seed
from mlflow_unlearn.tracking import vocabulary as vocab

ALLOWED_ROOTS_ENV = "MLFLOW_UNLEARN_ALLOWED_ROOTS"
ALLOW_URLS_ENV = "MLFLOW_UNLEARN_ALLOW_URLS"
MAX_REQUEST_CHARS = 1000

#: The keys of a request: the fields of :class:`~mlflow_unlearn.request.UnlearnRequest` that a registry request takes.
REQUEST_KEYS = door_fields(REGISTRY)
URL_SCHEMES = ("http", "https", "s3", "gs", "gcs", "hdfs", "ftp", "file", "dbfs", "wasbs", "abfss")

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class RequestRefused(ValueError):
    """A request that must not run; the message says why and how to fix it (and never contains forget IDs).

    Args:
        message: the reason.
        keep_value: False when the tag value itself must not be stored (oversized, or inline forget IDs).
    """

    def __init__(self, message: str, *, keep_value: bool = True) -> None:
        super().__init__(message)
        self.keep_value = keep_value


@dataclass(frozen=True)
class SecurityPolicy:
    """What a request may reference on this server (read from the environment by
    :func:`mlflow_unlearn_plugins.settings.read_settings`).

    Args:
        allowed_roots: absolute directories under which data files, forget-ID files and config files may lie.
            Empty means no file may be referenced at all (built-in data, ``classes:`` and ``random:`` only).
        allow_urls: whether a data source may download (``download=1``); a URL is no source of the grammar.

    Raises:
        ValueError: if a root is not an absolute path.
    """

    allowed_roots: tuple[Path, ...] = ()
    allow_urls: bool = False

    def __post_init__(self) -> None:
        for root in self.allowed_roots:
            if not Path(root).is_absolute():
                raise ValueError(
                    f"Expected every entry of `{ALLOWED_ROOTS_ENV}` to be an absolute directory but got {str(root)!r}"
                )
        object.__setattr__(self, "allowed_roots", tuple(Path(os.path.realpath(r)) for r in self.allowed_roots))

    def check_path(self, raw: str, *, what: str, kind: str = "file", show: bool = True) -> str:
        """Return the resolved absolute path of ``raw`` if it exists under an allowed root.

        Args:
            raw: the path as written in the request.
            what: how to call it in an error message (``"the forget request file"`` ...).
            kind: ``"file"``, ``"dir"`` or ``"any"``.
            show: repeat ``raw`` in an error message (False for a forget request file: its path may name the person).

        Raises:
            RequestRefused: for relative paths, ``..`` or ``~``, paths outside every allowed root, missing paths.
        """
        named = f"{what} {raw!r}" if show else what
        if not raw:
            raise RequestRefused(f"{what} is empty; give an absolute path")
        if "\\" in raw or ".." in Path(raw).parts or raw.startswith("~"):
            raise RequestRefused(f"{named} contains '..', '~' or a backslash; path traversal is not allowed")
        if not os.path.isabs(raw):
            raise RequestRefused(f"{named} is not an absolute path; give the full path")
        if not self.allowed_roots:
            raise RequestRefused(
                f"{named} is a path, but this server allows no paths in requests; "
                f"the server administrator can allow directories with {ALLOWED_ROOTS_ENV}"
            )
        resolved = Path(os.path.realpath(raw))
        if not any(resolved.is_relative_to(root) for root in self.allowed_roots):
            # the roots are the server's layout and the reason is world-readable: named by the setting only
            raise RequestRefused(f"{named} is outside the allowed roots ({ALLOWED_ROOTS_ENV} on the server); ask its "
                                 "administrator where to put it")
        exists = {"file": resolved.is_file, "dir": resolved.is_dir, "any": resolved.exists}[kind]
        if not exists():
            raise RequestRefused(f"{named} does not exist" + ("" if kind == "any" else f" or is not a {kind}"))
        return str(resolved)


def split_request(value: str) -> dict[str, str]:
    """Split a request value into its ``key=value`` pairs, strictly.

    Raises:
        RequestRefused: for oversized or non-printable values, empty parts, missing ``=``, unknown or repeated
            keys, empty values, or a missing ``forget``.
    """
    if not isinstance(value, str) or not value.strip():
        raise RequestRefused(f"the request is empty; write e.g. 'forget=classes:3; method={vocab.DEFAULT_METHOD}'")
    if len(value) > MAX_REQUEST_CHARS:
        raise RequestRefused(
            f"the request is {len(value)} characters long; the limit is {MAX_REQUEST_CHARS}. "
            "Put long forget lists in an ids: file under an allowed root",
            keep_value=False,
        )
    if not _PRINTABLE.match(value):
        raise RequestRefused("the request contains non-printable or non-ASCII characters (the request is not "
                             "stored)", keep_value=False)
    pairs: dict[str, str] = {}
    for position, part in enumerate(value.strip().removesuffix(";").split(";"), start=1):
        part = part.strip()
        if not part:
            raise RequestRefused("the request has an empty part between ';' separators")
        key, sep, val = part.partition("=")
        key, val = key.strip(), val.strip()
        if not sep:
            # never repeated nor stored: a part without '=' may be IDs pasted into the request
            raise RequestRefused(f"malformed request part (part {position}): expected key=value separated by ';' "
                                 "(the request is not stored)", keep_value=False)
        if key not in REQUEST_KEYS:
            raise RequestRefused(f"unknown request key in part {position} (not repeated, and the request is not "
                                 f"stored: it may be sample IDs); expected one of: {', '.join(REQUEST_KEYS)}",
                                 keep_value=False)
        if key in pairs:
            raise RequestRefused(f"request key {key!r} is given twice")
        if not val:
            raise RequestRefused(f"request key {key!r} has an empty value")
        pairs[key] = val
    if "forget" not in pairs:
        raise RequestRefused("the request has no 'forget' key; write e.g. 'forget=classes:3'")
    return pairs


def _check_forget(text: str, policy: SecurityPolicy) -> ForgetSpec:
    """The forget spec in its canonical spelling, with the ``ids:`` file resolved under an allowed root."""
    try:
        spec = vocab.parse_forget_spec(text)
    except ValueError as exc:  # the grammar's message repeats nothing of the text, which may be pasted IDs
        # classes: and random: errors read as the API's (one message for every door); the value is never stored
        same = text.partition(":")[0] in ("classes", "random")
        raise RequestRefused(str(exc) + ("" if same else " (the request is not stored)"), keep_value=False) from None
    if spec.keyed:
        raise RequestRefused("forget=ids:keyed-... is the record of an earlier request, not a request; give "
                             "forget=ids:<absolute path of a file of IDs under an allowed root>")
    if not spec.by_ids:
        return dataclasses.replace(spec, text=spec.canonical)
    if not os.path.isabs(spec.path):
        raise RequestRefused("forget=ids: expects the absolute path of a file of IDs under an allowed root")
    path = policy.check_path(spec.path, what="the forget request file", show=False)
    return dataclasses.replace(spec, text=f"ids:{path}", path=path)


def _check_data(source: str, policy: SecurityPolicy) -> SourceSpec:
    """The data source, parsed by the data layer's one grammar (:func:`mlflow_unlearn.data.grammar.parse_source`,
    the same errors as every other door), then policed: its paths under an allowed root, no download or URL unless
    allowed, no code. Returned with its paths resolved."""
    if (_URL.match(source) or source.partition(":")[0].lower() in URL_SCHEMES) and not policy.allow_urls:
        raise RequestRefused(
            f"data {source[:80]!r} is a URL; this server allows only built-in sources and files under the allowed "
            f"roots (the administrator can set {ALLOW_URLS_ENV}=true)"
        )
    try:
        spec = parse_source(source)
    except ValueError as exc:
        raise RequestRefused(f"the request's data: {exc}") from None
    if spec.syntax.argument == "factory":
        raise RequestRefused("the request's data names a factory, which is code: a request cannot name code to run "
                             "on the server. Leave data= out: the job then uses the data the version was logged with "
                             "(a factory logged with the model included)")
    if spec.downloads and not policy.allow_urls:
        raise RequestRefused(f"data {source[:80]!r} asks to download; this server does not allow downloads "
                             f"(the administrator can set {ALLOW_URLS_ENV}=true)")
    resolved = {where: policy.check_path(raw, what="data path" if where == "argument" else f"data {where}",
                                         kind="any" if where == "argument" else "dir")
                for where, raw in spec.paths.items()}
    argument = resolved.pop("argument", None)
    return spec.replace(argument=argument, **resolved)


def parse_request(value: str, policy: SecurityPolicy) -> UnlearnRequest:
    """Parse and validate a request tag value.

    Args:
        value: the tag value, e.g. ``"forget=classes:3; method=nitc"``.
        policy: what files and URLs may be referenced (the server's settings).

    Returns:
        The :class:`~mlflow_unlearn.request.UnlearnRequest` with paths resolved; ``onnx`` is None unless the request
        gives it (the server's default then applies), the device is left to the server.

    Raises:
        RequestRefused: with a message that names the problem and how to fix it.

    Example:
        >>> request = parse_request("forget=classes:7,3; method=finetune; seed=4", SecurityPolicy())
        >>> request.forget.text, request.method, request.data, request.seed, request.onnx
        ('classes:3,7', 'finetune', None, 4, None)
        >>> parse_request("forget=classes:3; onnx=FALSE", SecurityPolicy()).onnx
        False
    """
    pairs = split_request(value)
    method = pairs.get("method", vocab.DEFAULT_METHOD)
    if not _NAME.match(method):
        raise RequestRefused(
            "the method is not a registered method name (lower-case letters, digits, '_'; not repeated, and the "
            "request is not stored); module paths are not allowed", keep_value=False
        )
    reference = pairs.get("reference", vocab.NO_REFERENCE)
    if reference not in vocab.REFERENCES:
        raise RequestRefused(f"Unknown reference (not repeated, and the request is not stored); expected one of: "
                             f"{', '.join(vocab.REFERENCES)}", keep_value=False)
    try:
        onnx = parse_flag("onnx", pairs["onnx"], what="key") if "onnx" in pairs else None
    except ValueError:
        raise RequestRefused("Unknown onnx value (not repeated, and the request is not stored); expected one of: "
                             "true, false (or 1/0, yes/no)", keep_value=False) from None
    try:
        seed = parse_seed(pairs.get("seed", "0"))
    except ValueError:
        raise RequestRefused("Expected the request's seed to be a non-negative int below 2**32 (not repeated, and the "
                             "request is not stored)", keep_value=False) from None
    try:
        timeout = parse_duration(pairs["timeout"]) if "timeout" in pairs else None
    except ValueError:
        raise RequestRefused("Expected the request's timeout to be a positive duration such as 90s, 30m or 2h (not "
                             "repeated, and the request is not stored)", keep_value=False) from None
    config = pairs.get("config", "")
    if config:
        config = policy.check_path(config, what="config file")
        if not config.endswith((".yaml", ".yml")):
            raise RequestRefused("the config file must be a YAML file ending in .yaml or .yml")
    return UnlearnRequest(
        forget=_check_forget(pairs["forget"], policy),
        method=method,
        data=_check_data(pairs["data"], policy) if "data" in pairs else None,
        config=config or None,
        reference=reference,
        seed=seed,
        onnx=onnx,
        timeout=timeout,
    )
