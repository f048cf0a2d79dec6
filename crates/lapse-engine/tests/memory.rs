//! What the engine answers from memory, and why nothing wrong can commit because of it: two
//! engines over one database (a SQLite file; PostgreSQL where a test says so) stand for two
//! instances (or `lapse serve` and a `lapse sweep` beside it).

use std::sync::Arc;

use lapse_core::intercept::{Call, Hook, Intercepted};
use lapse_core::lifecycle::Via;
use lapse_core::{Config, ParticipantState, SessionId, Span, Status, Store, StoreError, UserId};
use lapse_engine::ops::CreateRequest;
use lapse_engine::{Clock, Engine, EngineError};
use lapse_store::SqliteStore;

mod common;
use common::{admin, create, engine_over, postgres_instance, t0};

/// Two engines (two instances) over one SQLite file.
async fn two_instances(dir: &tempfile::TempDir) -> (Arc<Engine>, Arc<Engine>, Arc<dyn Store>) {
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    let open = || async {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url, None).await.unwrap());
        store.migrate().await.unwrap();
        Engine::new(store, Arc::new(Config::default()), Clock::manual(t0()))
    };
    let (a, b) = (open().await, open().await);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url, None).await.unwrap());
    (a, b, store)
}

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

/// A study session hosted by `host`.
fn room_request(id: &str) -> CreateRequest {
    create("study", id, "host")
}

#[tokio::test]
async fn a_heartbeat_accepted_after_another_instance_ended_the_session_never_revives_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, store) = two_instances(&dir).await;
    let id = SessionId::parse("room").unwrap();
    a.create(&admin(), room_request("room")).await.unwrap();
    a.start(&admin(), &id).await.unwrap();
    a.heartbeat(&admin(), &id, &user("host")).await.unwrap();
    a.flush_heartbeats().await.unwrap();

    // Instance B ends it; A still holds its copy from a moment ago.
    b.end(&admin(), &id).await.unwrap();
    let ended = store.load(&id).await.unwrap().unwrap();

    // The documented window: A accepts the beat from memory...
    a.heartbeat(&admin(), &id, &user("host")).await.unwrap();
    assert_eq!(a.pending_heartbeats(), 1, "accepted from memory");
    // ...and its flush changes nothing: only joined participants of open sessions move.
    a.flush_heartbeats().await.unwrap();
    let after = store.load(&id).await.unwrap().unwrap();
    assert_eq!(after.status, Status::Completed);
    assert_eq!(
        after.version, ended.version,
        "the ended row was not written"
    );
    assert_eq!(after.participants[0].state, ParticipantState::Left);
    assert_eq!(
        after.participants[0].last_seen_at,
        ended.participants[0].last_seen_at
    );

    // Any operation that changes the session reads its version first, so A sees the end.
    let join = a
        .join(&admin(), &id, &user("late"), None, Via::Direct)
        .await;
    assert!(join.is_err(), "an ended session takes no joins: {join:?}");
}

#[tokio::test]
async fn a_join_in_a_big_room_writes_the_new_participant_and_keeps_everyone_else() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, store) = two_instances(&dir).await;
    let id = SessionId::parse("lecture").unwrap();
    a.create(&admin(), room_request("lecture")).await.unwrap();
    for n in 0..20 {
        let who = user(&format!("student{n}"));
        // Joins alternate between instances: each must see the other's writes.
        let engine = if n % 2 == 0 { &a } else { &b };
        engine
            .join(&admin(), &id, &who, None, Via::Direct)
            .await
            .unwrap();
    }
    let room = store.load(&id).await.unwrap().unwrap();
    assert_eq!(room.participants.len(), 21, "host and twenty students");
    assert!(
        room.participants
            .iter()
            .all(|p| p.state == ParticipantState::Joined)
    );
}

