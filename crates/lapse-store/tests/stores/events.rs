//! Events and their webhook deliveries: details read back as written, the delivery log, an
//! endpoint disabled, deliveries shared between instances.

use super::*;

/// An event's details come back as the text they were made as, in their own key order, on
/// every path that reads events (a page of them, a webhook's delivery); a row whose details
/// are not JSON is reported as unreadable, not passed on.
#[tokio::test]
async fn an_events_details_read_back_as_written() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let sqlite = SqliteStore::open(&url, None).await.unwrap();
    sqlite.migrate().await.unwrap();
    details_read_back_as_written(&sqlite).await;
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(BREAK_DETAILS).execute(&mut raw).await.unwrap();
    details_that_are_not_json_are_refused(&sqlite).await;

    if let Some((postgres, raw)) = postgres_and_raw().await {
        details_read_back_as_written(&postgres).await;
        sqlx::query(BREAK_DETAILS).execute(&raw).await.unwrap();
        details_that_are_not_json_are_refused(&postgres).await;
    }
}

const BREAK_DETAILS: &str = "update events set data = '{\"to\":' where id = 'ev-a'";

/// A delivery lease as the engine takes one: longer than any answer is waited for.
const LEASE: Span = Span::from_secs(70);

pub(super) fn all_events() -> lapse_core::store::EventQuery {
    lapse_core::store::EventQuery {
        limit: 10,
        ..Default::default()
    }
}

