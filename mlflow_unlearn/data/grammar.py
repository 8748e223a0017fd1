"""The one grammar of data sources: ``NAME[:ARGUMENT][?OPTION=VALUE&OPTION=VALUE]``, parsed into a :class:`SourceSpec`.

Every door reads a source string through :func:`parse_source` (the data layer's :func:`~.sources.load_data`, the
registry plugin's request check, ``log_model``), so the same text means the same thing everywhere and gets the same
error. This module imports neither torch nor pandas: the registry plugin parses requests inside the server's
request threads.

The grammar checks the values of the options it knows (sizes, crops, normalisation, flags) as well as the names;
what needs the data (files, channel counts) is checked by :func:`~.sources.load_data`.

>>> spec = parse_source("imagefolder:/data/pets?size=256&crop=224&mean=0.485,0.456,0.406&std=0.229,0.224,0.225")
>>> spec.name, spec.argument, spec.size, spec.crop, spec.mean
('imagefolder', '/data/pets', (256, 256), (224, 224), (0.485, 0.456, 0.406))
>>> parse_source("factory:mydata:make_datasets?root=/data").factory
('mydata', 'make_datasets')
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

from mlflow_unlearn.registries import Registry

#: Options that every source accepts: the preprocessing applied to each sample, in this order, after reading it:
#: ``size`` (resize to H or HxW, bilinear), ``crop`` (centre crop to H or HxW), ``mean`` and ``std`` (per channel:
#: ``(x - mean) / std``). They are part of the source string, so the lineage records them with the data.
PREPROCESS_OPTIONS = ("size", "crop", "mean", "std")

#: How the argument of a source is read: a file or folder path, a name (a torchvision class), a factory in the
#: user's code (``<module or file.py>:<callable>``), or nothing.
ARGUMENT_KINDS = ("path", "name", "factory", "none")

_TRUE, _FALSE = frozenset({"1", "true", "yes"}), frozenset({"0", "false", "no"})
_SIZE = re.compile(r"(\d+)(?:x(\d+))?")
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_CALLABLE = re.compile(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*")
_MODULE = re.compile(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*")


@dataclass(frozen=True)
class SourceSyntax:
    """How one source is written.

    Args:
        name: the part before ``:``.
        syntax: how to write it, shown in error messages (e.g. ``"npz:<path>"``).
        options: the ``?key=value`` options it accepts besides :data:`PREPROCESS_OPTIONS`.
        argument: one of :data:`ARGUMENT_KINDS`.
        path_options: options whose value is a path (the registry plugin checks them like the argument).
        open_options: any other option is passed on (a factory's keyword arguments) instead of refused.
    """

    name: str
    syntax: str
    options: tuple[str, ...] = ()
    argument: str = "path"
    path_options: tuple[str, ...] = ()
    open_options: bool = False

    def __post_init__(self) -> None:
        if self.argument not in ARGUMENT_KINDS:
            raise ValueError(f"Expected argument `argument` to be one of {', '.join(ARGUMENT_KINDS)} but got "
                             f"{self.argument!r}")

    @property
    def takes_argument(self) -> bool:
        return self.argument != "none"


_SYNTAX: Registry[SourceSyntax] = Registry("data source")


def register_syntax(syntax: SourceSyntax) -> None:
    """Add a source's grammar (:func:`~.sources.register_source` calls this with its loader's).

    Raises:
        ValueError: a source of that name is already registered.
    """
    _SYNTAX.register(syntax.name, syntax)


def unregister_syntax(name: str) -> SourceSyntax:
    """Remove source ``name``'s grammar (:func:`~.sources.unregister_source` calls this) and return it.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    return _SYNTAX.unregister(name)


_IMAGE_OPTIONS = ("mode",)
for _builtin in (
    SourceSyntax("digits", "digits", argument="none"),
    SourceSyntax("mnist5k", "mnist5k", argument="none"),
    SourceSyntax("npz", "npz:<path>"),
    SourceSyntax("imagefolder", "imagefolder:<dir>[?size=H[xW]&mode=auto|L|RGB]", _IMAGE_OPTIONS),
    SourceSyntax("torchvision", "torchvision:<Name>?root=<dir>[&download=1]", ("root", "download"), argument="name",
                 path_options=("root",)),
    SourceSyntax("csv", "csv:<path>[?size=..&mode=..|?shape=CxHxW|flat]", (*_IMAGE_OPTIONS, "shape")),
    SourceSyntax("parquet", "parquet:<path>[?size=..&mode=..|?shape=CxHxW|flat]", (*_IMAGE_OPTIONS, "shape")),
    SourceSyntax("factory", "factory:<module|file.py>:<callable>[?key=value...]", argument="factory",
                 open_options=True),
):
    register_syntax(_builtin)


def source_names() -> list[str]:
    """The names of every source whose grammar is known, sorted."""
    return _SYNTAX.names()


