"""A private PostgreSQL cluster for tests: ``initdb`` into a temporary directory, served on 127.0.0.1 only.

The server binaries come from Debian's ``postgresql`` package (``.ci/run`` installs it); they are looked up on
``PATH``, then in ``/usr/lib/postgresql/<major>/bin`` (newest first), where Debian puts them. PostgreSQL refuses
to run as root, so under root the cluster runs as the ``postgres`` system user (``nobody`` if there is none).
Authentication is ``trust`` on a loopback port and on a Unix socket inside the temporary directory, so nothing
outside this machine (nor any system cluster) is touched. The server is started and stopped by its own PID.

Example (outside pytest too, e.g. from a benchmark)::

    with PostgresCluster(find_binaries()) as cluster:
        uri = cluster.create_database("mlflow")  # postgresql://postgres@127.0.0.1:<port>/mlflow
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DEBIAN_PACKAGE = "postgresql"
#: What ``pip install -e ".[test]"`` adds for SQLAlchemy's default PostgreSQL driver (psycopg 3 from SQLAlchemy 2.1).
DRIVER_PACKAGES = "psycopg[binary] / psycopg2-binary"
TOOLS = ("initdb", "postgres")
SUPERUSER = "postgres"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def find_binaries() -> dict[str, str] | None:
    """Paths of ``initdb`` and ``postgres`` from one installation: ``PATH`` first, then Debian's folders.

    Returns:
        ``{"initdb": path, "postgres": path}``, or None when no installation has both.
    """
    on_path = {tool: shutil.which(tool) for tool in TOOLS}
    if all(on_path.values()):
        return on_path  # type: ignore[return-value]

    def major(folder: str) -> float:
        match = re.search(r"/postgresql/(\d+(?:\.\d+)?)/bin$", folder)
        return float(match.group(1)) if match else -1.0

    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True):
        found = {tool: os.path.join(folder, tool) for tool in TOOLS}
        if all(os.access(path, os.X_OK) for path in found.values()):
            return found
    return None


def driver():
    """The DB-API module SQLAlchemy uses for a plain ``postgresql://`` URI, as MLflow's SQL stores do.

    Raises:
        ImportError: if that driver is not installed.
    """
    from sqlalchemy.engine import make_url

    return make_url("postgresql://").get_dialect().import_dbapi()


def binaries_or_skip() -> dict[str, str]:
    """The binaries and the driver, or a skip naming the Debian package (a failure under ``CI=true``)."""
    import pytest

    missing = []
    binaries = find_binaries()
    if binaries is None:
        missing.append(f"the PostgreSQL server binaries ({', '.join(TOOLS)}; apt-get install {DEBIAN_PACKAGE})")
    try:
        driver()
    except ImportError as exc:
        missing.append(f"the PostgreSQL driver {exc.name!r} (pip install {DRIVER_PACKAGES}, in the [test] extra)")
    if not missing:
        return binaries  # type: ignore[return-value]
    where = "on PATH or in /usr/lib/postgresql/*/bin" if binaries is None else "in this Python environment"
    message = f"{' and '.join(missing)} not found {where}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; .ci/run installs Debian's {DEBIAN_PACKAGE} package and the [test] extra")
    pytest.skip(f"{message}; the PostgreSQL registry tests need a real server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresCluster:
    """One throw-away PostgreSQL server; use as a context manager or call :meth:`start` / :meth:`stop`.

    Args:
        binaries: ``{"initdb": path, "postgres": path}`` (see :func:`find_binaries`).
        settings: extra ``postgres -c name=value`` settings.
    """

    def __init__(self, binaries: dict[str, str], settings: dict[str, str] | None = None) -> None:
        self.binaries, self.settings = dict(binaries), dict(settings or {})
        self.dir: Path | None = None
        self.port = 0
        self.proc: subprocess.Popen | None = None

    # -- life cycle -------------------------------------------------------------------------------------------
    def _as_user(self) -> dict:
        """``Popen`` arguments that drop root to the cluster's owner (PostgreSQL refuses to run as root)."""
        if os.geteuid() != 0:
            return {}
        for name in ("postgres", "nobody"):
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        raise RuntimeError("Expected a 'postgres' or 'nobody' system user to run PostgreSQL as (it refuses root) "
                           "but found neither; create one with `useradd --system postgres`")

    def start(self) -> str:
        """Create and start the cluster; return the server URI without a database name."""
        self.dir = Path(tempfile.mkdtemp(prefix="mlflow-unlearn-pg-"))
        user = self._as_user()
        if user:
            os.chown(self.dir, user["user"], user["group"])
        data = self.dir / "data"
        subprocess.run([self.binaries["initdb"], "-D", str(data), "-U", SUPERUSER, "--auth=trust", "--no-sync",
                        "-E", "UTF8", "--locale=C"], cwd=self.dir, check=True, capture_output=True, **user)
        for attempt in range(3):  # the free port can be taken between the probe and the server's bind
            self.port = _free_port()
            settings = {"listen_addresses": "127.0.0.1", "port": str(self.port),
                        "unix_socket_directories": str(self.dir), "max_connections": "100", "fsync": "off",
                        "synchronous_commit": "off", "full_page_writes": "off", "log_lock_waits": "on",
                        "deadlock_timeout": "1s", **self.settings}
            args = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
            with open(self.dir / "server.log", "ab") as log:
                self.proc = subprocess.Popen([self.binaries["postgres"], "-D", str(data), *args], cwd=self.dir,
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True, **user)
            if self._wait_ready():
                return self.uri()
            self.proc.wait(STOP_TIMEOUT_S)
            if attempt == 2 or "could not bind" not in self.log_tail():
                break
        log = self.log_tail()
        self.stop()
        raise RuntimeError(f"PostgreSQL did not start on 127.0.0.1:{self.port}:\n{log}")

    def _wait_ready(self) -> bool:
        dbapi = driver()
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline and self.proc.poll() is None:
            try:
                dbapi.connect(self.uri("postgres"), connect_timeout=2).close()
                return True
            except dbapi.OperationalError:
                time.sleep(0.2)
        return False

    def stop(self, keep_log: Path | None = None) -> None:
        """Fast shutdown by PID (SIGINT), SIGKILL after a timeout; then check the PID is gone and clean up.

        Args:
            keep_log: where to copy the server's log (lock waits, errors) before the directory is removed.

        Raises:
            RuntimeError: if the server process is still there afterwards.
        """
        if self.proc is not None:
            pid = self.proc.pid
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: ends sessions, then the server exits
                try:
                    self.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    os.killpg(pid, signal.SIGKILL)
                    self.proc.wait(STOP_TIMEOUT_S)
            if Path(f"/proc/{pid}").exists():
                raise RuntimeError(f"PostgreSQL server PID {pid} is still there after it was stopped")
            self.proc = None
        if self.dir is not None:
            if keep_log is not None and (self.dir / "server.log").exists():
                shutil.copy(self.dir / "server.log", keep_log)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- use --------------------------------------------------------------------------------------------------
    def uri(self, database: str = "", driver: str = "") -> str:
        """``postgresql[+driver]://postgres@127.0.0.1:<port>/<database>``."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (a plain identifier) and return its URI."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"Expected a lower-case SQL identifier as database name but got {name!r}")
        conn = driver().connect(self.uri("postgres"))
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            cur = conn.cursor()
            cur.execute(f"CREATE DATABASE {name}")
            cur.close()
        finally:
            conn.close()
        return self.uri(name)

    def log_tail(self) -> str:
        """The end of the server's log (for failure messages)."""
        if self.dir is None or not (self.dir / "server.log").exists():
            return ""
        return (self.dir / "server.log").read_text(errors="replace")[-4000:]
