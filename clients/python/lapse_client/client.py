"""Clients for lapse's HTTP API (SPEC §6): `Lapse` (blocking) and `AsyncLapse` (asyncio),
both on httpx, with the same methods. Each method builds a `_Call`; the two clients differ
only in how they send it.

POSTs carry an `Idempotency-Key` (a new one per call unless given), so a POST retried after a
lost answer, a 429 or a 503 acts once. Retries honour `Retry-After`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, Optional, Union

import httpx

from .errors import LapseError
from .models import Event, EventPage, Session, SessionPage

Types = Union[str, Iterable[str], None]

#: Longest wait between retries, whatever `Retry-After` says.
MAX_RETRY_WAIT = 5.0
#: An idle stream gets a keep-alive comment every 15 s; past this, the connection is dead.
STREAM_READ_TIMEOUT = 45.0


@dataclass
class _Call:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    body: Optional[Any] = None
    parse: Callable[[Any], Any] = lambda d: d
    idempotency_key: Optional[str] = None

    def retryable(self) -> bool:
        return self.method in ("GET", "DELETE") or self.idempotency_key is not None


def _params(**kw: Any) -> dict[str, Any]:
    out = {}
    for k, v in kw.items():
        if v is None:
            continue
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif k == "type" and not isinstance(v, str):
            v = ",".join(v)
        out[k] = v
    return out


def _error(response: httpx.Response) -> LapseError:
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    retry_after = response.headers.get("retry-after")
    return LapseError(
        status=response.status_code,
        code=str(problem.get("code", "internal" if response.status_code >= 500 else "unknown")),
        detail=str(problem.get("detail", response.text[:200])),
        retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
        problem=problem,
    )


def _wait(error: Optional[LapseError], attempt: int) -> float:
    if error is not None and error.retry_after is not None:
        return min(error.retry_after, MAX_RETRY_WAIT)
    return min(0.2 * 2**attempt, MAX_RETRY_WAIT)


class _Sse:
    """Server-sent events, fed a line at a time: an event when a blank line ends one."""

    def __init__(self) -> None:
        self.data: list[str] = []

    def feed(self, line: str) -> Optional[Event]:
        if line.startswith("data:"):
            self.data.append(line[5:].lstrip(" "))
        elif line == "" and self.data:
            event = Event.from_json(json.loads("\n".join(self.data)))
            self.data = []
            return event
        # `id:` repeats the event's seq; `:` lines keep the connection alive.
        return None


def _answer(call: _Call, response: httpx.Response) -> Any:
    """The parsed answer; raises a refusal that waiting will not change."""
    if response.status_code < 400:
        return call.parse(response.json()) if response.content else None
    error = _error(response)
    if not error.retryable:
        raise error
    return error


def _stream_request(last: Optional[int], **filters: Any) -> dict[str, Any]:
    """The arguments of a `GET /v1/events` stream resuming after `last`."""
    headers = {"Accept": "text/event-stream"}
    if last is not None:
        headers["Last-Event-ID"] = str(last)
    return dict(
        params=_params(**filters),
        headers=headers,
        timeout=httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT),
    )


class _Api:
    """Every route of SPEC §6 as a method. `_run` sends (and, for `AsyncLapse`, awaits)."""

    retries: int

    def _run(self, call: _Call) -> Any:  # pragma: no cover - defined by each client
        raise NotImplementedError

    def _give_up(self, call: _Call, attempt: int) -> bool:
        return attempt >= self.retries or not call.retryable()

    # Sessions
    def create_session(
        self,
        kind: str,
        *,
        id: Optional[str] = None,
        host: Optional[str] = None,
        title: Optional[str] = None,
        metadata: Optional[dict[str, Any]] = None,
        parent: Optional[str] = None,
        scheduled_start: Optional[str] = None,
        scheduled_end: Optional[str] = None,
        idempotency_key: Optional[str] = None,
    ) -> Any:
        body = {
            k: v
            for k, v in dict(
                kind=kind,
                id=id,
                host=host,
                title=title,
                metadata=metadata,
                parent=parent,
                scheduled_start=scheduled_start,
                scheduled_end=scheduled_end,
            ).items()
            if v is not None
        }
        return self._run(
            _Call("POST", "/v1/sessions", body=body, parse=Session.from_json, idempotency_key=idempotency_key or str(uuid.uuid4()))
        )

    def get_session(self, id: str) -> Any:
        return self._run(_Call("GET", f"/v1/sessions/{id}", parse=Session.from_json))

    def list_sessions(
        self,
        *,
        kind: Optional[str] = None,
        status: Optional[str] = None,
        host: Optional[str] = None,
        participant: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> Any:
        params = _params(kind=kind, status=status, host=host, participant=participant, limit=limit, cursor=cursor)
        return self._run(_Call("GET", "/v1/sessions", params=params, parse=SessionPage.from_json))

    def update_session(self, id: str, **changes: Any) -> Any:
        """`title`, `metadata`, `scheduled_start`, `scheduled_end` (None clears a schedule)."""
        return self._run(_Call("PATCH", f"/v1/sessions/{id}", body=changes, parse=Session.from_json))

    def delete_session(self, id: str) -> Any:
        return self._run(_Call("DELETE", f"/v1/sessions/{id}"))

    def _action(self, id: str, action: str, parse: Callable[[Any], Any] = Session.from_json) -> Any:
        return self._run(_Call("POST", f"/v1/sessions/{id}/{action}", parse=parse, idempotency_key=str(uuid.uuid4())))

    def start(self, id: str) -> Any:
        return self._action(id, "start")

    def end(self, id: str) -> Any:
        """Completes the session; returns it with its summary (`session.summary`)."""
        return self._action(id, "end", parse=lambda d: Session.from_json(d["session"]))

    def cancel(self, id: str) -> Any:
        return self._action(id, "cancel")

    def reopen(self, id: str) -> Any:
        return self._action(id, "reopen")

    def summary(self, id: str) -> Any:
        return self._run(_Call("GET", f"/v1/sessions/{id}/summary"))

    def explain(self, id: str) -> Any:
        return self._run(_Call("GET", f"/v1/sessions/{id}/explain"))

    # Participants and presence
    def join(self, id: str, user: str, *, role: Optional[str] = None, via: Optional[str] = None) -> Any:
        body = {k: v for k, v in dict(user=user, role=role, via=via).items() if v is not None}
        return self._run(_Call("POST", f"/v1/sessions/{id}/participants", body=body, idempotency_key=str(uuid.uuid4())))

    def leave(self, id: str, user: str) -> Any:
        return self._run(_Call("DELETE", f"/v1/sessions/{id}/participants/{user}"))

    def heartbeat(self, id: str, user: str) -> Any:
        return self._run(_Call("POST", f"/v1/sessions/{id}/heartbeat", body={"user": user}, idempotency_key=str(uuid.uuid4())))

    def heartbeats(self, beats: Iterable[tuple[str, str]]) -> Any:
        """Many `(session, user)` beats in one request; returns `{"accepted", "rejected"}`."""
        body = {"beats": [{"session": s, "user": u} for s, u in beats]}
        return self._run(_Call("POST", "/v1/heartbeats", body=body, idempotency_key=str(uuid.uuid4())))

    def activity(self, id: str, type: str, *, user: Optional[str] = None, count: int = 1) -> Any:
        body = {k: v for k, v in dict(type=type, user=user, count=count).items() if v is not None}
        return self._run(_Call("POST", f"/v1/sessions/{id}/activity", body=body, idempotency_key=str(uuid.uuid4())))

    # Events
    def events(
        self,
        *,
        after: Optional[int] = None,
        limit: Optional[int] = None,
        kind: Optional[str] = None,
        type: Types = None,
        session: Optional[str] = None,
    ) -> Any:
        """One page of events after `after`; call again with `page.next_after`."""
        params = _params(after=after, limit=limit, kind=kind, type=type, session=session)
        return self._run(_Call("GET", "/v1/events", params=params, parse=EventPage.from_json))

    def session_events(self, id: str, *, after: Optional[int] = None, limit: Optional[int] = None) -> Any:
        params = _params(after=after, limit=limit)
        return self._run(_Call("GET", f"/v1/sessions/{id}/events", params=params, parse=EventPage.from_json))

    # Operations
    def sweep(self, *, dry_run: bool = False, kind: Optional[str] = None) -> Any:
        return self._run(_Call("POST", "/v1/sweep", params=_params(dry_run=dry_run, kind=kind), idempotency_key=str(uuid.uuid4())))

    def health(self) -> Any:
        return self._run(_Call("GET", "/v1/health"))

    def stats(self) -> Any:
        return self._run(_Call("GET", "/v1/stats"))

    def kinds(self) -> Any:
        return self._run(_Call("GET", "/v1/kinds"))

    def preview_policy(self, config: str, *, at: Optional[str] = None, session: Optional[str] = None) -> Any:
        """What new rules (TOML: a whole configuration file, or only its `[kinds.*]` tables) would
        do to the live sessions: whose deadline moves, which fire at once (admin). Changes
        nothing; an invalid candidate raises `LapseError` with code `invalid_config`, its
        `problem` naming the `kind` and `rule`."""
        body: dict[str, Any] = {"config": config}
        if at is not None:
            body["at"] = at
        return self._run(_Call("POST", "/v1/policy/preview", params=_params(session=session), body=body, idempotency_key=str(uuid.uuid4())))

    def reload_config(self, *, force: bool = False) -> Any:
        """Has lapse read its configuration file again and put its rules in force (admin);
        refused with code `rollout_refused` past `[rollout] max_immediate` unless `force`."""
        return self._run(_Call("POST", "/v1/admin/config/reload", params=_params(force=force or None), idempotency_key=str(uuid.uuid4())))

    def advance_clock(self, by: str) -> Any:
        """Moves a manual clock (`LAPSE_CLOCK=manual`) forward by a duration such as `"30m"`."""
        return self._run(_Call("POST", "/v1/admin/clock", body={"advance": by}, parse=lambda d: d["now"], idempotency_key=str(uuid.uuid4())))


def _headers(api_key: Optional[str], token: Optional[str], actor: Optional[str]) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if api_key:
        headers["X-API-Key"] = api_key
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if actor:
        headers["X-Actor"] = actor
    return headers


class Lapse(_Api):
    """The blocking client.

    `api_key` (a service or admin key, sent as `X-API-Key`) or `token` (a user's JWT), and
    optionally `actor`, the user a service key acts for. `retries` bounds the retries of a
    request that lapse refused for now (429, 503) or whose answer was lost.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: Optional[str] = None,
        token: Optional[str] = None,
        actor: Optional[str] = None,
        retries: int = 2,
        timeout: float = 10.0,
        http: Optional[httpx.Client] = None,
    ) -> None:
        self.retries = retries
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self._http.headers.update(_headers(api_key, token, actor))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Lapse":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _run(self, call: _Call) -> Any:
        headers = {"Idempotency-Key": call.idempotency_key} if call.idempotency_key else {}
        attempt = 0
        while True:
            try:
                r = self._http.request(call.method, call.path, params=call.params, json=call.body, headers=headers)
                answer = _answer(call, r)
                if not isinstance(answer, LapseError):
                    return answer
                if self._give_up(call, attempt):
                    raise answer
                time.sleep(_wait(answer, attempt))
            except httpx.TransportError:
                if self._give_up(call, attempt):
                    raise
                time.sleep(_wait(None, attempt))
            attempt += 1

    def stream_events(
        self,
        *,
        after: Optional[int] = None,
        kind: Optional[str] = None,
        type: Types = None,
        session: Optional[str] = None,
        reconnect: bool = True,
    ) -> Iterator[Event]:
        """Follows the event stream, resuming from the last `seq` seen after a drop.

        Start from a stored cursor with `after` (each event's `seq` is one); with `reconnect`
        (the default) a dropped or ended connection is opened again from there, so no event is
        lost or repeated.
        """
        last = after
        attempt = 0
        while True:
            request = _stream_request(last, kind=kind, type=type, session=session)
            try:
                with self._http.stream("GET", "/v1/events", **request) as r:
                    if r.status_code >= 400:
                        r.read()
                        error = _error(r)
                        if not (error.retryable and reconnect):
                            raise error
                    else:
                        attempt = 0
                        sse = _Sse()
                        for line in r.iter_lines():
                            event = sse.feed(line)
                            if event is not None:
                                last = event.seq
                                yield event
            except httpx.TransportError:
                if not reconnect:
                    raise
            if not reconnect:
                return
            time.sleep(_wait(None, attempt))
            attempt += 1


