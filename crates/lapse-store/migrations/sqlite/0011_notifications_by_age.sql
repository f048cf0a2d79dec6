-- Retention deletes users' notifications by age: through this index it reads the expired
-- ones only, not every user's inbox.
create index notifications_created on notifications (created_at);