async fn details_read_back_as_written(store: &dyn Store) {
    use lapse_core::event::{EventData, NewEvent};
    use lapse_core::store::EventRecord;
    #[derive(serde::Serialize)]
    struct Details {
        to: &'static str,
        from: &'static str,
        by: Vec<u32>,
        note: &'static str,
    }
    let details = EventData::of(&Details {
        to: "expired",
        from: "active",
        by: vec![3, 1, 2],
        note: "ünïcode \"quoted\"",
    });
    let written = r#"{"to":"expired","from":"active","by":[3,1,2],"note":"ünïcode \"quoted\""}"#;
    assert_eq!(details.as_str(), written);
    insert(store, &session("study", "a", t0())).await;
    store
        .commit(Commit {
            events: vec![EventRecord {
                id: "ev-a".into(),
                applied_at: t0(),
                event: NewEvent {
                    event_type: lapse_core::EventType::SessionExpired,
                    at: t0(),
                    session_id: SessionId::parse("a").unwrap(),
                    kind: "study".into(),
                    actor: "rule:test".into(),
                    rule: Some("test".into()),
                    data: details,
                },
                webhooks: vec!["http://127.0.0.1:9/hook".into()],
            }],
            ..Commit::default()
        })
        .await
        .unwrap();
    let events = store.events(&all_events()).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data.as_str(), written, "a page of events");
    let due = store
        .due_deliveries("http://127.0.0.1:9/hook", t0(), 10, Some(LEASE))
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].1.data.as_str(), written, "a webhook's delivery");
    let shown = serde_json::to_string(&events[0]).unwrap();
    assert!(shown.contains(&format!(r#""data":{written}"#)), "{shown}");
}

async fn details_that_are_not_json_are_refused(store: &dyn Store) {
    match store.events(&all_events()).await {
        Err(StoreError::Backend(why)) => assert!(why.contains("data"), "{why}"),
        other => panic!("details that are not JSON were read as {other:?}"),
    }
}

pub(super) const HOOK: &str = "http://127.0.0.1:9/hook";

/// Commits `n` events on `s` a minute apart from `t0()`, `ev-0` to `ev-{n-1}`, each queueing
/// a delivery to `url`; answers a lookup from an event's id to its delivery's id.
pub(super) async fn queue_deliveries(
    store: &dyn Store,
    s: &Session,
    n: i64,
    url: &str,
) -> impl Fn(&str) -> String + use<> {
    queue_deliveries_from(store, s, 0..n, url).await
}

/// [`queue_deliveries`] for the events numbered `numbers`, each `number` minutes after `t0()`.
pub(super) async fn queue_deliveries_from(
    store: &dyn Store,
    s: &Session,
    numbers: std::ops::Range<i64>,
    url: &str,
) -> impl Fn(&str) -> String + use<> {
    use lapse_core::event::NewEvent;
    use lapse_core::store::EventRecord;
    for i in numbers {
        let at = t0() + Span::from_secs(60 * i);
        store
            .commit(Commit {
                events: vec![EventRecord {
                    id: format!("ev-{i}"),
                    applied_at: at,
                    event: NewEvent {
                        event_type: lapse_core::EventType::SessionUpdated,
                        at,
                        session_id: s.id.clone(),
                        kind: "study".into(),
                        actor: "user:host".into(),
                        rule: None,
                        data: serde_json::json!({}).into(),
                    },
                    webhooks: vec![url.into()],
                }],
                ..Commit::default()
            })
            .await
            .unwrap();
    }
    let queued = store.deliveries(None, 100).await.unwrap();
    move |event: &str| {
        queued
            .iter()
            .find(|d| d.event_id == event)
            .map(|d| d.id.clone())
            .unwrap() // the event was committed with a delivery just above
    }
}

/// A delivery's last attempt at `at`, which left it `status` (delivered or dead).
pub(super) fn ended(
    status: lapse_core::store::DeliveryStatus,
    at: Timestamp,
) -> lapse_core::store::Attempt {
    lapse_core::store::Attempt {
        at,
        http_status: None,
        error: None,
        status,
        next_attempt_at: None,
    }
}

#[tokio::test]
async fn the_delivery_log_lists_the_newest_first_of_one_status_or_of_all() {
    use lapse_core::store::DeliveryStatus;
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let s = session("study", "a", t0());
        insert(store, &s).await;
        // Five events a minute apart, each with a delivery.
        let at = |i: i64| t0() + Span::from_secs(60 * i);
        let id_of = queue_deliveries(store, &s, 5, HOOK).await;
        let ended = |status| ended(status, at(9));
        store
            .record_attempts(&[
                (id_of("ev-0"), ended(DeliveryStatus::Delivered)),
                (id_of("ev-1"), ended(DeliveryStatus::Dead)),
                (id_of("ev-2"), ended(DeliveryStatus::Delivered)),
            ])
            .await
            .unwrap();

        let events = |status, limit| async move {
            let listed = store.deliveries(status, limit).await.unwrap();
            listed.into_iter().map(|d| d.event_id).collect::<Vec<_>>()
        };
        assert_eq!(
            events(None, 4).await,
            ["ev-4", "ev-3", "ev-2", "ev-1"],
            "every status, newest first, at most the limit"
        );
        assert_eq!(events(None, 10).await.len(), 5);
        assert_eq!(
            events(Some(DeliveryStatus::Delivered), 10).await,
            ["ev-2", "ev-0"]
        );
        assert_eq!(events(Some(DeliveryStatus::Dead), 10).await, ["ev-1"]);
        assert_eq!(
            events(Some(DeliveryStatus::Pending), 1).await,
            ["ev-4"],
            "one status, newest first, at most the limit"
        );
    }
}

/// Due deliveries are read an endpoint at a time, oldest first; the next one due is the first
/// of the endpoint's after the time given; the endpoints of pending deliveries are each named
/// once.
#[tokio::test]
async fn due_deliveries_are_read_an_endpoint_at_a_time() {
    const OTHER: &str = "http://127.0.0.1:9/other";
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let s = session("study", "a", t0());
        insert(store, &s).await;
        // Five events a minute apart to HOOK, then two to OTHER, the last at t0 + 6 min.
        let to_hook = queue_deliveries(store, &s, 5, HOOK).await;
        let later = session("study", "b", t0());
        insert(store, &later).await;
        let at = |minutes: i64| t0() + Span::from_secs(60 * minutes);
        let to_other = queue_deliveries_from(store, &later, 5..7, OTHER).await;
        let now = at(10);
        let mut pending = store.pending_endpoints().await.unwrap();
        pending.sort();
        assert_eq!(pending, [HOOK, OTHER]);
        let due = store
            .due_deliveries(OTHER, now, 10, Some(LEASE))
            .await
            .unwrap();
        let ids: Vec<String> = due.iter().map(|(d, _)| d.id.clone()).collect();
        assert_eq!(
            ids,
            [to_other("ev-5"), to_other("ev-6")],
            "another endpoint's backlog does not come first"
        );
        assert_eq!(
            event_ids(
                &store
                    .due_deliveries(HOOK, now, 2, Some(LEASE))
                    .await
                    .unwrap()
            ),
            ["ev-0", "ev-1"],
            "the oldest first"
        );
        store
            .record_attempts(&[(
                to_hook("ev-2"),
                ended(lapse_core::store::DeliveryStatus::Delivered, at(9)),
            )])
            .await
            .unwrap();
        assert_eq!(
            event_ids(&store.due_deliveries(HOOK, now, 10, None).await.unwrap()),
            ["ev-0", "ev-1", "ev-3", "ev-4"],
            "pending ones only"
        );
        assert_eq!(
            store.next_delivery_at(HOOK, at(2)).await.unwrap(),
            Some(at(3)),
            "the first due after the time given"
        );
        assert_eq!(store.next_delivery_at(OTHER, at(6)).await.unwrap(), None);
    }
}

