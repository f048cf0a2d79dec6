-- Retention keeps an event while a pending delivery still needs it. Without this index that
-- check hashed every pending delivery, read by scanning the whole table, once a minute; with
-- an endpoint down, deliveries wait by the thousand. Through it, each event is one probe.
-- Only pending deliveries have an entry.
create index webhook_deliveries_pending on webhook_deliveries (event_seq) where status = 'pending';
