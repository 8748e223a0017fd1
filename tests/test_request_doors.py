"""One request, four doors: the API's keyword arguments, the CLI's options, the MLproject's parameters and the
registry request's keys are the fields of :class:`mlflow_unlearn.request.UnlearnRequest` (issue 28), and the typed
request's own grammar (keyed forget records, sources, the one yes/no parser, the status enum)."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest
import yaml
from click.testing import CliRunner
from mlflow_unlearn_plugins import request as plugin_request
from mlflow_unlearn_plugins import settings
from mlflow_unlearn_plugins.request import RequestRefused, SecurityPolicy, parse_request

from mlflow_unlearn.data import parse_forget_spec
from mlflow_unlearn.data.grammar import parse_flag, parse_source
from mlflow_unlearn.request import (
    API,
    CLI,
    DOORS,
    MLPROJECT,
    REGISTRY,
    REQUEST_FIELDS,
    RequestField,
    RequestStatus,
    UnlearnRequest,
    door_fields,
)
from mlflow_unlearn.tracking import project_dir
from mlflow_unlearn.tracking.api import unlearn
from mlflow_unlearn.tracking.cli import cli
from mlflow_unlearn.tracking.keys import DigestKey

#: The MLproject entry points that run one request.
REQUEST_ENTRY_POINTS = ("unlearn", "unlearn_distributed")
#: What each door takes besides the request's fields: where the request goes, and how the door itself runs.
DOOR_EXTRAS = {
    API: {"model_uri", "gate", "force", "retain_eval_size", "run_id", "experiment", "tracking_uri", "registry_uri"},
    CLI: {"model_uri", "force", "onnx_copy", "retain_eval_size", "experiment", "as_json"},
    MLPROJECT: {"model_uri", "nproc"},
    REGISTRY: set(),
}
#: A CLI option whose parameter is named after another field (a flag's value form, for ``mlflow run``).
CLI_VALUE_FORMS = {"onnx_copy": "onnx"}


def _mlproject() -> dict:
    return yaml.safe_load((project_dir() / "MLproject").read_text())["entry_points"]


def door_names() -> dict[str, set[str]]:
    """The request fields each door takes, read from the door itself."""
    api = set(inspect.signature(unlearn).parameters)
    command = {p.name for p in cli.commands["unlearn"].params}
    entry_points = [set(_mlproject()[name]["parameters"]) for name in REQUEST_ENTRY_POINTS]
    assert all(names - {"nproc"} == entry_points[0] - {"nproc"} for names in entry_points)
    return {API: api - DOOR_EXTRAS[API], CLI: command - DOOR_EXTRAS[CLI], MLPROJECT: entry_points[0] - DOOR_EXTRAS[
        MLPROJECT], REGISTRY: set(plugin_request.REQUEST_KEYS)}


def disagreements(fields: tuple[RequestField, ...], doors: dict[str, set[str]]) -> dict[str, list[str]]:
    """For each door, the fields it should take and lacks, and what it takes that is no field (empty: they agree)."""
    found = {}
    for door, names in doors.items():
        wanted = {f.name for f in fields if door in f.doors}
        lacking, unknown = sorted(wanted - names), sorted(names - wanted)
        if lacking or unknown:
            found[door] = [f"lacks {n}" for n in lacking] + [f"takes {n}, which is no request field" for n in unknown]
    return found


def test_the_request_type_and_its_field_table_agree():
    assert [f.name for f in dataclasses.fields(UnlearnRequest)] == [f.name for f in REQUEST_FIELDS]
    for field in REQUEST_FIELDS:
        assert set(field.doors) <= set(DOORS) and field.help
        assert field.why_not or set(field.doors) == set(DOORS), f"{field.name}: say why a door does not take it"


def test_every_door_takes_exactly_the_request_fields():
    assert disagreements(REQUEST_FIELDS, door_names()) == {}


def test_a_field_that_one_door_lacks_is_found():
    """The check above can fail: a new field that a door does not take is named, door by door."""
    new = (*REQUEST_FIELDS, RequestField("temperature", "a field no door takes yet"))
    assert disagreements(new, door_names()) == {door: ["lacks temperature"] for door in DOORS}
    doors = door_names()
    doors[MLPROJECT] = doors[MLPROJECT] - {"seed"}  # the MLproject before issue 28
    assert disagreements(REQUEST_FIELDS, doors) == {MLPROJECT: ["lacks seed"]}


@pytest.mark.parametrize("entry_point", REQUEST_ENTRY_POINTS)
def test_the_mlproject_command_passes_every_parameter_to_its_option(entry_point):
    spec = _mlproject()[entry_point]
    command = " ".join(spec["command"].split())
    options = {p.name: p for p in cli.commands["unlearn"].params}
    value_forms = {field: option for option, field in CLI_VALUE_FORMS.items()}
    for name in set(spec["parameters"]) - {"model_uri", "nproc"}:
        flag = options[value_forms.get(name, name)].opts[0]
        assert re.search(rf"{re.escape(flag)} \{{{name}\}}(\s|$)", command), f"{entry_point}: {flag} {{{name}}}"


def test_the_registry_request_becomes_exactly_the_mlproject_parameters():
    request = parse_request("forget=classes:3; seed=9; onnx=no", SecurityPolicy())
    parameters = request.replace(device="cpu").project_parameters("models:/m/1")
    assert set(parameters) == set(_mlproject()["unlearn"]["parameters"])
    assert parameters["seed"] == "9" and parameters["onnx"] == "false" and parameters["register"] == "true"


@pytest.mark.parametrize("value", ["-1", "seven", "1.5", "99999999999", "4294967296"])
def test_a_bad_registry_seed_is_refused_without_repeating_it(value):
    with pytest.raises(RequestRefused, match="seed to be a non-negative int") as info:
        parse_request(f"forget=classes:3; seed={value}", SecurityPolicy())
    assert info.value.keep_value is False and value not in str(info.value)


def test_a_keyed_record_is_a_forget_spec_but_not_a_request():
    record = DigestKey(b"0123456789abcdef").keyed_spec(parse_forget_spec("ids:/srv/requests/a.txt"))
    assert parse_forget_spec(record.text) == record and record.by_ids and record.keyed and not record.path
    assert record.absolute() == record
    with pytest.raises(RequestRefused, match="record of an earlier request"):
        parse_request(f"forget={record.text}", SecurityPolicy())


def test_the_request_parses_its_text_once_at_the_door():
    request = UnlearnRequest("ids:forget.txt", data="npz:/d/x.npz?mean=0.5&std=0.25", config="", seed=3)
    assert request.forget.path.startswith("/") and request.forget.by_ids  # a relative path made absolute
    assert request.data == parse_source("npz:/d/x.npz?mean=0.5&std=0.25") and request.data.paths == {
        "argument": "/d/x.npz"}
    assert request.config is None and request.source == "npz:/d/x.npz?mean=0.5&std=0.25"
    assert UnlearnRequest(request.forget).forget is request.forget  # a parsed spec is not parsed again


BAD_REQUESTS = [
    ("forget grammar", dict(forget="3,7"), "without a '<kind>:' prefix"),
    ("data grammar", dict(data="nope:x"), "Unknown data source 'nope'"),
    ("reference", dict(reference="oracle"), "Unknown reference 'oracle'"),
    ("seed", dict(seed=-1), "Expected argument `seed`"),
    ("seed type", dict(seed="3"), "Expected argument `seed`"),
    ("device", dict(device="gpu"), "Expected `device` to be 'auto', 'cpu' or 'cuda"),
    ("onnx", dict(onnx="yes"), "Expected argument `onnx` to be True or False"),
    ("register", dict(register=None), "Expected argument `register` to be True or False"),
    ("method", dict(method=""), "Expected argument `method`"),
]


@pytest.mark.parametrize(("what", "fields", "message"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_a_request_checks_itself(what, fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        UnlearnRequest(**{"forget": "classes:3", **fields})


@pytest.mark.parametrize(("text", "value"), [("1", True), ("TRUE", True), (" yes ", True), ("0", False),
                                             ("False", False), ("no", False)])
def test_one_yes_no_parser_for_every_door(text, value):
    """The data grammar's ``download=``, the registry request's ``onnx=``, the CLI's ``--register``/``--onnx-copy``
    (so ``mlflow run -P``) and the plugin's settings read yes/no text the same way."""
    assert parse_flag("x", text) is value
    assert parse_source(f"torchvision:MNIST?root=/d&download={text.strip()}").downloads is value
    assert parse_request(f"forget=classes:3; onnx={text.strip()}", SecurityPolicy()).onnx is value
    assert settings.read_settings({"MLFLOW_UNLEARN_ONNX": text}).launcher.onnx is value
    option = next(p for p in cli.commands["unlearn"].params if p.name == "register")
    assert option.type.convert(text, option, None) is value
    result = CliRunner().invoke(cli, ["unlearn", "models:/m/1", "--forget", "classes:3", "--register", "maybe"])
    assert result.exit_code == 2 and "to be 1/0, true/false or yes/no" in result.output


