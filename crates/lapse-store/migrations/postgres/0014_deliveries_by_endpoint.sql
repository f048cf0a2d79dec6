-- Due deliveries are claimed an endpoint at a time, so that one endpoint slow to answer holds
-- back no other (its backlog came first in a single order, and every claim returned it). The
-- index of due deliveries is in the claim's order within each endpoint. Built online
-- (`migrate::Script::online`): the table keeps every delivery until retention prunes it, and
-- writes go on meanwhile. The index it replaces goes once it is built; a build interrupted
-- before it was recorded is dropped and begun again.
drop index concurrently if exists webhook_deliveries_endpoint_due;
create index concurrently webhook_deliveries_endpoint_due
    on webhook_deliveries (endpoint, next_attempt_at, event_seq) where status = 'pending';
drop index concurrently if exists webhook_deliveries_due;
