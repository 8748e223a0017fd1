"""Fresh MLflow SQLite databases without re-running MLflow's schema migrations for each one."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_SQLITE_TEMPLATE: list[Path] = []


def migrated_sqlite(path: Path) -> str:
    """Put an empty MLflow SQLite database at ``path`` (tables created and migrated to head, no experiment yet) and
    return its ``sqlite:///`` URI.

    Creating the tables runs all of MLflow's schema migrations, ~1.5 s of CPU for each new database; this process
    runs them once, into a template, and copies it. The copy is what a fresh database is: MLflow's stores find every
    table at the head revision (``_verify_schema``), and the tracking store creates its ``Default`` experiment when
    first opened, with the artifact root of whoever opens it (a server's ``mlflow-artifacts:/`` included). A path
    that exists already is left as it is.
    """
    if not path.exists():
        if not _SQLITE_TEMPLATE:
            import sqlalchemy
            from mlflow.store.db.utils import _initialize_tables

            folder = Path(tempfile.mkdtemp(prefix="mlflow-schema-"))
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            engine = sqlalchemy.create_engine(f"sqlite:///{folder / 'template.db'}")
            try:
                _initialize_tables(engine)
            finally:
                engine.dispose()
            _SQLITE_TEMPLATE.append(folder / "template.db")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_SQLITE_TEMPLATE[0], path)
    return f"sqlite:///{path}"
