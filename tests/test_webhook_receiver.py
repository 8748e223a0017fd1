"""The webhook receiver's HTTP layer, against a real ``mlflow-unlearn-serve`` process (issue 29, defects 2 and 3).

Nothing here needs an MLflow server: every delivery is refused before the trigger, or is a signed delivery of a tag
other than the request tag (answered "ignored"). Requests are written on raw sockets, so that the headers are
exactly the ones under test (``Content-Length: -1``, ``abc``, none, 300 MiB) and a body can be withheld: a receiver
that waits for a body it should not read shows up as a timeout. The process is stopped by PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow

SECRET = "test-" + uuid.uuid4().hex
#: A receiver that answers later than this is taken to be waiting for a body (or reading one to its end).
ANSWER_S = 15
HUGE_MIB = 300


class Receiver:
    """``mlflow-unlearn-serve`` on 127.0.0.1 with a state database that outlives it (restart with :meth:`start`)."""

    def __init__(self, root: Path) -> None:
        self.root, self.state_db, self.log = root, root / "state.db", root / "serve.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "_MLFLOW_"))}
        env.update(MLFLOW_UNLEARN_WEBHOOK_SECRET=SECRET,
                   MLFLOW_UNLEARN_DIGEST_KEY=os.environ["MLFLOW_UNLEARN_DIGEST_KEY"],
                   MLFLOW_UNLEARN_LOG_DIR=str(self.root / "serve-logs"), OMP_NUM_THREADS="1")
        with open(self.log, "ab") as log:
            # the tracking URI is never contacted by these tests (a closed port: status copies fail and are retried)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow_unlearn_plugins.webhook", "--tracking-uri", "http://127.0.0.1:9",
                 "--state-db", str(self.state_db), "--port", str(self.port)],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 180
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if requests.get(f"{self.url}/health", timeout=5).ok:
                    return
            except requests.RequestException:
                time.sleep(0.5)
        pytest.fail("mlflow-unlearn-serve did not answer in 180 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def peak_rss_mib(self) -> float:
        """The process's peak resident memory so far (``VmHWM``), in MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc status")


@pytest.fixture(scope="module")
def receiver(tmp_path_factory) -> Iterator[Receiver]:
    served = Receiver(tmp_path_factory.mktemp("receiver"))
    served.start()
    yield served
    served.kill()


def _signed(body: bytes, *, delivery: str | None = None, stamp: str | None = None) -> dict[str, str]:
    from mlflow_unlearn_plugins.webhook import signature

    delivery, stamp = delivery or str(uuid.uuid4()), stamp or str(int(time.time()))
    return {"X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": stamp,
            "X-MLflow-Signature": signature(SECRET, delivery, stamp, body)}


def _ignored_event() -> bytes:
    """A well-formed delivery of a tag other than the request tag: authenticated, then answered "ignored"."""
    return json.dumps({"entity": "model_version_tag", "action": "set", "timestamp": "now",
                       "data": {"name": "m", "version": "1", "key": "other", "value": "x"}}).encode()


