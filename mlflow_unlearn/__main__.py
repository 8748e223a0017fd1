"""``python -m mlflow_unlearn ...``: the ``mlflow-unlearn`` CLI (what the MLproject entry points call)."""

from mlflow_unlearn.tracking.cli import cli

if __name__ == "__main__":
    cli(prog_name="mlflow-unlearn")
