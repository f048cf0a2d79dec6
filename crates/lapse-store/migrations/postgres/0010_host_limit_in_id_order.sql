-- The check a create makes before a host's limit lists the host's open sessions of the kind,
-- in id order: keyed by id too, the limit's index gives them in that order, with no sort (see
-- SQLite's 0008_host_limit_in_id_order.sql, where the order decided which index was read).
drop index sessions_open_by_host;
create index sessions_open_by_host on sessions (host, kind, id)
    where host_limited and status in ('pending', 'active');
