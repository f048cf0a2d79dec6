"""A real `lapse serve` for the tests: a temp SQLite database, a manual clock, an admin key,
and a webhook endpoint served by the tests themselves. The binary is `$LAPSE_BIN`, or the
workspace's debug build (built with cargo if missing)."""

from __future__ import annotations

import http.server
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[3]
ADMIN_KEY = "test-admin-key"
WEBHOOK_SECRET = "whsec_dGVzdC13ZWJob29rLXNlY3JldC0xMjM0NTY3OA=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lapse_binary() -> str:
    if os.environ.get("LAPSE_BIN"):
        return os.environ["LAPSE_BIN"]
    binary = ROOT / "target" / "debug" / "lapse"
    if not binary.exists():
        subprocess.run(["cargo", "build", "-p", "lapse"], cwd=ROOT, check=True)
    return str(binary)


class Receiver:
    """Webhook deliveries as they arrive: (headers, body)."""

    def __init__(self) -> None:
        self.received: "queue.Queue[tuple[dict[str, str], bytes]]" = queue.Queue()
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.put(({k: v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/lapse"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="session")
def receiver() -> Receiver:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="session")
def lapse_url(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> str:
    tmp = tmp_path_factory.mktemp("lapse")
    config = tmp / "lapse.toml"
    config.write_text(
        f"""
[rate_limits]
default = "100000/min"

[[webhooks]]
url = "{receiver.url}"
secret_env = "TEST_WEBHOOK_SECRET"
events = ["session.created"]
kinds = ["coding"]

[kinds.coding]
presence_timeout = "5m"
[[kinds.coding.rules]]
name = "expire-idle"
on = "idle"
after = "30m"
do = "expire"
"""
    )
    port = free_port()
    env = {
        **os.environ,
        "LAPSE_LISTEN": f"127.0.0.1:{port}",
        "DATABASE_URL": f"sqlite://{tmp / 'lapse.db'}",
        "LAPSE_CLOCK": "manual",
        "LAPSE_ADMIN_KEY": ADMIN_KEY,
        "TEST_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RUST_LOG": "warn",
    }
    env.pop("LAPSE_CONFIG", None)
    log = open(tmp / "lapse.log", "wb")
    proc = subprocess.Popen([lapse_binary(), "serve", "--config", str(config)], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/readyz")
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"lapse serve exited: {(tmp / 'lapse.log').read_text()}")
            time.sleep(0.1)
    else:
        raise RuntimeError("lapse serve did not become ready")
    yield url
    proc.terminate()
    proc.wait(timeout=10)
