# ruff: noqa: F811  (the fixtures imported from the API and plugin tests are parameters of these tests)
"""Issue 17: keyed forget digests, no raw forget ID anywhere, plugin-owned tags, bad inputs at every door.

* Digest: a reader of the registry without the key searches a 5000-ID space exhaustively and recovers nothing;
  with the key, ``verify`` confirms the set (API and CLI).
* Forged tags: each plugin-owned tag planted at creation is refused; planted state is repaired by recovery.
* Bad inputs: a table of distinct bad inputs through the API, the CLI and the registry plugin (tag, creation,
  transition): one clear line, no new version, no raw ID.
* Leak test: after those error paths and an ``ids:`` request with unknown IDs run by the plugin's launcher, the
  SQLite database (bytes and dump), the artifacts, the launcher/job logs and the captured output hold none of
  the distinctive IDs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities.model_registry import ModelVersionTag
from mlflow.exceptions import MlflowException
from mlflow_unlearn_plugins import ledger
from mlflow_unlearn_plugins.registry_store import UnlearnRegistryStore
from test_plugin_request import registry  # noqa: F401 (the plugin tests' SQLite registry fixture)
from test_tracking_api import FAST, LENIENT, base, uris  # noqa: F401 (the API tests' registry and trained version)

from mlflow_unlearn.data import forget_digest, ids_digest, load_data
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.api import unlearn
from mlflow_unlearn.tracking.cli import cli
from mlflow_unlearn.tracking.keys import DIGEST_KEY_ENV, read_digest_key
from mlflow_unlearn.tracking.verify import verify

#: Distinctive IDs (none is a digits ID): if any of them is found anywhere, it leaked.
LEAK = [f"zq-leak-7731-{i:04d}" for i in range(8)]
MODEL = "models:/digits-mlp/1"


def _versions(client: MlflowClient) -> list[int]:
    return sorted(int(v.version) for v in client.search_model_versions("name='digits-mlp'"))


def _no_leak(text: str) -> bool:
    return "zq-leak-7731" not in text


# ------------------------------------------------------------------------------------------------------- digest


@pytest.mark.slow
def test_registry_reveals_no_forgotten_id_to_an_exhaustive_search_and_verify_confirms_it(uris, base, tmp_path):
    client = MlflowClient(uris["tracking_uri"], uris["registry_uri"])
    train_ids = load_data("digits").train.ids
    forgotten = [int(train_ids[17])]  # one user's deletion request: the case an unsalted digest exposed
    request = tmp_path / "request.txt"
    request.write_text("\n".join(map(str, forgotten)))
    outcome = unlearn(MODEL, forget=f"ids:{request}", method="finetune", config=FAST, gate=LENIENT, force=True,
                      onnx=False, device="cpu", **uris)  # forced: about the records, not the gate
    uri = f"models:/digits-mlp/{outcome.version.version}"
    # everything a reader of the registry sees, without the key
    tags = client.get_model_version("digits-mlp", outcome.version.version).tags
    run = client.get_run(outcome.run_id)
    tombstones = json.loads(Path(download_artifacts(run_id=outcome.run_id, artifact_path=vocab.TOMBSTONES_ARTIFACT,
                                                    dst_path=str(tmp_path / "t"),
                                                    tracking_uri=uris["tracking_uri"])).read_text())
    published = {tags[vocab.FORGET_DIGEST_TAG], run.data.params["forget.digest"], tombstones["forget_digest"],
                 *tombstones["id_digests"]}
    dataset_digests = {d.dataset.digest for d in run.inputs.dataset_inputs}
    fingerprint = tags[vocab.FORGET_KEY_TAG].encode()
    assert tags[vocab.FORGET_KEY_TAG] == read_digest_key().fingerprint and run.data.params["forget.key"] == \
        tags[vocab.FORGET_KEY_TAG]
    assert str(request) not in json.dumps([run.data.params, run.data.tags, tags])

    def guesses(candidate: int) -> set[str]:
        text = str(candidate).encode()
        return {ids_digest([candidate]), forget_digest([candidate]), hashlib.sha256(text).hexdigest(),
                hmac.new(fingerprint, text, hashlib.sha256).hexdigest(),
                forget_digest([candidate], key=fingerprint)}

    found = [c for c in range(5000) if guesses(c) & published]
    # the retain set's digest: the training IDs but one, for every candidate that is a training ID
    found += [c for c in train_ids.tolist() if ids_digest(train_ids[train_ids != c])[:36] in dataset_digests]
    assert found == []
    assert forget_digest(forgotten) in guesses(forgotten[0])  # the same search breaks an unkeyed digest
    # the key holder: exactly this set was forgotten; a neighbouring set was not
    assert verify(uri, forget=f"ids:{request}", client=client)
    other = tmp_path / "other.txt"
    other.write_text("\n".join(map(str, [*forgotten, int(train_ids[18])])))
    assert not verify(uri, forget=f"ids:{other}", client=client)
    env = {"MLFLOW_TRACKING_URI": uris["tracking_uri"], "MLFLOW_REGISTRY_URI": uris["registry_uri"]}
    ok = CliRunner().invoke(cli, ["verify", uri, "--forget", f"ids:{request}"], env=env)
    assert ok.exit_code == 0 and ok.output.startswith("forgotten:") and len(ok.output.strip().splitlines()) == 1
    no = CliRunner().invoke(cli, ["verify", uri, "--forget", f"ids:{other}"], env=env)
    assert no.exit_code == 1 and no.output.startswith("not forgotten:")
    no_key = CliRunner().invoke(cli, ["verify", uri, "--forget", f"ids:{request}"], env={**env, DIGEST_KEY_ENV: None})
    assert no_key.exit_code == 2 and DIGEST_KEY_ENV in no_key.output  # an error, not an answer


# ------------------------------------------------------------------------------------------------- forged tags


@pytest.mark.parametrize("key", ledger.RESERVED_TAGS)
def test_a_plugin_owned_tag_planted_at_creation_is_refused(registry, key):  # noqa: F811
    uri, stock = registry
    store = UnlearnRegistryStore(store_uri="unlearn+" + uri, tracking_uri=uri)
    value = "m/1" if key == vocab.RESULT_VERSION_TAG else "running"
    with pytest.raises(MlflowException, match=f"Tag '{key}' is written by the unlearning plugin only") as info:
        store.create_model_version("m", source="/tmp/model", tags=[ModelVersionTag(key, value)])
    assert info.value.get_http_status_code() == 400
    assert sorted(int(v.version) for v in stock.search_model_versions("name='m'")) == [1, 2, 3]


def test_forged_status_through_the_client_is_refused_and_planted_state_is_repaired(registry):  # noqa: F811
    uri, stock = registry
    client = MlflowClient(tracking_uri=uri, registry_uri="unlearn+" + uri)
    with pytest.raises(MlflowException, match="written by the unlearning plugin only"):
        client.create_model_version("m", "/tmp/model", tags={vocab.STATUS_TAG: "running", vocab.REQUEST_TAG:
                                                            "forget=classes:1"})
    assert len(client.search_model_versions("name='m'")) == 3
    # tags planted behind the plugin's back (e.g. before it was switched on): recovery repairs them
    stock.set_model_version_tag("m", 1, ModelVersionTag(vocab.STATUS_TAG, "running"))
    stock.set_model_version_tag("m", 1, ModelVersionTag(vocab.RESULT_VERSION_TAG, "m/3"))
    store = UnlearnRegistryStore(store_uri="unlearn+" + uri, tracking_uri=uri)
    store.recover()
    tags = store.get_model_version("m", 1).tags
    assert tags[vocab.STATUS_TAG] == "failed" and vocab.RESULT_VERSION_TAG not in tags
    assert "not written by the plugin" in tags[vocab.ERROR_TAG]
    store.delete_model_version("m", 1)
    assert sorted(int(v.version) for v in stock.search_model_versions("name='m'")) == [2, 3]


# ------------------------------------------------------------------------------------------------- bad inputs

SPECS = [
    ("no kind", ",".join(LEAK[:2]), "without a '<kind>:' prefix"),
    ("unknown kind", f"{LEAK[0]}:3", "Unknown forget spec kind"),
    ("class list of IDs", f"classes:{LEAK[0]}", "Malformed class list"),
    ("random amount", f"random:{LEAK[0]}", "fraction in (0, 1)"),
    ("random seed", f"random:0.1:{LEAK[0]}", "non-negative int"),
    ("inline ids", f"ids:{LEAK[0]},{LEAK[1]}", "not a file name"),
    ("unknown ids", "ids:{tmp}/unknown.txt", "not in the training split"),
    ("duplicate ids", "ids:{tmp}/dup.txt", "duplicate IDs"),
    ("ids without key", "ids:{tmp}/unknown.txt", "needs a digest key"),
]
REQUESTS = [
    ("pasted ids", f"forget={LEAK[0]},{LEAK[1]}", "without a '<kind>:' prefix"),
    ("ids key", f"ids={LEAK[0]}", "unknown request key"),
    ("inline ids", f"forget=ids:{LEAK[0]},{LEAK[1]}", "not a file name"),
    ("class list of IDs", f"forget=classes:{LEAK[0]}", "Malformed class list"),
    ("no key=value", f"{LEAK[0]}; {LEAK[1]}", "malformed request part"),
    ("method", f"forget=classes:3; method={LEAK[0]}", "not a registered method name"),
    ("reference", f"forget=classes:3; reference={LEAK[0]}", "Unknown reference"),
    ("oversized", "forget=ids:" + ",".join(LEAK * 80), "the limit is"),
    ("non-ascii", f"forget=ids:{LEAK[0]}é", "non-ASCII"),
]
CASES = ([("api", *case) for case in SPECS] + [("cli", *case) for case in SPECS]
         + [(door, *case) for door in ("tag", "create", "transition") for case in REQUESTS])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "unknown.txt").write_text("\n".join(LEAK))
    (tmp / "dup.txt").write_text("\n".join([LEAK[0], LEAK[0]]))
    return tmp


def _one_line(message: str) -> bool:
    return bool(message.strip()) and len(message.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize(("door", "what", "text", "reason"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_input_is_refused_in_one_line_without_an_id_or_a_new_version(uris, base, files, monkeypatch, tmp_path,
                                                                        door, what, text, reason):
    client = MlflowClient(uris["tracking_uri"], uris["registry_uri"])
    before = _versions(client)
    text = text.format(tmp=files)
    if what == "ids without key":
        monkeypatch.delenv(DIGEST_KEY_ENV)
    if door == "api":
        with pytest.raises(ValueError) as info:
            unlearn(MODEL, forget=text, method="finetune", config=FAST, onnx=False, device="cpu", **uris)
        message = str(info.value)
    elif door == "cli":
        env = {"MLFLOW_TRACKING_URI": uris["tracking_uri"], "MLFLOW_REGISTRY_URI": uris["registry_uri"],
               "MLFLOW_EXPERIMENT_ID": uris["experiment"]}
        result = CliRunner().invoke(cli, ["unlearn", MODEL, "--forget", text, "--method", "finetune", "--device", "cpu",
                                          "--no-onnx"], env=env)
        assert result.exit_code == 1, result.output
        message = result.output
    else:
        monkeypatch.setenv("MLFLOW_UNLEARN_LOG_DIR", str(tmp_path / "logs"))
        store = UnlearnRegistryStore(store_uri="unlearn+" + uris["registry_uri"], tracking_uri=uris["tracking_uri"])
        if door == "tag":
            with pytest.raises(MlflowException, match="Unlearning request refused") as info:  # 400 (issue 29)
                store.set_model_version_tag("digits-mlp", 1, ModelVersionTag(vocab.REQUEST_TAG, text))
            message = store.get_model_version("digits-mlp", 1).tags[vocab.ERROR_TAG]
            assert info.value.message.endswith(message)
        elif door == "create":
            with pytest.raises(MlflowException) as info:
                store.create_model_version("digits-mlp", source=str(tmp_path), tags=[ModelVersionTag(
                    vocab.REQUEST_TAG, text)])
            message = info.value.message
        else:
            from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

            SqlAlchemyStore(uris["registry_uri"]).set_model_version_tag(  # stored behind the plugin's back
                "digits-mlp", 1, ModelVersionTag(vocab.REQUEST_TAG, text[:5000]))
            with pytest.raises(MlflowException) as info:
                store.transition_model_version_stage("digits-mlp", 1, "Unlearn", False)
            message = info.value.message
        tags = store.get_model_version("digits-mlp", 1).tags
        assert vocab.REQUEST_TAG not in tags and all(_no_leak(v) for v in tags.values())
    assert reason in message and _one_line(message), message
    assert _no_leak(message), message
    assert _versions(client) == before


@pytest.mark.slow
def test_mlflow_run_door_refuses_unknown_ids_in_one_line_without_an_id(uris, base, files, tmp_path):
    """The fourth door: ``mlflow run <project> -e unlearn``. MLflow Projects itself prints and logs the ``-P``
    values, so the request file is passed under a neutral name, as the README advises; its IDs appear nowhere."""
    import os
    import subprocess
    import sys

    from mlflow_unlearn.tracking import project_dir

    client = MlflowClient(uris["tracking_uri"], uris["registry_uri"])
    before = _versions(client)
    neutral = tmp_path / "request-0001.txt"
    neutral.symlink_to(files / "unknown.txt")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uris["tracking_uri"], "MLFLOW_REGISTRY_URI": uris["registry_uri"],
           "MLFLOW_EXPERIMENT_ID": uris["experiment"]}
    done = subprocess.run([sys.executable, "-m", "mlflow", "run", str(project_dir()), "-e", "unlearn", "--env-manager",
                           "local", "-P", f"model_uri={MODEL}", "-P", f"forget=ids:{neutral}", "-P",
                           "method=finetune", "-P", "device=cpu"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("Error:") or "mlflow-unlearn:" in line]
    assert any("not in the training split" in line for line in ours), done.stderr[-3000:]
    assert _no_leak(done.stdout + done.stderr), "an ID reached the output of mlflow run"
    assert _versions(client) == before


# ------------------------------------------------------------------------------------------------- leak test


def _files_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())


@pytest.mark.slow
def test_no_forget_id_leaks_into_database_artifacts_logs_or_output(uris, base, files, monkeypatch, tmp_path, capfd):
    """Runs last in this module: the error paths above, and an ids: request of unknown IDs run by the launcher."""
    monkeypatch.setenv("MLFLOW_UNLEARN_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("MLFLOW_UNLEARN_ALLOWED_ROOTS", str(files))
    store = UnlearnRegistryStore(store_uri="unlearn+" + uris["registry_uri"], tracking_uri=uris["tracking_uri"])
    store.set_model_version_tag("digits-mlp", 1, ModelVersionTag(vocab.REQUEST_TAG, f"forget=ids:{files}/unknown.txt;"
                                                                                    " method=finetune"))
    deadline = time.monotonic() + 240
    while store.get_model_version("digits-mlp", 1).tags.get(vocab.STATUS_TAG) in ledger.ACTIVE:
        assert time.monotonic() < deadline, "the launcher did not finish the request"
        time.sleep(1)
    tags = store.get_model_version("digits-mlp", 1).tags
    assert tags[vocab.STATUS_TAG] == "failed" and "does not match the training data" in tags[vocab.ERROR_TAG]
    db = Path(uris["tracking_uri"].removeprefix("sqlite:///"))
    dump = "\n".join(sqlite3.connect(db).iterdump())
    artifacts = Path(MlflowClient(uris["tracking_uri"]).get_experiment(uris["experiment"]).artifact_location)
    searched = {"database bytes": db.read_bytes().decode("latin-1"), "sqlite dump": dump,
                "artifacts": _files_text(artifacts), "launcher and job logs": _files_text(tmp_path / "logs"),
                "captured output": "".join(capfd.readouterr())}
    assert len(searched["sqlite dump"]) > 1000 and searched["artifacts"]
    assert {where: text.count("zq-leak-7731") for where, text in searched.items()} == dict.fromkeys(searched, 0)
    runs = MlflowClient(uris["tracking_uri"]).search_runs([uris["experiment"]])
    assert runs and all(not np.any([str(files) in v for v in r.data.params.values()]) for r in runs)


@pytest.mark.slow
def test_a_registry_ids_request_records_no_path_anywhere(uris, base, tmp_path, monkeypatch):
    """The registry path up to the job's end (the launcher in this process, as in test_plugin_messages): MLflow
    Projects prints the job's command line, so the job reads the file through a link named after the request."""
    from mlflow_unlearn_plugins import job, scheduler
    from mlflow_unlearn_plugins.request import SecurityPolicy
    from mlflow_unlearn_plugins.settings import LauncherSettings, PluginSettings

    uri = uris["tracking_uri"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what spawn() gives a launcher process
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    request = tmp_path / "zq-erasure-alice.txt"
    request.write_text("\n".join(map(str, load_data("digits").train.ids[40:50])))
    (tmp_path / "fast.yaml").write_text("epochs: 1\n")
    settings = PluginSettings(policy=SecurityPolicy(allowed_roots=(tmp_path,)), digest_key=read_digest_key(),
                              launcher=LauncherSettings(device="cpu", log_dir=str(tmp_path / "logs")))

    def run_launcher(ledger_uri, mirror_uri, name, number, request_id, **_):
        log = tmp_path / "logs" / f"{request_id}.log"
        return job.Job.open(ledger_uri, mirror_uri, name, int(number), request_id, str(log), settings).run()

    monkeypatch.setattr(scheduler, "start_launcher", run_launcher)
    store = UnlearnRegistryStore("unlearn+" + uri, tracking_uri=uri, settings=settings)
    target = MlflowClient(uri).create_model_version("digits-mlp", base.version.source, base.run_id).version
    store.set_model_version_tag("digits-mlp", target, ModelVersionTag(
        vocab.REQUEST_TAG, f"forget=ids:{request}; method=finetune; config={tmp_path / 'fast.yaml'}"))
    tags = store.get_model_version("digits-mlp", target).tags
    assert tags[vocab.STATUS_TAG] in ledger.TERMINAL
    client = MlflowClient(uri)
    run = client.get_run(tags[vocab.REQUEST_RUN_TAG])  # the request run is the job's run (local backend)
    assert run.data.params["forget.spec"].startswith("ids:keyed-") and run.data.params["forget.key"] == \
        read_digest_key().fingerprint
    assert run.data.tags[vocab.REQUEST_TAG].startswith("forget=ids:<file, not recorded>")
    recorded = json.dumps([run.data.params, run.data.tags, [d.dataset.source for d in run.inputs.dataset_inputs]])
    assert "zq-erasure" not in recorded
    assert not list((tmp_path / "logs" / "forget-requests").iterdir())  # the link is gone with the job
    assert "zq-erasure" not in _files_text(tmp_path / "logs")  # the job's command line names the link only
