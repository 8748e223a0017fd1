"""The ``mlflow-unlearn`` command line: ``train``, ``unlearn``, ``evaluate``, ``methods``, ``report``, ``demo``.

Every command honours ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI``; under ``mlflow run`` the
``train``, ``unlearn`` and ``evaluate`` commands log into the run given by ``MLFLOW_RUN_ID``. User errors
(unknown model, bad forget spec, malformed config, a refused gate, ...) end with a one-line message on
stderr and a non-zero exit code, never a traceback. The state of one invocation (whether it owns its process,
the environment's MLflow settings, read once) lives in click's context object, :class:`CliState`.

The commands import the library (torch, MLflow) inside their functions, once they run: importing this module is
cheap (``--help`` answers at once), and :func:`main` pauses the garbage collector before those imports.
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field

import click

from mlflow_unlearn.tracking import cli_args as args
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.experiments import TrackingEnv

#: Exit code when the acceptance gate refused the unlearned model.
GATE_FAILED_EXIT_CODE = 3


@dataclass
class CliState:
    """The state of one ``mlflow-unlearn`` invocation, kept in click's context object (``ctx.obj``).

    Args:
        own_process: the command runs in a process of its own (:func:`main`), whose garbage collector it
            may tune.
        env: the MLflow settings of the environment, read once when the command starts.
    """

    own_process: bool = False
    env: TrackingEnv = field(default_factory=TrackingEnv)


class _UserErrorGroup(click.Group):
    """Turns the errors a user can fix into one-line messages (exit code 1) instead of tracebacks."""

    def invoke(self, ctx: click.Context):
        # lazy (module docstring): importing the CLI loads no torch or MLflow
        from mlflow.exceptions import MlflowException

        from mlflow_unlearn.runtime import UnlearningDivergedError  # lazy: imports torch

        if ctx.obj is not None and ctx.obj.own_process:
            # torch and MLflow are imported now: their objects live as long as the process.
            gc.freeze()
            gc.enable()
        try:
            return super().invoke(ctx)
        except (ValueError, FileNotFoundError, MlflowException, UnlearningDivergedError) as exc:
            message = exc.message if isinstance(exc, MlflowException) else str(exc)
            raise click.ClickException(" ".join(message.split()) or type(exc).__name__) from None


def _setup_logging() -> None:
    logger = logging.getLogger("mlflow_unlearn")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("mlflow-unlearn: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    # Our own progress bars cover the long steps; MLflow's per-file download bar is noise here.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _uri(version) -> str:
    return vocab.model_uri(version.name, version.version)


def _print_table(metrics, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({str(k): {c: (None if v != v else float(v)) for c, v in row.items()}
                               for k, row in metrics.iterrows()}, indent=2))
    else:
        click.echo(metrics.round(2).to_string())


@click.group(cls=_UserErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlflow-unlearn")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Make a registered PyTorch model forget data, prove it, and register the result in MLflow."""
    _setup_logging()
    ctx.ensure_object(CliState).env = TrackingEnv.read()


@cli.command()
@args.TRAIN_DATA
@args.ARCH
@args.REGISTERED_NAME
@args.EPOCHS
@args.TEST_FRACTION
@args.SEED
@args.DEVICE
@args.ONNX
@args.EXPERIMENT
@click.pass_obj
def train(state: CliState, data, arch, registered_model_name, epochs, test_fraction, seed, device, onnx,
          experiment) -> None:
    """Train ARCH on DATA, log it with its lineage and register it (with --name)."""
    from mlflow_unlearn.tracking.api import train_model  # lazy: torch and MLflow, once the command runs

    outcome = train_model(data, arch=arch, registered_model_name=registered_model_name,
                          config={"epochs": epochs} if epochs else None, seed=seed, test_fraction=test_fraction,
                          device=device, onnx=onnx, run_id=state.env.run_id, experiment=experiment)
    where = f"registered as {_uri(outcome.version)}" if outcome.version else "logged"
    click.echo(f"Trained {arch} on {data}: test accuracy {outcome.test_accuracy:.2f}%, {where} (run {outcome.run_id})")


