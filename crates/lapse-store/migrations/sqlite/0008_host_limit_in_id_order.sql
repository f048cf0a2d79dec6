-- The check a create makes before a host's limit lists the host's open sessions of the kind,
-- in id order. Keyed by (host, kind) alone, `sessions_open_by_host` cannot give that order,
-- so SQLite read the list through `sessions_host` (host, id) instead: every session the host
-- ever had, ended ones included, to keep the few that count. Keyed by id too, the limit's own
-- index gives both the sessions and their order.
drop index sessions_open_by_host;
create index sessions_open_by_host on sessions (host, kind, id)
    where host_limited = 1 and status in ('pending', 'active');
