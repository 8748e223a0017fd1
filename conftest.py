"""Collection settings for the whole repository (``python -m pytest``, run from the root as the README says).

``--doctest-modules`` (pytest.ini) imports every module under ``mlflow_unlearn`` to collect its docstring examples;
the paths below are not imported: the ``python -m mlflow_unlearn`` entry script and the MLproject folder (no
Python modules, only the files that ``mlflow run`` reads).
"""

import os

collect_ignore = ["mlflow_unlearn/__main__.py", "mlflow_unlearn/project"]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest.ini runs two workers on a two-core machine, and the servers and jobs they start share those cores:
    # one intra-op thread each (inherited by those subprocesses), not two per process that wait on each other.
    # Set before any module imports torch, which reads it once.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