def known_sources() -> str:
    """How to write every known source, for messages."""
    return ", ".join(_SYNTAX.get(name).syntax for name in source_names())


@dataclass(frozen=True)
class SourceSpec:
    """A parsed data source: what :func:`parse_source` returns. Build it with :func:`parse_source` only.

    Args:
        text: the source as written.
        name: the source's name (``npz``, ``imagefolder``, ``factory`` ...).
        argument: the part after ``name:``, before ``?`` ('' when there is none).
        options: the options in their written order, as ``(key, value)`` pairs.
    """

    text: str
    name: str
    argument: str
    options: tuple[tuple[str, str], ...] = ()

    @property
    def syntax(self) -> SourceSyntax:
        return _SYNTAX.get(self.name)

    @property
    def option_dict(self) -> dict[str, str]:
        """Every option, by name."""
        return dict(self.options)

    @property
    def source_options(self) -> dict[str, str]:
        """The options meant for the source's loader (or a factory's keyword arguments): all but preprocessing."""
        return {k: v for k, v in self.options if k not in PREPROCESS_OPTIONS}

    @property
    def size(self) -> tuple[int, int] | None:
        """The ``size`` option as ``(height, width)``."""
        return _parse_size("size", self.option_dict["size"]) if "size" in self.option_dict else None

    @property
    def crop(self) -> tuple[int, int] | None:
        """The ``crop`` option as ``(height, width)``."""
        return _parse_size("crop", self.option_dict["crop"]) if "crop" in self.option_dict else None

    @property
    def mean(self) -> tuple[float, ...] | None:
        """The ``mean`` option, one value per channel."""
        return _parse_floats("mean", self.option_dict["mean"]) if "mean" in self.option_dict else None

    @property
    def std(self) -> tuple[float, ...] | None:
        """The ``std`` option, one value per channel."""
        return _parse_floats("std", self.option_dict["std"], positive=True) if "std" in self.option_dict else None

    @property
    def downloads(self) -> bool:
        """Whether the source asks to download (``download=1|true|yes``)."""
        return parse_flag("download", self.option_dict.get("download", "0"))

    @property
    def factory(self) -> tuple[str, str]:
        """A factory source's ``(module or file, callable)``.

        Raises:
            ValueError: for any other source.
        """
        if self.syntax.argument != "factory":
            raise ValueError(f"The data source {self.name!r} names no factory")
        target, _, function = self.argument.rpartition(":")
        return target, function

    @property
    def factory_file(self) -> str | None:
        """The ``.py`` file of a factory given as a file, None for a module name (or another source)."""
        if self.syntax.argument != "factory":
            return None
        target = self.factory[0]
        return target if target.endswith(".py") else None

    @property
    def paths(self) -> dict[str, str]:
        """The paths this source reads, by where they are written: ``"argument"`` (a file or folder, a factory's
        ``.py`` file) and each path option (``"root"``)."""
        found = {}
        if self.syntax.argument == "path" or self.factory_file is not None:
            found["argument"] = self.factory_file or self.argument
        found.update({k: v for k, v in self.options if k in self.syntax.path_options})
        return found

    def replace(self, *, argument: str | None = None, **options: str) -> SourceSpec:
        """This source with another argument (for a factory: another file) or option values, re-parsed.

        >>> parse_source("npz:data.npz?mean=0.5&std=0.25").replace(argument="/abs/data.npz").text
        'npz:/abs/data.npz?mean=0.5&std=0.25'
        """
        if argument is not None and self.syntax.argument == "factory" and self.factory_file is not None:
            argument = f"{argument}:{self.factory[1]}"
        pairs = [(k, options.pop(k) if k in options else v) for k, v in self.options] + list(options.items())
        text = self.name + (f":{self.argument if argument is None else argument}" if self.syntax.takes_argument else "")
        if pairs:
            text += "?" + "&".join(f"{k}={quote(v, safe='/,.:-_')}" for k, v in pairs)
        return parse_source(text)


