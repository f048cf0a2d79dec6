//! Pending heartbeats: how big a flush transaction is, what it writes first, and which beats
//! cannot wait for it.

use super::*;

#[test]
fn a_flush_transaction_holds_the_writer_about_its_hold_time() {
    let ms = Duration::from_millis;
    // Hot pages (about 20 µs a beat): the largest transaction fits.
    assert_eq!(next_chunk(1_000, ms(20)), FLUSH_CHUNK);
    // Cold pages at a million live (about 125 µs a beat): what fits in 25 ms.
    assert_eq!(next_chunk(1_000, ms(125)), 200);
    // Slower still, or a beat that waited long for the writer: never fewer than the least.
    assert_eq!(next_chunk(1_000, ms(2_000)), FLUSH_CHUNK_MIN);
    assert_eq!(next_chunk(200, ms(5)), FLUSH_CHUNK);
    // Nothing measured, or nothing written: no division by zero, the largest.
    assert_eq!(next_chunk(0, ms(0)), FLUSH_CHUNK);
    assert_eq!(next_chunk(300, Duration::ZERO), FLUSH_CHUNK);
    let beats = Heartbeats::default();
    assert_eq!(beats.chunk(), FLUSH_CHUNK);
    beats.written(1_000, ms(125));
    assert_eq!(beats.chunk(), 200);
    beats.written(200, ms(4));
    assert_eq!(beats.chunk(), FLUSH_CHUNK);
    // Three beats that waited 20 ms for the writer behind a sweep: the size stays.
    beats.written(3, ms(20));
    assert_eq!(beats.chunk(), FLUSH_CHUNK);
    beats.written(FLUSH_CHUNK_MIN, ms(50));
    assert_eq!(beats.chunk(), FLUSH_CHUNK_MIN);
}

#[test]
fn a_flush_writes_first_the_rooms_a_sweep_looks_at_soonest() {
    let beats = Heartbeats::default();
    let id = |s: &str| SessionId::parse(s).unwrap();
    let ann = UserId::parse("ann").unwrap();
    let at = Timestamp::from_millis;
    beats.record(&id("later"), &ann, at(1_000), Some(at(90_000)));
    beats.record(&id("never"), &ann, at(1_000), None);
    beats.record(&id("soon"), &ann, at(1_000), Some(at(60_000)));
    beats.record(&id("sooner"), &ann, at(1_000), Some(at(70_000)));
    // A later beat of the same room, read where its stored wake-up was earlier still.
    beats.record(&id("sooner"), &ann, at(1_200), Some(at(30_000)));
    let order = |drained: Vec<Beat>| -> Vec<String> {
        drained.iter().map(|b| b.session.to_string()).collect()
    };
    let drained = beats.drain();
    assert_eq!(order(drained.clone()), ["sooner", "soon", "later", "never"]);

    // Beats whose flush failed come back, and go first next time.
    beats.record(&id("fresh"), &ann, at(2_000), Some(at(10_000)));
    beats.restore(drained[3..].to_vec());
    assert_eq!(order(beats.drain()), ["never", "fresh"]);
}

#[test]
fn a_beat_near_its_rooms_wake_up_is_urgent_once_a_flush() {
    let beats = Heartbeats::default();
    let id = |s: &str| SessionId::parse(s).unwrap();
    let ann = UserId::parse("ann").unwrap();
    let at = Timestamp::from_millis;
    // Before any flush, urgent within the idle grace of the stored wake-up.
    assert_eq!(beats.urgent_within(), IDLE_GRACE);
    beats.record(&id("near"), &ann, at(10_000), Some(at(11_500)));
    beats.record(&id("far"), &ann, at(10_000), Some(at(15_000)));
    beats.record(&id("never"), &ann, at(10_000), None);
    let mut taken = HashSet::new();
    let urgent = beats.take_urgent(&mut taken);
    assert_eq!(urgent.len(), 1);
    assert_eq!(urgent[0].session, id("near"));
    assert_eq!(beats.len(), 2, "the others wait for the flush");
    // Once a flush: near's next beat waits with the rest.
    beats.record(&id("near"), &ann, at(10_100), Some(at(11_500)));
    assert!(beats.take_urgent(&mut taken).is_empty());
    assert_eq!(beats.len(), 3);

    // After a flush of 2 s, a beat may wait two of them: far is urgent now.
    beats.flush_took(Duration::from_secs(2));
    assert_eq!(beats.urgent_within(), Span::from_millis(6_000));
    beats.record(&id("far"), &ann, at(10_200), Some(at(15_000)));
    let urgent = beats.take_urgent(&mut taken);
    assert_eq!(urgent.len(), 1);
    assert_eq!(urgent[0].session, id("far"));
    // A drain takes the rest, and the marks with them.
    assert_eq!(beats.drain().len(), 2);
    assert!(beats.take_urgent(&mut HashSet::new()).is_empty());
}

#[test]
fn a_participant_beating_again_is_pending_once_at_its_latest_time() {
    let beats = Heartbeats::default();
    let (room, other) = (
        SessionId::parse("room").unwrap(),
        SessionId::parse("other").unwrap(),
    );
    let (ann, bob) = (UserId::parse("ann").unwrap(), UserId::parse("bob").unwrap());
    let at = Timestamp::from_millis;
    beats.record(&room, &ann, at(2_000), None);
    beats.record(&room, &ann, at(1_000), None); // late, out of order: the latest stays
    beats.record(&room, &bob, at(1_500), None);
    beats.record(&other, &ann, at(3_000), None);
    assert_eq!(beats.len(), 3);
    let mut drained: Vec<(String, String, i64)> = beats
        .drain()
        .into_iter()
        .map(|b| (b.session.to_string(), b.user.to_string(), b.at.millis()))
        .collect();
    drained.sort();
    let expected = [
        ("other", "ann", 3_000),
        ("room", "ann", 2_000),
        ("room", "bob", 1_500),
    ];
    let expected: Vec<(String, String, i64)> = expected
        .iter()
        .map(|(s, u, t)| (s.to_string(), u.to_string(), *t))
        .collect();
    assert_eq!(drained, expected);
    assert!(beats.is_empty());
}
