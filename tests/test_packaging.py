"""Packaging (issue 29, item 6): ``pip install "mlflow-unlearn[postgresql]"`` brings the driver that an
``unlearn+postgresql://`` registry URI loads, in the built wheel's metadata, not only in ``setup.cfg``."""

from __future__ import annotations

import configparser
import re
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The distribution that provides each SQLAlchemy PostgreSQL driver name.
DRIVER_DISTRIBUTIONS = {"psycopg": {"psycopg"}, "psycopg2": {"psycopg2", "psycopg2-binary"}}


def _extras() -> dict[str, set[str]]:
    """The extras of setup.cfg: name -> the distribution names they require."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    extras = {}
    for name, lines in config["options.extras_require"].items():
        extras[name] = {re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower()
                        for line in lines.splitlines() if line.strip() and not line.strip().startswith("#")}
    return extras


def test_the_postgresql_extra_holds_the_driver_sqlalchemy_loads_for_postgresql_uris():
    import sqlalchemy

    driver = sqlalchemy.create_engine("postgresql://user@db.invalid/mlflow").dialect.driver  # no connection made
    extras = _extras()
    assert DRIVER_DISTRIBUTIONS[driver] & extras["postgresql"], (driver, extras["postgresql"])
    assert extras["postgresql"] <= extras["test"]  # the suite's PostgreSQL tests use what users install


def test_the_built_wheel_declares_the_postgresql_and_kubernetes_extras(installed_site):
    (dist_info,) = installed_site.glob("mlflow_unlearn-*.dist-info")
    metadata = Parser().parsestr((dist_info / "METADATA").read_text())
    assert {"postgresql", "kubernetes", "test"} <= set(metadata.get_all("Provides-Extra"))
    requires = metadata.get_all("Requires-Dist")
    for extra, names in _extras().items():
        if extra == "test":
            continue
        for name in names:
            assert any(line.lower().startswith(name) and f'extra == "{extra}"' in line for line in requires), \
                (extra, name, requires)


def test_the_readme_documents_the_install_of_each_extra():
    readme = (REPO / "README.md").read_text()
    for extra in ("postgresql", "kubernetes"):
        assert f'pip install "mlflow-unlearn[{extra}]"' in readme
