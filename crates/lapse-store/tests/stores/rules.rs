//! The rules in force, numbered: changes decided under replaced rules are refused.

use super::*;

/// Rules put in force are numbered; a commit or re-arm decided under an older number writes
/// nothing, alone or among commits decided under the rules in force, and only the holder of
/// the version in force can put the next one in force.
#[tokio::test]
async fn changes_decided_under_replaced_rules_are_refused() {
    for (store, _dir) in stores().await {
        let store = store.as_ref();
        assert_eq!(store.rules_in_force().await.unwrap(), None);
        assert_eq!(
            store.publish_rules(0, "v1", &[], t0(), None).await.unwrap(),
            1
        );
        let refused = store.publish_rules(0, "again", &[], t0(), None).await;
        assert!(
            matches!(refused, Err(StoreError::PolicyChanged)),
            "{refused:?}"
        );
        assert_eq!(
            store.publish_rules(1, "v2", &[], t0(), None).await.unwrap(),
            2
        );
        let stored = store.rules_in_force().await.unwrap().unwrap();
        assert_eq!((stored.version, stored.kinds.as_str()), (2, "v2"));

        let insert = |id: &str, rules_version| Commit {
            rules_version,
            sessions: vec![SessionWrite::Insert(session("study", id, t0()))],
            ..Commit::default()
        };
        let outcomes = store
            .commit_many(&[
                insert("old", Some(1)),
                insert("new", Some(2)),
                insert("unchecked", None),
            ])
            .await
            .unwrap();
        assert!(
            matches!(outcomes[0], Err(StoreError::PolicyChanged)),
            "{outcomes:?}"
        );
        assert!(outcomes[1].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
        assert!(
            store
                .load(&SessionId::parse("old").unwrap())
                .await
                .unwrap()
                .is_none()
        );
        let alone = store.commit(insert("old", Some(1))).await;
        assert!(matches!(alone, Err(StoreError::PolicyChanged)), "{alone:?}");

        let new = loaded(store, "new").await;
        let rearm = Rearm {
            id: new.id.clone(),
            version: new.version,
            wake_at: None,
            rule: None,
        };
        let stale = store
            .rearm(std::slice::from_ref(&rearm), Some(1), RearmOnly::Unchanged)
            .await;
        assert!(matches!(stale, Err(StoreError::PolicyChanged)), "{stale:?}");
        assert_eq!(
            store
                .rearm(std::slice::from_ref(&rearm), Some(2), RearmOnly::Unchanged)
                .await
                .unwrap(),
            1
        );

        // Moving a stored wake-up earlier ignores the row's version; moving it later does not
        // happen that way.
        let at = |secs| Some(t0() + Span::from_secs(secs));
        let mut moved = Rearm {
            version: 0,
            wake_at: at(600),
            rule: Some("r".into()),
            ..rearm
        };
        store
            .rearm(std::slice::from_ref(&moved), Some(2), RearmOnly::Unchanged)
            .await
            .unwrap();
        let stored = |s: Option<Session>| s.unwrap().wake_at;
        let id = SessionId::parse("new").unwrap();
        assert_eq!(
            stored(store.load(&id).await.unwrap()),
            None,
            "a stale version"
        );
        assert_eq!(
            store
                .rearm(std::slice::from_ref(&moved), Some(2), RearmOnly::Earlier)
                .await
                .unwrap(),
            0,
            "none stored: nothing to move"
        );
        let fresh = store.load(&id).await.unwrap().unwrap();
        moved.version = fresh.version;
        moved.wake_at = at(900);
        store
            .rearm(std::slice::from_ref(&moved), Some(2), RearmOnly::Unchanged)
            .await
            .unwrap();
        moved.version = 0;
        moved.wake_at = at(1200);
        assert_eq!(
            store
                .rearm(std::slice::from_ref(&moved), Some(2), RearmOnly::Earlier)
                .await
                .unwrap(),
            0,
            "later: left alone"
        );
        moved.wake_at = at(300);
        assert_eq!(
            store
                .rearm(std::slice::from_ref(&moved), Some(2), RearmOnly::Earlier)
                .await
                .unwrap(),
            1
        );
        assert_eq!(stored(store.load(&id).await.unwrap()), at(300));
    }
}
