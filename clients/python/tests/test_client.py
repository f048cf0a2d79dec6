"""The Python client against a real `lapse serve` (see conftest.py): no mocks."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from conftest import ADMIN_KEY, WEBHOOK_SECRET
from lapse_client import AsyncLapse, Lapse, LapseError, WebhookVerificationError, verify_webhook


def room() -> str:
    return f"room-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def lapse(lapse_url: str) -> Lapse:
    with Lapse(lapse_url, api_key=ADMIN_KEY) as client:
        yield client


def test_a_session_lives_and_ends_with_its_summary(lapse: Lapse, lapse_url: str) -> None:
    rid = room()
    s = lapse.create_session("coding", id=rid, host="ana", title="Pairing")
    assert (s.id, s.status, s.host) == (rid, "pending", "ana")
    assert s.next_due is not None and s.next_due.rule == "expire-idle"
    joined = lapse.join(rid, "ben")
    assert joined["user"] == "ben"
    lapse.heartbeat(rid, "ben")
    lapse.activity(rid, "commits", user="ben", count=3)
    # The app's backend acting for its user: the key, and the user in `X-Actor`.
    with Lapse(lapse_url, api_key=ADMIN_KEY, actor="ana") as ana:
        assert ana.start(rid).status == "active"
        ended = ana.end(rid)
    assert ended.status == "completed"
    assert ended.summary is not None and ended.summary["counters"] == {"commits": 3}
    assert lapse.get_session(rid).ended_by == "ana"


def test_refusals_are_lapse_errors_with_their_code(lapse: Lapse) -> None:
    with pytest.raises(LapseError) as missing:
        lapse.get_session("no-such-room")
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    rid = room()
    lapse.create_session("coding", id=rid, host="ana")
    with pytest.raises(LapseError) as taken:
        lapse.create_session("coding", id=rid, host="ana")
    assert (taken.value.status, taken.value.code) == (409, "conflict")
    with pytest.raises(LapseError) as bad:
        lapse.create_session("no-such-kind", host="ana")
    assert bad.value.code == "validation_failed" and not bad.value.retryable


def test_a_retried_create_with_the_same_key_creates_once(lapse: Lapse) -> None:
    key = str(uuid.uuid4())
    first = lapse.create_session("coding", host="cy", idempotency_key=key)
    again = lapse.create_session("coding", host="cy", idempotency_key=key)
    assert again.id == first.id
    assert [s.id for s in lapse.list_sessions(host="cy").sessions] == [first.id]


def test_rules_apply_as_the_manual_clock_moves(lapse: Lapse) -> None:
    rid = room()
    lapse.create_session("coding", id=rid, host="dee")
    lapse.advance_clock("31m")
    s = lapse.get_session(rid)
    assert (s.status, s.ended_by) == ("expired", "rule:expire-idle")


def test_the_event_stream_resumes_after_the_last_seq_it_gave(lapse: Lapse, lapse_url: str) -> None:
    rid = room()
    lapse.create_session("coding", id=rid, host="eve")
    seen = []
    for event in lapse.stream_events(session=rid):
        seen.append(event)
        break
    assert seen[0].type == "session.created"
    # Written while no one listened; a stream from the stored cursor gets exactly those.
    lapse.join(rid, "fay")
    lapse.start(rid)
    resumed = []
    for event in Lapse(lapse_url, api_key=ADMIN_KEY).stream_events(session=rid, after=seen[0].seq):
        resumed.append(event)
        if event.type == "session.started":
            break
    # The host's join came with the create; then fay's, then the start: nothing repeated.
    assert [(e.type, e.data.get("user")) for e in resumed] == [
        ("participant.joined", "eve"),
        ("participant.joined", "fay"),
        ("session.started", None),
    ]
    assert all(e.seq > seen[0].seq for e in resumed)


def test_the_stream_follows_events_as_they_commit(lapse: Lapse, lapse_url: str) -> None:
    rid = room()
    lapse.create_session("coding", id=rid, host="gil")
    got: list[str] = []
    done = threading.Event()

    def follow() -> None:
        for event in Lapse(lapse_url, api_key=ADMIN_KEY).stream_events(session=rid, type=["session.started", "session.completed"]):
            got.append(event.type)
            if event.type == "session.completed":
                done.set()
                return

    threading.Thread(target=follow, daemon=True).start()
    lapse.start(rid)
    lapse.end(rid)
    assert done.wait(10), got
    assert got == ["session.started", "session.completed"]


def test_the_async_client_does_the_same(lapse_url: str) -> None:
    async def scenario() -> None:
        async with AsyncLapse(lapse_url, api_key=ADMIN_KEY) as lapse:
            rid = room()
            s = await lapse.create_session("coding", id=rid, host="hal")
            assert s.status == "pending"
            await lapse.join(rid, "ida")
            page = await lapse.session_events(rid)
            assert [e.type for e in page.events] == ["session.created", "participant.joined", "participant.joined"]
            async for event in lapse.stream_events(session=rid, after=page.events[0].seq):
                assert event.type == "participant.joined"
                break
            with pytest.raises(LapseError) as err:
                await lapse.get_session("nothing-here")
            assert err.value.code == "not_found"

    asyncio.run(scenario())


def test_webhooks_verify_with_the_endpoint_secret(lapse: Lapse, receiver) -> None:
    rid = room()
    lapse.create_session("coding", id=rid, host="jo")
    while True:
        headers, body = receiver.received.get(timeout=15)
        event = verify_webhook(headers, body, WEBHOOK_SECRET)
        if event.session_id == rid:
            break
    assert event.type == "session.created" and headers["webhook-id"] == event.id
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, body.replace(b"jo", b"mo"), WEBHOOK_SECRET)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, body, "whsec_" + "b3RoZXItc2VjcmV0LTEyMzQ1Njc4OTAxMjM0NTY=")


def test_new_rules_are_previewed_against_live_sessions_and_the_file_reloaded(lapse: Lapse) -> None:
    rid = room()
    lapse.create_session("coding", id=rid, host="pol")
    lapse.advance_clock("20m")
    ten_minutes = '[kinds.coding]\n[[kinds.coding.rules]]\nname = "expire-idle"\non = "idle"\nafter = "10m"\ndo = "expire"\n'
    preview = lapse.preview_policy(ten_minutes)
    change = next(c for c in preview["changes"] if c["rule"] == "expire-idle")
    assert change["change"] == "changed"
    assert rid in [f["session"] for f in change["fire_now"]]
    both = lapse.preview_policy(ten_minutes, session=rid)["explain"]
    assert (both["current"][0]["due"], both["new"][0]["due"]) == (False, True)

    with pytest.raises(LapseError) as refused:
        lapse.preview_policy('[kinds.coding]\n[[kinds.coding.rules]]\nname = "bad"\non = "idle"\nafter = "soon"\ndo = "expire"\n')
    assert refused.value.code == "invalid_config"
    assert (refused.value.problem["kind"], refused.value.problem["rule"]) == ("coding", "bad")

    # The server's file is unchanged: its rules are in force again and nothing fires.
    reloaded = lapse.reload_config()
    assert reloaded["reloaded"] is True and reloaded["rules_version"] > 1
    assert lapse.get_session(rid).status == "pending"
