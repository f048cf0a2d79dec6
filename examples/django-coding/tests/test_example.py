"""Seed 003's coding rooms on lapse, end to end: the Django app served for real (wsgiref, in a
thread), a real `lapse serve` with the example's lapse.toml and a manual clock, the Python
client in between. A room kept alive by heartbeats stays open; one left alone for 7 days is
expired by lapse and the app hears it by a signed webhook, no cleanup command involved."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

HERE = Path(__file__).resolve().parents[1]
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT / "clients" / "python")]

SERVICE_KEY = "example-service-key"
ADMIN_KEY = "example-admin-key"
SECRET = "whsec_ZXhhbXBsZS13ZWJob29rLXNlY3JldC0xMjM0NTY="


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("django-coding")
    lapse_port, app_port = free_port(), free_port()
    os.environ.update(
        DJANGO_SETTINGS_MODULE="coding.settings",
        CODING_DB=str(tmp / "coding.sqlite3"),
        LAPSE_URL=f"http://127.0.0.1:{lapse_port}",
        LAPSE_SERVICE_KEY=SERVICE_KEY,
        LAPSE_WEBHOOK_SECRET=SECRET,
    )
    import django
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application

    django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)
    app = make_server("127.0.0.1", app_port, get_wsgi_application(), handler_class=Quiet)
    threading.Thread(target=app.serve_forever, daemon=True).start()

    config = tmp / "lapse.toml"
    config.write_text((HERE / "lapse.toml").read_text().replace("127.0.0.1:8000", f"127.0.0.1:{app_port}"))
    binary = os.environ.get("LAPSE_BIN") or str(ROOT / "target" / "debug" / "lapse")
    env = {
        **os.environ,
        "LAPSE_LISTEN": f"127.0.0.1:{lapse_port}",
        "DATABASE_URL": f"sqlite://{tmp / 'lapse.db'}",
        "LAPSE_CLOCK": "manual",
        "LAPSE_ADMIN_KEY": ADMIN_KEY,
        "RUST_LOG": "warn",
    }
    env.pop("LAPSE_CONFIG", None)
    log = open(tmp / "lapse.log", "wb")
    lapse = subprocess.Popen([binary, "serve", "--config", str(config)], env=env, stdout=log, stderr=log)
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{lapse_port}/readyz")
            break
        except OSError:
            assert lapse.poll() is None, (tmp / "lapse.log").read_text()
            time.sleep(0.1)
    yield f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{lapse_port}"
    lapse.terminate()
    lapse.wait(timeout=10)
    app.shutdown()


def post(url: str, user: str, body: bytes = b"{}") -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"X-User": user, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for(check, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_an_idle_room_ends_after_7_days_and_the_app_hears_it(stack) -> None:
    import json

    from lapse_client import Lapse
    from rooms.models import CodingRoom

    app, lapse_url = stack
    status, body = post(f"{app}/rooms", "ana", b'{"title": "parser"}')
    assert status == 201, body
    kept = json.loads(body)["id"]
    status, body = post(f"{app}/rooms", "ben", b'{"title": "left alone"}')
    left = json.loads(body)["id"]
    assert CodingRoom.objects.filter(is_active=True).count() == 2

    admin = Lapse(lapse_url, api_key=ADMIN_KEY)
    # Six days; ana's editor beats; six more: her room was active a day ago, ben's never since.
    admin.advance_clock("6d")
    assert post(f"{app}/rooms/{kept}/heartbeat", "ana")[0] == 204
    admin.advance_clock("1d 1m")
    assert admin.get_session(left).status == "expired"
    assert admin.get_session(kept).status == "pending"

    assert wait_for(lambda: not CodingRoom.objects.get(id=left).is_active), "the webhook arrived"
    assert CodingRoom.objects.get(id=left).ended_reason
    assert CodingRoom.objects.get(id=kept).is_active

    # A heartbeat for an ended room is refused with lapse's own code, passed on by the app.
    status, body = post(f"{app}/rooms/{left}/heartbeat", "ben")
    assert status == 409 and json.loads(body)["code"] == "invalid_transition", body


def test_a_forged_webhook_changes_nothing(stack) -> None:
    from rooms.models import CodingRoom

    app, _ = stack
    CodingRoom.objects.create(id="forged", owner="eve")
    body = b'{"type": "session.expired", "session_id": "forged"}'
    req = urllib.request.Request(
        f"{app}/hooks/lapse",
        data=body,
        method="POST",
        headers={"webhook-id": "x", "webhook-timestamp": str(int(time.time())), "webhook-signature": "v1,AAAA"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req)
    assert refused.value.code == 400
    assert CodingRoom.objects.get(id="forged").is_active