class AsyncLapse(_Api):
    """The asyncio client: the same methods as `Lapse`, each awaited."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: Optional[str] = None,
        token: Optional[str] = None,
        actor: Optional[str] = None,
        retries: int = 2,
        timeout: float = 10.0,
        http: Optional[httpx.AsyncClient] = None,
    ) -> None:
        self.retries = retries
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._http.headers.update(_headers(api_key, token, actor))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncLapse":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _run(self, call: _Call) -> Any:  # type: ignore[override]
        headers = {"Idempotency-Key": call.idempotency_key} if call.idempotency_key else {}
        attempt = 0
        while True:
            try:
                r = await self._http.request(call.method, call.path, params=call.params, json=call.body, headers=headers)
                answer = _answer(call, r)
                if not isinstance(answer, LapseError):
                    return answer
                if self._give_up(call, attempt):
                    raise answer
                await asyncio.sleep(_wait(answer, attempt))
            except httpx.TransportError:
                if self._give_up(call, attempt):
                    raise
                await asyncio.sleep(_wait(None, attempt))
            attempt += 1

    async def stream_events(
        self,
        *,
        after: Optional[int] = None,
        kind: Optional[str] = None,
        type: Types = None,
        session: Optional[str] = None,
        reconnect: bool = True,
    ) -> AsyncIterator[Event]:
        """As `Lapse.stream_events`, for `async for`."""
        last = after
        attempt = 0
        while True:
            request = _stream_request(last, kind=kind, type=type, session=session)
            try:
                async with self._http.stream("GET", "/v1/events", **request) as r:
                    if r.status_code >= 400:
                        await r.aread()
                        error = _error(r)
                        if not (error.retryable and reconnect):
                            raise error
                    else:
                        attempt = 0
                        sse = _Sse()
                        async for line in r.aiter_lines():
                            event = sse.feed(line)
                            if event is not None:
                                last = event.seq
                                yield event
            except httpx.TransportError:
                if not reconnect:
                    raise
            if not reconnect:
                return
            await asyncio.sleep(_wait(None, attempt))
            attempt += 1
