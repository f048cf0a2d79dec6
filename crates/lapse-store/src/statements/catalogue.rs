//! Every read statement built as the hot paths build it, with sample values: the catalogue
//! that each backend's plan test (`plans.rs`) explains against a populated database and holds
//! to an index.

use lapse_core::store::{DeliveryStatus, DueRow, EventQuery};

use super::{
    Dialect, Statement, count_due, deliveries_page, due_sessions, events_page, list_sessions,
    open_children, participants_of, sessions_by_id,
};

/// Every statement above, built as the hot paths build them, with sample values: what the plan
/// tests hold to an index.
pub(crate) fn hot_reads(dialect: Dialect, columns: &str) -> Vec<(&'static str, Statement)> {
    use lapse_core::store::SessionQuery as Q;
    use lapse_core::{EventType, SessionId, Status, Timestamp, UserId};
    let user = || UserId::parse("u1").ok();
    let id = || SessionId::parse("s1").ok();
    let page = |q: Q| Q { limit: 100, ..q };
    let cursor = DueRow {
        id: SessionId::parse("s1").expect("a valid id"),
        at: Timestamp::from_millis(1),
    };
    let events = |q: EventQuery| EventQuery {
        after: 10,
        limit: 100,
        ..q
    };
    let mut hot = vec![
        (
            "sessions by id",
            sessions_by_id(dialect, columns, vec!["s1".into()]),
        ),
        (
            "participants of sessions",
            participants_of(dialect, vec!["s1".into()]),
        ),
        (
            "open children",
            open_children(dialect, columns, vec!["s1".into()]),
        ),
        (
            "list, first page",
            list_sessions(dialect, columns, &page(Q::default())),
        ),
        (
            "list, next page",
            list_sessions(
                dialect,
                columns,
                &page(Q {
                    after: id(),
                    ..Q::default()
                }),
            ),
        ),
        (
            "list by participant",
            list_sessions(
                dialect,
                columns,
                &page(Q {
                    participant: user(),
                    ..Q::default()
                }),
            ),
        ),
        (
            "list by host",
            list_sessions(
                dialect,
                columns,
                &page(Q {
                    host: user(),
                    ..Q::default()
                }),
            ),
        ),
        (
            "host's open sessions of a kind, as its limit counts them",
            list_sessions(
                dialect,
                columns,
                &page(Q {
                    host: user(),
                    kind: Some("study".into()),
                    open_only: true,
                    host_limited: true,
                    ..Q::default()
                }),
            ),
        ),
        (
            "list by kind",
            list_sessions(
                dialect,
                columns,
                &page(Q {
                    kind: Some("study".into()),
                    ..Q::default()
                }),
            ),
        ),
        (
            "list by kind and status",
            list_sessions(
                dialect,
                columns,
                &page(Q {
                    kind: Some("study".into()),
                    status: Some(Status::Active),
                    ..Q::default()
                }),
            ),
        ),
        (
            "list by status",
            list_sessions(
                dialect,
                columns,
                &page(Q {
                    status: Some(Status::Pending),
                    ..Q::default()
                }),
            ),
        ),
        ("due rows", due_sessions(dialect, 1, None, None, 1000, None)),
        (
            "due rows, next page",
            due_sessions(dialect, 1, None, Some(&cursor), 1000, None),
        ),
        (
            "due rows of a kind",
            due_sessions(dialect, 1, Some("study"), None, 1000, None),
        ),
        ("due rows counted", count_due(dialect, 1, None)),
        (
            "due rows of a kind counted",
            count_due(dialect, 1, Some("study")),
        ),
        (
            "events",
            events_page(dialect, &events(EventQuery::default())),
        ),
        (
            "events of a session",
            events_page(
                dialect,
                &events(EventQuery {
                    session: id(),
                    ..EventQuery::default()
                }),
            ),
        ),
        (
            "events of a kind",
            events_page(
                dialect,
                &events(EventQuery {
                    kind: Some("study".into()),
                    ..EventQuery::default()
                }),
            ),
        ),
        (
            "events of some types",
            events_page(
                dialect,
                &events(EventQuery {
                    types: vec![EventType::SessionCreated],
                    ..EventQuery::default()
                }),
            ),
        ),
        (
            "deliveries by status",
            deliveries_page(dialect, Some(DeliveryStatus::Pending), 50),
        ),
        (
            "deliveries of every status",
            deliveries_page(dialect, None, 50),
        ),
    ];
    if dialect == Dialect::Postgres {
        // Only PostgreSQL leases rows to several sweepers.
        hot.push((
            "unleased due rows",
            due_sessions(dialect, 1, None, None, 1000, Some(1)),
        ));
    }
    hot
}