def parse_source(text: str) -> SourceSpec:
    """Parse a data source string; check its name, argument, option names and the values of the options it knows.

    Args:
        text: e.g. ``"digits"``, ``"npz:/data/x.npz?mean=0.5&std=0.25"``, ``"factory:mydata:make?root=/data"``.

    Returns:
        The :class:`SourceSpec`.

    Raises:
        ValueError: an unknown source (the message lists the known ones), a missing or extra argument, malformed or
            unknown or repeated options, or a bad option value (the message says what is accepted).

    >>> parse_source("torchvision:MNIST?root=/data&download=no").downloads
    False
    >>> parse_source("digits?mean=0.5,0.5&std=0.2")
    Traceback (most recent call last):
    ...
    ValueError: Expected options `mean` and `std` to have the same number of values (one per channel) but got 2 and 1
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"Expected a data source string such as 'digits' but got {text!r}")
    source = text.strip()
    head, _, query = source.partition("?")
    name, _, argument = head.partition(":")
    if name not in _SYNTAX:
        raise ValueError(f"Unknown data source {name!r} in {source!r}; expected one of: {known_sources()}")
    syntax = _SYNTAX.get(name)
    if syntax.takes_argument and not argument:
        raise ValueError(f"The data source {name!r} needs an argument: {syntax.syntax}")
    if not syntax.takes_argument and argument:
        raise ValueError(f"The data source {name!r} takes no argument but got {argument!r}; write {syntax.syntax}")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"Malformed options {query!r} in data source {source!r}; write ?key=value&key=value") from None
    keys = [k for k, _ in pairs]
    accepted = (*syntax.options, *PREPROCESS_OPTIONS)
    unknown = [] if syntax.open_options else sorted(set(keys) - set(accepted))
    if unknown or len(set(keys)) != len(keys):
        problem = f"unknown options {unknown}" if unknown else "a repeated option"
        shown = ", ".join(accepted) + (", and the factory's own keyword arguments" if syntax.open_options else "")
        raise ValueError(f"Data source {source!r} has {problem}; accepted options: {shown}")
    spec = SourceSpec(source, name, argument, tuple(pairs))
    _check_values(spec)
    return spec


def _check_values(spec: SourceSpec) -> None:
    """The option values the grammar knows, parsed once so that a bad one fails here, at every door."""
    options = spec.option_dict
    spec.size, spec.crop  # noqa: B018 - parsing is the check
    mean, std = spec.mean, spec.std
    if (mean is None) != (std is None):
        given, missing = ("mean", "std") if std is None else ("std", "mean")
        raise ValueError(f"Option `{given}` needs `{missing}` too: normalisation is (x - mean) / std, one value per "
                         f"channel each, e.g. ?mean=0.485,0.456,0.406&std=0.229,0.224,0.225")
    if mean is not None and len(mean) != len(std):
        raise ValueError(f"Expected options `mean` and `std` to have the same number of values (one per channel) but "
                         f"got {len(mean)} and {len(std)}")
    if "mode" in options and options["mode"] not in ("auto", "L", "RGB"):
        raise ValueError(f"Expected option `mode` to be one of auto, L, RGB but got {options['mode']!r}")
    if "download" in spec.syntax.options and "download" in options:
        spec.downloads  # noqa: B018
    if spec.syntax.argument == "factory":
        _check_factory(spec)


def _check_factory(spec: SourceSpec) -> None:
    target, sep, function = spec.argument.rpartition(":")
    if not sep or not target or not _CALLABLE.fullmatch(function):
        raise ValueError(f"Expected a factory written {spec.syntax.syntax}, e.g. factory:mydata:make_datasets or "
                         f"factory:/code/mydata.py:make_datasets, but got {spec.argument!r}")
    if not target.endswith(".py") and not _MODULE.fullmatch(target):
        raise ValueError(f"Expected the factory's module to be a module name (mydata, mypkg.data) or a .py file but "
                         f"got {target!r}")


def parse_flag(name: str, text: str, *, what: str = "option") -> bool:
    """Yes/no text: ``1``/``true``/``yes`` or ``0``/``false``/``no`` (any case, surrounding spaces ignored).

    The project's one reader of such text: source options (``download``), a registry request's ``onnx=``, the
    CLI's ``--register``/``--onnx-copy`` (and so the MLproject's parameters), the plugin's settings, logged params.

    Args:
        name: what the text sets, for the message.
        text: the text.
        what: what kind of thing ``name`` is, for the message (``option``, ``setting``, ``key``...).

    Raises:
        ValueError: any other text.

    >>> parse_flag("download", "No"), parse_flag("download", "1"), parse_flag("onnx", " TRUE ")
    (False, True, True)
    """
    flag = text.strip().lower() if isinstance(text, str) else ""
    if flag in _TRUE | _FALSE:
        return flag in _TRUE
    raise ValueError(f"Expected {what} `{name}` to be 1/0, true/false or yes/no but got {str(text)[:40]!r}")


def _parse_size(name: str, text: str) -> tuple[int, int]:
    match = _SIZE.fullmatch(text)
    if not match or int(match[1]) < 1 or int(match[2] or match[1]) < 1:
        raise ValueError(f"Expected option `{name}` to be H or HxW in positive ints (e.g. 28 or 32x32) but got "
                         f"{text!r}")
    return int(match[1]), int(match[2] or match[1])


def _parse_floats(name: str, text: str, *, positive: bool = False) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        kind = "positive numbers" if positive else "numbers"
        raise ValueError(f"Expected option `{name}` to be comma-separated {kind}, one per channel (e.g. "
                         f"0.485,0.456,0.406), but got {text!r}")
    return values