#[tokio::test]
async fn heartbeats_answered_from_memory_follow_joins_and_leaves_in_a_held_room() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _b, store) = two_instances(&dir).await;
    let id = SessionId::parse("hall").unwrap();
    a.create(&admin(), room_request("hall")).await.unwrap();
    for n in 0..30 {
        a.join(&admin(), &id, &user(&format!("s{n}")), None, Via::Direct)
            .await
            .unwrap();
    }
    // The room is held; each change below updates the held copy, not a fresh read.
    a.heartbeat(&admin(), &id, &user("s7")).await.unwrap();
    a.leave(&admin(), &id, &user("s7")).await.unwrap();
    let refused = a.heartbeat(&admin(), &id, &user("s7")).await;
    assert!(
        refused.is_err(),
        "a user who left beats no more: {refused:?}"
    );
    a.join(&admin(), &id, &user("s7"), None, Via::Direct)
        .await
        .unwrap();
    a.join(&admin(), &id, &user("newcomer"), None, Via::Direct)
        .await
        .unwrap();
    a.heartbeat(&admin(), &id, &user("s7")).await.unwrap();
    a.heartbeat(&admin(), &id, &user("newcomer")).await.unwrap();
    a.flush_heartbeats().await.unwrap();

    let room = store.load(&id).await.unwrap().unwrap();
    assert_eq!(
        room.participants.len(),
        32,
        "host, thirty students, one newcomer"
    );
    assert!(
        room.participants
            .iter()
            .all(|p| p.state == ParticipantState::Joined)
    );
    // What the instance answers from memory is what was stored.
    let held = a.get(&admin(), &id).await.unwrap();
    let who = |s: &lapse_core::Session| {
        s.participants
            .iter()
            .map(|p| (p.user.clone(), p.state, p.last_seen_at))
            .collect::<Vec<_>>()
    };
    assert_eq!(who(&held), who(&room));
}

#[tokio::test]
async fn a_stream_that_subscribed_before_the_event_reader_started_catches_up_again() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _b, _store) = two_instances(&dir).await;
    let mut early = a.subscribe_events(&lapse_core::store::EventQuery::default());
    // The reader takes its position at the end of the table; nothing before it is handed out,
    // so a stream already following is cut off and reads the table again.
    a.feed_once().await.unwrap();
    assert!(early.events.recv().await.is_none());
    let mut late = a.subscribe_events(&lapse_core::store::EventQuery::default());
    a.create(&admin(), room_request("after")).await.unwrap();
    a.feed_once().await.unwrap();
    let event = late.events.recv().await.unwrap();
    assert_eq!(event.session_id.as_str(), "after");
}

#[tokio::test]
async fn a_flush_that_finds_the_row_changed_elsewhere_drops_the_held_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _store) = two_instances(&dir).await;
    let id = SessionId::parse("room").unwrap();
    a.create(&admin(), room_request("room")).await.unwrap();
    a.start(&admin(), &id).await.unwrap();
    a.join(&admin(), &id, &user("ada"), None, Via::Direct)
        .await
        .unwrap();
    a.heartbeat(&admin(), &id, &user("host")).await.unwrap();

    // Instance B sees Ada leave; A's copy still has her joined.
    b.leave(&admin(), &id, &user("ada")).await.unwrap();
    // A's flush moves the row past a version A never saw, so A stops trusting its copy...
    a.flush_heartbeats().await.unwrap();
    // ...and Ada's next beat at A is checked against the stored row, not answered from memory.
    let beat = a.heartbeat(&admin(), &id, &user("ada")).await;
    assert!(beat.is_err(), "she has left: {beat:?}");
    assert_eq!(a.pending_heartbeats(), 0);
}

