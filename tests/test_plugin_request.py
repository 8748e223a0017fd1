"""Fast tests of the registry plugin without a server: request parsing and policy, the ledger's compare-and-set,
the store's triggers on a real SQLite registry (refused requests only, so no job starts), settings, URI parsing."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fresh_db import migrated_sqlite
from mlflow.entities.model_registry import ModelVersionTag
from mlflow.exceptions import MlflowException
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore
from mlflow_unlearn_plugins import errors, job, ledger, registry_store, scheduler, settings
from mlflow_unlearn_plugins.registry_store import UnlearnRegistryStore, absolute_sqlite_uri, parse_store_uri
from mlflow_unlearn_plugins.request import (
    MAX_REQUEST_CHARS,
    RequestRefused,
    SecurityPolicy,
    UnlearnRequest,
    parse_request,
)


@pytest.fixture()
def roots(tmp_path: Path) -> tuple[Path, SecurityPolicy]:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "forget.txt").write_text("1\n2\n")
    (allowed / "fast.yaml").write_text("epochs: 1\n")
    (allowed / "train.npz").write_bytes(b"")
    (tmp_path / "secret.txt").write_text("x")
    (allowed / "escape.txt").symlink_to(tmp_path / "secret.txt")
    return allowed, SecurityPolicy(allowed_roots=(allowed,))


def test_good_requests_are_normalised(roots):
    allowed, policy = roots
    req = parse_request(f" forget=classes:7,3,3 ;method=scrub; data=npz:{allowed}/train.npz; "
                        f"config={allowed}/fast.yaml; reference=retrain;", policy)
    assert req == UnlearnRequest(forget="classes:3,7", method="scrub", data=f"npz:{allowed}/train.npz",
                                 config=f"{allowed}/fast.yaml", reference="retrain")
    assert parse_request("forget=random:0.1:7", policy).method == "nitc"
    assert parse_request("forget=random:100", policy).forget.text == "random:100"  # a count, as on the command line
    ids = parse_request(f"forget=ids:{allowed}/forget.txt", policy).forget
    assert ids.text == f"ids:{allowed}/forget.txt" and ids.by_ids and ids.path == f"{allowed}/forget.txt"
    request = parse_request("forget=classes:1; data=digits; seed=12", policy)
    assert request.replace(device="cpu").project_parameters("models:/m/1") == {
        "model_uri": "models:/m/1", "forget": "classes:1", "method": "nitc", "data": "digits", "config": "",
        "reference": "none", "seed": "12", "register": "true", "device": "cpu", "onnx": "true"}


BAD = [
    ("", "empty"),
    ("forget classes:3", "malformed"),
    ("method=nitc", "no 'forget'"),
    ("forget=classes:3; forget=classes:4", "twice"),
    ("forget=classes:3; epochs=3", "unknown request key"),
    ("forget=classes:3;; method=nitc", "empty part"),
    ("forget=classes:3; method=", "empty value"),
    ("forget=classes:x", "expected comma-separated ints"),
    ("forget=classes:", "expected comma-separated ints"),
    ("forget=everything", "Expected a forget spec like 'classes:3,7'"),
    ("forget=everything:1", "Unknown forget spec kind before ':'"),
    ("forget=random:1.5", "fraction"),
    ("forget=classes:3; method=os.system", "module paths"),
    ("forget=classes:3; method=Nitc", "registered method name"),
    ("forget=classes:3; reference=oracle", "Unknown reference .*; expected one of: none, retrain"),
    ("forget=classes:3; onnx=maybe", "Unknown onnx value .*; expected one of: true, false"),
    ("forget=classes:3; data=https://example.com/x.npz", "is a URL"),
    ("forget=classes:3; data=s3://bucket/x.npz", "is a URL"),
    ("forget=classes:3; data=my.module:factory", "Unknown data source 'my.module'"),
    ("forget=classes:3; data=torchvision:MNIST?root={allowed}&download=1", "download"),
    ("forget=classes:3; data=torchvision:MNIST?root={allowed}&download=YES", "download"),
    ("forget=classes:3; data=torchvision:MNIST?root={allowed}&download=maybe", "`download` to be 1/0"),
    ("forget=classes:3; data=digits?opt=$(id)", r"unknown options \['opt'\]"),
    ("forget=classes:3; data=factory:os:system?command=id", "names a factory, which is code"),
    ("forget=classes:3; data=factory:{allowed}/data.py:make", "names a factory, which is code"),
    ("forget=classes:3; data=npz:{allowed}/train.npz?mean=0.5", "`mean` needs `std`"),
    ("forget=ids:/etc/forget.txt", "outside the allowed roots"),
    ("forget=ids:/etc/hostname", "not a file name"),
    ("forget=ids:{allowed}/../secret.txt", "traversal"),
    ("forget=ids:~/forget.txt", "absolute path of a file"),
    ("forget=ids:forget.txt", "absolute path of a file"),
    ("forget=classes:3; config=fast.yaml", "not an absolute path"),
    ("forget=ids:{allowed}/escape.txt", "outside the allowed roots"),
    ("forget=ids:{allowed}/missing.txt", "does not exist"),
    ("forget=classes:3; config={allowed}/forget.txt", "YAML"),
    ("forget=classes:3; config=/etc/passwd", "outside the allowed roots"),
    ("forget=classes:3; data=npz:{allowed}/../../etc/passwd", "traversal"),
    ("forget=classes:3\x00", "non-printable"),
    ("forget=classes:" + "1," * MAX_REQUEST_CHARS + "1", "limit is"),
]


@pytest.mark.parametrize(("value", "reason"), BAD, ids=[f"{i}-{r}" for i, (_, r) in enumerate(BAD)])
def test_bad_requests_are_refused_with_a_reason(roots, value, reason):
    allowed, policy = roots
    with pytest.raises(RequestRefused, match=reason.replace("(", r"\(").replace("$", r"\$")):
        parse_request(value.format(allowed=allowed), policy)


def test_the_plugin_reads_data_with_the_data_layers_grammar(roots, tmp_path):
    """One source grammar: ``download=no`` is "no download" for the plugin as for the data layer (it used to be
    refused as a download request), and the request's source is the one the data layer parses."""
    from mlflow_unlearn.data.grammar import parse_source

    allowed, policy = roots
    (allowed / "mnist").mkdir()
    for flag in ("no", "0", "false", "No"):
        data = parse_request(f"forget=classes:3; data=torchvision:MNIST?root={allowed}/mnist&download={flag}",
                             policy).data
        assert data.text == f"torchvision:MNIST?root={allowed}/mnist&download={flag}"
        assert data.downloads is False and parse_source(data.text).downloads is False
    normalised = parse_request(f"forget=classes:3; data=npz:{allowed}/train.npz?mean=0.5&std=0.25&crop=2", policy)
    assert normalised.data.option_dict == {"mean": "0.5", "std": "0.25", "crop": "2"}
    assert parse_request(f"forget=classes:3; data=npz:{allowed}/train.npz?mean=0.1,0.2,0.3&std=1,1,1",
                         policy).data.text.endswith("?mean=0.1,0.2,0.3&std=1,1,1")


