//! What a sweep reads and writes: due rows in deadline order behind a cursor, rows claimed by
//! one sweeper at a time (a lease that ends with its instance), and a page's changes written
//! together, each with its own compare-and-set.

use super::*;

#[tokio::test]
async fn due_rows_come_in_deadline_order_behind_a_cursor_and_only_when_due() {
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        // Created a minute apart, so each comes due (its host's presence lapsing at 90 s) a
        // minute apart: at 1.5, 2.5 and 3.5 minutes.
        for (i, id) in ["c", "a", "b"].iter().enumerate() {
            insert(
                store,
                &session("study", id, t0() + Span::from_secs(60 * i as i64)),
            )
            .await;
        }
        let at = |m: i64| t0() + Span::from_secs(60 * m);
        assert!(
            store
                .due(at(1), None, None, 10, false)
                .await
                .unwrap()
                .is_empty()
        );
        let due = store.due(at(3), None, None, 10, false).await.unwrap();
        let ids: Vec<_> = due.iter().map(|d| d.id.to_string()).collect();
        assert_eq!(ids, ["c", "a"]);
        let cursor = DueRow {
            id: due[0].id.clone(),
            at: due[0].at,
        };
        let rest = store
            .due(at(40), None, Some(&cursor), 10, false)
            .await
            .unwrap();
        let ids: Vec<_> = rest.iter().map(|d| d.id.to_string()).collect();
        assert_eq!(ids, ["a", "b"]);
        let reading = store
            .due(at(40), Some("reading"), None, 10, false)
            .await
            .unwrap();
        assert!(reading.is_empty());
        assert_eq!(
            store.next_deadline().await.unwrap(),
            Some(t0() + Span::from_secs(90))
        );
    }
}

#[tokio::test]
async fn concurrent_sweepers_of_a_shared_database_claim_disjoint_rows() {
    for (store, _dir) in stores().await {
        if !store.is_shared() {
            continue;
        }
        let store = store.as_ref();
        for i in 0..40 {
            insert(store, &session("study", &format!("s{i:02}"), t0())).await;
        }
        let now = t0() + Span::from_secs(3600);
        let (a, b) = tokio::join!(
            store.due(now, None, None, 25, true),
            store.due(now, None, None, 25, true)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(
            a.len() + b.len(),
            40,
            "between them they take every due row"
        );
        assert!(a.iter().all(|r| !b.contains(r)), "and no row twice");
        assert!(
            store
                .due(now, None, None, 25, true)
                .await
                .unwrap()
                .is_empty(),
            "all leased"
        );
        // A dry look ignores leases.
        assert_eq!(
            store.due(now, None, None, 100, false).await.unwrap().len(),
            40
        );
        // Writing the row ends its lease.
        let row = &a[0];
        let s = store.load(&row.id).await.unwrap().unwrap();
        let rearm = Rearm {
            id: row.id.clone(),
            version: s.version,
            wake_at: Some(row.at),
            rule: Some("delete-unused".into()),
        };
        assert_eq!(
            store
                .rearm(&[rearm], None, RearmOnly::Unchanged)
                .await
                .unwrap(),
            1
        );
        let again = store.due(now, None, None, 25, true).await.unwrap();
        assert_eq!(again, vec![row.clone()]);
    }
}

#[tokio::test]
async fn in_a_batch_a_lost_compare_and_set_writes_nothing_for_its_change_and_the_rest_commit() {
    use lapse_core::event::NewEvent;
    use lapse_core::store::{EventQuery, EventRecord};
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let ids = ["a", "b", "c"];
        for id in ids {
            insert(store, &session("study", id, t0())).await;
        }
        let mut commits = Vec::new();
        for id in ids {
            let mut s = loaded(store, id).await;
            if id == "b" {
                s.version -= 1; // decided on a row that has changed since
            }
            s.status = lapse_core::Status::Expired;
            commits.push(Commit {
                events: vec![EventRecord {
                    id: format!("ev-{id}"),
                    applied_at: t0(),
                    event: NewEvent {
                        event_type: lapse_core::EventType::SessionExpired,
                        at: t0(),
                        session_id: s.id.clone(),
                        kind: "study".into(),
                        actor: "rule:test".into(),
                        rule: Some("test".into()),
                        data: serde_json::json!({}).into(),
                    },
                    webhooks: vec!["http://127.0.0.1:9/hook".into()],
                }],
                sessions: vec![SessionWrite::Update {
                    session: s,
                    changed: None,
                }],
                ..Commit::default()
            });
        }
        let outcomes = store.commit_many(&commits).await.unwrap();
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
        assert!(
            matches!(outcomes[1], Err(StoreError::Conflict)),
            "{outcomes:?}"
        );
        for (id, expired) in [("a", true), ("b", false), ("c", true)] {
            let s = loaded(store, id).await;
            assert_eq!(s.status == lapse_core::Status::Expired, expired, "{id}");
        }
        let events = store
            .events(&EventQuery {
                limit: 10,
                ..EventQuery::default()
            })
            .await
            .unwrap();
        let written: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(written, ["ev-a", "ev-c"], "in order, none for the loser");
        let queued = store.deliveries(None, 10).await.unwrap();
        assert_eq!(queued.len(), 2, "a webhook row for each written event");
    }
}

