"""The operator's console (/admin) in a real browser: Debian's Chromium driven by Playwright,
against a real `lapse serve` (a temp database, a manual clock, an admin key). Screenshots of
each step go to $LAPSE_ARTIFACTS (default target/browser-artifacts).

    LAPSE_BIN=target/debug/lapse python3 -m pytest tests/browser
"""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
KEY = "console-admin-key"
ARTIFACTS = Path(os.environ.get("LAPSE_ARTIFACTS", ROOT / "target" / "browser-artifacts"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Lapse:
    def __init__(self, base, config):
        self.base = base
        self.config = config

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("x-api-key", KEY)
        if data is not None:
            request.add_header("content-type", "application/json")
        with urllib.request.urlopen(request) as answer:
            return json.loads(answer.read() or b"{}")


WEBHOOKS = '[[webhooks]]\nurl = "http://127.0.0.1:{port}/hooks"\nevents = ["session.*"]\n'


@pytest.fixture()
def lapse():
    binary = os.environ.get("LAPSE_BIN") or str(ROOT / "target" / "debug" / "lapse")
    work = tempfile.mkdtemp()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LAPSE_CONFIG", "DATABASE_URL")}
    env.update(
        LAPSE_LISTEN=f"127.0.0.1:{port}",
        DATABASE_URL=f"sqlite://{work}/lapse.db",
        LAPSE_CLOCK="manual",
        LAPSE_ADMIN_KEY=KEY,
        RUST_LOG="warn",
    )
    config = Path(work) / "lapse.toml"
    config.write_text(WEBHOOKS.format(port=free_port()))
    log = open(Path(work) / "lapse.log", "w")
    process = subprocess.Popen([binary, "serve", "--config", str(config)], env=env, stderr=log)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/readyz")
            break
        except OSError:
            time.sleep(0.1)
    yield Lapse(base, config)
    process.terminate()
    process.wait(timeout=10)
    log.close()
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture()
def page():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (apt-get install chromium)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("dialog", lambda dialog: dialog.accept())
        yield page
        browser.close()


def shot(page, name):
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_an_operator_finds_explains_watches_and_cleans_up(lapse, page):
    lapse.call("POST", "/v1/sessions", {"id": "algebra", "kind": "study", "host": "ana", "title": "Algebra"})
    lapse.call("POST", "/v1/sessions/algebra/participants", {"user": "bob"})
    lapse.call("POST", "/v1/sessions", {"id": "pairing", "kind": "coding", "host": "ben", "title": "Parser"})

    # Log in: the key is kept for this tab only.
    page.goto(lapse.base + "/admin")
    page.get_by_test_id("key").fill(KEY)
    page.get_by_test_id("key").press("Enter")
    page.get_by_test_id("key").blur()
    expect(page.locator("#live-text")).to_have_text("live")
    assert page.evaluate("sessionStorage.getItem('lapse-key')") == KEY
    assert page.evaluate("localStorage.length") == 0
    expect(page.get_by_test_id("counts")).to_contain_text("study")
    shot(page, "1-overview")

    # Find a session by filter, open it, read why its rules do or do not apply.
    page.get_by_role("link", name="Sessions").click()
    page.get_by_test_id("filter-kind").select_option("study")
    page.get_by_test_id("filter-apply").click()
    sessions = page.get_by_test_id("sessions")
    expect(sessions).to_contain_text("algebra")
    expect(sessions).not_to_contain_text("pairing")
    shot(page, "2-sessions")
    sessions.get_by_text("algebra", exact=True).click()
    expect(page.get_by_test_id("session-title")).to_contain_text("algebra")
    explain = page.get_by_test_id("explain")
    expect(explain).to_contain_text("delete-unused")
    expect(explain.locator("tr", has_text="delete-unused")).to_contain_text("waits")
    expect(explain.locator("tr", has_text="auto-end-abandoned")).to_contain_text("cannot act on a pending session")
    expect(page.get_by_test_id("timeline")).to_contain_text("participant.joined")
    shot(page, "3-session")

    # "Due in the next hour": the room is (unused rooms go after 30 minutes), the pair is not.
    page.get_by_role("link", name="Sessions").click()
    page.get_by_test_id("filter-kind").select_option("")
    page.get_by_test_id("filter-due").check()
    page.get_by_test_id("filter-apply").click()
    expect(sessions).to_contain_text("algebra")
    expect(sessions).not_to_contain_text("pairing")

    # Time passes; a cleanup preview lists exactly the room, grouped by kind and rule.
    lapse.call("POST", "/v1/admin/clock", {"advance": "31m"})
    page.get_by_role("link", name="Cleanup").click()
    page.get_by_test_id("preview").click()
    groups = page.get_by_test_id("cleanup-groups")
    expect(groups.locator("tr", has_text="delete-unused")).to_contain_text("1")
    expect(groups).not_to_contain_text("coding")
    shot(page, "4-cleanup-preview")
    page.get_by_test_id("apply").click()
    expect(page.get_by_test_id("cleanup-note")).to_contain_text("Applied 1 rule(s)")
    shot(page, "5-cleanup-applied")

    # The live feed shows it go, and an action taken from a session's page.
    page.get_by_role("link", name="Overview").click()
    feed = page.get_by_test_id("feed")
    expect(feed.locator("li[data-type='session.deleted'][data-session='algebra']")).to_have_count(1)
    page.goto(lapse.base + "/admin#/session/pairing")
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_test_id("session-title")).to_contain_text("cancelled")
    page.get_by_role("link", name="Overview").click()
    expect(feed.locator("li[data-type='session.cancelled'][data-session='pairing']")).to_have_count(1)
    shot(page, "6-live-feed")

    # The counts follow the feed: read again at most every 2 s, but never left behind.
    lapse.call("POST", "/v1/sessions", {"id": "tarot", "kind": "reading", "host": "cy"})
    expect(feed.locator("li[data-type='session.created'][data-session='tarot']")).to_have_count(1)
    expect(page.get_by_test_id("counts")).to_contain_text("reading")

    # Webhooks: the configured endpoint and the deliveries waiting for it.
    page.get_by_role("link", name="Webhooks").click()
    expect(page.get_by_test_id("endpoints")).to_contain_text("/hooks")
    expect(page.get_by_test_id("endpoints")).to_contain_text("active")
    shot(page, "7-webhooks")


def test_an_operator_previews_a_rules_change_and_reloads_it(lapse, page):
    # Seed 003's coding rooms expire after a week of silence; one has been silent five days.
    lapse.call("POST", "/v1/sessions", {"id": "quiet", "kind": "coding", "host": "ana"})
    lapse.call("POST", "/v1/admin/clock", {"advance": "4d"})
    lapse.call("POST", "/v1/sessions", {"id": "busy", "kind": "coding", "host": "ben"})
    lapse.call("POST", "/v1/admin/clock", {"advance": "1d"})

    page.goto(lapse.base + "/admin")
    page.get_by_test_id("key").fill(KEY)
    page.get_by_test_id("key").press("Enter")
    page.get_by_role("link", name="Policy").click()
    rules = page.get_by_test_id("policy-text")
    page.wait_for_function("document.getElementById('policy-text').value.includes('expire-inactive')")
    in_force = rules.input_value()
    assert 'after = "7days"' in in_force, in_force

    # Three days instead of seven: the preview names the room that would expire at once.
    three_days = in_force.replace('after = "7days"', 'after = "3days"')
    rules.fill(three_days)
    page.get_by_test_id("policy-preview").click()
    expect(page.get_by_test_id("policy-note")).to_contain_text("1 session(s) would fire at once")
    changes = page.get_by_test_id("policy-changes")
    expect(changes.locator("tr", has_text="expire-inactive")).to_contain_text("changed")
    fire = page.get_by_test_id("policy-fire")
    expect(fire).to_contain_text("quiet")
    expect(fire).not_to_contain_text("busy")
    shot(page, "8-policy-preview")

    # Saved to the file with a guard of none at once: refused, then forced.
    lapse.config.write_text(WEBHOOKS.format(port=free_port()) + "[rollout]\nmax_immediate = 0\n" + three_days)
    page.get_by_test_id("reload").click()
    expect(page.get_by_test_id("reload-note")).to_contain_text("rollout_refused")
    page.get_by_test_id("reload-force").click()
    expect(page.get_by_test_id("reload-note")).to_contain_text("Rules version 2 in force")
    shot(page, "9-policy-reloaded")
    # The live feed shows the reload, pointing at the rules rather than at a session.
    page.get_by_role("link", name="Overview").click()
    reload_line = page.get_by_test_id("feed").locator("li[data-type='config.reloaded']")
    expect(reload_line).to_contain_text("rules version 2")
    expect(reload_line.get_by_role("link")).to_have_attribute("href", "#/policy")
    swept = lapse.call("POST", "/v1/sweep")
    assert [a["session"] for a in swept["applied"]] == ["quiet"], swept
