//! Heartbeat flushes: they beat decisions taken on the older row, write only their own beats,
//! and take turns with commits of the same rows instead of deadlocking with them.

use super::*;

#[tokio::test]
async fn a_heartbeat_flush_beats_a_decision_taken_on_the_older_row() {
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let s = session("reading", "r", t0());
        insert(store, &s).await;
        let stale = store.load(&s.id).await.unwrap().unwrap();

        let beat_at = t0() + Span::from_secs(600);
        let host = UserId::parse("host").unwrap();
        let beat = Beat {
            session: s.id.clone(),
            user: host,
            at: beat_at,
        };
        // Two beats of one participant, and one of a stranger: the session moves once.
        let stranger = Beat {
            user: UserId::parse("stranger").unwrap(),
            ..beat.clone()
        };
        let earlier = Beat {
            at: t0() + Span::from_secs(60),
            ..beat.clone()
        };
        let moved = store
            .flush_heartbeats(&[earlier, beat, stranger])
            .await
            .unwrap();

        let fresh = store.load(&s.id).await.unwrap().unwrap();
        assert_eq!(
            moved,
            [lapse_core::store::Moved {
                id: s.id.clone(),
                version: stale.version + 1
            }],
            "the flush reports the version it wrote"
        );
        assert_eq!(fresh.version, stale.version + 1);
        assert_eq!(fresh.last_activity_at, beat_at);
        assert_eq!(fresh.participants[0].last_seen_at, beat_at);
        assert!(fresh.used);
        assert_eq!(
            fresh.next_due, stale.next_due,
            "the deadline column is re-armed lazily"
        );

        let mut decided = stale.clone();
        decided.status = lapse_core::Status::Expired;
        let update = Commit {
            sessions: vec![SessionWrite::Update {
                session: decided,
                changed: None,
            }],
            ..Commit::default()
        };
        let lost = store.commit(update).await;
        assert!(matches!(lost, Err(StoreError::Conflict)), "{lost:?}");
        let rearm = |version| Rearm {
            id: s.id.clone(),
            version,
            wake_at: None,
            rule: None,
        };
        assert_eq!(
            store
                .rearm(&[rearm(stale.version)], None, RearmOnly::Unchanged)
                .await
                .unwrap(),
            0,
            "a stale re-arm loses too"
        );
        assert_eq!(
            store
                .rearm(&[rearm(fresh.version)], None, RearmOnly::Unchanged)
                .await
                .unwrap(),
            1
        );
    }
}

