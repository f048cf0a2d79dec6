-- Only the sessions a host limit counts are kept in `sessions_open_by_host`: those of a kind
-- with `max_open_per_host` (`host_limited`, set when such a session is created, or when rules
-- giving its kind a limit are put in force), so that creating and ending the sessions of
-- other kinds leaves it alone (see SQLite's 0007_host_limited.sql for the measurement).
--
-- The sessions stored now keep counting, whatever their kind: the rules they were created
-- under are not known here. The default given with the column marks them without rewriting
-- a row; every insert names the column, and the default for later rows is false. The open
-- ones leave the index as they end.
alter table sessions add column host_limited boolean not null default true;
alter table sessions alter column host_limited set default false;
drop index sessions_open_by_host;
create index sessions_open_by_host on sessions (host, kind)
    where host_limited and status in ('pending', 'active');
