"""``python -m mlflow_unlearn ...``: the ``mlflow-unlearn`` CLI (what the MLproject entry points call)."""

from mlflow_unlearn.tracking.cli import main

if __name__ == "__main__":
    main()
