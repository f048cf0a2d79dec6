-- Due deliveries are read an endpoint at a time, so that one endpoint slow to answer holds
-- back no other (its backlog came first in a single order, and every read of due deliveries
-- returned it). The index of due deliveries is in that order within each endpoint.
drop index webhook_deliveries_due;
create index webhook_deliveries_endpoint_due on webhook_deliveries (endpoint, next_attempt_at)
    where status = 'pending';