@pytest.mark.parametrize(("request_part", "server_default", "expected"), [
    ("; onnx=false", True, "false"), ("; onnx=TRUE", False, "true"), ("; onnx=False", False, "false"),
    ("", True, "true"), ("", False, "false"),
])
def test_the_request_onnx_key_overrides_the_server_default(request_part, server_default, expected):
    request = parse_request("forget=classes:3" + request_part, SecurityPolicy())
    assert request.onnx == ({"true": True, "false": False}[expected] if request_part else None)
    assert request.project_parameters("models:/m/1", onnx=server_default)["onnx"] == expected


def test_an_onnx_value_outside_true_false_is_refused_in_one_line_without_repeating_it():
    with pytest.raises(RequestRefused) as info:
        parse_request("forget=classes:3; onnx=1017,2044", SecurityPolicy())
    message = str(info.value)
    assert "\n" not in message and "1017" not in message and info.value.keep_value is False
    assert message == ("Unknown onnx value (not repeated, and the request is not stored); expected one of: "
                       "true, false (or 1/0, yes/no)")


def test_the_onnx_server_setting():
    assert settings.read_settings({}).launcher.onnx is True
    off = settings.read_settings({"MLFLOW_UNLEARN_ONNX": " False "})
    assert off.launcher.onnx is False and settings.read_settings({"MLFLOW_UNLEARN_ONNX": "true"}).launcher.onnx
    assert settings.PluginSettings.from_json(off.to_json()) == off  # how a launcher receives it
    assert settings.read_settings({"MLFLOW_UNLEARN_ONNX": "no"}).launcher.onnx is False  # the one yes/no parser
    for bad in ("maybe", "2", "nope"):
        with pytest.raises(ValueError, match="Expected setting `MLFLOW_UNLEARN_ONNX` to be 1/0, true/false or yes/no"):
            settings.read_settings({"MLFLOW_UNLEARN_ONNX": bad})
    with pytest.raises(ValueError, match="MLFLOW_UNLEARN_ONNX"):
        settings.LauncherSettings(onnx="false")


