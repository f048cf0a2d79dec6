//! The event stream: `GET /v1/events` with `Accept: text/event-stream` sends events as they
//! commit, `id:` their `seq`, and resumes from `Last-Event-ID` without gaps or duplicates.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// An open stream, read a chunk at a time.
struct Stream {
    response: reqwest::Response,
    pending: String,
}

impl Stream {
    async fn open(
        app: &TestApp,
        query: &str,
        last_event_id: Option<i64>,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut req = app
            .client
            .get(format!("{}/v1/events{query}", app.base))
            .header("accept", "text/event-stream");
        if token.is_none() {
            req = req.bearer_auth(ADMIN_KEY);
        }
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        req.send().await.unwrap()
    }

    /// The next `n` events as (id, event); fails the test if they do not come within seconds.
    async fn next(&mut self, n: usize) -> Vec<(i64, Value)> {
        let mut out = Vec::new();
        while out.len() < n {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse::<i64>().unwrap());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str::<Value>(v.trim()).unwrap());
                    }
                }
                if let (Some(id), Some(data)) = (id, data) {
                    out.push((id, data));
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("the stream sends within seconds")
                .unwrap()
                .expect("the stream stays open");
            self.pending.push_str(&String::from_utf8_lossy(&chunk));
        }
        out
    }
}

async fn events_stream_live_and_resume_without_gaps(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("study", "live", "alice", json!({})).await;
    let response = Stream::open(&app, "?session=live", None, None).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = Stream {
        response,
        pending: String::new(),
    };
    let first = stream.next(2).await;
    assert_eq!(first[0].1["type"], "session.created");
    assert_eq!(first[1].1["type"], "participant.joined");
    assert_eq!(
        first[0].0,
        first[0].1["seq"].as_i64().unwrap(),
        "id: is the seq"
    );

    // Events committed while the stream is open arrive on it.
    app.create("study", "other", "carol", json!({})).await; // filtered out: another session
    app.join("live", "bob").await;
    app.start("live", "alice").await;
    let live = stream.next(2).await;
    assert_eq!(live[0].1["type"], "participant.joined");
    assert_eq!(live[1].1["type"], "session.started");
    drop(stream);

    // Resuming after the first event replays exactly what followed it.
    let response = Stream::open(&app, "?session=live", Some(first[0].0), None).await;
    let mut resumed = Stream {
        response,
        pending: String::new(),
    };
    let again: Vec<i64> = resumed
        .next(3)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(again, [first[1].0, live[0].0, live[1].0]);

    // So does `?after=`, and the type filter applies.
    let query = format!("?type=session.started&after={}", first[0].0);
    let response = Stream::open(&app, &query, None, None).await;
    let mut started = Stream {
        response,
        pending: String::new(),
    };
    assert_eq!(started.next(1).await[0].0, live[1].0);
}

async fn a_browser_follows_its_own_room_with_a_token_in_the_query(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = crate::identity::jwt("alice", 3600);
    let mallory = crate::identity::jwt("mallory", 3600);
    app.create("study", "mine", "alice", json!({})).await;
    let ok = Stream::open(
        &app,
        &format!("?session=mine&access_token={alice}"),
        None,
        Some(&alice),
    )
    .await;
    assert_eq!(ok.status(), 200);
    let mut stream = Stream {
        response: ok,
        pending: String::new(),
    };
    assert_eq!(stream.next(1).await[0].1["type"], "session.created");
    let denied = Stream::open(
        &app,
        &format!("?session=mine&access_token={mallory}"),
        None,
        Some(&mallory),
    )
    .await;
    assert_eq!(denied.status(), 403);
    let whole_log = Stream::open(&app, &format!("?access_token={alice}"), None, Some(&alice)).await;
    assert_eq!(whole_log.status(), 403);
}

