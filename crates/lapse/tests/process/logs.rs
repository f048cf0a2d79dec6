//! What `lapse serve` writes to its log: one line per request tied together by a request id,
//! text without terminal colours when written to a file, JSON on request, and never a secret.

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use crate::running::{KEY, Lapse, WEBHOOK_SECRET};

const SERVICE_KEY: &str = "svc-9f8e7d6c5b4a39281706";
const CRON_SECRET: &str = "cron-5a4b3c2d1e0f9a8b7c6d";
const JWT_SECRET: &str = "jwt-hs256-0123456789abcdef0123456789abcdef";

/// A configuration whose webhook endpoint refuses connections, so deliveries fail and their
/// errors reach the log too.
fn config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let path = dir.join("lapse.toml");
    std::fs::write(
        &path,
        format!(
            "{extra}\n[[webhooks]]\nurl = \"http://127.0.0.1:{closed}/hooks\"\n\
             secret_env = \"LAPSE_PROCESS_WEBHOOK_SECRET\"\nevents = [\"session.*\"]\n"
        ),
    )
    .expect("the config is written");
    path
}

fn user_token(sub: &str) -> String {
    let exp = chrono::Utc::now().timestamp() + 600;
    jsonwebtoken::encode(
        &Header::default(),
        &json!({ "sub": sub, "exp": exp }),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("a token")
}

/// Requests carrying every kind of credential, good and bad, in headers and in the query.
async fn traffic(lapse: &Lapse) -> Vec<String> {
    let client = reqwest::Client::new();
    let base = &lapse.base;
    let token = user_token("ana");
    let mut ids = Vec::new();
    let created = client
        .post(format!("{base}/v1/sessions"))
        .header("x-api-key", SERVICE_KEY)
        .header("x-actor", "ana")
        .header("x-request-id", "req-from-proxy-1")
        .json(&json!({ "id": "logged-room", "kind": "study" }))
        .send()
        .await
        .expect("lapse answers");
    assert_eq!(created.status().as_u16(), 201);
    ids.push(header(&created, "x-request-id"));
    let asks: Vec<reqwest::RequestBuilder> = vec![
        client
            .get(format!("{base}/v1/sessions/logged-room"))
            .bearer_auth(&token),
        client
            .get(format!("{base}/v1/events?access_token={token}"))
            .timeout(Duration::from_millis(300)),
        client
            .post(format!("{base}/v1/sweep"))
            .bearer_auth(CRON_SECRET),
        client
            .get(format!("{base}/v1/sessions/logged-room"))
            .bearer_auth(format!("{JWT_SECRET}-not-this")),
        client
            .get(format!("{base}/v1/sessions/logged-room"))
            .header("x-api-key", format!("{SERVICE_KEY}x")),
        client
            .post(format!("{base}/v1/sessions/logged-room/end"))
            .bearer_auth(KEY)
            .header("x-actor", "ana"),
    ];
    for ask in asks {
        if let Ok(answer) = ask.send().await {
            ids.push(header(&answer, "x-request-id"));
        }
    }
    ids
}

fn header(answer: &reqwest::Response, name: &str) -> String {
    answer
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn assert_no_secrets(log: &str) {
    let token = user_token("ana");
    let signature = token.rsplit('.').next().expect("a JWT has a signature");
    for secret in [
        KEY,
        SERVICE_KEY,
        CRON_SECRET,
        JWT_SECRET,
        WEBHOOK_SECRET,
        signature,
    ] {
        assert!(
            !log.contains(secret),
            "the log holds a secret ({secret}):\n{log}"
        );
    }
}

/// A `lapse serve` with every kind of credential configured, `config_extra` in its file and
/// `RUST_LOG` set, through [`traffic`] and a moment of failing deliveries: the request ids
/// its answers carried, and its log.
async fn logged_run(config_extra: &str, rust_log: &str) -> (Vec<String>, String) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let db = format!("sqlite://{}", dir.path().join("lapse.db").display());
    let env = [
        ("LAPSE_SERVICE_KEY", SERVICE_KEY),
        ("CRON_SECRET", CRON_SECRET),
        ("LAPSE_JWT_SECRET", JWT_SECRET),
        ("RUST_LOG", rust_log),
    ];
    let config = config(dir.path(), config_extra);
    let lapse = Lapse::start_with(&db, &config, dir.path().join("lapse.log"), &env).await;
    let ids = traffic(&lapse).await;
    // Deliveries to the closed endpoint fail and are logged meanwhile.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (ids, lapse.log_text())
}

#[tokio::test]
async fn text_logs_carry_one_line_per_request_no_colours_and_no_secrets() {
    let (ids, log) = logged_run("", "debug,sqlx=warn,hyper=info,h2=info,reqwest=info").await;

    assert!(
        !log.contains('\u{1b}'),
        "no terminal colours in a file:\n{log}"
    );
    assert_no_secrets(&log);
    assert_eq!(
        ids[0], "req-from-proxy-1",
        "a proxy's request id is kept and echoed"
    );
    assert_eq!(ids.len(), 7, "every request was answered: {ids:?}");
    for id in &ids {
        assert!(!id.is_empty(), "every answer carries a request id");
        let line = log
            .lines()
            .find(|l| l.contains(&format!("request_id={id}")) && l.contains(" request "))
            .unwrap_or_else(|| panic!("no request line for {id}:\n{log}"));
        for field in ["method=", "route=", "status=", "latency_ms="] {
            assert!(line.contains(field), "{field} in {line}");
        }
    }
    assert!(log.contains("route=/v1/sessions/{id} status=200"), "{log}");
    assert!(log.contains("route=/v1/sessions/{id} status=401"), "{log}");
    assert!(
        !log.contains("logged-room/end"),
        "paths are logged as their route only"
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    // Asked for in the file; the environment is not set.
    let (ids, log) = logged_run("[log]\nformat = \"json\"\n", "info").await;
    assert_no_secrets(&log);

    let records: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect();
    let requests: Vec<&Value> = records
        .iter()
        .filter(|r| r["message"] == "request")
        .collect();
    assert_eq!(requests.len(), ids.len(), "{log}");
    let created = requests
        .iter()
        .find(|r| r["span"]["request_id"] == "req-from-proxy-1")
        .expect("the create's line");
    assert_eq!(created["method"], "POST");
    assert_eq!(created["route"], "/v1/sessions");
    assert_eq!(created["status"], 201);
    assert!(created["latency_ms"].as_f64().is_some());
    assert!(
        records
            .iter()
            .all(|r| r["level"].is_string() && r["timestamp"].is_string())
    );
}