def test_no_paths_without_allowed_roots_and_urls_only_when_allowed(roots):
    allowed, _ = roots
    with pytest.raises(RequestRefused, match="allows no paths"):
        parse_request(f"forget=ids:{allowed}/forget.txt", SecurityPolicy())
    url = "forget=classes:3; data=https://example.com/x.npz"
    with pytest.raises(RequestRefused, match="Unknown data source 'https'"):  # allowed, but no source of the grammar
        parse_request(url, SecurityPolicy(allow_urls=True))
    env = {"MLFLOW_UNLEARN_ALLOWED_ROOTS": f"{allowed}:/srv", "MLFLOW_UNLEARN_ALLOW_URLS": "1"}
    policy = settings.read_settings(env).policy
    assert policy.allow_urls and len(policy.allowed_roots) == 2
    with pytest.raises(ValueError, match="absolute directory"):
        settings.read_settings({"MLFLOW_UNLEARN_ALLOWED_ROOTS": "relative/dir"})
    with pytest.raises(ValueError, match="to be 1/0, true/false or yes/no"):
        settings.read_settings({"MLFLOW_UNLEARN_ALLOW_URLS": "maybe"})


@pytest.mark.parametrize("value", ["forget=ids:12345,67890", "forget=ids: 12345 67890", "forget=ids:/12345,67890",
                                   "forget=ids:12345;67890", "forget=ids:[12345, 67890]"])
def test_inline_ids_are_refused_in_every_form_and_never_echoed_or_stored(roots, value):
    _, policy = roots
    with pytest.raises(RequestRefused) as info:
        parse_request(value, policy)
    assert "12345" not in str(info.value) and "67890" not in str(info.value)
    assert info.value.keep_value is False


def test_store_uri_parsing(tmp_path, monkeypatch):
    assert parse_store_uri("unlearn+postgresql://u@db/mlflow") == "postgresql://u@db/mlflow"
    assert parse_store_uri("unlearn+mysql+pymysql://u@db/m") == "mysql+pymysql://u@db/m"
    monkeypatch.chdir(tmp_path)
    assert parse_store_uri("unlearn+sqlite:///r.db") == f"sqlite:///{tmp_path}/r.db"
    assert absolute_sqlite_uri("sqlite:////abs/r.db") == "sqlite:////abs/r.db"
    for bad in ("sqlite:///r.db", "unlearn+file:///x", "unlearn+http://host"):
        with pytest.raises(MlflowException, match="unlearn\\+<dialect>"):
            parse_store_uri(bad)


def test_settings_fail_early(tmp_path):
    with pytest.raises(ValueError, match="MLFLOW_UNLEARN_BACKEND"):
        settings.LauncherSettings(backend="slurm")
    with pytest.raises(ValueError, match="JSON config"):
        settings.LauncherSettings(backend="kubernetes")
    config = tmp_path / "k8s.json"
    config.write_text("{}")
    with pytest.raises(ValueError, match="http"):
        settings.LauncherSettings(backend="kubernetes", backend_config=str(config), tracking_uri="sqlite:///x.db")
    ok = settings.LauncherSettings(backend="kubernetes", backend_config=str(config), tracking_uri="http://mlflow:5000")
    assert settings.PluginSettings(launcher=ok).job_uris("sqlite:////r.db", None) == (
        "http://mlflow:5000", "http://mlflow:5000")
    assert settings.PluginSettings().job_uris("sqlite:////r.db", "sqlite:////t.db") == (
        "sqlite:////t.db", "sqlite:////r.db")
    server_store = settings.read_settings({"_MLFLOW_SERVER_FILE_STORE": "sqlite:////srv/tracking.db"})
    assert server_store.job_uris("sqlite:////r.db", "sqlite:////t.db") == ("sqlite:////srv/tracking.db",
                                                                         "sqlite:////r.db")
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match="MLFLOW_UNLEARN_NPROC"):
            settings.read_settings({"MLFLOW_UNLEARN_NPROC": bad})
    assert settings.read_settings({"MLFLOW_UNLEARN_NPROC": " 4 "}).launcher.nproc == 4
    assert settings.read_settings({}).launcher.nproc == 1
    full = settings.read_settings({"MLFLOW_UNLEARN_ALLOWED_ROOTS": str(tmp_path), "MLFLOW_UNLEARN_DEVICE": "cpu",
                                   "MLFLOW_UNLEARN_BACKEND": "kubernetes", "MLFLOW_UNLEARN_BACKEND_CONFIG": str(config),
                                   "MLFLOW_UNLEARN_TRACKING_URI": "http://mlflow:5000"})
    assert settings.PluginSettings.from_json(full.to_json()) == full  # how a launcher receives them


