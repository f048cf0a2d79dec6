-- One index for each way sessions are looked up, so no list, cascade or create walks the
-- whole table: by kind and status, by status, by host (in id order, for paging), and a
-- participant's sessions.
drop index sessions_kind_status;
create index sessions_kind_status on sessions (kind, status, id);
create index sessions_status on sessions (status, id);
create index sessions_host on sessions (host, id);
drop index participants_user;
create index participants_user on participants (user_id, session_id);
