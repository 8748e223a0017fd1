"""The ``mlflow-unlearn`` CLI: help on every command, a round trip, user errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from mlflow_unlearn.tracking.cli import GATE_FAILED_EXIT_CODE, cli


@pytest.fixture(scope="module")
def env(sqlite_store):
    """One SQLite store for the module, selected through the environment."""
    store = sqlite_store("cli")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store.uri)
        patch.setenv("MLFLOW_EXPERIMENT_ID", store.experiment)
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        patch.setenv("MLFLOW_UNLEARN_QUIET", "1")
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        yield {"uri": store.uri, "experiment": store.experiment, "tmp": store.root}


@pytest.mark.parametrize("command", ["train", "unlearn", "evaluate", "methods", "report", "demo"])
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and result.output.startswith("Usage: ")


def test_methods_lists_the_registry_with_defaults():
    from mlflow_unlearn.methods import list_methods

    result = CliRunner().invoke(cli, ["methods", "--json"])
    assert result.exit_code == 0
    rows = {row["method"]: row for row in json.loads(result.output)}
    assert set(rows) == set(list_methods())
    assert rows["retrain"]["reference"] and rows["finetune"]["config"]["epochs"] >= 1


@pytest.mark.slow
def test_train_unlearn_evaluate_report_round_trip_and_gate_refusal(env):
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--data", "digits", "--arch", "mlp", "--name", "cli-mlp", "--epochs", "4",
                                 "--no-onnx", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "registered as models:/cli-mlp/1" in result.output
    config = env["tmp"] / "finetune.yaml"
    config.write_text("epochs: 2\nlr: 0.1\ngate:\n  max_test_drop: 100\n")
    # --onnx-copy is how `mlflow run -P onnx=false` switches the copy off (the default logs it: test_tracking_project)
    result = runner.invoke(cli, ["unlearn", "models:/cli-mlp/1", "--forget", "classes:3", "--method", "finetune",
                                 "--config", str(config), "--onnx", "--onnx-copy", "false", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "Registered models:/cli-mlp/2 (verdict: passed" in result.output and "forget_accuracy" in result.output
    client = MlflowClient(env["uri"])
    artifacts = {f.path for f in client.list_artifacts(client.get_model_version("cli-mlp", "2").run_id)}
    assert "model" in artifacts and "onnx_model" not in artifacts
    result = runner.invoke(cli, ["evaluate", "models:/cli-mlp/2", "--forget", "classes:3", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    table = json.loads(result.output)
    assert table["model"]["forget_accuracy"] < 20 < table["model"]["retain_accuracy"]
    result = runner.invoke(cli, ["report", "models:/cli-mlp/2"])
    assert result.exit_code == 0 and "# Unlearning report" in result.output and "cli-mlp/1" in result.output
    result = runner.invoke(cli, ["report", "models:/cli-mlp/2", "--json"])
    assert json.loads(result.output)["result"] == {"name": "cli-mlp", "version": "2"}
    result = runner.invoke(cli, ["report", "models:/cli-mlp/1"])
    assert result.exit_code == 1 and "not an unlearned version" in result.output

    weak = env["tmp"] / "weak.yaml"
    weak.write_text("epochs: 1\nlr: 1.0e-6\ngate:\n  forget_tolerance: 0\n")
    result = runner.invoke(cli, ["unlearn", "models:/cli-mlp/1", "--forget", "classes:4", "--method", "finetune",
                                 "--config", str(weak), "--no-onnx", "--device", "cpu"])
    assert result.exit_code == GATE_FAILED_EXIT_CODE
    assert "acceptance gate refused" in result.output and "--force" in result.output
    versions = MlflowClient(env["uri"]).search_model_versions("name='cli-mlp'")
    assert sorted(int(v.version) for v in versions) == [1, 2]


@pytest.mark.parametrize(("args", "message"), [
    (["unlearn", "models:/no-such-model/1", "--forget", "classes:3"], "Error: Registered model 'no-such-model' not"),
    (["unlearn", "not-a-uri", "--forget", "classes:3"], "Error: Expected a registered model URI"),
    (["evaluate", "models:/no-such-model@prod", "--forget", "classes:3"], "Error: Registered model"),
    (["train", "--data", "nope", "--no-onnx"], "Error: Unknown data source 'nope'"),
    (["report", "models:/no-such-model/2"], "Error: Registered model"),
])
def test_user_errors_are_one_line_without_traceback(env, args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert result.output.startswith(message) and result.output.count("\n") == 1
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_the_module_entry_point_exits_non_zero_with_one_line(env):
    proc = subprocess.run([sys.executable, "-m", "mlflow_unlearn", "unlearn", "models:/missing/1", "--forget",
                           "classes:3"], capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert lines == [lines[0]] and "'missing' not found" in lines[0]


def test_main_freezes_the_imported_modules_and_keeps_collecting_while_cli_alone_changes_nothing(env):
    import gc

    frozen, enabled = gc.get_freeze_count(), gc.isenabled()
    assert CliRunner().invoke(cli, ["methods"]).exit_code == 0
    assert (gc.get_freeze_count(), gc.isenabled()) == (frozen, enabled)
    probe = ("import atexit, gc, sys\n"
             "from mlflow_unlearn.tracking import cli\n"
             "atexit.register(lambda: print('gc', gc.isenabled(), gc.get_freeze_count(), file=sys.stderr))\n"
             "sys.argv = ['mlflow-unlearn', 'methods']\n"
             "cli.main()\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=dict(os.environ),
                          timeout=120)
    assert proc.returncode == 0 and "nitc" in proc.stdout
    _, enabled_after, frozen_after = proc.stderr.strip().splitlines()[-1].split()
    assert enabled_after == "True" and int(frozen_after) > 100_000  # torch's and MLflow's objects