def test_kubernetes_project_keeps_entry_points_and_uses_docker(tmp_path):
    from mlflow.projects.utils import load_project

    from mlflow_unlearn.tracking import project_dir

    derived = job.kubernetes_project_dir(str(project_dir()), "registry.example/mlflow-unlearn:1", str(tmp_path))
    original, docker = load_project(str(project_dir())), load_project(derived)
    assert docker.docker_env == {"image": "registry.example/mlflow-unlearn:1"}
    assert docker.env_type == "docker_env" and original.env_type == "conda_env"
    params = {"model_uri": "models:/m/1", "forget": "classes:3"}
    assert (docker.get_entry_point("unlearn").compute_command(params, str(tmp_path))
            == original.get_entry_point("unlearn").compute_command(params, str(tmp_path)))


# -- the ledger and the store on a real SQLite registry --------------------------------------------------------------

@pytest.fixture()
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_UNLEARN_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("MLFLOW_UNLEARN_ALLOWED_ROOTS", raising=False)
    uri = migrated_sqlite(tmp_path / "registry.db")
    stock = SqlAlchemyStore(uri)
    stock.create_registered_model("m")
    for _ in range(3):
        stock.create_model_version("m", source=str(tmp_path / "model"))
    return uri, stock


@pytest.fixture()
def requests_ledger(registry) -> ledger.Ledger:
    """The plugin's own tables in the registry database (created at the first call)."""
    return ledger.Ledger(registry[1].engine)


def test_open_request_is_a_compare_and_set_across_threads(requests_ledger):
    led = requests_ledger
    results: list[object] = []
    barrier = threading.Barrier(8)

    def submit(i: int) -> None:
        barrier.wait()
        try:
            results.append(led.open("m", 1, f"forget=classes:{i}", request_id=f"r{i}"))
        except errors.ActiveRequestError as exc:
            results.append(exc)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert sum(isinstance(r, errors.ActiveRequestError) for r in results) == 7
    state = led.read("m", 1)
    assert state.status == "queued" and state.request == f"forget=classes:{state.request_id[1:]}"
    # the same request again is a no-op; another one is refused while this one is active
    assert led.open("m", 1, state.request, request_id="again") is False
    assert led.read("m", 1).request_id == state.request_id
    # only the owner moves it, only from the expected state
    assert not led.advance("m", 1, "someone-else", expect=("queued",), to="running")
    assert not led.advance("m", 1, state.request_id, expect=("running",), to="succeeded")
    assert led.advance("m", 1, state.request_id, expect=("queued",), to="running")
    assert led.advance("m", 1, state.request_id, expect=("running",), to="succeeded",
                       fields={"result_version": "m/4"})
    assert led.active() == []
    # after it finished, a new request may start
    assert led.open("m", 1, "forget=classes:9", request_id="next")
    assert led.read("m", 1).result_version is None


