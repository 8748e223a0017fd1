"""The webhook trigger (issue 18, item 4): a stock ``mlflow server`` without the plugin + ``mlflow-unlearn-serve``.

The server's registry is a plain ``sqlite:`` URI (MLflow's own store, no plugin). A webhook for
``model_version_tag.set`` with a shared secret points at ``mlflow-unlearn-serve`` on 127.0.0.1 (the server needs
``MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https`` and ``MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true`` to deliver there).
Adding the request tag in the stock UI (headless Chromium) makes a new version, with the status tags written back
through REST. A delivery with a bad signature is refused with 401, a replayed one with 409. Both servers are
stopped by PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from test_plugin_server import (  # noqa: F401  (parent is a fixture used by name)
    CHROMIUM,
    CHROMIUM_ARGS,
    MODEL,
    Server,
    _assert_succeeded_with_lineage,
    _chromium_or_skip,
    _client,
    _free_port,
    _new_version,
    _request,
    _wait_done,
    add_request_tag_in_ui,
    parent,
)

pytestmark = pytest.mark.slow

SECRET = "test-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def server(tmp_path_factory, installed_site) -> Iterator[Server]:  # noqa: F811
    root = tmp_path_factory.mktemp("stock-server")
    srv = Server(root, installed_site, registry_uri=f"sqlite:///{root}/registry.db")  # no plugin
    srv.env.update(MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https", MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true")
    (srv.allowed / "fast.yaml").write_text(
        "epochs: 1\ngate: {forget_tolerance: 100, max_retain_drop: 100, max_test_drop: 100}\n")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def hook(server, installed_site) -> Iterator[str]:  # noqa: F811
    """``mlflow-unlearn-serve`` (the plugin's own program) on 127.0.0.1, registered as the server's webhook; yields
    its URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "_MLFLOW_"))}
    env["MLFLOW_UNLEARN_DIGEST_KEY"] = os.environ["MLFLOW_UNLEARN_DIGEST_KEY"]  # signs each result's provenance
    env.update(MLFLOW_UNLEARN_WEBHOOK_SECRET=SECRET, MLFLOW_UNLEARN_ALLOWED_ROOTS=str(server.allowed),
               MLFLOW_UNLEARN_LOG_DIR=str(server.root / "serve-logs"), MLFLOW_UNLEARN_DEVICE="cpu",
               MLFLOW_UNLEARN_ONNX="false", OMP_NUM_THREADS="1",  # as the suite's other servers (test_plugin_server)
               PYTHONPATH=str(server.site))
    log = open(server.root / "serve.log", "ab")  # noqa: SIM115 (kept open for the subprocess)
    proc = subprocess.Popen([sys.executable, "-m", "mlflow_unlearn_plugins.webhook", "--tracking-uri", server.url,
                             "--state-db", str(server.root / "state.db"), "--port", str(port)],
                            cwd=server.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        assert proc.poll() is None, (server.root / "serve.log").read_text()[-3000:]
        try:
            if requests.get(f"{url}/health", timeout=5).ok:
                break
        except requests.RequestException:
            time.sleep(0.5)
    else:
        pytest.fail("mlflow-unlearn-serve did not answer in 180 s")
    _client(server).create_webhook(name="unlearn", url=f"{url}/webhook", events=["model_version_tag.set"],
                                   secret=SECRET)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_stock_server_tag_from_the_ui_through_the_webhook_makes_a_new_version(server, parent, hook):  # noqa: F811
    """The request tag is added in the stock MLflow UI (real headless Chromium) of a server without the plugin."""
    from importlib.metadata import entry_points

    _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    assert not server.registry_uri.startswith("unlearn+")
    assert "unlearn+sqlite" in {e.name for e in entry_points(group="mlflow.model_registry_store")}  # not used here
    version = _new_version(server, parent)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            add_request_tag_in_ui(page, server, version, _request(server))
            tags = _wait_done(server, version, timeout=900)  # one job; 4-5 min measured on a loaded 2-core machine
            _assert_succeeded_with_lineage(server, version, tags)
            page.reload()  # the status the receiver wrote back through REST shows in the stock UI
            page.get_by_text("succeeded").first.wait_for(timeout=60_000)
        finally:
            browser.close()
    assert "mlflow_unlearn.queue_position" not in tags


def _signed(body: bytes, *, secret: str = SECRET, delivery: str | None = None, stamp: str | None = None) -> dict:
    from mlflow_unlearn_plugins.webhook import signature

    delivery, stamp = delivery or uuid.uuid4().hex, stamp or str(int(time.time()))
    return {"X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": stamp, "Content-Type": "application/json",
            "X-MLflow-Signature": signature(secret, delivery, stamp, body)}


def test_bad_signatures_and_replays_are_refused(hook):
    body = json.dumps({"entity": "model_version_tag", "action": "set", "timestamp": "now",
                       "data": {"name": MODEL, "version": "1", "key": "other", "value": "x"}}).encode()
    assert requests.post(f"{hook}/webhook", data=body, timeout=30).status_code == 401  # unsigned
    wrong = requests.post(f"{hook}/webhook", data=body, headers=_signed(body, secret="wrong"), timeout=30)
    assert wrong.status_code == 401
    tampered = _signed(body)
    assert requests.post(f"{hook}/webhook", data=body + b" ", headers=tampered, timeout=30).status_code == 401
    headers = _signed(body)
    assert requests.post(f"{hook}/webhook", data=body, headers=headers, timeout=30).status_code == 200
    replay = requests.post(f"{hook}/webhook", data=body, headers=headers, timeout=30)
    assert replay.status_code == 409 and "already received" in replay.json()["message"]
    stale = requests.post(f"{hook}/webhook", data=body, headers=_signed(body, stamp=str(int(time.time()) - 3600)),
                          timeout=30)
    assert stale.status_code == 409 and "outside" in stale.json()["message"]
