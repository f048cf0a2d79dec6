//! `GET /openapi.json`: an OpenAPI 3.1 description of the whole API, written out here next
//! to the routes it describes (a test checks every route appears).

use axum::Json;
use axum::response::IntoResponse;
use serde_json::{Value, json};

fn problem() -> Value {
    json!({ "description": "A problem", "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } })
}

fn ok(description: &str, schema: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn body(schema: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn id() -> Value {
    json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$" } })
}

fn query(name: &str, kind: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false, "schema": { "type": kind } })
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
    for code in [
        "400", "401", "403", "404", "409", "410", "413", "422", "429",
    ] {
        r.entry(code.to_string()).or_insert_with(problem);
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

/// The document.
pub fn document() -> Value {
    let session = || ok("The session", "Session");
    let action = |s: &str| json!({ "post": op(s, vec![id()], None, vec![("200", ok("The session", "Session"))]) });
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
                "Problem": { "type": "object", "required": ["type", "title", "status", "detail", "code"], "properties": {
                    "type": { "type": "string" }, "title": { "type": "string" }, "status": { "type": "integer" },
                    "detail": { "type": "string" },
                    "code": { "type": "string", "enum": ["unauthorized", "forbidden", "not_host", "not_self", "not_found", "validation_failed", "invalid_transition", "invite_expired", "session_full", "host_has_open_session", "rate_limited", "conflict", "internal"] }
                } },
                "Participant": { "type": "object", "properties": {
                    "user": { "type": "string" }, "role": { "enum": ["host", "member"] }, "state": { "enum": ["joined", "left"] },
                    "online": { "type": "boolean" }, "joined_at": { "type": "string", "format": "date-time" },
                    "left_at": { "type": ["string", "null"], "format": "date-time" }, "last_seen_at": { "type": "string", "format": "date-time" }
                } },
                "Summary": { "type": "object", "properties": {
                    "duration_seconds": { "type": "integer" }, "duration_minutes": { "type": "integer" }, "participants": { "type": "integer" },
                    "counters": { "type": "object", "additionalProperties": { "type": "integer" } },
                    "ended_by": { "type": "string" }, "end_reason": { "type": "string" }
                } },
                "Session": { "type": "object", "properties": {
                    "id": { "type": "string" }, "kind": { "type": "string" }, "title": { "type": "string" }, "metadata": { "type": "object" },
                    "host": { "type": "string" }, "parent": { "type": ["string", "null"] },
                    "scheduled_start": { "type": ["string", "null"], "format": "date-time" }, "scheduled_end": { "type": ["string", "null"], "format": "date-time" },
                    "status": { "enum": ["pending", "active", "completed", "cancelled", "expired"] }, "delayed": { "type": "boolean" }, "used": { "type": "boolean" },
                    "created_at": { "type": "string", "format": "date-time" }, "started_at": { "type": ["string", "null"] }, "ended_at": { "type": ["string", "null"] },
                    "last_activity_at": { "type": "string", "format": "date-time" }, "end_reason": { "type": ["string", "null"] }, "ended_by": { "type": ["string", "null"] },
                    "counters": { "type": "object", "additionalProperties": { "type": "integer" } },
                    "participants": { "type": "array", "items": { "$ref": "#/components/schemas/Participant" } },
                    "next_due": { "type": ["object", "null"], "properties": { "rule": { "type": "string" }, "at": { "type": "string" } } },
                    "summary": { "oneOf": [{ "$ref": "#/components/schemas/Summary" }, { "type": "null" }] }
                } },
                "NewSession": { "type": "object", "required": ["kind"], "additionalProperties": false, "properties": {
                    "id": { "type": "string" }, "kind": { "type": "string" }, "title": { "type": "string" }, "metadata": { "type": "object" },
                    "host": { "type": "string" }, "parent": { "type": "string" },
                    "scheduled_start": { "type": "string", "format": "date-time" }, "scheduled_end": { "type": "string", "format": "date-time" }
                } },
                "SessionPatch": { "type": "object", "additionalProperties": false, "properties": {
                    "title": { "type": "string" }, "metadata": { "type": "object" },
                    "scheduled_start": { "type": ["string", "null"], "format": "date-time" }, "scheduled_end": { "type": ["string", "null"], "format": "date-time" }
                } },
                "SessionList": { "type": "object", "properties": { "sessions": { "type": "array", "items": { "$ref": "#/components/schemas/Session" } }, "next_cursor": { "type": ["string", "null"] } } },
                "Ended": { "type": "object", "properties": { "success": { "type": "boolean" }, "session": { "$ref": "#/components/schemas/Session" }, "summary": { "$ref": "#/components/schemas/Summary" } } },
                "Join": { "type": "object", "required": ["user"], "additionalProperties": false, "properties": { "user": { "type": "string" }, "role": { "enum": ["host", "member"] }, "via": { "enum": ["invite", "direct"] } } },
                "Beat": { "type": "object", "required": ["user"], "additionalProperties": false, "properties": { "user": { "type": "string" } } },
                "Beats": { "type": "object", "required": ["beats"], "additionalProperties": false, "properties": { "beats": { "type": "array", "items": { "type": "object", "required": ["session", "user"], "properties": { "session": { "type": "string" }, "user": { "type": "string" } } } } } },
                "BeatResult": { "type": "object", "properties": { "accepted": { "type": "integer" }, "rejected": { "type": "array", "items": { "type": "object" } } } },
                "Activity": { "type": "object", "required": ["type"], "additionalProperties": false, "properties": { "user": { "type": "string" }, "type": { "type": "string" }, "count": { "type": "integer" } } },
                "Explanation": { "type": "object", "properties": { "session": { "$ref": "#/components/schemas/Session" }, "now": { "type": "string" }, "rules": { "type": "array", "items": { "type": "object", "properties": {
                    "rule": { "type": "string" }, "on": { "type": "string" }, "do": { "type": "string" }, "applies": { "type": "boolean" }, "deadline": { "type": ["string", "null"] }, "due": { "type": "boolean" }, "why": { "type": "string" } } } } } },
                "Event": { "type": "object", "properties": {
                    "seq": { "type": "integer" }, "id": { "type": "string" }, "type": { "type": "string" }, "at": { "type": "string" }, "applied_at": { "type": "string" },
                    "session_id": { "type": "string" }, "kind": { "type": "string" }, "actor": { "type": "string" }, "rule": { "type": ["string", "null"] }, "data": { "type": "object" } } },
                "EventPage": { "type": "object", "properties": { "events": { "type": "array", "items": { "$ref": "#/components/schemas/Event" } }, "next_after": { "type": "integer" } } },
                "Notification": { "type": "object", "properties": {
                    "id": { "type": "string" }, "user": { "type": "string" }, "type": { "type": "string" }, "title": { "type": "string" }, "message": { "type": "string" },
                    "session": { "type": "string" }, "link": { "type": ["string", "null"] }, "created_at": { "type": "string" }, "read_at": { "type": ["string", "null"] } } },
                "Inbox": { "type": "object", "properties": { "notifications": { "type": "array", "items": { "$ref": "#/components/schemas/Notification" } } } },
                "SweepReport": { "type": "object", "properties": {
                    "dry_run": { "type": "boolean" }, "now": { "type": "string" },
                    "applied": { "type": "array", "items": { "type": "object", "properties": { "session": { "type": "string" }, "kind": { "type": "string" }, "rule": { "type": "string" }, "action": { "type": "string" }, "from": { "type": "string" }, "to": { "type": "string" }, "due_at": { "type": "string" } } } },
                    "counts": { "type": "object", "additionalProperties": { "type": "integer" } }, "errors": { "type": "array" }, "duration_ms": { "type": "integer" } } },
                "Delivery": { "type": "object", "properties": {
                    "id": { "type": "string" }, "endpoint": { "type": "string" }, "event_seq": { "type": "integer" }, "event_id": { "type": "string" }, "event_type": { "type": "string" },
                    "status": { "enum": ["pending", "delivered", "dead"] }, "attempts": { "type": "integer" }, "next_attempt_at": { "type": ["string", "null"] },
                    "last_attempt_at": { "type": ["string", "null"] }, "last_status": { "type": ["integer", "null"] }, "last_error": { "type": ["string", "null"] }, "created_at": { "type": "string" } } },
                "Deliveries": { "type": "object", "properties": { "deliveries": { "type": "array", "items": { "$ref": "#/components/schemas/Delivery" } } } },
                "Clock": { "type": "object", "properties": { "now": { "type": "string" } } },
                "ClockMove": { "type": "object", "additionalProperties": false, "properties": { "advance": { "type": "string" }, "set": { "type": "string", "format": "date-time" } } },
                "Object": { "type": "object" }
            }
        },
        "security": [{ "bearer": [] }, { "apiKey": [] }],
        "paths": {
            "/v1/sessions": {
                "post": op("Create a session", vec![], Some(body("NewSession")), vec![("201", ok("Created", "Session"))]),
                "get": op("List sessions", vec![query("kind", "string"), query("status", "string"), query("host", "string"), query("participant", "string"), query("limit", "integer"), query("cursor", "string")], None, vec![("200", ok("A page", "SessionList"))])
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
            "/v1/sessions/{id}/participants/{user}": { "delete": op("Leave", vec![id(), json!({ "name": "user", "in": "path", "required": true, "schema": { "type": "string" } })], None, vec![("204", empty("Left"))]) },
            "/v1/sessions/{id}/heartbeat": { "post": op("Heartbeat", vec![id()], Some(body("Beat")), vec![("204", empty("Accepted"))]) },
            "/v1/heartbeats": { "post": op("Heartbeats in a batch", vec![], Some(body("Beats")), vec![("200", ok("Per beat", "BeatResult"))]) },
            "/v1/sessions/{id}/activity": { "post": op("Count activity", vec![id()], Some(body("Activity")), vec![("204", empty("Counted"))]) },
            "/v1/sessions/{id}/summary": { "get": op("The summary (404 until ended)", vec![id()], None, vec![("200", ok("Summary", "Summary"))]) },
            "/v1/sessions/{id}/explain": { "get": op("Why each rule does or does not apply", vec![id()], None, vec![("200", ok("Explanation", "Explanation"))]) },
            "/v1/sessions/{id}/events": { "get": op("The session's timeline", vec![id(), query("after", "integer"), query("limit", "integer")], None, vec![("200", ok("Events", "EventPage"))]) },
            "/v1/sessions/{id}/export": { "get": op("The session as a document", vec![id(), query("format", "string")], None, vec![("200", empty("JSON, Markdown or CSV"))]) },
            "/v1/events": { "get": op("Events (JSON page, or a stream with Accept: text/event-stream)", vec![query("after", "integer"), query("limit", "integer"), query("kind", "string"), query("type", "string"), query("session", "string")], None, vec![("200", ok("A page", "EventPage"))]) },
            "/v1/users/{user}/notifications": { "get": op("A user's inbox", vec![json!({ "name": "user", "in": "path", "required": true, "schema": { "type": "string" } }), query("unread", "boolean")], None, vec![("200", ok("Inbox", "Inbox"))]) },
            "/v1/users/{user}/notifications/{nid}/read": { "post": op("Mark read", vec![json!({ "name": "user", "in": "path", "required": true, "schema": { "type": "string" } }), json!({ "name": "nid", "in": "path", "required": true, "schema": { "type": "string" } })], None, vec![("200", ok("Notification", "Notification"))]) },
            "/v1/sweep": {
                "post": op("Apply due rules now", vec![query("dry_run", "boolean"), query("kind", "string")], None, vec![("200", ok("Report", "SweepReport"))]),
                "get": op("Apply due rules now (for cron callers)", vec![query("dry_run", "boolean"), query("kind", "string")], None, vec![("200", ok("Report", "SweepReport"))])
            },
            "/v1/kinds": { "get": op("Configured kinds and rules", vec![], None, vec![("200", ok("Kinds", "Object"))]) },
            "/v1/stats": { "get": op("Totals and sweeper figures", vec![], None, vec![("200", ok("Stats", "Object"))]) },
            "/v1/health": { "get": op("Health report", vec![], None, vec![("200", ok("Report", "Object")), ("503", ok("Unhealthy", "Object"))]) },
            "/v1/webhooks/deliveries": { "get": op("Webhook delivery log", vec![query("status", "string"), query("limit", "integer")], None, vec![("200", ok("Deliveries", "Deliveries"))]) },
            "/v1/webhooks/deliveries/{id}/retry": { "post": op("Send a delivery again", vec![id()], None, vec![("200", ok("Delivery", "Delivery"))]) },
            "/v1/admin/clock": {
                "get": op("The clock (admin)", vec![], None, vec![("200", ok("Now", "Clock"))]),
                "post": op("Move the manual clock (admin)", vec![], Some(body("ClockMove")), vec![("200", ok("Now", "Clock"))])
            },
            "/livez": { "get": { "summary": "Liveness", "security": [], "responses": { "200": empty("Alive") } } },
            "/readyz": { "get": { "summary": "Readiness (database reachable)", "security": [], "responses": { "200": empty("Ready"), "503": problem() } } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "security": [], "responses": { "200": empty("Text exposition") } } },
            "/openapi.json": { "get": { "summary": "This document", "security": [], "responses": { "200": empty("OpenAPI 3.1") } } },
            "/admin": { "get": { "summary": "Admin page (its data calls need a key)", "security": [], "responses": { "200": empty("HTML") } } }
        }
    })
}

/// The handler.
pub async fn serve() -> impl IntoResponse {
    Json(document())
}
