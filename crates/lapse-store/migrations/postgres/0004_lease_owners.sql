-- A lease names the instance that holds it. Each instance holds a session-level advisory
-- lock on its number for as long as its connection lives, so a lease whose holder is gone
-- (killed, or cut off from the database) can be taken at once instead of after it runs out.
alter table sessions add column claimed_by integer;
alter table webhook_deliveries add column claimed_by integer;
