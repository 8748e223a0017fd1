"""Suite-wide isolation: no test may leak MLflow tracking/registry URIs into the next one.

``mlflow.set_registry_uri(None)`` leaves the ``MLFLOW_REGISTRY_URI`` environment variable set, so a test that
pointed the registry at a (since stopped) server would send every later test's registry calls there.
"""

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
#: The suite's deployment digest key (ids: requests need one); servers and jobs the tests start inherit it.
TEST_DIGEST_KEY = "test-suite-digest-key-0123456789"
os.environ["MLFLOW_UNLEARN_DIGEST_KEY"] = TEST_DIGEST_KEY
os.environ.pop("MLFLOW_UNLEARN_DIGEST_KEY_FILE", None)


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread in each test process: the suite's two workers share two cores, where two threads each only
    wait on each other, and a test's numbers then do not depend on the worker layout (resnet18's training in the
    method matrix differed between one thread and two). The scripts, CLIs, ``mlflow run`` and servers the tests
    start inherit ``OMP_NUM_THREADS=1`` for the same reason, unless it is set already."""
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


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


def _end_to_end_module(item: pytest.Item) -> bool:
    marks = getattr(getattr(item, "module", None), "pytestmark", [])
    return any(mark.name == "slow" for mark in (marks if isinstance(marks, list) else [marks]))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end modules (``pytestmark = pytest.mark.slow``: servers and registry jobs) run first, so that on
    pytest.ini's two workers the longest modules start early instead of ending the run on one worker."""
    items.sort(key=lambda item: not _end_to_end_module(item))  # stable: the order within each group is kept


#: Seconds the session waits, at its end, for the processes the tests started to exit (a launcher exits a moment
#: after writing its request's final status) before it counts them as left over.
LEFTOVER_GRACE_S = 20
_LEFTOVERS_FILE = "leftover-processes-{worker}.txt"


def _session_folder(config: pytest.Config) -> Path:
    """The session's temporary folder: above each xdist worker's own, where all of the tests' processes run."""
    base = config._tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After the whole suite, count what it left behind: zombies below each test process, and any process still
    using the session's temporary folder (servers, launchers, jobs, database clusters). Either fails the run;
    the leftovers are ended by PID so that they do not outlive it.

    An xdist worker writes its zombies to a file of the session's folder; the controller (or the only process,
    under ``-n 0``) runs after the workers have exited, and reports them with its own findings."""
    import time

    from processes import end, processes_using, zombie_descendants

    folder = _session_folder(session.config)
    deadline = time.time() + LEFTOVER_GRACE_S
    while (zombies := zombie_descendants(os.getpid())) and time.time() < deadline:
        time.sleep(0.5)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        if zombies:
            (folder / _LEFTOVERS_FILE.format(worker=worker)).write_text("\n".join(zombies) + "\n")
        return
    while (running := processes_using(folder)) and time.time() < deadline:
        time.sleep(0.5)
    found = [f"zombie {z}" for z in zombies]
    for path in sorted(folder.glob(_LEFTOVERS_FILE.format(worker="*"))):
        found += [f"zombie under worker {path.stem.rsplit('-', 1)[1]}: {z}" for z in path.read_text().split("\n") if z]
    found += [f"still running {pid}: {cmdline}" for pid, cmdline in running.items()]
    end(list(running))
    if found:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"{len(found)} process(es) left behind by the suite (ended now):\n  " + "\n  ".join(found), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


@dataclass(frozen=True)
class SqliteStore:
    """A SQLite tracking store that is also the model registry, with one experiment whose artifacts stay beside it.

    Attributes:
        root: the store's own folder (``mlflow.db``, ``artifacts/``); tests may put their inputs there too.
        uri: the ``sqlite:///`` URI of both the tracking store and the registry.
        experiment: the ID of the experiment named at creation.
    """

    root: Path
    uri: str
    experiment: str

    @property
    def uris(self) -> dict[str, str]:
        """``tracking_uri`` and ``registry_uri``, as the API's keyword arguments."""
        return {"tracking_uri": self.uri, "registry_uri": self.uri}


@pytest.fixture(scope="session")
def sqlite_store(tmp_path_factory) -> Callable[[str], SqliteStore]:
    """Creates a new SQLite tracking store and registry in a folder of its own, with an experiment named ``name``:
    ``sqlite_store("cli")``. Session-scoped, so that module fixtures (one store per module: creating one costs
    seconds) and single tests alike call it."""
    from fresh_db import migrated_sqlite
    from mlflow import MlflowClient

    def create(name: str) -> SqliteStore:
        root = tmp_path_factory.mktemp(name)
        uri = migrated_sqlite(root / "mlflow.db")  # a copy of a migrated schema: see fresh_db.py
        experiment = MlflowClient(uri).create_experiment(name, artifact_location=str(root / "artifacts"))
        return SqliteStore(root, uri, experiment)

    return create


@pytest.fixture(scope="session")
def plugin_server(tmp_path_factory, installed_site):
    """One ``mlflow server`` with the plugin registry (SQLite, MLflow's defaults otherwise), shared by the modules
    that only send it requests, once per worker: each of them registers its own model names (and experiment
    names) and puts its own files under ``allowed`` (``test_byo``, ``test_plugin_public_errors``,
    ``test_registry_default_method``). A module must leave no request of its own queued or running when it ends.
    Modules that stop, restart or configure their server start their own (``test_plugin_server.py``'s ``Server``)."""
    from test_plugin_server import Server

    srv = Server(tmp_path_factory.mktemp("plugin-server-shared"), installed_site)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def installed_site(tmp_path_factory) -> Path:
    """The package built as a wheel and installed into its own folder, once per session (shared by the
    pytest-xdist workers): the servers and jobs of the plugin tests run from there, not from the checkout."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above each worker's own
    site = base / "installed-site"
    with FileLock(str(site) + ".lock"):
        if not site.exists():
            built = _build_site(tmp_path_factory.mktemp("installed"))
            built.rename(site)  # complete or absent, for the workers that wait on the lock
    return site


def _build_site(root: Path) -> Path:
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