async fn open_streams_end_when_lapse_shuts_down(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("study", "live", "alice", json!({})).await;
    let response = Stream::open(&app, "?session=live", None, None).await;
    let mut stream = Stream {
        response,
        pending: String::new(),
    };
    stream.next(2).await;
    let asked = std::time::Instant::now();
    app.shut_down();
    // The stream ends (its client resumes elsewhere from the last id) rather than holding
    // the shutdown until the drain runs out.
    let end = tokio::time::timeout(Duration::from_secs(4), stream.response.chunk())
        .await
        .expect("the stream ends within seconds of the shutdown");
    assert!(matches!(end, Ok(None)), "the stream ends cleanly: {end:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
}

/// A connection of the test's own, written to and read from as bytes.
struct Raw {
    socket: tokio::net::TcpStream,
    read: Vec<u8>,
}

impl Raw {
    async fn connect(app: &TestApp) -> Raw {
        let addr = app.base.trim_start_matches("http://");
        Raw {
            socket: tokio::net::TcpStream::connect(addr).await.unwrap(),
            read: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &str) {
        use tokio::io::AsyncWriteExt;
        self.socket.write_all(bytes.as_bytes()).await.unwrap();
    }

    /// Reads until what has arrived contains `text`; fails the test if it does not within
    /// seconds. Everything read so far, as text.
    async fn until(&mut self, text: &str) -> String {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(&self.read).contains(text) {
            let mut buf = [0; 4096];
            let n = tokio::time::timeout_at(deadline, self.socket.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "`{text}` within seconds; got {:?}",
                        String::from_utf8_lossy(&self.read)
                    )
                })
                .unwrap();
            assert!(
                n > 0,
                "connection closed before `{text}`: {:?}",
                String::from_utf8_lossy(&self.read)
            );
            self.read.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&self.read).into_owned()
    }
}

fn stream_head(query: &str) -> String {
    format!(
        "GET /v1/events{query} HTTP/1.1\r\nHost: lapse\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         Accept: text/event-stream\r\n\r\n"
    )
}

/// A client whose request reaches lapse a piece at a time (a slow link, a proxy that writes
/// headers line by line) gets the same stream as one that sends it at once.
async fn a_stream_asked_for_a_piece_at_a_time_streams_the_same(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("study", "live", "alice", json!({})).await;
    let head = stream_head("?session=live");
    for (what, pieces) in [
        ("at once", vec![head.as_str()]),
        ("a line at a time", head.split_inclusive("\r\n").collect()),
        ("a few bytes first", vec![&head[..5], &head[5..]]),
    ] {
        let mut raw = Raw::connect(&app).await;
        for piece in pieces {
            raw.send(piece).await;
            // Each piece on the wire alone, as a slow client sends it.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = raw.until("participant.joined").await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{what}: {got}");
        assert!(
            got.contains("content-type: text/event-stream"),
            "{what}: {got}"
        );
        assert!(got.contains("session.created"), "{what}: {got}");
        // Events committed while it is open arrive on it too.
        app.send(
            As::Admin,
            reqwest::Method::PATCH,
            "/v1/sessions/live",
            Some(json!({"title": what})),
        )
        .await
        .expect(200);
        raw.until(what).await;
    }
}

/// A stream refused (no key) is answered like any request, and the same connection then
/// serves the client's next request.
async fn a_refused_stream_leaves_its_connection_serving(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut raw = Raw::connect(&app).await;
    raw.send("GET /v1/events HTTP/1.1\r\nHost: lapse\r\nAccept: text/event-stream\r\n\r\n")
        .await;
    let refused = raw.until("\"status\":401").await;
    assert!(
        refused.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
        "{refused}"
    );
    assert!(
        refused.contains("content-type: application/problem+json"),
        "{refused}"
    );
    let body = &refused[refused.find("\r\n\r\n").unwrap() + 4..];
    assert!(
        refused.contains(&format!("content-length: {}\r\n", body.len())),
        "the answer says where it ends: {refused}"
    );
    raw.read.clear();
    raw.send("GET /livez HTTP/1.1\r\nHost: lapse\r\n\r\n").await;
    let next = raw.until("\"ok\"").await;
    assert!(next.starts_with("HTTP/1.1 200 OK\r\n"), "{next}");
}

/// A client connected but silent (a pool's spare connection) does not hold lapse's shutdown:
/// its connection is closed at once, as one that has just been answered is.
async fn a_silent_connection_is_closed_when_lapse_shuts_down(backend: Backend) {
    use tokio::io::AsyncReadExt;
    let app = spawn_app(backend).await;
    let mut silent = Raw::connect(&app).await;
    let mut answered = Raw::connect(&app).await;
    answered
        .send("GET /livez HTTP/1.1\r\nHost: lapse\r\n\r\n")
        .await;
    answered.until("\"ok\"").await;
    app.shut_down();
    for raw in [&mut silent, &mut answered] {
        let mut buf = [0; 64];
        let read = tokio::time::timeout(Duration::from_secs(1), raw.socket.read(&mut buf))
            .await
            .expect("the connection is closed within a second of the shutdown");
        assert!(matches!(read, Ok(0)), "closed, not answered: {read:?}");
    }
}

both_stores!(
    events_stream_live_and_resume_without_gaps,
    a_browser_follows_its_own_room_with_a_token_in_the_query,
    open_streams_end_when_lapse_shuts_down,
    a_stream_asked_for_a_piece_at_a_time_streams_the_same,
    a_refused_stream_leaves_its_connection_serving,
    a_silent_connection_is_closed_when_lapse_shuts_down,
);
