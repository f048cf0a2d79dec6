-- One row an instance rewrites to learn whether the database takes writes again after an
-- outage (a full disk, a server restarting) when nothing else is writing.
create table write_check (
    id integer primary key,
    at bigint not null
);
