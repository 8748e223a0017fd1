"""Collection settings for the whole repository (``python -m pytest``, run from the root as the README says).

``--doctest-modules`` (pytest.ini) imports every module under ``mlflow_unlearn`` to collect its docstring examples;
the paths below are not imported: the ``python -m mlflow_unlearn`` entry script and the MLproject folder (no
Python modules, only the files that ``mlflow run`` reads).
"""

collect_ignore = ["mlflow_unlearn/__main__.py", "mlflow_unlearn/project"]
