//! `GET /openapi.json`: an OpenAPI 3.1 description of the whole API, written out here next
//! to the routes it describes (a test checks every route appears). Its schemas carry the
//! constraints the server enforces (id patterns and lengths, enums, limits, the configured
//! kinds), so that a client generated from it validates what the server validates.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use lapse_core::event::EventType;
use lapse_core::lifecycle::{MAX_ACTIVITY_COUNT, MAX_TITLE_CHARS};
use serde_json::{Value, json};

use super::AppState;

/// Every `code` a problem+json answer carries (SPEC §6).
pub const PROBLEM_CODES: [&str; 16] = [
    "unauthorized",
    "forbidden",
    "not_host",
    "not_self",
    "not_found",
    "validation_failed",
    "invalid_transition",
    "invite_expired",
    "session_full",
    "host_has_open_session",
    "rate_limited",
    "conflict",
    "invalid_config",
    "rollout_refused",
    "database_unavailable",
    "internal",
];

/// The schedule the document shows in its examples: an hour, the end after the start.
const SCHEDULE_EXAMPLE: (&str, &str) = ("2030-01-07T17:00:00Z", "2030-01-07T18:00:00Z");

fn problem() -> Value {
    json!({ "description": "A problem", "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } })
}

/// 429 and 503 say when to come back.
fn problem_retry() -> Value {
    let mut p = problem();
    p["headers"] = json!({ "Retry-After": { "description": "Seconds to wait", "schema": { "type": "integer", "minimum": 0 } } });
    p
}

fn ok(description: &str, schema: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn body(schema: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn schema_ref(schema: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{schema}") })
}

fn path(name: &str, schema: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "schema": schema_ref(schema) })
}

fn id() -> Value {
    path("id", "SessionId")
}

fn user() -> Value {
    path("user", "UserId")
}

fn query(name: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "schema": schema })
}

fn limit(max: u32) -> Value {
    query(
        "limit",
        json!({ "type": "integer", "minimum": 1, "maximum": max }),
    )
}

fn after() -> Value {
    query("after", json!({ "type": "integer", "minimum": 0 }))
}

fn op(
    summary: &str,
    params: Vec<Value>,
    request: Option<Value>,
    responses: Vec<(&str, Value)>,
) -> Value {
    let mut r = serde_json::Map::new();
    for (code, v) in responses {
        r.insert(code.to_string(), v);
    }
    for code in ["400", "401", "403", "404", "409", "410", "413", "422"] {
        r.entry(code.to_string()).or_insert_with(problem);
    }
    for code in ["429", "503"] {
        r.entry(code.to_string()).or_insert_with(problem_retry);
    }
    let mut o = json!({ "summary": summary, "parameters": params, "responses": r });
    if let Some(b) = request {
        o["requestBody"] = b;
    }
    o
}

fn empty(description: &str) -> Value {
    json!({ "description": description })
}

/// One of the configured kinds (any name while none is configured: every create then fails).
fn kind_schema(kinds: &[&str]) -> Value {
    if kinds.is_empty() {
        return json!({ "type": "string", "minLength": 1, "description": "A configured kind" });
    }
    json!({ "type": "string", "enum": kinds, "description": "A configured kind" })
}

/// A duration as the server reads one (humantime): numbers with units, such as `1h 30m`.
const DURATION: &str = "^[0-9]+ ?(nsec|ns|usec|us|msec|ms|seconds|second|sec|s|minutes|minute|min|m|hours|hour|hr|h|days|day|d|weeks|week|w|months|month|M|years|year|y)( ?[0-9]+ ?(nsec|ns|usec|us|msec|ms|seconds|second|sec|s|minutes|minute|min|m|hours|hour|hr|h|days|day|d|weeks|week|w|months|month|M|years|year|y))*$";

/// A comma-separated list of event types, as `?type=` takes it.
fn event_type_list() -> Value {
    let one = EventType::ALL
        .iter()
        .map(|t| t.as_str().replace('.', "\\."))
        .collect::<Vec<_>>()
        .join("|");
    json!({ "type": "string", "pattern": format!("^({one})(,({one}))*$") })
}

