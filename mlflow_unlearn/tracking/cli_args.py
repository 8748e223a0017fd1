"""Click arguments and options of the ``mlflow-unlearn`` CLI, each defined once and shared by the commands.

Empty strings mean "not given" for the options that ``mlflow run`` passes as ``''`` (``--data``,
``--config``), so that MLproject parameters can default to ``""``. A MLproject parameter cannot choose between
the two spellings of a flag, so a flag it sets also has a value form (``--onnx-copy true|false``).
"""

from __future__ import annotations

import click

from mlflow_unlearn.tracking import vocabulary as vocab

MODEL_URI = click.argument("model_uri", metavar="MODEL_URI")

FORGET = click.option(
    "--forget", "-f", required=True, metavar="SPEC",
    help="Forget spec: classes:3,7 | ids:<file.csv|file.parquet|file.txt> | random:<fraction|count>[:<seed>]. "
         "Use a file for IDs: the spec is logged, the IDs never are.",
)
METHOD = click.option(
    "--method", "-m", default=vocab.DEFAULT_METHOD, show_default=True, metavar="NAME",
    help="Unlearning method (see `mlflow-unlearn methods`).",
)
DATA = click.option(
    "--data", "-d", default="", metavar="SOURCE",
    help="Data source (digits, mnist5k, npz:<path>, ...). Default: the data the model version was trained on.",
)
TRAIN_DATA = click.option(
    "--data", "-d", default="digits", show_default=True, metavar="SOURCE",
    help="Data source to train on (digits, mnist5k, npz:<path>, ...).",
)
CONFIG = click.option(
    "--config", "-c", default="", metavar="YAML",
    help="YAML file of method hyperparameters (optionally with a `gate:` section of thresholds).",
)
REFERENCE = click.option(
    "--reference", type=click.Choice(vocab.REFERENCES), default=vocab.NO_REFERENCE, show_default=True,
    help="Also train the retrain-from-scratch reference and compare against it (slower).",
)
REGISTER = click.option(
    "--register", type=click.BOOL, default=True, show_default=True, metavar="true|false",
    help="Register the unlearned model as the next version when the gate passes.",
)
FORCE = click.option("--force", is_flag=True, help="Register even when the acceptance gate fails.")
DEVICE = click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda",
                      help="Where to run.")
SEED = click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Random seed.")
ONNX = click.option("--onnx/--no-onnx", default=True, show_default=True,
                    help="Also log an ONNX copy of the model, checked against onnxruntime.")
ONNX_COPY = click.option(
    "--onnx-copy", type=click.BOOL, default=None, metavar="true|false",
    help="--onnx/--no-onnx as a value, for `mlflow run -P onnx=...` and the registry plugin; when given, it wins "
         "over --onnx/--no-onnx.",
)
EXPERIMENT = click.option("--experiment", default=None, metavar="NAME|ID",
                          help="Experiment for a new run (default: MLFLOW_EXPERIMENT_NAME/ID or the parent's).")
ARCH = click.option("--arch", default="smallcnn", show_default=True, metavar="NAME",
                    help="Architecture (mlp, smallcnn, resnet18, or any registered).")
REGISTERED_NAME = click.option("--name", "registered_model_name", default=None, metavar="NAME",
                               help="Register the trained model under this name.")
EPOCHS = click.option("--epochs", default=None, type=click.IntRange(min=1), help="Training epochs.")
TEST_FRACTION = click.option("--test-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 1,
                             min_open=True, max_open=True), help="Held-out fraction of the data.")
OUTPUT_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
RETAIN_EVAL_SIZE = click.option(
    "--retain-eval-size", default=1000, show_default=True, type=click.IntRange(min=0),
    help="Evaluate retain metrics on a seeded subset of this many retain samples (0: all of them).",
)