/// An endpoint disabled for answering 410 ends its pending deliveries, but not those whose
/// attempts are about to be recorded: they never show as dead without the answer that
/// ended them. None of them is retried, whatever it was answered.
#[tokio::test]
async fn disabling_an_endpoint_ends_its_pending_deliveries_but_the_attempted_ones() {
    use lapse_core::store::{Attempt, DeliveryStatus};
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let s = session("study", "a", t0());
        insert(store, &s).await;
        let id_of = queue_deliveries(store, &s, 3, HOOK).await;
        let (gone, failed, other) = (id_of("ev-0"), id_of("ev-1"), id_of("ev-2"));
        let attempted = [gone.clone(), failed.clone()];
        store
            .disable_endpoint(HOOK, t0(), "gone", &attempted)
            .await
            .unwrap();
        let state = |id: String| async move {
            let all = store.deliveries(None, 10).await.unwrap();
            let d = all.into_iter().find(|d| d.id == id).unwrap(); // queued above
            (d.status, d.last_status, d.next_attempt_at)
        };
        assert_eq!(state(other).await, (DeliveryStatus::Dead, None, None));
        assert_eq!(state(gone.clone()).await.0, DeliveryStatus::Pending);
        let answered = |status: u16, then, next_attempt_at| Attempt {
            at: t0(),
            http_status: Some(status),
            error: Some(format!("answered {status}")),
            status: then,
            next_attempt_at,
        };
        let retry_at = Some(t0() + Span::from_secs(5));
        store
            .record_attempts(&[
                (gone.clone(), answered(410, DeliveryStatus::Dead, None)),
                (
                    failed.clone(),
                    answered(500, DeliveryStatus::Pending, retry_at),
                ),
            ])
            .await
            .unwrap();
        assert_eq!(state(gone).await, (DeliveryStatus::Dead, Some(410), None));
        assert_eq!(
            state(failed).await,
            (DeliveryStatus::Dead, Some(500), None),
            "not retried: its endpoint is disabled"
        );
        let disabled = store.disabled_endpoints().await.unwrap();
        assert_eq!(disabled.len(), 1);
        assert_eq!(disabled[0].url, HOOK);
    }
}