#[tokio::test]
async fn a_room_beaten_through_both_instances_keeps_answering_heartbeats_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, store) = two_instances(&dir).await;
    let id = started_room_with_reader(&a).await;
    a.feed_once().await.unwrap();
    a.heartbeat(&admin(), &id, &user("host")).await.unwrap();
    // The host's beats reach both instances (a load balancer between them): B's flush moves
    // the row past A's copy, then A's moves it again.
    b.heartbeat(&admin(), &id, &user("host")).await.unwrap();
    b.flush_heartbeats().await.unwrap();
    a.flush_heartbeats().await.unwrap();
    let flushed = store.load(&id).await.unwrap().unwrap();
    a.feed_once().await.unwrap();

    // A still answers from its copy: after B ends the room (an event A's reader has not read
    // yet, the documented window), A accepts the beat without a look at the database.
    b.end(&admin(), &id).await.unwrap();
    a.heartbeat(&admin(), &id, &user("host")).await.unwrap();
    assert_eq!(a.pending_heartbeats(), 1, "accepted from memory");
    // A change reads the row again first: A's copy is behind it.
    let ended = a.get(&admin(), &id).await.unwrap();
    assert_eq!(ended.status, Status::Completed);
    assert!(ended.version > flushed.version);

    // Once A's reader has read the end, the beat is checked and refused.
    a.feed_once().await.unwrap();
    let beat = a.heartbeat(&admin(), &id, &user("host")).await;
    assert!(beat.is_err(), "the session has ended: {beat:?}");
}

/// Moves the engines' monotonic time (how old a held copy is) on by `secs`, without waiting.
async fn age(secs: u64) {
    tokio::time::pause();
    tokio::time::advance(std::time::Duration::from_secs(secs)).await;
    tokio::time::resume();
}

/// Instance `a`'s event reader started, then the room `room` created and started through it.
async fn started_room_with_reader(a: &Engine) -> SessionId {
    let id = SessionId::parse("room").unwrap();
    a.feed_once().await.unwrap();
    a.create(&admin(), room_request("room")).await.unwrap();
    a.start(&admin(), &id).await.unwrap();
    id
}

#[tokio::test]
async fn once_the_event_feed_reads_another_instances_end_no_heartbeat_is_taken_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _store) = two_instances(&dir).await;
    let id = started_room_with_reader(&a).await;
    a.heartbeat(&admin(), &id, &user("host")).await.unwrap();

    // Instance B ends it; A's copy was checked a moment ago. Once A's event reader has read
    // the end, A no longer answers from that copy: the beat is checked and refused.
    b.end(&admin(), &id).await.unwrap();
    a.feed_once().await.unwrap();
    let beat = a.heartbeat(&admin(), &id, &user("host")).await;
    assert!(beat.is_err(), "the session has ended: {beat:?}");
    assert_eq!(a.pending_heartbeats(), 1, "only the first beat is pending");
}

#[tokio::test]
async fn a_copy_the_event_feed_vouches_for_answers_heartbeats_from_memory_however_old() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _store) = two_instances(&dir).await;
    let id = started_room_with_reader(&a).await;
    // The reader reads A's own events (the copy is checked again at the next beat), then
    // the beat holds a copy no later event has touched.
    a.feed_once().await.unwrap();
    a.heartbeat(&admin(), &id, &user("host")).await.unwrap();

    // Long past the time a checked copy is trusted on its own, the reader has just read the
    // table again: nothing happened to the room, so the copy still answers.
    age(60).await;
    a.feed_once().await.unwrap();
    // B ends the room after that read: the beat is answered from memory (the documented
    // window, bounded by the reader's next read), so it is accepted without a look at the
    // database, which would have refused it.
    b.end(&admin(), &id).await.unwrap();
    a.heartbeat(&admin(), &id, &user("host")).await.unwrap();
    assert_eq!(a.pending_heartbeats(), 1, "accepted from memory");

    // Once the reader's last read is old too, nothing vouches for the copy: the next beat
    // is checked against the database and refused.
    age(60).await;
    let beat = a.heartbeat(&admin(), &id, &user("host")).await;
    assert!(beat.is_err(), "the session has ended: {beat:?}");
}

