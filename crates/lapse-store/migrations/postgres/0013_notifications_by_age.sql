-- Retention deletes users' notifications by age: through this index it reads the expired
-- ones only, not every user's inbox. Built online (`migrate::Script::online`): nothing pruned
-- notifications before, so the table can be large, and writes to it go on meanwhile. A build
-- interrupted before it was recorded is dropped and begun again.
drop index concurrently if exists notifications_created;
create index concurrently notifications_created on notifications (created_at);