/// A change of several sessions (a parent and its child, as a cascade writes them) shares a
/// transaction with others and loses its compare-and-set on its second row: none of its rows
/// is written, and the changes around it commit.
#[tokio::test]
async fn in_a_batch_a_change_of_several_sessions_that_loses_writes_none_of_them() {
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let ids = ["before", "parent", "child", "after"];
        for id in ids {
            insert(store, &session("study", id, t0())).await;
        }
        let ended = |mut s: Session| {
            s.status = lapse_core::Status::Expired;
            SessionWrite::Update {
                session: s,
                changed: None,
            }
        };
        let alone = |w: SessionWrite| Commit {
            sessions: vec![w],
            ..Commit::default()
        };
        let mut child = loaded(store, "child").await;
        child.version -= 1; // decided on a row that has changed since
        let commits = [
            alone(ended(loaded(store, "before").await)),
            Commit {
                sessions: vec![ended(loaded(store, "parent").await), ended(child)],
                ..Commit::default()
            },
            alone(ended(loaded(store, "after").await)),
        ];
        let outcomes = store.commit_many(&commits).await.unwrap();
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
        assert!(
            matches!(outcomes[1], Err(StoreError::Conflict)),
            "{outcomes:?}"
        );
        for (id, expired) in [
            ("before", true),
            ("parent", false),
            ("child", false),
            ("after", true),
        ] {
            let s = loaded(store, id).await;
            assert_eq!(s.status == lapse_core::Status::Expired, expired, "{id}");
        }
    }
}

/// In a batch, a change decided on top of an earlier one of the same transaction (a child
/// ended by its parent's cascade, then by its own rule) is refused with the earlier one: the
/// version it expects is the one the earlier change would have written, which another
/// writer's change may have written instead, and its write would go over that change.
#[tokio::test]
async fn in_a_batch_a_change_built_on_a_refused_one_is_refused_too() {
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        for id in ["parent", "child", "other"] {
            insert(store, &session("study", id, t0())).await;
        }
        let update = |s: Session| SessionWrite::Update {
            session: s,
            changed: None,
        };
        // The sweep read both rows, as they stood.
        let (parent, child) = (loaded(store, "parent").await, loaded(store, "child").await);
        // Then another writer changed the child: its version is now the one the cascade's
        // write of it would have made.
        let mut elsewhere = child.clone();
        elsewhere.title = "renamed elsewhere".into();
        store
            .commit(Commit {
                sessions: vec![update(elsewhere)],
                ..Commit::default()
            })
            .await
            .unwrap();

        let mut ended_parent = parent;
        ended_parent.status = lapse_core::Status::Expired;
        let mut cascaded = child.clone();
        cascaded.title = "parent ended".into();
        // The child's own rule, decided on the cascade's write of it.
        let mut expired = cascaded.clone();
        expired.version += 1;
        expired.status = lapse_core::Status::Expired;
        let commits = [
            Commit {
                sessions: vec![update(ended_parent), update(cascaded)],
                ..Commit::default()
            },
            Commit {
                sessions: vec![update(expired)],
                ..Commit::default()
            },
            Commit {
                sessions: vec![update(loaded(store, "other").await)],
                ..Commit::default()
            },
        ];
        let outcomes = store.commit_many(&commits).await.unwrap();
        assert!(
            matches!(
                outcomes.as_slice(),
                [Err(StoreError::Conflict), Err(StoreError::Conflict), Ok(())]
            ),
            "{outcomes:?}"
        );
        let child = loaded(store, "child").await;
        assert_eq!(
            child.title, "renamed elsewhere",
            "the other writer's change stands"
        );
        assert_ne!(child.status, lapse_core::Status::Expired);
        assert_ne!(
            loaded(store, "parent").await.status,
            lapse_core::Status::Expired
        );
    }
}