/// A participant's beat that comes just before their presence lapses is written before it is
/// answered: held in memory until the next flush, it would be unknown to another instance
/// deciding the lapse on the stored row meanwhile, which would tell them offline while they
/// were beating.
async fn a_beat_just_before_a_presence_lapse_is_seen_by(
    a: Arc<Engine>,
    b: Arc<Engine>,
    store: Arc<dyn Store>,
) {
    let id = started_room_with_reader(&a).await;
    let guest = user("guest");
    a.join(&admin(), &id, &guest, None, Via::Direct)
        .await
        .unwrap();
    // Both instances' clocks move alike. The guest's presence lapses 90 s after the join;
    // the host's beats keep the room's stored activity recent.
    let advance = |ms: i64| {
        for engine in [&a, &b] {
            engine
                .clock()
                .advance(lapse_core::Span::from_millis(ms))
                .unwrap();
        }
    };
    advance(87_500);
    a.heartbeat(&admin(), &id, &user("host")).await.unwrap();
    a.flush_heartbeats().await.unwrap();
    advance(1_500);
    a.heartbeat(&admin(), &id, &guest).await.unwrap();

    // B sweeps as the guest's stored lapse comes, before A's next flush.
    advance(1_100);
    b.sweep_once(&lapse_engine::SweepOptions::default())
        .await
        .unwrap();
    a.flush_heartbeats().await.unwrap();
    let room = store.load(&id).await.unwrap().unwrap();
    let seen = room.participants.iter().find(|p| p.user == guest).unwrap();
    assert_eq!(seen.offline_for, None, "never told offline: {seen:?}");
    assert_eq!(
        seen.last_seen_at,
        t0() + lapse_core::Span::from_millis(89_000)
    );
}

#[tokio::test]
async fn a_beat_just_before_a_presence_lapse_is_seen_by_another_instances_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, store) = two_instances(&dir).await;
    a_beat_just_before_a_presence_lapse_is_seen_by(a, b, store).await;
}

#[tokio::test]
async fn a_beat_just_before_a_presence_lapse_is_seen_by_another_instance_on_postgres() {
    let Some(url) = lapse_store::testing::fresh_postgres_database().await else {
        return;
    };
    let store = postgres_instance(&url).await;
    let (a, b) = (engine_over(store.clone()), engine_over(store.clone()));
    a_beat_just_before_a_presence_lapse_is_seen_by(a, b, store).await;
}

/// The names of the store calls an instance made, in order.
#[derive(Default)]
struct Calls(std::sync::Mutex<Vec<&'static str>>);

impl Calls {
    fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Hook for Calls {
    type Ticket = ();

    fn before(&self, call: Call) -> Result<(), StoreError> {
        self.0.lock().unwrap().push(call.name);
        Ok(())
    }
}

/// Two instances over one SQLite file, the rules in force put there by A (as `lapse serve`
/// does at start), and B's store calls counted.
async fn instances_counting_b(
    dir: &tempfile::TempDir,
) -> (Arc<Engine>, Arc<Engine>, Arc<dyn Store>, Arc<Calls>) {
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    let open = || async {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url, None).await.unwrap());
        store.migrate().await.unwrap();
        store
    };
    let config = Arc::new(Config::default());
    let a = Engine::new(open().await, config.clone(), Clock::manual(t0()));
    a.put_rules_in_force().await.unwrap();
    let calls = Arc::new(Calls::default());
    let counted = Arc::new(Intercepted::new(open().await, calls.clone()));
    let b = Engine::new(counted, config, Clock::manual(t0()));
    (a, b, open().await, calls)
}

/// Moves both instances' clocks on by `ms`.
fn advance(engines: [&Engine; 2], ms: i64) {
    for e in engines {
        e.clock().advance(Span::from_millis(ms)).unwrap();
    }
}

#[tokio::test]
async fn a_beat_of_a_room_this_instance_holds_no_copy_of_is_written_without_reading_the_room() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, store, calls) = instances_counting_b(&dir).await;
    let id = SessionId::parse("room").unwrap();
    a.create(&admin(), room_request("room")).await.unwrap();
    a.start(&admin(), &id).await.unwrap();

    // A client beating every 20 s, through B, which has never read the room.
    advance([&a, &b], 20_000);
    calls.take();
    b.heartbeat(&admin(), &id, &user("host")).await.unwrap();
    assert_eq!(calls.take(), ["write_heartbeats"], "one write, no read");
    assert_eq!(b.pending_heartbeats(), 0, "written before its answer");
    let stored = store.load(&id).await.unwrap().unwrap();
    let beat_at = t0() + Span::from_secs(20);
    assert_eq!(stored.last_activity_at, beat_at);
    assert_eq!(
        stored.participant(&user("host")).unwrap().last_seen_at,
        beat_at
    );

    // The room's stored activity covered the next one: beaten often, the room is read into
    // memory once this beat is written, and the beat after it is answered from there.
    advance([&a, &b], 1_000);
    b.heartbeat(&admin(), &id, &user("host")).await.unwrap();
    assert_eq!(calls.take(), ["write_heartbeats", "load"]);
    advance([&a, &b], 500);
    b.heartbeat(&admin(), &id, &user("host")).await.unwrap();
    assert_eq!(calls.take(), Vec::<&str>::new(), "from memory");
    assert_eq!(b.pending_heartbeats(), 1);
}