def _raw_post(url: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, str]:
    """POST with exactly these headers (no Content-Length added) and this much of a body; the status and body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=ANSWER_S) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"POST /webhook HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode()


def _no_traceback(receiver: Receiver) -> None:
    assert "Traceback" not in receiver.log.read_text(), receiver.log.read_text()[-3000:]


@pytest.mark.parametrize(("length", "status"), [("-1", 400), ("abc", 400), ("1e3", 400), ("+12", 400),
                                                (None, 411), (str(300 * 2**20), 413)],
                         ids=["negative", "not-a-number", "float", "plus-sign", "missing", "over-the-limit"])
def test_malformed_content_length_is_answered_without_reading_a_body(receiver, length, status):
    body = _ignored_event()
    headers = _signed(body) | ({} if length is None else {"Content-Length": length})
    code, answer = _raw_post(receiver.url, headers)  # no body sent: a receiver that waits for one times out
    assert code == status, answer
    assert "Traceback" not in answer and len(answer) < 300
    _no_traceback(receiver)


def test_chunked_bodies_are_refused(receiver):
    body = _ignored_event()
    code, _ = _raw_post(receiver.url, _signed(body) | {"Transfer-Encoding": "chunked"})
    assert code == 411
    both = _signed(body) | {"Transfer-Encoding": "chunked", "Content-Length": str(len(body))}
    assert _raw_post(receiver.url, both)[0] == 400


_WELL_FORMED = "v1," + "A" * 43 + "="  # the shape of a signature (base64 of 32 bytes), not a valid one


@pytest.mark.parametrize(("headers", "reason"), [
    ({}, "signature"),
    ({"X-MLflow-Signature": "v1,not base64!"}, "signature"),
    ({"X-MLflow-Signature": "v2," + "A" * 43 + "="}, "signature"),
    ({"X-MLflow-Signature": _WELL_FORMED, "X-MLflow-Timestamp": str(int(time.time()))}, "delivery ID"),
    ({"X-MLflow-Signature": _WELL_FORMED, "X-MLflow-Delivery-Id": "d;1", "X-MLflow-Timestamp": "1"},
     "delivery ID"),
    ({"X-MLflow-Signature": _WELL_FORMED, "X-MLflow-Delivery-Id": "d1", "X-MLflow-Timestamp": "soon"}, "timestamp"),
], ids=["unsigned", "signature-not-base64", "signature-version", "no-delivery-id", "delivery-id-separator",
        "timestamp-not-a-number"])
def test_unauthenticated_deliveries_are_refused_before_their_body(receiver, headers, reason):
    """A declared 60 KiB body (under the limit) is never sent: the receiver answers from the headers alone."""
    code, answer = _raw_post(receiver.url, headers | {"Content-Length": str(60 * 1024)})
    assert code == 401 and reason in answer, answer
    _no_traceback(receiver)


def test_a_stale_timestamp_is_refused_before_the_body(receiver):
    stale = _signed(b"x", stamp=str(int(time.time()) - 3600)) | {"Content-Length": str(60 * 1024)}
    code, answer = _raw_post(receiver.url, stale)
    assert code == 409 and "outside" in answer


def test_a_short_body_is_refused(receiver):
    body = _ignored_event()
    host, port = receiver.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=ANSWER_S) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in _signed(body).items())
        sock.sendall(f"POST /webhook HTTP/1.1\r\nHost: h\r\n{head}Content-Length: {len(body) + 10}\r\n\r\n".encode()
                     + body)
        sock.shutdown(socket.SHUT_WR)  # ten bytes short, then the end
        answer = sock.recv(65536)
    assert answer.split()[1] == b"400"
    _no_traceback(receiver)


def test_a_stalled_body_is_answered_408_after_the_read_timeout(receiver):
    from mlflow_unlearn_plugins.webhook_auth import READ_TIMEOUT_S

    body = _ignored_event()
    started = time.time()
    code, answer = _raw_post(receiver.url, _signed(body) | {"Content-Length": str(len(body))}, body[:10])
    assert code == 408 and READ_TIMEOUT_S - 1 < time.time() - started < ANSWER_S, answer
    _no_traceback(receiver)


@pytest.mark.parametrize("length", ["-1", str(HUGE_MIB * 2**20)], ids=["negative", "declared"])
def test_an_unsigned_huge_body_does_not_raise_memory(receiver, length):
    """Issue 29: an unsigned 300 MiB body with ``Content-Length: -1`` took serve's peak RSS from 690 to 1294 MiB."""
    before = receiver.peak_rss_mib()
    host, port = receiver.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    chunk = b"x" * 2**20

    def send() -> None:
        try:
            sock.sendall(f"POST /webhook HTTP/1.1\r\nHost: h\r\nContent-Length: {length}\r\n\r\n".encode())
            for _ in range(HUGE_MIB):
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # refused: the receiver closed the connection without reading the rest
            pass

    sender = threading.Thread(target=send)
    started = time.time()
    sender.start()
    sender.join(120)
    with sock:
        try:
            sock.recv(65536)
        except OSError:
            pass
    assert not sender.is_alive()
    grown = receiver.peak_rss_mib() - before
    print(f"peak RSS of serve: {before:.0f} MiB before, +{grown:.1f} MiB after an unsigned {HUGE_MIB} MiB body "
          f"(Content-Length {length if length == '-1' else 'declared'}), {time.time() - started:.1f} s")
    assert grown < 32, f"serve's peak RSS grew by {grown:.0f} MiB"
    assert requests.get(f"{receiver.url}/health", timeout=10).ok
    _no_traceback(receiver)


def test_a_signed_delivery_replayed_after_a_restart_is_refused(receiver):
    body = _ignored_event()
    headers = _signed(body) | {"Content-Type": "application/json"}
    first = requests.post(f"{receiver.url}/webhook", data=body, headers=headers, timeout=30)
    assert first.status_code == 200 and first.json()["message"] == "ignored"
    receiver.kill()  # kill -9: the record of the delivery must already be on disk
    receiver.start()
    replay = requests.post(f"{receiver.url}/webhook", data=body, headers=headers, timeout=30)
    assert replay.status_code == 409 and "already received" in replay.json()["message"]
    fresh = requests.post(f"{receiver.url}/webhook", data=body, headers=_signed(body), timeout=30)
    assert fresh.status_code == 200