@cli.command()
@args.MODEL_URI
@args.FORGET
@args.METHOD
@args.DATA
@args.CONFIG
@args.REFERENCE
@args.REGISTER
@args.FORCE
@args.DEVICE
@args.SEED
@args.ONNX
@args.ONNX_COPY
@args.RETAIN_EVAL_SIZE
@args.EXPERIMENT
@args.OUTPUT_JSON
@click.pass_obj
def unlearn(state: CliState, model_uri, forget, method, data, config, reference, register, force, device, seed, onnx,
            onnx_copy, retain_eval_size, experiment, as_json) -> None:
    """Make MODEL_URI (models:/<name>/<version> or models:/<name>@<alias>) forget a set; register the result.

    Under ``torchrun --nproc_per_node=N`` the method runs on N processes (DistributedDataParallel; NCCL on
    GPUs, gloo on CPUs) and rank 0 alone evaluates, logs, registers and prints.
    """
    if onnx_copy is not None:
        onnx = onnx_copy
    from mlflow_unlearn import runtime as rt  # lazy: torch and MLflow, once the command runs
    from mlflow_unlearn.tracking.api import unlearn as run_unlearn  # lazy: as above

    distributed = rt.init_distributed_from_env()
    primary = rt.rank() == 0
    try:
        outcome = run_unlearn(model_uri, forget=forget, method=method, data=data or None, config=config or None,
                              reference=reference, register=register, force=force, device=device, seed=seed,
                              onnx=onnx, retain_eval_size=retain_eval_size or None, run_id=state.env.run_id,
                              experiment=experiment)
    finally:
        if distributed:
            rt.shutdown_distributed()
    if primary:
        _report_outcome(outcome, as_json=as_json, register=register)


def _report_outcome(outcome, *, as_json: bool, register: bool) -> None:
    shown = outcome.disclosure  # the output is a record too (a registry job's log): what the run recorded
    _print_table(shown.metrics(outcome.metrics), as_json)
    if shown.limited:
        click.echo(f"Note: {shown.note}")
    if outcome.reused:
        click.echo(f"Already done: {_uri(outcome.version)} from run {outcome.run_id}")
    elif outcome.version is not None:
        click.echo(f"Registered {_uri(outcome.version)} (verdict: "
                   f"{outcome.verdict}, run {outcome.run_id})")
    click.echo(f"Report: {outcome.report_uri}")
    if register and outcome.version is None:
        reasons = "; ".join(shown.gate(outcome.gate).failures()) if outcome.gate is not None else outcome.verdict
        click.echo(f"Error: the acceptance gate refused the unlearned model ({reasons}); nothing was registered. "
                   "Use --force to register it anyway.", err=True)
        sys.exit(GATE_FAILED_EXIT_CODE)


@cli.command()
@args.MODEL_URI
@args.FORGET
@args.DATA
@args.REFERENCE
@args.DEVICE
@args.SEED
@args.OUTPUT_JSON
@click.pass_obj
def evaluate(state: CliState, model_uri, forget, data, reference, device, seed, as_json) -> None:
    """Evaluate MODEL_URI on a forget split: accuracies, membership-inference attacks, ZRF (percent)."""
    from mlflow_unlearn.tracking.api import evaluate_version  # lazy: torch and MLflow, once the command runs

    metrics = evaluate_version(model_uri, forget=forget, data=data or None, reference=reference, device=device,
                               seed=seed, run_id=state.env.run_id)
    _print_table(metrics, as_json)


@cli.command()
@args.MODEL_URI
@args.FORGET
def verify(model_uri, forget) -> None:
    """For the holder of the digest key: did MODEL_URI forget exactly the IDs of --forget ids:<file> in its
    lineage? One line. Exit code 0: forgotten; 1: not forgotten; 3: unverifiable (the version claims to be an
    unlearning result but its provenance does not verify); 2: an error (no key, unknown version, unreadable file)."""
    from mlflow.exceptions import MlflowException  # lazy: MLflow, once the command runs

    from mlflow_unlearn.tracking import verify as verification  # lazy: as above

    try:
        answer = verification.verify(model_uri, forget=forget)
    except (ValueError, OSError, MlflowException) as exc:
        message = exc.message if isinstance(exc, MlflowException) else str(exc)
        raise VerifyError(" ".join(message.split()) or type(exc).__name__) from None
    click.echo(answer.message)
    sys.exit(verification.EXIT_CODES[answer.status])


class VerifyError(click.ClickException):
    """An error of ``verify`` (exit code 2, apart from its answers 0, 1 and 3)."""

    exit_code = 2