/// A batch mixes changes that keep a session's status and stored wake-up (a join, a title),
/// one that moves the wake-up and one that ends the session: each row stores all it wrote, and
/// the sweep finds what is due by the wake-ups as written.
#[tokio::test]
async fn in_a_batch_each_change_stores_its_status_and_wake_up_whether_or_not_it_moves_them() {
    let wake = |mins: i64| Some(t0() + Span::from_secs(60 * mins));
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let ids = ["kept", "moved", "ended"];
        for id in ids {
            let mut s = session("study", id, t0());
            s.wake_at = wake(60);
            insert(store, &s).await;
        }
        let mut commits = Vec::new();
        for id in ids {
            let mut s = loaded(store, id).await;
            s.title = format!("{id}, renamed");
            match id {
                "moved" => s.wake_at = wake(10),
                "ended" => {
                    s.status = lapse_core::Status::Expired;
                    s.wake_at = None;
                }
                _ => {}
            }
            commits.push(Commit {
                sessions: vec![SessionWrite::Update {
                    session: s,
                    changed: None,
                }],
                ..Commit::default()
            });
        }
        let outcomes = store.commit_many(&commits).await.unwrap();
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        let open = session("study", "x", t0()).status;
        for (id, status, wake_at) in [
            ("kept", open, wake(60)),
            ("moved", open, wake(10)),
            ("ended", lapse_core::Status::Expired, None),
        ] {
            let s = loaded(store, id).await;
            assert_eq!(s.title, format!("{id}, renamed"));
            assert_eq!((s.status, s.wake_at), (status, wake_at), "{id}");
        }
        let due = |mins: i64| async move {
            let rows = store
                .due(wake(mins).unwrap(), None, None, 10, false)
                .await
                .unwrap();
            rows.into_iter()
                .map(|r| r.id.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(due(10).await, ["moved"]);
        assert_eq!(due(60).await, ["moved", "kept"]);
    }
}

/// A page's changes go to the database as one batch of rows (bound values on SQLite, a JSON
/// document on PostgreSQL); what a user wrote comes back exactly: quotes, backslashes, line
/// breaks, text that looks like JSON, characters past ASCII.
#[tokio::test]
async fn in_a_batch_text_comes_back_exactly_as_written() {
    use lapse_core::event::{EventData, NewEvent};
    use lapse_core::store::EventRecord;
    let odd = "ünïcode \"quoted\" back\\slash\nline {\"looks\": [\"json\"]} 🙂 \\u0041";
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let ids = ["a", "b"];
        for id in ids {
            insert(store, &session("study", id, t0())).await;
        }
        let mut commits = Vec::new();
        for id in ids {
            let mut s = loaded(store, id).await;
            s.title = format!("{id}: {odd}");
            s.metadata.insert(
                "note".into(),
                serde_json::json!({ "text": odd, "n": [1, 2] }),
            );
            commits.push(Commit {
                sessions: vec![SessionWrite::Update {
                    session: s,
                    changed: None,
                }],
                events: vec![EventRecord {
                    id: format!("ev-{id}"),
                    applied_at: t0(),
                    event: NewEvent {
                        event_type: lapse_core::EventType::SessionExpired,
                        at: t0(),
                        session_id: SessionId::parse(id).unwrap(),
                        kind: "study".into(),
                        actor: "rule:test".into(),
                        rule: Some("test".into()),
                        data: EventData::of(&serde_json::json!({ "note": odd })),
                    },
                    webhooks: vec![],
                }],
                ..Commit::default()
            });
        }
        let outcomes = store.commit_many(&commits).await.unwrap();
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        for id in ids {
            let s = loaded(store, id).await;
            assert_eq!(s.title, format!("{id}: {odd}"));
            assert_eq!(s.metadata["note"]["text"], odd);
        }
        let events = store.events(&super::events::all_events()).await.unwrap();
        let notes: Vec<serde_json::Value> = events
            .iter()
            .map(|e| {
                serde_json::from_str::<serde_json::Value>(e.data.as_str()).unwrap()["note"].clone()
            })
            .collect();
        assert_eq!(notes, [odd, odd], "the events' data");
    }
}

