-- Due deliveries are taken a page at a time, oldest first: `order by next_attempt_at, id`.
-- Their index held the time alone, and deliveries due at one instant come in thousands (the
-- webhook rows of one sweep's batch, the retries of one page of attempts): every page of 32
-- read and sorted all of them, with their events. With the id in the index, a page is the
-- index's first entries. The list by status, newest first, likewise.
drop index webhook_deliveries_due;
create index webhook_deliveries_due on webhook_deliveries (next_attempt_at, id)
    where status = 'pending';
drop index webhook_deliveries_status;
create index webhook_deliveries_status on webhook_deliveries (status, created_at, id);