def test_the_status_enum_is_the_tag_vocabulary():
    assert [s.value for s in RequestStatus] == ["queued", "running", "succeeded", "failed", "cancelled", "timed_out"]
    assert RequestStatus.QUEUED == "queued" and str(RequestStatus.FAILED) == "failed"
    assert [s for s in RequestStatus if s.active] == [RequestStatus.QUEUED, RequestStatus.RUNNING]
    assert [s for s in RequestStatus if s.stopped] == [RequestStatus.CANCELLED, RequestStatus.TIMED_OUT]


#: Scheduling fields: only the registry's launcher, which owns the job's processes, can honour them (issue 29).
SCHEDULING_FIELDS = {"timeout"}


def test_door_fields_names_the_doors():
    assert door_fields(API) == tuple(f.name for f in REQUEST_FIELDS if f.name not in SCHEDULING_FIELDS)
    assert "device" not in door_fields(REGISTRY) and "register" not in door_fields(REGISTRY)
    with pytest.raises(ValueError, match="Unknown door 'ui'"):
        door_fields("ui")


def test_a_status_is_its_tag_value_in_sets_and_dicts():
    assert RequestStatus.RUNNING in {"running"} and {"failed": 1}[RequestStatus.FAILED] == 1
    assert RequestStatus("succeeded") is RequestStatus.SUCCEEDED