/// A page's participant rows, written together, come back field for field as each commit
/// left them (one who left, one gone offline), and a commit that names its changed
/// participants writes only theirs.
#[tokio::test]
async fn in_a_batch_participants_come_back_as_written_and_only_those_named() {
    let (ana, ben) = (UserId::parse("ana").unwrap(), UserId::parse("ben").unwrap());
    let later = t0() + Span::from_secs(60);
    let offline = t0() + Span::from_secs(30);
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let ids = ["a", "b"];
        for id in ids {
            let s = with_joined(session("study", id, t0()), &["ana", "ben"]);
            insert(store, &s).await;
        }
        let mut commits = Vec::new();
        for id in ids {
            let mut s = loaded(store, id).await;
            for p in &mut s.participants {
                if p.user == ana {
                    p.state = lapse_core::ParticipantState::Left;
                    p.left_at = Some(later);
                    p.last_seen_at = later;
                } else if p.user == ben {
                    p.offline_for = Some(offline);
                    p.last_seen_at = offline;
                }
            }
            // `b` names ben alone: ana's leaving is not written.
            let changed = (id == "b").then(|| vec![ben.clone()]);
            commits.push(Commit {
                sessions: vec![SessionWrite::Update {
                    session: s,
                    changed,
                }],
                ..Commit::default()
            });
        }
        let outcomes = store.commit_many(&commits).await.unwrap();
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        for id in ids {
            let s = loaded(store, id).await;
            let stored = |u: &UserId| {
                let p = s.participants.iter().find(|p| &p.user == u).unwrap();
                (
                    p.role,
                    p.state,
                    p.joined_at,
                    p.left_at,
                    p.last_seen_at,
                    p.offline_for,
                )
            };
            use lapse_core::ParticipantState::{Joined, Left};
            use lapse_core::Role::Member;
            let ana_left = (Member, Left, t0(), Some(later), later, None);
            let ana_stayed = (Member, Joined, t0(), None, t0(), None);
            let expected = if id == "a" { ana_left } else { ana_stayed };
            assert_eq!(stored(&ana), expected, "{id}: ana");
            let ben_offline = (Member, Joined, t0(), None, offline, Some(offline));
            assert_eq!(stored(&ben), ben_offline, "{id}: ben");
        }
    }
}

/// A lease ends with the instance that held it: rows one PostgreSQL store claimed can be
/// claimed by another as soon as the first is gone (its connections closed, as when its
/// process is killed), not when the lease's minute runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_ends_with_the_instance_that_held_it() {
    let Some((a, b)) = two_postgres_instances().await else {
        return;
    };
    insert(&a, &session("study", "room", t0())).await;
    let now = t0() + Span::from_secs(3600);
    assert_eq!(a.due(now, None, None, 10, true).await.unwrap().len(), 1);
    assert!(
        b.due(now, None, None, 10, true).await.unwrap().is_empty(),
        "held by a live instance"
    );

    drop(a);
    // The server notices the closed connection within moments.
    let started = std::time::Instant::now();
    while b.due(now, None, None, 10, true).await.unwrap().is_empty() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "the lease outlived its holder"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
