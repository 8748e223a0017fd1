"""What the plugin's registry store answers when its database fails: a line without SQL (issue 29, defect 9).

MLflow's SQL stores put the database driver's whole message into the ``MlflowException`` they raise, and the server
returns it to the client: the statement (``[SQL: INSERT INTO model_version_tags ...]``), its parameters (tag values
among them) and a link to SQLAlchemy's help. :func:`without_sql` wraps the store's session maker so that such an
exception keeps its error code (503 for a locked or read-only database, 400 ...) and its cause (the ledger's retries
look at it), and loses the statement; the full text goes to the server's log, where MLflow logs it too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

_logger = logging.getLogger(__name__)

_SQL_MARKERS = ("[SQL: ", "[parameters: ", "sqlalche.me/")
_TAIL = re.compile(r"\s*(\[SQL: |\[parameters: |\(Background on this error at: ).*", re.S)


def public_message(message: str) -> str:
    """``message`` without the SQL statement, its parameters and the driver's detail lines; unchanged if it has none.

    Example:
        >>> print(public_message("(sqlite3.OperationalError) database is locked\\n[SQL: UPDATE t SET x=?]\\n"
        ...                      "[parameters: ('v',)]\\n(Background on this error at: https://sqlalche.me/e/20/e3q8)"))
        registry database error: (sqlite3.OperationalError) database is locked (the statement is in the server log)
        >>> public_message("Registered Model (name=m) already exists.")
        'Registered Model (name=m) already exists.'
    """
    if not any(marker in message for marker in _SQL_MARKERS):
        return message
    head = _TAIL.sub("", message).strip()
    first = head.splitlines()[0].strip() if head else ""
    prefix = "registry database error: " if not first or first.startswith("(") else ""
    return f"{prefix}{first or 'a statement failed'} (the statement is in the server log)"


def without_sql(session_maker: Callable[..., AbstractContextManager]) -> Callable[..., AbstractContextManager]:
    """Wrap a store's ``ManagedSessionMaker``: an ``MlflowException`` leaving it carries no SQL in its message.

    The new exception has the same error code and the same ``__cause__`` (the SQLAlchemy error, when there is one).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ErrorCode

    @contextmanager
    def managed_session(*args: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            with session_maker(*args, **kwargs) as session:
                yield session
        except MlflowException as exc:
            public = public_message(exc.message)
            if public == exc.message:
                raise
            _logger.warning("Registry database error (answered without its SQL): %s", exc.message)
            raise MlflowException(public, error_code=ErrorCode.Value(exc.error_code)) from exc.__cause__

    return managed_session