def test_the_timeout_is_a_scheduling_field_of_the_registry_door_only():
    """The API, the CLI and ``mlflow run`` are stopped by whoever runs them; the registry's launcher stops a job
    past its deadline. The field says so, and a job's parameters never carry it."""
    (field,) = [f for f in REQUEST_FIELDS if f.name in SCHEDULING_FIELDS]
    assert field.doors == (REGISTRY,) and "scheduling field" in field.why_not
    for door in (API, CLI, MLPROJECT):
        assert "timeout" not in door_names()[door]
    request = parse_request("forget=classes:3; timeout=30m", SecurityPolicy())
    assert request.timeout == 1800
    assert "timeout" not in request.replace(device="cpu").project_parameters("models:/m/1")
    assert parse_request("forget=classes:3; timeout=90", SecurityPolicy()).timeout == 90


@pytest.mark.parametrize("value", ["000", "-5m", "soon", "1.5h", "12345678h", "30 minutes"])
def test_a_bad_registry_timeout_is_refused_without_repeating_it(value):
    with pytest.raises(RequestRefused, match="timeout to be a positive duration") as info:
        parse_request(f"forget=classes:3; timeout={value}", SecurityPolicy())
    assert info.value.keep_value is False and value not in str(info.value)
    with pytest.raises(ValueError, match="Expected argument `timeout`"):
        UnlearnRequest("classes:3", timeout=0)
