"""Authentication of webhook deliveries to ``mlflow-unlearn-serve``, from the headers before the body is read.

A delivery from MLflow's webhook sender is one ``POST`` with a ``Content-Length`` body (at most :data:`MAX_BODY`
bytes) and three headers: ``X-MLflow-Delivery-Id``, ``X-MLflow-Timestamp`` (Unix seconds) and
``X-MLflow-Signature`` (``v1,`` + base64 HMAC-SHA256 of ``<delivery id>.<timestamp>.<body>`` with the shared secret).
The receiver checks them in this order, and reads the body only after the first two steps pass:

1. :func:`read_headers`: the body's framing (``Content-Length`` a plain decimal number: 400 otherwise, 411 when it
   is missing or the body is chunked, 413 above :data:`MAX_BODY`), a well-formed signature header and delivery ID
   (401), a timestamp within :data:`REPLAY_WINDOW_S` of now (409);
2. the body, exactly ``Content-Length`` bytes, with a socket timeout of :data:`READ_TIMEOUT_S` (400 when shorter);
3. :func:`verify_signature` (401);
4. :meth:`ReplayGuard.claim`: the delivery ID is recorded in the receiver's state database, so that a delivery
   replayed after a restart is still refused (409). A delivery whose handling then fails is released
   (:meth:`ReplayGuard.release`), so that MLflow's retry of it, which carries the same ID, is not taken for a replay.

A refusal is a :class:`DeliveryRefused`: an HTTP status and one line that repeats nothing of the request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
#: A delivery whose timestamp is further than this from now is refused; delivery IDs are remembered this long.
REPLAY_WINDOW_S = 300
#: The largest body read (MLflow's ``model_version_tag.set`` payloads are well under 4 KiB).
MAX_BODY = 64 * 1024
#: How long a connection may take to send its headers or its body before it is closed.
READ_TIMEOUT_S = 10
#: Deliveries handled at once; more are answered 503 with ``Retry-After`` (MLflow's sender retries those).
MAX_CONCURRENT = 16
#: The table of delivery IDs seen within the window, in the receiver's state database (created by this module).
REPLAY_TABLE = "mlflow_unlearn_webhook_deliveries"

_DIGITS = re.compile(r"^[0-9]{1,18}$")
_DELIVERY_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SIGNATURE = re.compile(r"^v1,([A-Za-z0-9+/]{43}=)$")  # base64 of a 32-byte HMAC-SHA256


class DeliveryRefused(Exception):
    """A delivery that is not acted on: the HTTP status and a one-line reason (repeating nothing of the request).

    Args:
        status: the HTTP status of the answer.
        message: the reason.
    """

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class DeliveryHeaders:
    """The checked headers of one delivery (:func:`read_headers`).

    Args:
        delivery_id: ``X-MLflow-Delivery-Id``.
        timestamp: ``X-MLflow-Timestamp``, Unix seconds as sent (the signature covers the text).
        signature: ``X-MLflow-Signature``, ``v1,<base64>``.
        length: the body's ``Content-Length``, at most :data:`MAX_BODY`.
    """

    delivery_id: str
    timestamp: str
    signature: str
    length: int


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's webhook signature of ``body``: ``v1,`` + base64 HMAC-SHA256 of ``<delivery id>.<timestamp>.<body>``.

    Example:
        >>> signature("s3cret", "d1", "1700000000", b'{"a": 1}')
        'v1,SL09e/IZgMeXvzZRPOdF+ztEGcfCg48OkhwoQmVq2JE='
    """
    mac = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def body_length(headers: Mapping[str, str], *, max_body: int = MAX_BODY) -> int:
    """The body's length from ``Content-Length``, refusing what cannot be read safely.

    Raises:
        DeliveryRefused: 400 for a value that is not a plain decimal number (``-1``, ``abc``, ``1e3``) or for both
            ``Content-Length`` and ``Transfer-Encoding``; 411 for no ``Content-Length`` (a chunked body included);
            413 above ``max_body``.

    Example:
        >>> body_length({"Content-Length": "512"})
        512
        >>> try:
        ...     body_length({"Content-Length": "-1"})
        ... except DeliveryRefused as refused:
        ...     print(int(refused.status), refused.message)
        400 Content-Length is not a non-negative decimal number
    """
    raw, chunked = headers.get("Content-Length"), headers.get("Transfer-Encoding")
    if raw is not None and chunked is not None:
        raise DeliveryRefused(HTTPStatus.BAD_REQUEST, "both Content-Length and Transfer-Encoding are given")
    if raw is None:
        raise DeliveryRefused(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required (no chunked bodies)")
    if not _DIGITS.match(raw):
        raise DeliveryRefused(HTTPStatus.BAD_REQUEST, "Content-Length is not a non-negative decimal number")
    if int(raw) > max_body:
        raise DeliveryRefused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over the {max_body} byte limit")
    return int(raw)


def read_headers(headers: Mapping[str, str], *, now: float | None = None,
                 window_s: float = REPLAY_WINDOW_S, max_body: int = MAX_BODY) -> DeliveryHeaders:
    """Check a delivery's headers before its body is read (steps 1 of the module docstring).

    Args:
        headers: the request's headers (case-insensitive, as ``http.server`` gives them).
        now: the current Unix time (default: the clock).
        window_s: how far the timestamp may be from ``now``.
        max_body: the largest ``Content-Length`` accepted.

    Raises:
        DeliveryRefused: see :func:`body_length`; 401 for a missing or malformed signature, delivery ID or
            timestamp; 409 for a timestamp outside the window.

    Example:
        >>> read_headers({"Content-Length": "2", "X-MLflow-Delivery-Id": "d1", "X-MLflow-Timestamp": "1000",
        ...               "X-MLflow-Signature": "v1," + "A" * 43 + "="}, now=1000.0).length
        2
    """
    length = body_length(headers, max_body=max_body)
    given = headers.get(SIGNATURE_HEADER) or ""
    if not _SIGNATURE.match(given):
        raise DeliveryRefused(HTTPStatus.UNAUTHORIZED, "bad or missing signature")
    delivery_id, stamp = headers.get(DELIVERY_ID_HEADER) or "", headers.get(TIMESTAMP_HEADER) or ""
    if not _DELIVERY_ID.match(delivery_id):
        raise DeliveryRefused(HTTPStatus.UNAUTHORIZED, "bad or missing delivery ID")
    if not _DIGITS.match(stamp):
        raise DeliveryRefused(HTTPStatus.UNAUTHORIZED, "bad or missing timestamp")
    now = time.time() if now is None else now
    if abs(now - int(stamp)) > window_s:
        raise DeliveryRefused(HTTPStatus.CONFLICT, f"replay refused: the timestamp is outside the {window_s:.0f} s "
                                                   "window")
    return DeliveryHeaders(delivery_id, stamp, given, length)


def verify_signature(secret: str, delivery: DeliveryHeaders, body: bytes) -> None:
    """Check the body against the delivery's signature (step 3).

    Raises:
        DeliveryRefused: 401 when the signature does not match.
    """
    expected = signature(secret, delivery.delivery_id, delivery.timestamp, body)
    if not hmac.compare_digest(delivery.signature, expected):
        raise DeliveryRefused(HTTPStatus.UNAUTHORIZED, "bad or missing signature")


class ReplayGuard:
    """Delivery IDs seen within the window, kept in a table of the receiver's SQLite state database.

    The table (:data:`REPLAY_TABLE`) is this module's own, created at the first claim; a row lives until its
    delivery's timestamp leaves the window, after which :func:`read_headers` refuses the delivery anyway. A claim is
    one ``INSERT`` on the delivery ID's primary key, so two receivers (or threads) cannot both accept one delivery.

    Args:
        path: the SQLite file (the receiver's ``--state-db``).
        window_s: how long a delivery ID is remembered after its timestamp.

    Example:
        >>> import os, tempfile
        >>> guard = ReplayGuard(os.path.join(tempfile.mkdtemp(), "state.db"))
        >>> headers = DeliveryHeaders("d1", "1000", "v1,", 0)
        >>> guard.claim(headers, now=1000.0)
        >>> try:
        ...     guard.claim(headers, now=1001.0)
        ... except DeliveryRefused as refused:
        ...     print(int(refused.status), refused.message)
        409 replay refused: this delivery was already received
        >>> guard.release("d1"); guard.claim(headers, now=1002.0)
    """

    def __init__(self, path: str | Path, window_s: float = REPLAY_WINDOW_S) -> None:
        self.path, self.window_s, self._created = str(path), window_s, False

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        if not self._created:
            connection.execute(f"CREATE TABLE IF NOT EXISTS {REPLAY_TABLE} "
                               "(delivery_id TEXT PRIMARY KEY, expires_at INTEGER NOT NULL)")
            self._created = True
        return connection

    def claim(self, delivery: DeliveryHeaders, *, now: float | None = None) -> None:
        """Record the delivery as received (and forget the ones past the window).

        Raises:
            DeliveryRefused: 409 when this delivery ID was already received within the window.
        """
        now = time.time() if now is None else now
        connection = self._connect()
        try:
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute(f"DELETE FROM {REPLAY_TABLE} WHERE expires_at < ?", (int(now),))
                connection.execute(f"INSERT INTO {REPLAY_TABLE} (delivery_id, expires_at) VALUES (?, ?)",
                                   (delivery.delivery_id, int(delivery.timestamp) + int(self.window_s)))
        except sqlite3.IntegrityError:
            raise DeliveryRefused(HTTPStatus.CONFLICT,
                                  "replay refused: this delivery was already received") from None
        finally:
            connection.close()

    def release(self, delivery_id: str) -> None:
        """Forget a claimed delivery whose handling failed, so that the sender's retry is handled."""
        connection = self._connect()
        try:
            with connection:
                connection.execute(f"DELETE FROM {REPLAY_TABLE} WHERE delivery_id = ?", (delivery_id,))
        finally:
            connection.close()
