-- Retention keeps an event while a pending delivery still needs it. Without this index that
-- check read every pending delivery for each event old enough: with an endpoint down and
-- 50k deliveries waiting, a minute's pruning held the writer for seconds. Through it, each
-- event is one probe. Only pending deliveries have an entry.
create index webhook_deliveries_pending on webhook_deliveries (event_seq) where status = 'pending';
