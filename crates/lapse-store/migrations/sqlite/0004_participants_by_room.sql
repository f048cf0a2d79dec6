-- Participants are stored in their primary key's order, (session_id, user_id), with no
-- separate row table: a room's participants lie together and are read in one range of one
-- b-tree, and one participant is found, updated or added with one descent instead of an
-- index descent plus a row lookup (and a row-table insert). Every statement on the table
-- reaches it by session, or through `participants_user`.
create table participants_by_room (
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
) without rowid;
insert into participants_by_room
    select session_id, user_id, role, state, joined_at, left_at, last_seen_at, beat_at,
           offline_for
      from participants;
drop table participants;
alter table participants_by_room rename to participants;
create index participants_user on participants (user_id, session_id);
