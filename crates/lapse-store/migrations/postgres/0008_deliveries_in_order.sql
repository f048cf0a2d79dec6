-- Due deliveries are claimed a page at a time, oldest first. Their index held the time
-- alone, and deliveries due at one instant come in thousands (the webhook rows of one
-- sweep's batch, the retries of one page of attempts): every claim of 32 read and sorted all
-- of them. With the event's number after the time, the index is in the claim's order and a
-- claim reads its first entries. (A number, not the delivery's id: every transition writes
-- an entry here.)
drop index webhook_deliveries_due;
create index webhook_deliveries_due on webhook_deliveries (next_attempt_at, event_seq)
    where status = 'pending';
-- The list by status, newest first, likewise: without the id, PostgreSQL's generic plan
-- read every delivery of the status and sorted them.
drop index webhook_deliveries_status;
create index webhook_deliveries_status on webhook_deliveries (status, created_at, id);
