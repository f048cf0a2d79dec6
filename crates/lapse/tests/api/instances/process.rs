//! `lapse serve` as a process of its own for the instances' tests: started on a free port
//! with a manual clock, and the few admin calls the tests make to it.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

pub(super) struct Instance {
    pub(super) child: Child,
    pub(super) base: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub(super) async fn start_instance(db_url: &str) -> Instance {
    start_instance_with(db_url, None).await
}

/// An instance reading `config` (`--config`), or the built-in defaults.
pub(super) async fn start_instance_with(
    db_url: &str,
    config: Option<&std::path::Path>,
) -> Instance {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_lapse"));
    match config {
        Some(file) => command.env("LAPSE_CONFIG", file),
        None => command.env_remove("LAPSE_CONFIG"),
    };
    let child = command
        .arg("serve")
        .env("DATABASE_URL", db_url)
        .env("LAPSE_LISTEN", format!("127.0.0.1:{port}"))
        .env("LAPSE_CLOCK", "manual")
        .env("LAPSE_ADMIN_KEY", ADMIN_KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("lapse starts");
    let instance = Instance {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client
            .get(format!("{}/readyz", instance.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return instance;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("lapse at {} did not become ready", instance.base);
}

pub(super) async fn call(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    actor: Option<String>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client.post(format!("{base}{path}")).bearer_auth(ADMIN_KEY);
    if let Some(a) = actor {
        req = req.header("X-Actor", a);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request sent");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A GET as admin, its JSON body.
pub(super) async fn read(client: &reqwest::Client, base: &str, path: &str) -> Value {
    let r = client
        .get(format!("{base}{path}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("request sent");
    r.json().await.expect("a JSON body")
}

/// A request sent again while lapse answers 503, as a client honouring `Retry-After` does.
/// Four sweeps on two instances at once can hold every connection of a pool long enough for
/// lapse to take the wait for an outage (a known weakness of the outage watch, see
/// `lapse_engine::outage`): what is checked here is that each session transitions once.
pub(super) async fn retried<F, Fut>(send: F) -> (u16, Value)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = (u16, Value)>,
{
    for _ in 0..40 {
        let (status, body) = send().await;
        if status != 503 {
            return (status, body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    send().await
}

/// Moves an instance's manual clock (`{"set": …}` or `{"advance": …}`).
pub(super) async fn move_clock(client: &reqwest::Client, base: &str, to: Value) {
    let (status, body) = call(client, base, "/v1/admin/clock", None, Some(to)).await;
    assert_eq!(status, 200, "{body}");
}

/// Every event of `type` in the log, counted per session.
pub(super) async fn count_events(
    client: &reqwest::Client,
    base: &str,
    event_type: &str,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let mut after = 0;
    loop {
        let path = format!("/v1/events?type={event_type}&limit=1000&after={after}");
        let page = read(client, base, &path).await;
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            return counts;
        }
        for e in events {
            *counts
                .entry(e["session_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        after = page["next_after"].as_i64().unwrap();
    }
}
