//! Retention on each store: which events, deliveries and keys past their period go, and how
//! the pages of events step over those that pending deliveries keep.

use super::events::{HOOK, all_events, ended, queue_deliveries};
use super::*;

/// Study room `a` with five events, `ev-0` to `ev-4`, each with a delivery queued; answers a
/// lookup from an event's id to its delivery's id.
async fn five_events(store: &dyn Store) -> impl Fn(&str) -> String + use<> {
    let s = session("study", "a", t0());
    insert(store, &s).await;
    queue_deliveries(store, &s, 5, HOOK).await
}

/// Retention's cut for events and finished deliveries at `at`; nothing else is old enough.
fn events_before(at: Timestamp) -> lapse_core::store::PruneBefore {
    lapse_core::store::PruneBefore {
        events: at,
        notifications: t0(),
        keys: t0(),
    }
}

/// Retention deletes the events past their period that no pending delivery needs, with the
/// finished deliveries; an event kept for its delivery holds back none after it.
#[tokio::test]
async fn retention_keeps_the_events_pending_deliveries_still_need() {
    use lapse_core::store::DeliveryStatus;
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let id_of = five_events(store).await;
        let ended = |status| ended(status, t0());
        store
            .record_attempts(&[
                (id_of("ev-0"), ended(DeliveryStatus::Delivered)),
                (id_of("ev-1"), ended(DeliveryStatus::Dead)),
                (id_of("ev-3"), ended(DeliveryStatus::Delivered)),
            ])
            .await
            .unwrap();
        let later = t0() + Span::from_secs(31 * 86_400);
        let kept = || async {
            let events = store.events(&all_events()).await.unwrap();
            events.into_iter().map(|e| e.id).collect::<Vec<_>>()
        };
        let pruned = || async {
            let page = store.prune(&events_before(later), 0, 1000).await.unwrap();
            page.rows
        };
        // Events ev-0, ev-1, ev-3 and their finished deliveries.
        assert_eq!(pruned().await, 6);
        assert_eq!(
            kept().await,
            ["ev-2", "ev-4"],
            "pending deliveries' events stay"
        );
        let left = store.deliveries(None, 10).await.unwrap();
        assert!(left.iter().all(|d| d.status == DeliveryStatus::Pending));
        assert_eq!(left.len(), 2);

        store
            .record_attempts(&[(id_of("ev-4"), ended(DeliveryStatus::Dead))])
            .await
            .unwrap();
        assert_eq!(pruned().await, 2);
        assert_eq!(
            kept().await,
            ["ev-2"],
            "the one still pending holds back none after it"
        );
    }
}

/// Retention goes through the events a page at a time: a page whose events all stay (their
/// deliveries pending) hands the next call on past it, and the pages stop at the newest
/// event, or at the first inside the period.
#[tokio::test]
async fn retention_goes_on_past_a_page_of_events_that_stay() {
    use lapse_core::store::DeliveryStatus;
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let id_of = five_events(store).await;
        store
            .record_attempts(&[(id_of("ev-4"), ended(DeliveryStatus::Dead, t0()))])
            .await
            .unwrap();
        let seqs: Vec<i64> = store
            .events(&all_events())
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs.len(), 5);
        let later = t0() + Span::from_secs(31 * 86_400);

        // Nothing is past the period yet: the first page ends it.
        let early = store.prune(&events_before(t0()), 0, 2).await.unwrap();
        assert_eq!(early, lapse_core::store::Pruned::default());

        // ev-0 and ev-1 stay, and so do ev-2 and ev-3: each call hands on past its page.
        // (ev-4's dead delivery goes at once: deliveries are not paged by event.)
        let first = store.prune(&events_before(later), 0, 2).await.unwrap();
        assert_eq!((first.rows, first.events_after), (1, Some(seqs[1])));
        let second = store
            .prune(&events_before(later), seqs[1], 2)
            .await
            .unwrap();
        assert_eq!((second.rows, second.events_after), (0, Some(seqs[3])));
        // ev-4, behind them, goes; it was the newest.
        let last = store
            .prune(&events_before(later), seqs[3], 2)
            .await
            .unwrap();
        assert_eq!((last.rows, last.events_after), (1, None));
        let left = store.events(&all_events()).await.unwrap();
        assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs[..4]);
    }
}