@cli.command()
@args.OUTPUT_JSON
def methods(as_json) -> None:
    """List the unlearning methods with their hyperparameters and defaults."""
    from mlflow_unlearn.methods import get_method, list_methods  # lazy: torch, once the command runs

    rows = []
    for name in list_methods():
        spec = get_method(name)
        defaults = {f.name: getattr(spec.config_cls(), f.name) for f in dataclasses.fields(spec.config_cls)}
        rows.append({"method": name, "reference": spec.is_reference, "distributed": spec.distributed,
                     "summary": spec.summary, "config": defaults})
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        flags = " (reference)" if row["reference"] else ""
        click.echo(f"{row['method']}{flags}: {row['summary']}")
        click.echo("    " + ", ".join(f"{k}={v}" for k, v in row["config"].items()))


@cli.command()
@click.argument("target", metavar="MODEL_URI|RUN_ID")
@args.OUTPUT_JSON
@click.option("--output-dir", "-o", default=None, type=click.Path(file_okay=False),
              help="Download the whole report (JSON, Markdown, plots) into this folder.")
def report(target, as_json, output_dir) -> None:
    """Print the audit report of an unlearned version (models:/<name>/<version>) or of an unlearning run."""
    from mlflow import MlflowClient  # lazy: MLflow, once the command runs
    from mlflow.artifacts import download_artifacts  # lazy: as above

    from mlflow_unlearn.tracking import report as rep  # lazy: torch and MLflow, as above

    client = MlflowClient()
    if target.startswith("models:/"):
        version = vocab.resolve_model_version(client, target)
        run_id = version.run_id
        if not (version.tags or {}).get(vocab.RUN_ID_TAG):
            raise click.ClickException(f"{target} is not an unlearned version (no {vocab.RUN_ID_TAG} tag); it has no "
                                       "unlearning report")
    else:
        run_id = target
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = download_artifacts(run_id=run_id, artifact_path=rep.REPORT_ARTIFACT_PATH,
                                       dst_path=output_dir or tmp)
        except Exception as exc:  # MLflow raises several types for a missing run or artifact
            raise click.ClickException(f"No unlearning report found for {target}: {type(exc).__name__}") from None
        name = rep.JSON_REPORT if as_json else rep.MD_REPORT
        click.echo(open(os.path.join(local, name)).read())
        if output_dir:
            click.echo(f"Report files in {local}", err=True)


@cli.command()
@click.option("--data", "-d", default="mnist5k", show_default=True, metavar="SOURCE", help="Data source.")
@args.ARCH
@click.option("--name", "registered_model_name", default="mnist5k-smallcnn", show_default=True,
              help="Registered model name.")
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(min=1), help="Training epochs.")
@click.option("--forget", "-f", default="classes:3", show_default=True, metavar="SPEC", help="Forget spec.")
@args.METHOD
@args.CONFIG
@args.REFERENCE
@args.DEVICE
@args.SEED
@click.pass_obj
def demo(state: CliState, data, arch, registered_model_name, epochs, forget, method, config, reference, device,
         seed) -> None:
    """The end-to-end demo: train and register a model, unlearn a forget set, register the result."""
    from mlflow_unlearn.tracking import api  # lazy: torch and MLflow, once the command runs

    trained = api.train_model(data, arch=arch, registered_model_name=registered_model_name,
                              config={"epochs": epochs}, seed=seed, device=device)
    uri = _uri(trained.version)
    click.echo(f"Trained {arch} on {data} (test accuracy {trained.test_accuracy:.2f}%), registered {uri}")
    outcome = api.unlearn(uri, forget=forget, method=method, config=config or None, reference=reference,
                          device=device, seed=seed, run_id=state.env.run_id)
    _report_outcome(outcome, as_json=False, register=True)


def main() -> None:
    """The ``mlflow-unlearn`` program (``python -m mlflow_unlearn``): :func:`cli` in a short-lived process.

    A job imports torch, MLflow, scikit-learn, matplotlib and the ONNX exporter: millions of objects that
    live until the process ends. Python's cyclic garbage collector would traverse them again and again, on
    every full collection during the imports and the job and once more while the interpreter shuts down
    (together 1-2 s of a job on 2 CPUs, for memory that the operating system reclaims anyway). So the
    collector is paused while torch and MLflow are imported, those objects are frozen (``gc.freeze``) out of
    its reach before the command runs, and everything is frozen again at exit. Collections of the objects
    the job itself creates run as usual. :func:`cli` alone (the library's and the tests' entry) changes
    nothing of this.
    """
    gc.disable()
    atexit.register(gc.freeze)
    cli(prog_name="mlflow-unlearn", obj=CliState(own_process=True))