/// Expires the stored session `id`, as a rule would.
async fn expire(store: &dyn Store, id: &str) {
    let mut closed = loaded(store, id).await;
    closed.status = lapse_core::Status::Expired;
    store
        .commit(Commit {
            sessions: vec![SessionWrite::Update {
                session: closed,
                changed: None,
            }],
            ..Commit::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn each_flush_writes_its_own_beats_and_moves_no_closed_session() {
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        for id in ["a", "b", "closed"] {
            insert(store, &session("reading", id, t0())).await;
        }
        expire(store, "closed").await;
        let load = |id: &str| {
            let id = SessionId::parse(id).unwrap();
            async move { store.load(&id).await.unwrap().unwrap() }
        };
        let before = [load("a").await, load("b").await, load("closed").await];
        let beat = |id: &str, secs| Beat {
            session: SessionId::parse(id).unwrap(),
            user: UserId::parse("host").unwrap(),
            at: t0() + Span::from_secs(secs),
        };

        let first = store
            .flush_heartbeats(&[beat("a", 60), beat("closed", 60)])
            .await
            .unwrap();
        let ids = |moved: &[lapse_core::store::Moved]| {
            moved.iter().map(|m| m.id.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(ids(&first), ["a"], "a closed session is not moved");
        let second = store.flush_heartbeats(&[beat("b", 120)]).await.unwrap();
        assert_eq!(
            ids(&second),
            ["b"],
            "the second flush writes its beats only"
        );

        let [a, b, closed] = [load("a").await, load("b").await, load("closed").await];
        assert_eq!(
            a.version,
            before[0].version + 1,
            "moved once, by its own flush"
        );
        assert_eq!(a.last_activity_at, t0() + Span::from_secs(60));
        assert_eq!(b.version, before[1].version + 1);
        assert_eq!(b.participants[0].last_seen_at, t0() + Span::from_secs(120));
        assert_eq!(closed.version, before[2].version);
        assert_eq!(closed.last_activity_at, before[2].last_activity_at);
    }
}

/// Beats of rooms the engine did not read first: each is written only where a read would
/// have found nothing to decide before it (open, no parent, nothing due by the beat, every
/// deadline stored under the rules in force, the user joined); the others are left for a
/// read, their rows untouched. Beats read first go in the same transaction regardless.
#[tokio::test]
async fn an_unread_beat_is_written_only_where_its_room_lets_it_stand() {
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        let version = store.publish_rules(0, "v1", &[], t0(), None).await.unwrap();
        store.mark_rearmed(version).await.unwrap();
        for id in ["open", "read", "closed", "child", "due"] {
            let mut s = session("reading", id, t0());
            if id == "child" {
                s.parent = Some(SessionId::parse("open").unwrap());
            }
            insert(store, &s).await;
        }
        expire(store, "closed").await;
        let beat = |id: &str, user: &str, secs| Beat {
            session: SessionId::parse(id).unwrap(),
            user: UserId::parse(user).unwrap(),
            at: t0() + Span::from_secs(secs),
        };
        // A reading's host lapses from presence 90 s after they were last seen: its stored
        // wake-up, so a beat at 100 s finds it due.
        let due_at = loaded(store, "due").await.wake_at.unwrap();
        assert_eq!(due_at, t0() + Span::from_secs(90));
        let ids = ["open", "read", "closed", "child", "due"];
        let mut before = Vec::new();
        for id in ids {
            before.push(loaded(store, id).await);
        }

        let written = store
            .write_heartbeats(
                &[beat("read", "host", 100)],
                &[
                    beat("open", "host", 30),
                    beat("open", "stranger", 30),
                    beat("closed", "host", 30),
                    beat("child", "host", 30),
                    beat("due", "host", 100),
                    beat("nowhere", "host", 30),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            written.unread,
            [Some(t0()), None, None, None, None, None],
            "only the open room's joined host stands, with the room's activity before"
        );
        let moved: Vec<String> = written.moved.iter().map(|m| m.id.to_string()).collect();
        let mut moved = moved;
        moved.sort();
        assert_eq!(moved, ["open", "read"]);
        for (id, before) in ids.iter().zip(&before) {
            let after = loaded(store, id).await;
            let beaten = matches!(*id, "open" | "read");
            assert_eq!(after.version, before.version + i64::from(beaten), "{id}");
            let seen = after.participants[0].last_seen_at;
            match *id {
                "open" => assert_eq!(seen, t0() + Span::from_secs(30)),
                "read" => assert_eq!(seen, t0() + Span::from_secs(100), "a read beat is a beat"),
                _ => assert_eq!(seen, t0(), "{id}: left for a read"),
            }
        }

        // New rules whose deadlines are still being stored: nothing stands unread.
        let newer = store
            .publish_rules(version, "v2", &[], t0(), None)
            .await
            .unwrap();
        let unread = [beat("open", "host", 40)];
        let during = store.write_heartbeats(&[], &unread).await.unwrap();
        assert_eq!(during.unread, [None], "a re-arm under way");
        store.mark_rearmed(newer).await.unwrap();
        let after = store.write_heartbeats(&[], &unread).await.unwrap();
        assert_eq!(after.unread, [Some(t0() + Span::from_secs(30))]);
    }
}

/// A room ended while its people beat: the end's transaction holds the session row and goes
/// on to write its participants, and a heartbeat flush of one of them comes in between. The
/// flush waits for the session before it touches the participant; had it taken the
/// participant first, each would wait for the other until PostgreSQL's deadlock check failed
/// one of them a second later (the end answered with an error, or the flush failed and was
/// tried again a second late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_never_holds_a_participant_a_commit_of_its_room_is_about_to_write() {
    let Some((store, raw)) = postgres_and_raw().await else {
        return;
    };
    let s = session("reading", "room", t0());
    insert(&store, &s).await;
    let host = UserId::parse("host").unwrap();

    // The commit, halfway: its session row written, its participants next.
    let mut ending = raw.begin().await.unwrap();
    sqlx::query("set local lock_timeout = '10s'")
        .execute(&mut *ending)
        .await
        .unwrap();
    sqlx::query("update sessions set title = 'ending' where id = 'room'")
        .execute(&mut *ending)
        .await
        .unwrap();

    let beat_at = t0() + Span::from_secs(60);
    let beat = Beat {
        session: s.id.clone(),
        user: host.clone(),
        at: beat_at,
    };
    let flushing = {
        let store = store.clone();
        tokio::spawn(async move { store.flush_heartbeats(&[beat]).await })
    };
    // Until the flush waits for the session row.
    lapse_store::testing::until_waiting(&raw, 1, || {}).await;

    sqlx::query("update participants set state = 'left' where session_id = 'room'")
        .execute(&mut *ending)
        .await
        .expect("the commit writes the room's participants without waiting for the flush");
    ending.commit().await.unwrap();

    let moved = flushing
        .await
        .unwrap()
        .expect("the flush succeeds after it");
    assert_eq!(moved.len(), 1, "the session was open: its activity moved");
    let room = store.load(&s.id).await.unwrap().unwrap();
    assert_eq!(room.title, "ending");
    assert_eq!(room.last_activity_at, beat_at);
    assert_eq!(
        room.participants[0].last_seen_at, s.participants[0].last_seen_at,
        "the beat of a participant who left by then is not written"
    );
}

/// A flush and a commit of several sessions (a sweep's batch, a cascade) each lock their rows
/// in an order of their own: overlapping, each could wait for a row the other holds until
/// PostgreSQL's deadlock check failed one of them a second later. They take turns: a commit of
/// several sessions waits for a flush under way, here one held up by a row it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_of_several_sessions_waits_for_a_flush_under_way() {
    let Some((store, raw)) = postgres_and_raw().await else {
        return;
    };
    for id in ["beaten", "a", "b"] {
        insert(&store, &session("reading", id, t0())).await;
    }
    let mut holding = raw.begin().await.unwrap();
    sqlx::query("update sessions set title = 'held' where id = 'beaten'")
        .execute(&mut *holding)
        .await
        .unwrap();

    let flushing = {
        let store = store.clone();
        let beat = Beat {
            session: SessionId::parse("beaten").unwrap(),
            user: UserId::parse("host").unwrap(),
            at: t0() + Span::from_secs(60),
        };
        tokio::spawn(async move { store.flush_heartbeats(&[beat]).await })
    };
    lapse_store::testing::until_waiting(&raw, 1, || {}).await;

    let mut commits = Vec::new();
    for id in ["a", "b"] {
        let mut s = loaded(&store, id).await;
        s.title = "ended".into();
        commits.push(Commit {
            sessions: vec![SessionWrite::Update {
                session: s,
                changed: None,
            }],
            ..Commit::default()
        });
    }
    let committing = {
        let store = store.clone();
        tokio::spawn(async move { store.commit_many(&commits).await })
    };
    // Until the commit waits too (for its turn): it must not go ahead of the flush.
    lapse_store::testing::until_waiting(&raw, 2, || {
        assert!(
            !committing.is_finished(),
            "a commit of several sessions went ahead of a flush under way"
        );
    })
    .await;

    holding.commit().await.unwrap();
    assert_eq!(flushing.await.unwrap().unwrap().len(), 1);
    let outcomes = committing.await.unwrap().unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
}
