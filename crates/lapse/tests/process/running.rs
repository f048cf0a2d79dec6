//! A `lapse serve` process of the test's own, on a free port, with its log in a file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The admin key every process is started with.
pub const KEY: &str = "process-admin-key";
/// The signing secret of the suite's webhook endpoint.
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Milliseconds since the epoch, as lapse stamps `applied_at`.
pub fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// An answer, with how long it took.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Value,
    pub took: Duration,
}

/// A running (or exited) `lapse serve`.
pub struct Lapse {
    child: Child,
    pub base: String,
    pub log: PathBuf,
    client: reqwest::Client,
}

impl Drop for Lapse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Lapse {
    /// Starts `lapse serve` on `db_url` with the configuration file `config`, logging to
    /// `log`, and returns once it answers `/livez`.
    pub async fn start(db_url: &str, config: &Path, log: PathBuf) -> Lapse {
        Lapse::start_with(db_url, config, log, &[("NO_COLOR", "1")]).await
    }

    /// [`Lapse::start`] with more environment variables.
    pub async fn start_with(
        db_url: &str,
        config: &Path,
        log: PathBuf,
        env: &[(&str, &str)],
    ) -> Lapse {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("the log file opens");
        let child = Command::new(env!("CARGO_BIN_EXE_lapse"))
            .args(["serve", "--config"])
            .arg(config)
            .env("LAPSE_LISTEN", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", db_url)
            .env("LAPSE_ADMIN_KEY", KEY)
            .env("LAPSE_PROCESS_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("lapse serve starts");
        let lapse = Lapse {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a client"),
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if lapse
                .get("/livez")
                .await
                .is_some_and(|(status, _)| status == 200)
            {
                return lapse;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "lapse serve did not answer within a minute:\n{}",
            lapse.log_text()
        );
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`TERM`, `HUP`, ...).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIG{name} was sent");
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `within` for the process to exit.
    pub async fn exited_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if started.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A request as admin, timed; `None` if nothing answered.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Option<Answer> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(KEY);
        if let Some(body) = body {
            request = request.json(body);
        }
        let sent = Instant::now();
        let resp = request.send().await.ok()?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let body = resp.json().await.unwrap_or(Value::Null);
        Some(Answer {
            status,
            retry_after,
            body,
            took: sent.elapsed(),
        })
    }

    /// `GET path` as admin: the status and JSON body, or `None` if nothing answered.
    pub async fn get(&self, path: &str) -> Option<(u16, Value)> {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// `POST path` with a JSON body as admin: the status and JSON body, or `None` if nothing
    /// answered.
    pub async fn post(&self, path: &str, body: &Value) -> Option<(u16, Value)> {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .json(body)
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().await.unwrap_or(Value::Null)))
    }
}