#[tokio::test]
async fn a_beat_its_room_does_not_let_stand_unread_is_answered_after_a_read_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, store, calls) = instances_counting_b(&dir).await;
    let [room, ended, lapsing] =
        ["room", "ended", "lapsing"].map(|id| SessionId::parse(id).unwrap());
    for id in [&room, &ended, &lapsing] {
        a.create(&admin(), room_request(id.as_str())).await.unwrap();
        a.start(&admin(), id).await.unwrap();
    }
    a.end(&admin(), &ended).await.unwrap();

    // Refused as a read refuses them: an ended room, a stranger, a room that never was.
    advance([&a, &b], 20_000);
    let refused = b.heartbeat(&admin(), &ended, &user("host")).await;
    assert!(matches!(refused, Err(EngineError::Op(_))), "{refused:?}");
    let stranger = b.heartbeat(&admin(), &room, &user("stranger")).await;
    assert!(matches!(stranger, Err(EngineError::Op(_))), "{stranger:?}");
    let nowhere = SessionId::parse("nowhere").unwrap();
    let missing = b.heartbeat(&admin(), &nowhere, &user("host")).await;
    assert!(
        matches!(missing, Err(EngineError::NotFound(_))),
        "{missing:?}"
    );
    let stored = store.load(&room).await.unwrap().unwrap();
    assert_eq!(
        stored.last_activity_at,
        t0(),
        "nothing written for the stranger"
    );

    // Past the host's presence lapse (90 s after they were last seen, the room's stored
    // wake-up), in a room B has not read: the beat is not written unread. The read tells the
    // lapse, as of its deadline, then the beat is written.
    advance([&a, &b], 80_000);
    calls.take();
    b.heartbeat(&admin(), &lapsing, &user("host"))
        .await
        .unwrap();
    let made = calls.take();
    assert_eq!(made[0], "write_heartbeats", "{made:?}");
    assert!(made.contains(&"load"), "{made:?}");
    let stored = store.load(&lapsing).await.unwrap().unwrap();
    assert_eq!(
        stored.participant(&user("host")).unwrap().last_seen_at,
        t0() + Span::from_secs(100)
    );
    let offline = lapse_core::store::EventQuery {
        limit: 100,
        types: vec![lapse_core::EventType::ParticipantOffline],
        ..Default::default()
    };
    let told: Vec<_> = store
        .events(&offline)
        .await
        .unwrap()
        .iter()
        .map(|e| e.at)
        .collect();
    assert_eq!(told, [t0() + Span::from_secs(90)]);

    // The batch endpoint answers the same, each beat at its place.
    let beats: Vec<(String, String)> = [("lapsing", "host"), ("ended", "host"), ("room", "nobody")]
        .iter()
        .map(|(s, u)| (s.to_string(), u.to_string()))
        .collect();
    // A third instance, which has read none of them.
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    let third = Engine::new(
        Arc::new(SqliteStore::open(&url, None).await.unwrap()),
        Arc::new(Config::default()),
        Clock::manual(t0() + Span::from_secs(160)),
    );
    let (accepted, rejected) = third.heartbeats(&admin(), &beats).await.unwrap();
    assert_eq!(accepted, 1);
    let places: Vec<usize> = rejected.iter().map(|r| r.index).collect();
    assert_eq!(places, [1, 2]);
    let stored = store.load(&lapsing).await.unwrap().unwrap();
    assert_eq!(stored.last_activity_at, t0() + Span::from_secs(160));
}
