"""Suite-wide isolation: no test may leak MLflow tracking/registry URIs into the next one.

``mlflow.set_registry_uri(None)`` leaves the ``MLFLOW_REGISTRY_URI`` environment variable set, so a test that
pointed the registry at a (since stopped) server would send every later test's registry calls there.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
#: The suite's deployment digest key (ids: requests need one); servers and jobs the tests start inherit it.
TEST_DIGEST_KEY = "test-suite-digest-key-0123456789"
os.environ["MLFLOW_UNLEARN_DIGEST_KEY"] = TEST_DIGEST_KEY
os.environ.pop("MLFLOW_UNLEARN_DIGEST_KEY_FILE", None)


def _isolate():
    saved = {name: os.environ.get(name) for name in _URI_VARIABLES}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        import mlflow.tracking._model_registry.utils as registry_utils
        import mlflow.tracking._tracking_service.utils as tracking_utils
    except ImportError:
        return
    registry_utils._registry_uri = None
    tracking_utils._tracking_uri = None


@pytest.fixture(autouse=True, scope="module")
def _restore_mlflow_uris_per_module():
    """Also after module-scoped fixtures, which are set up before (and torn down after) per-test fixtures."""
    yield from _isolate()


@pytest.fixture(autouse=True)
def _restore_mlflow_uris():
    yield from _isolate()


class LateLookupClient:
    """A real ``MlflowClient`` whose first experiment look-up answers "none", as it did for a job that looked the
    experiment up just before a concurrent job created it (the window of the race, which timing cannot force)."""

    def __init__(self, client) -> None:
        self._client, self._looked = client, False

    def get_experiment_by_name(self, name: str):
        if not self._looked:
            self._looked = True
            return None
        return self._client.get_experiment_by_name(name)

    def __getattr__(self, attr: str):
        return getattr(self._client, attr)


@pytest.fixture()
def late_lookup_client():
    """Wraps a client so that its first experiment look-up misses (see :class:`LateLookupClient`)."""
    return LateLookupClient


@pytest.fixture(scope="session")
def installed_site(tmp_path_factory) -> Path:
    """The package built as a wheel and installed into its own folder, once per session: the servers and jobs of
    the plugin tests run from there, not from the checkout."""
    root = tmp_path_factory.mktemp("installed")
    repo, source = Path(__file__).resolve().parent.parent, root / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("mlflow_unlearn", "plugins"):  # build from a copy: nothing is written into the checkout
        shutil.copytree(repo / name, source / name, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        if (repo / name).exists():
            shutil.copy(repo / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(root / "wheel")], check=True, capture_output=True)
    (wheel,) = (root / "wheel").glob("mlflow_unlearn-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(root / "site"),
                    str(wheel)], check=True, capture_output=True)
    return root / "site"
