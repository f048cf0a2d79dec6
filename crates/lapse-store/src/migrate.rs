//! Versioned schema scripts, applied in order, each once: on SQLite each in a transaction of
//! its own, on PostgreSQL all in one, but for its online index builds ([`Script::online`]).
//!
//! A tiny runner of our own rather than sqlx's macro: the scripts are embedded with
//! `include_str!`, so the binary carries its schema and no build step needs a database.

/// One schema step.
pub struct Script {
    /// Increases by one per script.
    pub version: i64,
    /// A short name for logs.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
    /// PostgreSQL: an index built while writes go on (`create index concurrently`, after
    /// dropping what an interrupted build left), run outside a transaction once the other
    /// scripts are applied (`postgres::schema`). Nothing in a later script may need it.
    pub online: bool,
}

/// Refuses a database that a newer lapse has migrated past the last of `scripts`: this one
/// would read and write it as the older schema it knows (a statement naming an index the
/// newer one replaced fails on every call).
pub fn refuse_newer(scripts: &[Script], done: &[i64]) -> Result<(), lapse_core::StoreError> {
    let known = scripts.iter().map(|s| s.version).max().unwrap_or(0);
    match done.iter().copied().max() {
        Some(version) if version > known => Err(lapse_core::StoreError::Backend(format!(
            "the database's schema is at version {version}, from a newer lapse; this one knows \
             versions up to {known}: run the newer lapse, or restore a backup made before it ran"
        ))),
        _ => Ok(()),
    }
}

/// SQLite's scripts.
pub const SQLITE: &[Script] = &[
    Script {
        version: 1,
        name: "sessions",
        sql: include_str!("../migrations/sqlite/0001_sessions.sql"),
        online: false,
    },
    Script {
        version: 2,
        name: "access paths",
        sql: include_str!("../migrations/sqlite/0002_access_paths.sql"),
        online: false,
    },
    Script {
        version: 3,
        name: "flush reports versions",
        sql: include_str!("../migrations/sqlite/0003_flush_reports_versions.sql"),
        online: false,
    },
    Script {
        version: 4,
        name: "participants by room",
        sql: include_str!("../migrations/sqlite/0004_participants_by_room.sql"),
        online: false,
    },
    Script {
        version: 5,
        name: "write check",
        sql: include_str!("../migrations/sqlite/0005_write_check.sql"),
        online: false,
    },
    Script {
        version: 6,
        name: "rules in force",
        sql: include_str!("../migrations/sqlite/0006_rules_in_force.sql"),
        online: false,
    },
    Script {
        version: 7,
        name: "host limited",
        sql: include_str!("../migrations/sqlite/0007_host_limited.sql"),
        online: false,
    },
    Script {
        version: 8,
        name: "host limit in id order",
        sql: include_str!("../migrations/sqlite/0008_host_limit_in_id_order.sql"),
        online: false,
    },
    Script {
        version: 9,
        name: "keys by age",
        sql: include_str!("../migrations/sqlite/0009_keys_by_age.sql"),
        online: false,
    },
    Script {
        version: 10,
        name: "pending deliveries by event",
        sql: include_str!("../migrations/sqlite/0010_pending_deliveries_by_event.sql"),
        online: false,
    },
    Script {
        version: 11,
        name: "notifications by age",
        sql: include_str!("../migrations/sqlite/0011_notifications_by_age.sql"),
        online: false,
    },
    Script {
        version: 12,
        name: "deliveries by endpoint",
        sql: include_str!("../migrations/sqlite/0012_deliveries_by_endpoint.sql"),
        online: false,
    },
];

/// PostgreSQL's scripts.
pub const POSTGRES: &[Script] = &[
    Script {
        version: 1,
        name: "sessions",
        sql: include_str!("../migrations/postgres/0001_sessions.sql"),
        online: false,
    },
    Script {
        version: 2,
        name: "access paths",
        sql: include_str!("../migrations/postgres/0002_access_paths.sql"),
        online: false,
    },
    Script {
        version: 3,
        name: "room for HOT updates",
        sql: include_str!("../migrations/postgres/0003_room_for_hot_updates.sql"),
        online: false,
    },
    Script {
        version: 4,
        name: "lease owners",
        sql: include_str!("../migrations/postgres/0004_lease_owners.sql"),
        online: false,
    },
    Script {
        version: 5,
        name: "write check",
        sql: include_str!("../migrations/postgres/0005_write_check.sql"),
        online: false,
    },
    Script {
        version: 6,
        name: "rules in force",
        sql: include_str!("../migrations/postgres/0006_rules_in_force.sql"),
        online: false,
    },
    Script {
        version: 7,
        name: "keys in byte order",
        sql: include_str!("../migrations/postgres/0007_keys_in_byte_order.sql"),
        online: false,
    },
    Script {
        version: 8,
        name: "deliveries in order",
        sql: include_str!("../migrations/postgres/0008_deliveries_in_order.sql"),
        online: false,
    },
    Script {
        version: 9,
        name: "host limited",
        sql: include_str!("../migrations/postgres/0009_host_limited.sql"),
        online: false,
    },
    Script {
        version: 10,
        name: "host limit in id order",
        sql: include_str!("../migrations/postgres/0010_host_limit_in_id_order.sql"),
        online: false,
    },
    Script {
        version: 11,
        name: "keys by age",
        sql: include_str!("../migrations/postgres/0011_keys_by_age.sql"),
        online: false,
    },
    Script {
        version: 12,
        name: "pending deliveries by event",
        sql: include_str!("../migrations/postgres/0012_pending_deliveries_by_event.sql"),
        online: false,
    },
    Script {
        version: 13,
        name: "notifications by age",
        sql: include_str!("../migrations/postgres/0013_notifications_by_age.sql"),
        online: true,
    },
    Script {
        version: 14,
        name: "deliveries by endpoint",
        sql: include_str!("../migrations/postgres/0014_deliveries_by_endpoint.sql"),
        online: true,
    },
];