/// Two instances delivering webhooks take disjoint deliveries, and each gets back the ones it
/// claimed: the second is handed the rows the first left, not an empty batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_instances_each_deliver_the_webhooks_they_claimed() {
    let Some((a, b)) = two_postgres_instances().await else {
        return;
    };
    four_deliveries_queued(&a).await;
    let now = t0() + Span::from_secs(1);
    let first = a.due_deliveries(HOOK, now, 2, Some(LEASE)).await.unwrap();
    let second = b.due_deliveries(HOOK, now, 2, Some(LEASE)).await.unwrap();
    assert_eq!(event_ids(&first), ["ev-0", "ev-1"]);
    assert_eq!(
        event_ids(&second),
        ["ev-2", "ev-3"],
        "the rows the first left"
    );
}

/// A delivery's lease lasts as long as its claim asked, and no longer, though its holder lives
/// on. The engine asks for longer than it waits for any answer, so no other instance sends a
/// delivery again while the first still waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_lease_lasts_as_long_as_its_claim_asked() {
    let Some((a, b)) = two_postgres_instances().await else {
        return;
    };
    four_deliveries_queued(&a).await;
    let now = t0() + Span::from_secs(1);
    let held = a.due_deliveries(HOOK, now, 2, Some(LEASE)).await.unwrap();
    let brief = a
        .due_deliveries(HOOK, now, 2, Some(Span::from_millis(1)))
        .await
        .unwrap();
    assert_eq!((held.len(), brief.len()), (2, 2));
    // Leases run on the wall clock, which instances share: this waits a little of it.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let taken = b.due_deliveries(HOOK, now, 4, Some(LEASE)).await.unwrap();
    assert_eq!(
        event_ids(&taken),
        ["ev-2", "ev-3"],
        "the brief lease ran out; the other holds"
    );
}

/// A claim skips the deliveries the same instance claimed and has not recorded yet (their
/// attempts under way), on both stores; one recorded as failed, due again, is claimed again.
#[tokio::test]
async fn a_claim_skips_deliveries_whose_attempts_are_under_way() {
    use lapse_core::store::DeliveryStatus;
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        four_deliveries_queued(store).await;
        let now = t0() + Span::from_secs(1);
        let first = store
            .due_deliveries(HOOK, now, 2, Some(LEASE))
            .await
            .unwrap();
        assert_eq!(event_ids(&first), ["ev-0", "ev-1"]);
        let second = store
            .due_deliveries(HOOK, now, 3, Some(LEASE))
            .await
            .unwrap();
        assert_eq!(
            event_ids(&second),
            ["ev-2", "ev-3"],
            "those under way are skipped"
        );
        let mut failed = ended(DeliveryStatus::Pending, now);
        failed.next_attempt_at = Some(now);
        store
            .record_attempts(&[(first[0].0.id.clone(), failed)])
            .await
            .unwrap();
        let again = store
            .due_deliveries(HOOK, now, 4, Some(LEASE))
            .await
            .unwrap();
        assert_eq!(
            event_ids(&again),
            ["ev-0"],
            "its lease ended with its record"
        );
    }
}

/// The ids of a batch's events, in its order.
fn event_ids(batch: &[(lapse_core::store::Delivery, lapse_core::event::Event)]) -> Vec<String> {
    batch.iter().map(|(_, e)| e.id.clone()).collect()
}

/// Four events of one session, each queued for [`HOOK`]: ev-0 to ev-3.
async fn four_deliveries_queued(store: &dyn Store) {
    use lapse_core::event::NewEvent;
    use lapse_core::store::EventRecord;
    let s = session("study", "room", t0());
    let events = (0..4)
        .map(|n| EventRecord {
            id: format!("ev-{n}"),
            applied_at: t0(),
            event: NewEvent {
                event_type: lapse_core::EventType::SessionUpdated,
                at: t0(),
                session_id: s.id.clone(),
                kind: "study".into(),
                actor: "test".into(),
                rule: None,
                data: serde_json::json!({}).into(),
            },
            webhooks: vec![HOOK.into()],
        })
        .collect();
    store
        .commit(Commit {
            sessions: vec![SessionWrite::Insert(s)],
            events,
            ..Commit::default()
        })
        .await
        .unwrap();
}
