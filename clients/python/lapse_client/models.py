"""Typed views of lapse's JSON (SPEC §1, §6). Each keeps the raw document in `raw`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional


def _time(value: Optional[str]) -> Optional[datetime]:
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Participant:
    user: str
    role: str
    state: str
    online: bool
    joined_at: Optional[datetime]
    left_at: Optional[datetime]
    last_seen_at: Optional[datetime]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Participant":
        return cls(
            user=d["user"],
            role=d["role"],
            state=d["state"],
            online=bool(d.get("online", False)),
            joined_at=_time(d.get("joined_at")),
            left_at=_time(d.get("left_at")),
            last_seen_at=_time(d.get("last_seen_at")),
        )


@dataclass
class NextDue:
    rule: str
    at: datetime


@dataclass
class Session:
    id: str
    kind: str
    title: str
    metadata: dict[str, Any]
    host: str
    parent: Optional[str]
    status: str
    delayed: bool
    used: bool
    created_at: datetime
    started_at: Optional[datetime]
    ended_at: Optional[datetime]
    last_activity_at: datetime
    scheduled_start: Optional[datetime]
    scheduled_end: Optional[datetime]
    end_reason: Optional[str]
    ended_by: Optional[str]
    counters: dict[str, int]
    participants: list[Participant]
    next_due: Optional[NextDue]
    summary: Optional[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def is_open(self) -> bool:
        return self.status in ("pending", "active")

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Session":
        due = d.get("next_due")
        return cls(
            id=d["id"],
            kind=d["kind"],
            title=d.get("title", ""),
            metadata=d.get("metadata") or {},
            host=d["host"],
            parent=d.get("parent"),
            status=d["status"],
            delayed=bool(d.get("delayed", False)),
            used=bool(d.get("used", False)),
            created_at=_time(d["created_at"]),  # type: ignore[arg-type]
            started_at=_time(d.get("started_at")),
            ended_at=_time(d.get("ended_at")),
            last_activity_at=_time(d["last_activity_at"]),  # type: ignore[arg-type]
            scheduled_start=_time(d.get("scheduled_start")),
            scheduled_end=_time(d.get("scheduled_end")),
            end_reason=d.get("end_reason"),
            ended_by=d.get("ended_by"),
            counters=d.get("counters") or {},
            participants=[Participant.from_json(p) for p in d.get("participants") or []],
            next_due=NextDue(due["rule"], _time(due["at"])) if due else None,  # type: ignore[arg-type]
            summary=d.get("summary"),
            raw=d,
        )


@dataclass
class Event:
    seq: int
    id: str
    type: str
    at: datetime
    applied_at: datetime
    session_id: str
    kind: str
    actor: str
    rule: Optional[str]
    data: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Event":
        return cls(
            seq=int(d["seq"]),
            id=d["id"],
            type=d["type"],
            at=_time(d["at"]),  # type: ignore[arg-type]
            applied_at=_time(d["applied_at"]),  # type: ignore[arg-type]
            session_id=d["session_id"],
            kind=d.get("kind", ""),
            actor=d.get("actor", ""),
            rule=d.get("rule"),
            data=d.get("data") or {},
            raw=d,
        )


@dataclass
class EventPage:
    events: list[Event]
    next_after: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EventPage":
        return cls([Event.from_json(e) for e in d["events"]], int(d["next_after"]))


@dataclass
class SessionPage:
    sessions: list[Session]
    next_cursor: Optional[str]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SessionPage":
        return cls([Session.from_json(s) for s in d["sessions"]], d.get("next_cursor"))
