//! `lapse sessions list|show` and `lapse events tail`: a running lapse, through its HTTP API
//! (`--url`, `LAPSE_URL`; the key from `LAPSE_ADMIN_KEY`). Tables fit the terminal; `--json`
//! prints what the API answered, for scripts.

use std::time::Duration;

use anyhow::Context;
use lapse_core::SessionId;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::tables::{event_line, session_page, sessions_table, width};
use super::{EventsCommand, RunningServer, SessionsCommand};
use crate::app::shutdown_on_signal;

/// A running lapse.
pub struct Remote {
    client: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Remote {
    /// The server at `url`, called with `LAPSE_ADMIN_KEY` when it is set (none is needed in
    /// development mode).
    pub fn new(url: &str) -> anyhow::Result<Remote> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("an HTTP client")?;
        Ok(Remote {
            client,
            base: url.trim_end_matches('/').to_string(),
            key: std::env::var("LAPSE_ADMIN_KEY").ok(),
        })
    }

    fn request(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.get(format!("{}{path}", self.base));
        match &self.key {
            Some(key) => request.header("x-api-key", key),
            None => request,
        }
    }

    /// `GET path?query` as JSON; a refusal becomes an error naming lapse's problem code.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let answer = self
            .request(path)
            .query(query)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("reaching lapse at {}", self.base))?;
        let status = answer.status();
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(refused(status.as_u16(), &body));
        }
        Ok(body)
    }

    /// Follows `/v1/events` (with `query`) from after `after`, handing each event to `each`;
    /// after a dropped connection it resumes from the last event it handed on. Returns only
    /// on an error lapse answered with.
    pub async fn follow(
        &self,
        query: &[(&str, String)],
        mut after: Option<i64>,
        mut each: impl FnMut(&Value),
    ) -> anyhow::Result<()> {
        loop {
            let mut request = self
                .request("/v1/events")
                .query(query)
                .header("accept", "text/event-stream");
            if let Some(seq) = after {
                request = request.header("last-event-id", seq.to_string());
            }
            let mut answer = match request.send().await {
                Ok(answer) => answer,
                Err(e) => {
                    eprintln!("lapse: {e}; trying again in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if !answer.status().is_success() {
                let status = answer.status().as_u16();
                let body: Value = answer.json().await.unwrap_or(Value::Null);
                return Err(refused(status, &body));
            }
            let mut pending = String::new();
            while let Ok(Some(chunk)) = answer.chunk().await {
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = pending.find("\n\n") {
                    let frame: String = pending.drain(..end + 2).collect();
                    let data: String = frame
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect();
                    if let Ok(event) = serde_json::from_str::<Value>(&data) {
                        after = event["seq"].as_i64().or(after);
                        each(&event);
                    }
                }
            }
            // The stream ended (lapse restarting, a proxy's timeout): resume after a moment.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A refusal as an error naming lapse's problem code: `lapse answered 404 not_found: …`.
fn refused(status: u16, problem: &Value) -> anyhow::Error {
    anyhow::anyhow!(
        "lapse answered {status} {}: {}",
        problem["code"].as_str().unwrap_or("?"),
        problem["detail"].as_str().unwrap_or("")
    )
}

/// `lapse sessions list|show`: sessions on a running lapse.
pub async fn sessions(server: RunningServer, command: SessionsCommand) -> anyhow::Result<i32> {
    let lapse = Remote::new(&server.url)?;
    match command {
        SessionsCommand::List {
            kind,
            status,
            host,
            participant,
            limit,
            json,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            for (name, value) in [
                ("kind", kind),
                ("status", status),
                ("host", host),
                ("participant", participant),
            ] {
                query.extend(value.map(|v| (name, v)));
            }
            let page = lapse.get("/v1/sessions", &query).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                let sessions = page["sessions"].as_array().cloned().unwrap_or_default();
                if sessions.is_empty() {
                    println!("no sessions");
                } else {
                    print!("{}", sessions_table(&sessions, width()));
                }
                if !page["next_cursor"].is_null() {
                    println!("(more: raise --limit, up to 500)");
                }
            }
        }
        SessionsCommand::Show { id, json } => {
            let id = SessionId::parse(&id).context("session id")?;
            let explained = lapse
                .get(&format!("/v1/sessions/{id}/explain"), &[])
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&explained)?);
            } else {
                print!("{}", session_page(&explained, width()));
            }
        }
    }
    Ok(0)
}

/// `lapse events tail`: events on a running lapse, followed until Ctrl-C.
pub async fn events(server: RunningServer, command: EventsCommand) -> anyhow::Result<i32> {
    let lapse = Remote::new(&server.url)?;
    let EventsCommand::Tail {
        session,
        kind,
        types,
        after,
        json,
    } = command;
    let mut query = Vec::new();
    for (name, value) in [("session", session), ("kind", kind), ("type", types)] {
        query.extend(value.map(|v| (name, v)));
    }
    let stop = CancellationToken::new();
    tokio::spawn(shutdown_on_signal(stop.clone()));
    let follow = lapse.follow(&query, after, |event| {
        if json {
            println!("{event}");
        } else {
            println!("{}", event_line(event));
        }
    });
    tokio::select! {
        done = follow => done?,
        _ = stop.cancelled() => {}
    }
    Ok(0)
}
