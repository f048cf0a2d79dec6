-- Sessions, participants, the event outbox and notification inboxes.
-- Times are integer milliseconds since the Unix epoch (UTC).

create table sessions (
    id               text primary key,
    kind             text not null,
    title            text not null,
    metadata         text not null,
    host             text not null,
    parent           text,
    scheduled_start  integer,
    scheduled_end    integer,
    status           text not null,
    delayed          integer not null,
    used             integer not null,
    created_at       integer not null,
    started_at       integer,
    ended_at         integer,
    last_activity_at integer not null,
    end_reason       text,
    ended_by         text,
    counters         text not null,
    summary          text,
    parent_ended_at  integer,
    -- The deadline each rule last warned for (session.ending_soon), as a JSON object.
    warnings         text not null default '{}',
    -- When the sweeper should next look at the session: the earliest of its rules' deadlines,
    -- warnings and presence lapses, as last written. Heartbeats never move it (lazy re-arm),
    -- so it may be earlier than the truth, never later.
    next_due_at      integer,
    next_due_rule    text,
    version          integer not null
);

-- A sweep reads only due rows through this index: O(due), whatever the table size.
create index sessions_next_due on sessions (next_due_at, id) where next_due_at is not null;
create index sessions_open_by_host on sessions (host, kind) where status in ('pending', 'active');
create index sessions_parent on sessions (parent) where parent is not null;
create index sessions_kind_status on sessions (kind, status);

create table participants (
    session_id   text not null,
    user_id      text not null,
    role         text not null,
    state        text not null,
    joined_at    integer not null,
    left_at      integer,
    last_seen_at integer not null,
    -- The latest heartbeat written by a flush; only flushes write it.
    beat_at      integer,
    -- The last_seen_at whose lapse was announced (participant.offline).
    offline_for  integer,
    primary key (session_id, user_id)
);
create index participants_user on participants (user_id);

-- A heartbeat flush is one statement on participants; this carries each beat to its
-- session's activity column and bumps the row version, so a sweep that decided on the older
-- activity loses its compare-and-set. The deadline column is left alone (lazy re-arm).
create trigger participants_heartbeat after update of beat_at on participants
begin
    update sessions
       set last_activity_at = max(last_activity_at, new.beat_at), used = 1, version = version + 1
     where id = new.session_id and status in ('pending', 'active');
end;

create table events (
    seq        integer primary key autoincrement,
    id         text not null unique,
    type       text not null,
    at         integer not null,
    applied_at integer not null,
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
    created_at integer not null,
    read_at    integer
);
create index notifications_user on notifications (user_id, created_at);

-- Webhook deliveries: one row per event and endpoint, written with the event, so a restart
-- loses none. The body is rebuilt from the event row, so every attempt sends the same bytes.
create table webhook_deliveries (
    id              text primary key,
    endpoint        text not null,
    event_seq       integer not null,
    status          text not null,
    attempts        integer not null,
    next_attempt_at integer,
    last_attempt_at integer,
    last_status     integer,
    last_error      text,
    created_at      integer not null,
    claimed_until   integer
);
create index webhook_deliveries_due on webhook_deliveries (next_attempt_at) where status = 'pending';
create index webhook_deliveries_status on webhook_deliveries (status, created_at);

-- Endpoints that answered 410 Gone.
create table webhook_endpoints_disabled (
    url         text primary key,
    disabled_at integer not null,
    reason      text not null
);

-- First responses to requests made with an Idempotency-Key, per actor, kept 24 hours.
create table idempotency_keys (
    actor        text not null,
    key          text not null,
    request_hash text not null,
    status       integer not null,
    content_type text not null,
    body         text not null,
    created_at   integer not null,
    primary key (actor, key)
);
