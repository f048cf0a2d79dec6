-- The rules in force: the `[kinds.*]` tables of the configuration last put in force (by a
-- start with other rules, or a reload), numbered. Every commit names the version it decided
-- under and is refused if another came into force since. `rearmed_version` is the last
-- version whose stored deadlines were all worked out anew: behind `version` while a reload
-- is still storing them, or after one was interrupted (the next start finishes the work).
create table rules_in_force (
    id              integer primary key check (id = 1),
    version         bigint not null,
    kinds           text not null,
    updated_at      bigint not null,
    rearmed_version bigint not null default 0
);
