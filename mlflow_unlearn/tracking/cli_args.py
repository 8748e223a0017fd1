"""Click arguments and options of the ``mlflow-unlearn`` CLI, each defined once and shared by the commands.

The options of a request's fields take their help from :data:`mlflow_unlearn.request.REQUEST_FIELDS`, and a test
checks that ``unlearn`` has an option for every field the CLI door takes. Empty strings mean "not given" for the
options that ``mlflow run`` passes as ``''`` (``--data``, ``--config``), so that MLproject parameters can default
to ``""``. A MLproject parameter cannot choose between the two spellings of a flag, so a flag it sets also has a
value form (``--onnx-copy true|false``). Yes/no values are read by the project's one parser
(:func:`mlflow_unlearn.data.grammar.parse_flag`).
"""

from __future__ import annotations

from typing import Any

import click

from mlflow_unlearn.request import REQUEST_FIELDS, parse_flag
from mlflow_unlearn.tracking import vocabulary as vocab

_HELP = {f.name: f.help for f in REQUEST_FIELDS}


class _YesNo(click.ParamType):
    """true/false, 1/0 or yes/no (any case), read by :func:`~mlflow_unlearn.data.grammar.parse_flag`."""

    name = "true|false"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bool:
        if isinstance(value, bool):
            return value
        try:
            return parse_flag(param.name if param is not None else "value", str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


YES_NO = _YesNo()

MODEL_URI = click.argument("model_uri", metavar="MODEL_URI")

FORGET = click.option(
    "--forget", "-f", required=True, metavar="SPEC",
    help=_HELP["forget"],
)
METHOD = click.option(
    "--method", "-m", default=vocab.DEFAULT_METHOD, show_default=True, metavar="NAME",
    help=_HELP["method"],
)
DATA = click.option(
    "--data", "-d", default="", metavar="SOURCE",
    help=_HELP["data"],
)
TRAIN_DATA = click.option(
    "--data", "-d", default="digits", show_default=True, metavar="SOURCE",
    help="Data source to train on (digits, mnist5k, npz:<path>, ...).",
)
CONFIG = click.option(
    "--config", "-c", default="", metavar="YAML",
    help=_HELP["config"],
)
REFERENCE = click.option(
    "--reference", type=click.Choice(vocab.REFERENCES), default=vocab.NO_REFERENCE, show_default=True,
    help=_HELP["reference"],
)
REGISTER = click.option(
    "--register", type=YES_NO, default=True, show_default=True, metavar="true|false", help=_HELP["register"],
)
FORCE = click.option("--force", is_flag=True, help="Register even when the acceptance gate fails.")
DEVICE = click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda", help=_HELP["device"])
SEED = click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help=_HELP["seed"])
ONNX = click.option("--onnx/--no-onnx", default=True, show_default=True, help=_HELP["onnx"])
ONNX_COPY = click.option(
    "--onnx-copy", type=YES_NO, default=None, metavar="true|false",
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
