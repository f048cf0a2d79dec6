-- Sessions, participants, the event outbox and notification inboxes.
-- Times are bigint milliseconds since the Unix epoch (UTC), as in the SQLite schema.

create table sessions (
    id               text primary key,
    kind             text not null,
    title            text not null,
    metadata         text not null,
    host             text not null,
    parent           text,
    scheduled_start  bigint,
    scheduled_end    bigint,
    status           text not null,
    delayed          boolean not null,
    used             boolean not null,
    created_at       bigint not null,
    started_at       bigint,
    ended_at         bigint,
    last_activity_at bigint not null,
    end_reason       text,
    ended_by         text,
    counters         text not null,
    summary          text,
    parent_ended_at  bigint,
    -- The deadline each rule last warned for (session.ending_soon), as a JSON object.
    warnings         text not null default '{}',
    -- When the sweeper should next look at the session: the earliest of its rules' deadlines,
    -- warnings and presence lapses, as last written. Heartbeats never move it (lazy re-arm),
    -- so heartbeat updates touch no indexed column and stay HOT.
    next_due_at      bigint,
    next_due_rule    text,
    -- A sweeper's lease on a due row (wall-clock ms), so concurrent sweepers take disjoint
    -- batches; correctness never depends on it (writes are compare-and-set on version).
    claimed_until    bigint,
    version          bigint not null
) with (fillfactor = 80);

create index sessions_next_due on sessions (next_due_at, id) where next_due_at is not null;
create index sessions_open_by_host on sessions (host, kind) where status in ('pending', 'active');
create index sessions_parent on sessions (parent) where parent is not null;
create index sessions_kind_status on sessions (kind, status);

create table participants (
    session_id   text not null,
    user_id      text not null,
    role         text not null,
    state        text not null,
    joined_at    bigint not null,
    left_at      bigint,
    last_seen_at bigint not null,
    beat_at      bigint,
    offline_for  bigint,
    primary key (session_id, user_id)
) with (fillfactor = 80);
create index participants_user on participants (user_id);

create table events (
    seq        bigserial primary key,
    id         text not null unique,
    type       text not null,
    at         bigint not null,
    applied_at bigint not null,
    session_id text not null,
    kind       text not null,
    actor      text not null,
    rule       text,
    data       text not null
);
create index events_session on events (session_id, seq);

create table notifications (
    id         text primary key,
    user_id    text not null,
    type       text not null,
    title      text not null,
    message    text not null,
    session_id text not null,
    link       text,
    created_at bigint not null,
    read_at    bigint
);
create index notifications_user on notifications (user_id, created_at);

-- Webhook deliveries: one row per event and endpoint, written with the event, so a restart
-- loses none. The body is rebuilt from the event row, so every attempt sends the same bytes.
create table webhook_deliveries (
    id              text primary key,
    endpoint        text not null,
    event_seq       bigint not null,
    status          text not null,
    attempts        bigint not null,
    next_attempt_at bigint,
    last_attempt_at bigint,
    last_status     bigint,
    last_error      text,
    created_at      bigint not null,
    claimed_until   bigint
);
create index webhook_deliveries_due on webhook_deliveries (next_attempt_at) where status = 'pending';
create index webhook_deliveries_status on webhook_deliveries (status, created_at);

-- Endpoints that answered 410 Gone.
create table webhook_endpoints_disabled (
    url         text primary key,
    disabled_at bigint not null,
    reason      text not null
);

-- First responses to requests made with an Idempotency-Key, per actor, kept 24 hours.
create table idempotency_keys (
    actor        text not null,
    key          text not null,
    request_hash text not null,
    status       bigint not null,
    content_type text not null,
    body         text not null,
    created_at   bigint not null,
    primary key (actor, key)
);