/// The document, for a server whose configured kinds are `kinds`.
pub fn document(kinds: &[&str]) -> Value {
    let session = || ok("The session", "Session");
    let action = |s: &str| json!({ "post": op(s, vec![id()], None, vec![("200", ok("The session", "Session"))]) });
    let time = || json!({ "type": "string", "format": "date-time" });
    let maybe_time = || json!({ "type": ["string", "null"], "format": "date-time" });
    // A schedule's two ends are examples together: an end must come after its start, which a
    // schema cannot say, so a generator that takes examples gets a pair the server accepts.
    let start_example = |mut schema: Value| {
        schema["examples"] = json!([SCHEDULE_EXAMPLE.0]);
        schema
    };
    let end_example = |mut schema: Value| {
        schema["examples"] = json!([SCHEDULE_EXAMPLE.1]);
        schema
    };
    let example_kind = kinds.first().copied().unwrap_or("study");
    let status = || json!({ "enum": ["pending", "active", "completed", "cancelled", "expired"] });
    let kind_filter = || query("kind", json!({ "type": "string", "minLength": 1 }));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "lapse",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The session lifecycle engine: sessions, time rules, events, webhooks."
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "apiKey": { "type": "apiKey", "in": "header", "name": "X-API-Key" }
            },
            "schemas": {
                "SessionId": { "type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$", "description": "Client-supplied, or generated (UUIDv7)" },
                "UserId": { "type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^\\s\\x00-\\x1f\\x7f-\\x9f]+$", "description": "1-128 characters, no whitespace or control characters" },
                "Kind": kind_schema(kinds),
                "Problem": { "type": "object", "required": ["type", "title", "status", "detail", "code"], "properties": {
                    "type": { "type": "string" }, "title": { "type": "string" }, "status": { "type": "integer" },
                    "detail": { "type": "string" },
                    "code": { "type": "string", "enum": PROBLEM_CODES }
                } },
                "Participant": { "type": "object", "required": ["user", "role", "state", "online", "joined_at", "left_at", "last_seen_at"], "properties": {
                    "user": schema_ref("UserId"), "role": { "enum": ["host", "member"] }, "state": { "enum": ["joined", "left"] },
                    "online": { "type": "boolean" }, "joined_at": time(),
                    "left_at": maybe_time(), "last_seen_at": time()
                } },
                "Summary": { "type": "object", "properties": {
                    "duration_seconds": { "type": "integer" }, "duration_minutes": { "type": "integer" }, "participants": { "type": "integer" },
                    "counters": { "type": "object", "additionalProperties": { "type": "integer" } },
                    "ended_by": { "type": "string" }, "end_reason": { "type": "string" }
                } },
                "Session": { "type": "object", "required": ["id", "kind", "title", "metadata", "host", "parent", "scheduled_start", "scheduled_end", "status", "delayed", "used", "created_at", "started_at", "ended_at", "last_activity_at", "end_reason", "ended_by", "counters", "participants", "next_due"], "properties": {
                    "id": schema_ref("SessionId"), "kind": { "type": "string" }, "title": { "type": "string" }, "metadata": { "type": "object" },
                    "host": schema_ref("UserId"), "parent": { "type": ["string", "null"] },
                    "scheduled_start": maybe_time(), "scheduled_end": maybe_time(),
                    "status": status(), "delayed": { "type": "boolean" }, "used": { "type": "boolean" },
                    "created_at": time(), "started_at": maybe_time(), "ended_at": maybe_time(),
                    "last_activity_at": time(), "end_reason": { "type": ["string", "null"] }, "ended_by": { "type": ["string", "null"] },
                    "counters": { "type": "object", "additionalProperties": { "type": "integer" } },
                    "participants": { "type": "array", "items": schema_ref("Participant") },
                    "next_due": { "type": ["object", "null"], "required": ["rule", "at"], "properties": { "rule": { "type": "string" }, "at": time() } },
                    "summary": { "oneOf": [schema_ref("Summary"), { "type": "null" }] }
                } },
                "NewSession": { "type": "object", "required": ["kind"], "additionalProperties": false, "properties": {
                    "id": schema_ref("SessionId"), "kind": schema_ref("Kind"), "title": { "type": "string", "maxLength": MAX_TITLE_CHARS },
                    "metadata": { "type": "object", "description": "At most 16 KiB as JSON" },
                    "host": { "$ref": "#/components/schemas/UserId", "description": "Required when the caller acts as the system (an admin or service key without X-Actor); otherwise it defaults to, and for anyone but an admin must be, the acting user" },
                    "parent": { "$ref": "#/components/schemas/SessionId", "description": "An existing session (404 if there is none) of the kind's parent_kind, if it has one (409 if not)" },
                    "scheduled_start": start_example(time()), "scheduled_end": end_example(json!({ "type": "string", "format": "date-time", "description": "After scheduled_start" }))
                }, "examples": [{ "kind": example_kind, "title": "Algebra review", "host": "alice" }] },
                "SessionPatch": { "type": "object", "additionalProperties": false, "properties": {
                    "title": { "type": "string", "maxLength": MAX_TITLE_CHARS }, "metadata": { "type": "object", "description": "At most 16 KiB as JSON" },
                    "scheduled_start": start_example(maybe_time()), "scheduled_end": end_example(json!({ "type": ["string", "null"], "format": "date-time", "description": "After scheduled_start" }))
                }, "examples": [{ "title": "Algebra review, part 2", "scheduled_start": SCHEDULE_EXAMPLE.0, "scheduled_end": SCHEDULE_EXAMPLE.1 }] },
                "SessionList": { "type": "object", "required": ["sessions", "next_cursor"], "properties": { "sessions": { "type": "array", "items": schema_ref("Session") }, "next_cursor": { "type": ["string", "null"] } } },
                "Ended": { "type": "object", "required": ["success", "session", "summary"], "properties": { "success": { "type": "boolean" }, "session": schema_ref("Session"), "summary": schema_ref("Summary") } },
                "Join": { "type": "object", "required": ["user"], "additionalProperties": false, "properties": { "user": schema_ref("UserId"), "role": { "enum": ["host", "member"], "description": "Taken from the session: its host joins as host, anyone else as member; asking for host as anyone else is a 409 conflict" }, "via": { "enum": ["invite", "direct", "link"] } },
                    "examples": [{ "user": "bob" }] },
                "Beat": { "type": "object", "required": ["user"], "additionalProperties": false, "properties": { "user": schema_ref("UserId") } },
                "Beats": { "type": "object", "required": ["beats"], "additionalProperties": false, "properties": { "beats": { "type": "array", "maxItems": 1000, "items": { "type": "object", "required": ["session", "user"], "additionalProperties": false, "properties": { "session": schema_ref("SessionId"), "user": schema_ref("UserId") } } } } },
                "BeatResult": { "type": "object", "required": ["accepted", "rejected"], "properties": { "accepted": { "type": "integer" }, "rejected": { "type": "array", "items": { "type": "object", "required": ["index", "session", "user", "code", "detail"], "properties": {
                    "index": { "type": "integer" }, "session": { "type": "string" }, "user": { "type": "string" }, "code": { "type": "string", "enum": PROBLEM_CODES }, "detail": { "type": "string" } } } } } },
                "Activity": { "type": "object", "required": ["type"], "additionalProperties": false, "properties": {
                    "user": schema_ref("UserId"), "type": { "type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$" },
                    "count": { "type": "integer", "minimum": -MAX_ACTIVITY_COUNT, "maximum": MAX_ACTIVITY_COUNT } } },
                "Explanation": { "type": "object", "properties": { "session": schema_ref("Session"), "now": time(), "rules": { "type": "array", "items": { "type": "object", "properties": {
                    "rule": { "type": "string" }, "on": { "type": "string" }, "do": { "type": "string" }, "applies": { "type": "boolean" }, "deadline": maybe_time(), "due": { "type": "boolean" }, "why": { "type": "string" } } } } } },
                "Event": { "type": "object", "required": ["seq", "id", "type", "at", "applied_at", "session_id", "kind", "actor", "data"], "properties": {
                    "seq": { "type": "integer" }, "id": { "type": "string" }, "type": { "type": "string" }, "at": time(), "applied_at": time(),
                    "session_id": schema_ref("SessionId"), "kind": { "type": "string" }, "actor": { "type": "string" }, "rule": { "type": ["string", "null"] }, "data": { "type": "object" } } },
                "EventPage": { "type": "object", "required": ["events", "next_after"], "properties": { "events": { "type": "array", "items": schema_ref("Event") }, "next_after": { "type": "integer" } } },
                "Notification": { "type": "object", "properties": {
                    "id": { "type": "string" }, "user": { "type": "string" }, "type": { "type": "string" }, "title": { "type": "string" }, "message": { "type": "string" },
                    "session": { "type": "string" }, "link": { "type": ["string", "null"] }, "created_at": time(), "read_at": maybe_time() } },
                "Inbox": { "type": "object", "required": ["notifications"], "properties": { "notifications": { "type": "array", "items": schema_ref("Notification") } } },
                "SweepReport": { "type": "object", "properties": {
                    "dry_run": { "type": "boolean" }, "now": time(),
                    "applied": { "type": "array", "items": { "type": "object", "properties": { "session": { "type": "string" }, "kind": { "type": "string" }, "rule": { "type": "string" }, "action": { "type": "string" }, "from": { "type": "string" }, "to": { "type": "string" }, "due_at": time() } } },
                    "counts": { "type": "object", "additionalProperties": { "type": "integer" } }, "errors": { "type": "array" }, "duration_ms": { "type": "integer" } } },
                "Delivery": { "type": "object", "properties": {
                    "id": { "type": "string" }, "endpoint": { "type": "string" }, "event_seq": { "type": "integer" }, "event_id": { "type": "string" }, "event_type": { "type": "string" },
                    "status": { "enum": ["pending", "delivered", "dead"] }, "attempts": { "type": "integer" }, "next_attempt_at": maybe_time(),
                    "last_attempt_at": maybe_time(), "last_status": { "type": ["integer", "null"] }, "last_error": { "type": ["string", "null"] }, "created_at": time() } },
                "Endpoints": { "type": "object", "required": ["endpoints"], "properties": { "endpoints": { "type": "array", "items": { "type": "object", "required": ["url", "events", "kinds", "state", "disabled_at", "reason"], "properties": {
                    "url": { "type": "string" }, "events": { "type": "array", "items": { "type": "string" } }, "kinds": { "type": ["array", "null"], "items": { "type": "string" } },
                    "state": { "enum": ["active", "disabled"] }, "disabled_at": maybe_time(), "reason": { "type": ["string", "null"] } } } } } },
                "Deliveries": { "type": "object", "required": ["deliveries"], "properties": { "deliveries": { "type": "array", "items": schema_ref("Delivery") } } },
                "Clock": { "type": "object", "required": ["now"], "properties": { "now": time() } },
                "ClockMove": { "type": "object", "additionalProperties": false, "minProperties": 1, "maxProperties": 1, "properties": {
                    "advance": { "type": "string", "pattern": DURATION, "description": "A duration such as 90s, 15m, 1h 30m, 2days" },
                    "set": time() } },
                "PolicyCandidate": { "type": "object", "additionalProperties": false, "required": ["config"], "properties": {
                    "config": { "type": "string", "maxLength": 60000, "description": "TOML: a whole configuration file, or only its [kinds.*] tables", "example": "[kinds.coding]\n[[kinds.coding.rules]]\nname = \"expire-inactive\"\non = \"idle\"\nafter = \"3d\"\ndo = \"expire\"\n" },
                    "at": time() } },
                "Due": { "type": "object", "required": ["rule", "at"], "properties": { "rule": { "type": "string" }, "at": time() } },
                "Explained": { "type": "array", "items": { "type": "object", "properties": {
                    "rule": { "type": "string" }, "on": { "type": "string" }, "do": { "type": "string" }, "applies": { "type": "boolean" },
                    "deadline": maybe_time(), "due": { "type": "boolean" }, "why": { "type": "string" } } } },
                "Preview": { "type": "object", "required": ["now", "fire_now_total", "changes"], "properties": {
                    "now": time(), "fire_now_total": { "type": "integer", "minimum": 0 },
                    "changes": { "type": "array", "items": { "type": "object", "required": ["kind", "rule", "change", "sessions", "fire_now"], "properties": {
                        "kind": { "type": "string" }, "rule": { "type": "string" }, "change": { "enum": ["added", "removed", "changed", "unchanged"] },
                        "sessions": { "type": "object", "required": ["earlier", "later", "unchanged", "fire_now"], "properties": {
                            "earlier": { "type": "integer" }, "later": { "type": "integer" }, "unchanged": { "type": "integer" }, "fire_now": { "type": "integer" } } },
                        "fire_now": { "type": "array", "maxItems": 100, "items": { "type": "object", "required": ["session", "current", "new"], "properties": {
                            "session": schema_ref("SessionId"), "current": { "oneOf": [schema_ref("Due"), { "type": "null" }] }, "new": schema_ref("Due") } } } } } },
                    "explain": { "type": "object", "required": ["current", "new"], "properties": { "current": schema_ref("Explained"), "new": schema_ref("Explained") } } } },
                "Reloaded": { "type": "object", "required": ["reloaded", "rules_version", "diff"], "properties": {
                    "reloaded": { "type": "boolean" }, "rules_version": { "type": "integer", "minimum": 1 },
                    "diff": { "type": "object", "description": "Per touched kind: the rules added, removed and changed (before and after)" },
                    "rearmed": { "type": "integer" }, "fire_now_total": { "type": "integer" } } },
                "Object": { "type": "object" }
            }
        },
        "security": [{ "bearer": [] }, { "apiKey": [] }],
        "paths": {
            "/v1/sessions": {
                "post": op("Create a session", vec![], Some(body("NewSession")), vec![("201", ok("Created", "Session"))]),
                "get": op("List sessions", vec![kind_filter(), query("status", status()), query("host", schema_ref("UserId")), query("participant", schema_ref("UserId")), limit(500), query("cursor", schema_ref("SessionId")), query("due_before", json!({ "type": "string", "format": "date-time", "description": "Only sessions with a rule due at or before this instant, earliest first, in one page of at most `limit` (admin, or a service acting as the system; no cursor)" }))], None, vec![("200", ok("A page", "SessionList"))])
            },
            "/v1/sessions/{id}": {
                "get": op("Read a session (its due rules apply first)", vec![id()], None, vec![("200", session())]),
                "patch": op("Update an open session (host)", vec![id()], Some(body("SessionPatch")), vec![("200", session())]),
                "delete": op("Delete a session (admin)", vec![id()], None, vec![("204", empty("Deleted"))])
            },
            "/v1/sessions/{id}/start": action("Start (host)"),
            "/v1/sessions/{id}/end": { "post": op("End (host): completes with a summary", vec![id()], None, vec![("200", ok("Ended", "Ended"))]) },
            "/v1/sessions/{id}/cancel": action("Cancel (host)"),
            "/v1/sessions/{id}/reopen": action("Reopen within the kind's window (host)"),
            "/v1/sessions/{id}/participants": { "post": op("Join", vec![id()], Some(body("Join")), vec![("201", ok("Joined", "Participant"))]) },
            "/v1/sessions/{id}/participants/{user}": { "delete": op("Leave", vec![id(), user()], None, vec![("204", empty("Left"))]) },
            "/v1/sessions/{id}/heartbeat": { "post": op("Heartbeat", vec![id()], Some(body("Beat")), vec![("204", empty("Accepted"))]) },
            "/v1/heartbeats": { "post": op("Heartbeats in a batch", vec![], Some(body("Beats")), vec![("200", ok("Per beat", "BeatResult"))]) },
            "/v1/sessions/{id}/activity": { "post": op("Count activity", vec![id()], Some(body("Activity")), vec![("204", empty("Counted"))]) },
            "/v1/sessions/{id}/summary": { "get": op("The summary (404 until ended)", vec![id()], None, vec![("200", ok("Summary", "Summary"))]) },
            "/v1/sessions/{id}/explain": { "get": op("Why each rule does or does not apply", vec![id()], None, vec![("200", ok("Explanation", "Explanation"))]) },
            "/v1/sessions/{id}/events": { "get": op("The session's timeline", vec![id(), after(), limit(1000)], None, vec![("200", ok("Events", "EventPage"))]) },
            "/v1/sessions/{id}/export": { "get": op("The session as a document", vec![id(), query("format", json!({ "enum": ["json", "markdown", "md", "csv"] }))], None, vec![("200", empty("JSON, Markdown or CSV"))]) },
            "/v1/events": { "get": op("Events (JSON page, or a stream with Accept: text/event-stream)", vec![after(), limit(1000), kind_filter(), query("type", event_type_list()), query("session", schema_ref("SessionId"))], None, vec![("200", ok("A page", "EventPage"))]) },
            "/v1/users/{user}/notifications": { "get": op("A user's inbox", vec![user(), query("unread", json!({ "type": "boolean" }))], None, vec![("200", ok("Inbox", "Inbox"))]) },
            "/v1/users/{user}/notifications/{nid}/read": { "post": op("Mark read", vec![user(), json!({ "name": "nid", "in": "path", "required": true, "schema": { "type": "string", "minLength": 1 } })], None, vec![("200", ok("Notification", "Notification"))]) },
            "/v1/sweep": {
                "post": op("Apply due rules now", vec![query("dry_run", json!({ "type": "boolean" })), query("kind", schema_ref("Kind")), query("until", json!({ "type": "string", "format": "date-time", "description": "Only sessions due at or before this instant (a preview's `now`)" }))], None, vec![("200", ok("Report", "SweepReport"))]),
                "get": op("Apply due rules now (for cron callers)", vec![query("dry_run", json!({ "type": "boolean" })), query("kind", schema_ref("Kind")), query("until", json!({ "type": "string", "format": "date-time", "description": "Only sessions due at or before this instant (a preview's `now`)" }))], None, vec![("200", ok("Report", "SweepReport"))])
            },
            "/v1/kinds": { "get": op("Configured kinds and rules", vec![], None, vec![("200", ok("Kinds", "Object"))]) },
            "/v1/stats": { "get": op("Totals and sweeper figures", vec![], None, vec![("200", ok("Stats", "Object"))]) },
            "/v1/health": { "get": op("Health report", vec![], None, vec![("200", ok("Report", "Object")), ("503", ok("Unhealthy", "Object"))]) },
            "/v1/webhooks/endpoints": { "get": op("Configured webhook endpoints and whether lapse delivers to them", vec![], None, vec![("200", ok("Endpoints", "Endpoints"))]) },
            "/v1/webhooks/deliveries": { "get": op("Webhook delivery log", vec![query("status", json!({ "enum": ["pending", "delivered", "dead"] })), limit(1000)], None, vec![("200", ok("Deliveries", "Deliveries"))]) },
            "/v1/webhooks/deliveries/{id}/retry": { "post": op("Send a delivery again", vec![path("id", "SessionId")], None, vec![("200", ok("Delivery", "Delivery"))]) },
            "/v1/admin/clock": {
                "get": op("The clock (admin)", vec![], None, vec![("200", ok("Now", "Clock"))]),
                "post": op("Move the manual clock (admin)", vec![], Some(body("ClockMove")), vec![("200", ok("Now", "Clock"))])
            },
            "/v1/policy/preview": {
                "post": op("Preview a rules change against live sessions (admin); changes nothing", vec![query("session", schema_ref("SessionId"))], Some(body("PolicyCandidate")), vec![("200", ok("What the candidate would do", "Preview"))])
            },
            "/v1/admin/config/reload": {
                "post": op("Read the configuration file again and put its rules in force (admin)", vec![query("force", json!({ "type": "boolean", "description": "Apply even past [rollout] max_immediate" }))], None, vec![("200", ok("Rules in force", "Reloaded"))])
            },
            "/livez": { "get": { "summary": "Liveness", "security": [], "responses": { "200": empty("Alive") } } },
            "/readyz": { "get": { "summary": "Readiness (database reachable)", "security": [], "responses": { "200": empty("Ready"), "503": problem_retry() } } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "security": [], "responses": { "200": empty("Text exposition") } } },
            "/openapi.json": { "get": { "summary": "This document", "security": [], "responses": { "200": empty("OpenAPI 3.1") } } },
            "/admin": { "get": { "summary": "Admin page (its data calls need a key)", "security": [], "responses": { "200": empty("HTML") } } }
        }
    })
}

/// The handler: the document for this server's kinds.
pub async fn serve(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    let config = app.engine.config();
    let kinds: Vec<&str> = config.kinds.keys().map(String::as_str).collect();
    Json(document(&kinds))
}