def test_launchers_started_together_share_the_requests_experiment(tmp_path, late_lookup_client):
    """A launcher that looked the experiment up just before another one created it uses that experiment (the
    create fails with RESOURCE_ALREADY_EXISTS) instead of failing its request."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=migrated_sqlite(tmp_path / "tracking.db"))
    first = job.requests_experiment_id(client)
    assert job.requests_experiment_id(late_lookup_client(client)) == first
    assert client.get_experiment(first).name == job.REQUESTS_EXPERIMENT
    assert [e.name for e in client.search_experiments()].count(job.REQUESTS_EXPERIMENT) == 1
    client.delete_experiment(first)  # its name stays taken: the request cannot record its run, and says why
    with pytest.raises(MlflowException, match=f"experiment \\(ID {first}\\) .* is deleted; restore it"):
        job.requests_experiment_id(client)


def test_only_one_launcher_holds_the_lease(requests_ledger):
    led = requests_ledger
    led.open("m", 1, "forget=classes:1", request_id="first")
    led.open("m", 2, "forget=classes:1", request_id="r")
    alive = Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode()  # on this process's command line
    assert not led.claim_lease("m", 2, "r", marker=alive)  # still waiting for a job slot
    assert [s.version for s in led.dispatch(2)] == [1, 2]
    assert led.claim_lease("m", 2, "r", marker=alive)
    assert not led.claim_lease("m", 2, "r", marker=alive)
    assert not led.claim_lease("m", 2, "other-request", marker=alive)
    # a holder that is not alive (marker absent from this PID's command line) loses the lease
    assert led.claim_lease("m", 2, "r", marker="no-such-launcher-marker")
    assert ledger.lease_alive("elsewhere|1|0", "x", now=1.0)
    assert not ledger.lease_alive("elsewhere|1|0", "x", now=1000.0)


def test_store_records_refusals_and_protects_its_tags(registry):
    uri, stock = registry
    store = UnlearnRegistryStore(store_uri="unlearn+" + uri, tracking_uri=uri)
    with pytest.raises(MlflowException, match="Unlearning request refused") as refused:  # issue 29: 400, not 200
        store.set_model_version_tag("m", 1, ModelVersionTag("mlflow_unlearn.request", "forget=classes:x"))
    assert refused.value.get_http_status_code() == 400
    tags = store.get_model_version("m", 1).tags
    assert tags["mlflow_unlearn.status"] == "failed"
    assert "expected comma-separated ints" in tags["mlflow_unlearn.error"]
    assert "mlflow_unlearn.request" not in tags  # issue 17: a value outside the grammar is never stored
    oversized = "forget=classes:" + "1," * MAX_REQUEST_CHARS + "1"
    with pytest.raises(MlflowException, match="limit is"):
        store.set_model_version_tag("m", 2, ModelVersionTag("mlflow_unlearn.request", oversized))
    tags = store.get_model_version("m", 2).tags
    assert "limit is" in tags["mlflow_unlearn.error"] and "mlflow_unlearn.request" not in tags
    with pytest.raises(MlflowException, match="not stored") as refused:
        store.set_model_version_tag("m", 2, ModelVersionTag("mlflow_unlearn.request", "forget=ids:1017,2044"))
    assert "1017" not in refused.value.message
    tags = store.get_model_version("m", 2).tags
    assert "not stored" in tags["mlflow_unlearn.error"] and "mlflow_unlearn.request" not in tags
    assert not any("1017" in v for v in tags.values())
    with pytest.raises(MlflowException, match="written by the unlearning plugin only"):
        store.set_model_version_tag("m", 1, ModelVersionTag("mlflow_unlearn.status", "succeeded"))
    with pytest.raises(MlflowException, match="no 'mlflow_unlearn.request' tag"):
        store.transition_model_version_stage("m", 3, "Unlearn", False)
    stock.set_model_version_tag("m", 1, ModelVersionTag("mlflow_unlearn.request", "forget=classes:x"))  # no trigger
    with pytest.raises(MlflowException, match="Unlearning request refused"):
        store.transition_model_version_stage("m", 1, "unlearn", False)
    assert "mlflow_unlearn.request" not in store.get_model_version("m", 1).tags  # refused on transition: removed
    with pytest.raises(MlflowException, match="not found"):
        store.set_model_version_tag("m", 99, ModelVersionTag("mlflow_unlearn.request", "forget=classes:1"))
    # a version with an active request cannot be deleted (the request would be orphaned)
    store.ledger.open("m", 3, "forget=classes:1", request_id="held")
    assert [s.version for s in store.ledger.active()] == [3]
    with pytest.raises(MlflowException, match="delete it after the request has finished"):
        store.delete_model_version("m", 3)
    with pytest.raises(MlflowException, match="rename it after they have finished"):
        store.rename_registered_model("m", "m2")
    store.ledger.advance("m", 3, "held", expect=("queued",), to="failed", fields={"error": "test"})
    # ordinary behaviour is untouched: stage names, other tags
    assert store.transition_model_version_stage("m", 3, "Staging", False).current_stage == "Staging"
    with pytest.raises(MlflowException, match="Invalid Model Version stage"):
        store.transition_model_version_stage("m", 3, "Forgotten", False)
    store.set_model_version_tag("m", 3, ModelVersionTag("team", "vision"))
    assert store.get_model_version("m", 3).tags["team"] == "vision"
    assert store.get_model_version("m", 1).current_stage == "None"
    store.delete_model_version("m", 3)
    assert store.ledger.active() == [] and store.ledger.read("m", 3).status is None  # its record went with it
    store.rename_registered_model("m", "m2")  # the records follow the model's new name
    assert store.ledger.read("m2", 1).status == "failed" and store.ledger.read("m", 1).status is None


@pytest.mark.filterwarnings("ignore:.*transition_model_version_stage.*:FutureWarning")
def test_python_api_reaches_the_plugin_through_its_entry_point(registry):
    from mlflow import MlflowClient

    uri, stock = registry
    stock.set_model_version_tag("m", 3, ModelVersionTag("mlflow_unlearn.request", "forget=nothing"))  # no trigger
    client = MlflowClient(tracking_uri=uri, registry_uri="unlearn+" + uri)
    assert type(client._get_registry_client().store) is UnlearnRegistryStore
    with pytest.raises(MlflowException, match="Expected a forget spec like 'classes:3,7' but got text without"):
        client.transition_model_version_stage("m", 3, "Unlearn")
    version = client.get_model_version("m", 3)
    assert version.tags["mlflow_unlearn.status"] == "failed" and version.current_stage == "None"


def test_job_talks_to_the_server_when_it_proxies_artifacts():
    """A server that proxies artifacts (MLflow's default) tells its workers through ``_MLFLOW_SERVER_*``; the job
    then uses the address on which the server received the request, with the static prefix."""
    import flask

    proxied = settings.read_settings({"_MLFLOW_SERVER_ARTIFACT_ROOT": "mlflow-artifacts:/",
                                      "_MLFLOW_STATIC_PREFIX": "/ml", "_MLFLOW_SGI_NAME": "uvicorn"})
    assert proxied.job_uris("sqlite:////r.db", None, "http://127.0.0.1:5005") == (
        "http://127.0.0.1:5005/ml", "http://127.0.0.1:5005/ml")
    with pytest.raises(ValueError, match="set MLFLOW_UNLEARN_TRACKING_URI"):
        proxied.job_uris("sqlite:////r.db", None, "")  # outside a request the address is unknown
    direct = settings.read_settings({"_MLFLOW_SERVER_ARTIFACT_ROOT": "/srv/artifacts",
                                     "_MLFLOW_SERVER_FILE_STORE": "sqlite:////srv/t.db"})
    assert direct.job_uris("sqlite:////r.db", None, "http://127.0.0.1:5005") == ("sqlite:////srv/t.db",
                                                                               "sqlite:////r.db")
    with pytest.raises(ValueError, match="runs under gunicorn"):  # its SERVER_NAME may come from the Host header
        settings.read_settings({"_MLFLOW_SERVER_ARTIFACT_ROOT": "mlflow-artifacts:/", "_MLFLOW_SGI_NAME": "gunicorn"})
    app = flask.Flask("test")
    with app.test_request_context(environ_overrides={"SERVER_NAME": "10.0.0.5", "SERVER_PORT": "5005"}):
        assert registry_store.request_address() == "http://10.0.0.5:5005"
    with app.test_request_context(environ_overrides={"SERVER_NAME": "::1", "SERVER_PORT": "5005"}):
        assert registry_store.request_address() == "http://[::1]:5005"
    assert registry_store.request_address() == ""


def test_store_constructor_only_constructs_and_recovery_runs_once(registry, monkeypatch):
    """Constructing the store starts no process and writes no environment; interrupted requests are resumed at the
    store's first registry call, once."""
    import os

    uri, stock = registry
    led = ledger.Ledger(stock.engine)
    led.open("m", 1, "forget=classes:1", request_id="interrupted")
    led.dispatch(1)  # admitted, but no launcher holds it
    spawned: list[tuple] = []
    monkeypatch.setattr(scheduler, "start_launcher", lambda *args, **kwargs: spawned.append((args, kwargs)) or 4242)
    environ = dict(os.environ)
    store = UnlearnRegistryStore(store_uri="unlearn+" + uri, tracking_uri=uri)
    assert spawned == [] and dict(os.environ) == environ
    assert store.get_model_version("m", 1).tags["mlflow_unlearn.status"] == "queued"
    assert [args[2:5] for args, _ in spawned] == [("m", 1, "interrupted")]
    assert spawned[0][1]["settings"] == store.settings and spawned[0][1]["job_tracking_uri"] == uri
    store.search_model_versions("name='m'")
    store.recover_once()
    assert len(spawned) == 1


def test_a_failed_recovery_is_tried_again_at_the_next_call(registry, monkeypatch):
    uri, stock = registry
    led = ledger.Ledger(stock.engine)
    led.open("m", 2, "forget=classes:1", request_id="interrupted")
    led.dispatch(1)
    spawned: list[tuple] = []
    monkeypatch.setattr(scheduler, "start_launcher", lambda *args, **kwargs: spawned.append(args) or 4242)
    real, calls = ledger.Ledger.active, []

    def locked_once(self):
        calls.append(self)
        if len(calls) == 1:
            raise MlflowException("database is locked")
        return real(self)

    monkeypatch.setattr(ledger.Ledger, "active", locked_once)
    store = UnlearnRegistryStore(store_uri="unlearn+" + uri, tracking_uri=uri)
    assert store.get_model_version("m", 2).version == 2  # the call itself goes on
    assert spawned == []
    store.get_model_version("m", 2)
    assert [args[2:5] for args in spawned] == [("m", 2, "interrupted")] and len(calls) == 2


def test_preflight_tries_again_while_the_server_restarts_and_refuses_a_lasting_failure(monkeypatch):
    """A download cut off by a server restart (INTERNAL_ERROR) is tried again, with heartbeats, until it works;
    a lasting one, or any other registry error, is refused with the launcher's one-line reason."""
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST

    import mlflow_unlearn.tracking.plan as plan

    request = parse_request("forget=classes:3; method=finetune", SecurityPolicy(allowed_roots=()))
    outcomes: list[BaseException | None] = []
    calls, beats = [], []

    def prepare(model_uri, request, **kwargs):
        calls.append(model_uri)
        outcome = outcomes.pop(0) if outcomes else None
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(plan, "prepare", prepare)
    monkeypatch.setattr(job.time, "sleep", lambda s: None)
    cut_off = MlflowException("download failed", error_code=INTERNAL_ERROR)
    outcomes[:] = [cut_off, cut_off, None]
    job.preflight(request, "models:/m/1", client=None, wait_s=60, beat=lambda: beats.append(1))
    assert len(calls) == 3 and len(beats) == 2

    calls.clear()
    outcomes[:] = [cut_off] * 3
    with pytest.raises(RequestRefused, match=r"cannot read models:/m/1 from the registry \(INTERNAL_ERROR\)"):
        job.preflight(request, "models:/m/1", client=None)  # wait_s=0: once
    assert len(calls) == 1

    calls.clear()
    outcomes[:] = [MlflowException("no such version", error_code=RESOURCE_DOES_NOT_EXIST)]
    with pytest.raises(RequestRefused, match="RESOURCE_DOES_NOT_EXIST"):
        job.preflight(request, "models:/m/1", client=None, wait_s=60)
    assert len(calls) == 1  # not transient: refused at once


def test_the_run_names_its_backend_and_project_before_the_job_starts(registry, tmp_path, monkeypatch):
    """The launcher starts the local job itself (no ``mlflow run`` between them, ``plugins/local_job.py``), so it
    writes the tag MLflow Projects would (``mlflow.project.backend``), with the project's folder, before the job
    starts."""
    import types

    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_BACKEND

    from mlflow_unlearn.tracking import vocabulary as vocab

    uri, _ = registry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", migrated_sqlite(tmp_path / "tracking.db"))
    request_job = job.Job.open(uri, uri, "m", 1, "r", str(tmp_path / "job.log"), settings.read_settings({}))
    run_id = MlflowClient().create_run(job.requests_experiment_id(request_job.client)).info.run_id
    seen: dict[str, str] = {}

    def start_local_job(uri, entry_point, parameters, *, run_id, **kwargs):
        seen.update(MlflowClient().get_run(run_id).data.tags)
        return types.SimpleNamespace(run_id=run_id)

    monkeypatch.setattr(job, "start_local_job", start_local_job)
    request_job._launch(parse_request("forget=classes:3; method=finetune", SecurityPolicy(allowed_roots=())), run_id)
    assert seen[MLFLOW_PROJECT_BACKEND] == "local" and seen[vocab.PROJECT_TAG]
