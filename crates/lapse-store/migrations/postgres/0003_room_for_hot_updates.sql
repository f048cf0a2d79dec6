-- Heartbeat flushes and sweep leases change only unindexed columns of a session row. With
-- free room on its page the new row version stays there (a HOT update) and no index is
-- touched; tightly packed pages (bulk imports, old tables) leave no such room.
alter table sessions set (fillfactor = 85);
alter table participants set (fillfactor = 85);
