-- A heartbeat flush now moves each session once, in a statement of its own that reports the
-- versions it wrote (so an instance holding the session follows without reading it again);
-- the trigger that moved the session once per participant goes.
drop trigger if exists participants_heartbeat;
