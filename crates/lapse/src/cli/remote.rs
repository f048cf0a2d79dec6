//! `lapse sessions list|show` and `lapse events tail`: a running lapse, through its HTTP API
//! (`--url`, `LAPSE_URL`; the key from `LAPSE_ADMIN_KEY`). Tables fit the terminal; `--json`
//! prints what the API answered, for scripts.

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

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

/// The width tables are fitted to: the terminal's, or `COLUMNS`, or none when the output is
/// not a terminal (a script gets every value whole).
pub fn width() -> Option<usize> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    #[cfg(target_os = "linux")]
    if let Ok(size) = rustix::termios::tcgetwinsize(std::io::stdout())
        && size.ws_col > 0
    {
        return Some(size.ws_col as usize);
    }
    std::env::var("COLUMNS").ok()?.parse().ok()
}

/// Rows under a header, columns padded to their widest cell; when `width` is too narrow, the
/// `flex` column gives up room (its cells cut short with `…`), down to 8 characters.
pub fn table(header: &[&str], rows: &[Vec<String>], flex: usize, width: Option<usize>) -> String {
    let chars = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = header.iter().map(|h| chars(h)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(chars(cell));
        }
    }
    if let Some(width) = width {
        let total: usize = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
        if total > width && flex < widths.len() {
            widths[flex] = widths[flex].saturating_sub(total - width).max(8);
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let cell = if chars(cell) > *w {
                let cut: String = cell.chars().take(w.saturating_sub(1)).collect();
                format!("{cut}…")
            } else {
                cell.to_string()
            };
            if i + 1 == widths.len() {
                out.push_str(&cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The sessions table of `lapse sessions list`.
pub fn sessions_table(sessions: &[Value], width: Option<usize>) -> String {
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            let joined = s["participants"]
                .as_array()
                .map_or(0, |ps| ps.iter().filter(|p| p["state"] == "joined").count());
            let due = match &s["next_due"] {
                Value::Null => "-".to_string(),
                d => format!("{} at {}", text(&d["rule"]), text(&d["at"])),
            };
            vec![
                text(&s["id"]),
                text(&s["kind"]),
                text(&s["status"]),
                text(&s["host"]),
                joined.to_string(),
                due,
                text(&s["title"]),
            ]
        })
        .collect();
    table(
        &[
            "ID", "KIND", "STATUS", "HOST", "JOINED", "NEXT DUE", "TITLE",
        ],
        &rows,
        6,
        width,
    )
}

/// The page of `lapse sessions show`: the session, its participants, and why each rule of
/// its kind does or does not apply.
pub fn session_page(explained: &Value, width: Option<usize>) -> String {
    let s = &explained["session"];
    let mut out = format!(
        "{} [{}] {}{}\n",
        text(&s["id"]),
        text(&s["kind"]),
        text(&s["status"]),
        if s["delayed"] == true {
            " (delayed)"
        } else {
            ""
        }
    );
    for (label, field) in [
        ("title", "title"),
        ("host", "host"),
        ("created", "created_at"),
        ("started", "started_at"),
        ("ended", "ended_at"),
        ("last activity", "last_activity_at"),
        ("ended by", "ended_by"),
    ] {
        if !s[field].is_null() && s[field] != "" {
            out.push_str(&format!("  {label:<14}{}\n", text(&s[field])));
        }
    }
    if let Some(counters) = s["counters"].as_object().filter(|c| !c.is_empty()) {
        let list: Vec<String> = counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
        out.push_str(&format!("  {:<14}{}\n", "counters", list.join(", ")));
    }
    out.push_str(&format!("  {:<14}{}\n\n", "now", text(&explained["now"])));
    let people: Vec<Vec<String>> = s["participants"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            vec![
                text(&p["user"]),
                text(&p["role"]),
                text(&p["state"]),
                if p["online"] == true {
                    "online"
                } else {
                    "offline"
                }
                .to_string(),
                text(&p["last_seen_at"]),
            ]
        })
        .collect();
    out.push_str(&table(
        &["PARTICIPANT", "ROLE", "STATE", "PRESENCE", "LAST SEEN"],
        &people,
        0,
        width,
    ));
    out.push('\n');
    let rules: Vec<Vec<String>> = explained["rules"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let state = if r["due"] == true {
                "DUE"
            } else if r["applies"] == true {
                "waits"
            } else {
                "-"
            };
            vec![
                text(&r["rule"]),
                format!("{} → {}", text(&r["on"]), text(&r["do"])),
                state.to_string(),
                text(&r["deadline"]),
                text(&r["why"]),
            ]
        })
        .collect();
    out.push_str(&table(
        &["RULE", "WHEN → DOES", "STATE", "DEADLINE", "WHY"],
        &rules,
        4,
        width,
    ));
    out
}

/// One line of `lapse events tail`.
pub fn event_line(e: &Value) -> String {
    format!(
        "{:>8}  {}  {:<24}  {:<24}  {}",
        text(&e["seq"]),
        text(&e["at"]),
        text(&e["type"]),
        text(&e["session_id"]),
        text(&e["actor"])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_fits_its_width_by_cutting_the_flexible_column() {
        let rows = vec![vec![
            "a".to_string(),
            "a long title that will not fit".to_string(),
        ]];
        let whole = table(&["ID", "TITLE"], &rows, 1, None);
        assert_eq!(whole, "ID  TITLE\na   a long title that will not fit\n");
        let cut = table(&["ID", "TITLE"], &rows, 1, Some(20));
        assert_eq!(cut, "ID  TITLE\na   a long title th…\n");
        assert!(cut.lines().all(|l| l.chars().count() <= 20));
    }
}
