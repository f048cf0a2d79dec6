//! `TestApp`: one lapse per test, with typed helpers for the requests the seeds make.

use lapse::{App, Environment, Settings};
use lapse_core::Config;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const ADMIN_KEY: &str = "test-admin-key";
pub const SERVICE_KEY: &str = "test-service-key";
pub const CRON_SECRET: &str = "test-cron-secret";
pub const JWT_SECRET: &str = "test-jwt-secret";
/// The Standard Webhooks spec's own example secret.
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Where every test's manual clock starts.
pub const START: &str = "2026-01-05T09:00:00.000Z";

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub db_url: String,
    config: Option<String>,
    /// The configuration file a reload reads again, when the test gave one.
    pub config_file: Option<std::path::PathBuf>,
    pub _dir: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A response: status and JSON body (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub content_type: String,
    pub text: String,
}

impl Resp {
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        self.body
    }

    /// Asserts a problem+json answer with `status` and `code`.
    #[track_caller]
    pub fn problem(self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        assert_eq!(
            self.content_type, "application/problem+json",
            "body: {}",
            self.text
        );
        assert_eq!(self.body["code"], code, "body: {}", self.text);
        assert_eq!(self.body["status"], status);
        self.body
    }
}

/// Who a request is sent as.
#[derive(Clone, Debug)]
pub enum As {
    Admin,
    /// The service key acting for a user (`X-Actor`).
    User(&'static str),
    Service,
    Cron,
    Nobody,
    Bearer(String),
}

/// Which store a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Whether PostgreSQL tests are skipped here (no test server); says so once. Panics when CI
/// requires them.
pub fn postgres_skipped() -> bool {
    let set = std::env::var(lapse_store::testing::POSTGRES_URL_ENV).is_ok_and(|v| !v.is_empty());
    if !set {
        // Reports the skip (or fails when PostgreSQL is required) without creating anything.
        let runtime = tokio::runtime::Handle::current();
        let _ = tokio::task::block_in_place(|| {
            runtime.block_on(lapse_store::testing::fresh_postgres_database())
        });
    }
    !set
}

/// A fresh, empty database of `backend`, as a URL, and the directory that holds it (SQLite).
pub async fn fresh_database(backend: Backend) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("lapse.db").display()),
        Backend::Postgres => lapse_store::testing::fresh_postgres_database()
            .await
            .expect("a PostgreSQL test server"),
    };
    (url, dir)
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, None).await
}

pub async fn spawn_app_with(backend: Backend, config: Option<&str>) -> TestApp {
    let (db_url, dir) = fresh_database(backend).await;
    let (base, shutdown) = serve(&db_url, config, None).await;
    TestApp {
        base,
        client: reqwest::Client::new(),
        db_url,
        config: config.map(str::to_string),
        config_file: None,
        _dir: dir,
        shutdown,
    }
}

/// A lapse started with `--config` naming a file that holds `config`; the test may rewrite
/// the file ([`TestApp::rewrite_config`]) and reload.
pub async fn spawn_app_with_file(backend: Backend, config: &str) -> TestApp {
    let (db_url, dir) = fresh_database(backend).await;
    let file = dir.path().join("lapse.toml");
    std::fs::write(&file, config).expect("config file written");
    let (base, shutdown) = serve(&db_url, Some(config), Some(file.clone())).await;
    TestApp {
        base,
        client: reqwest::Client::new(),
        db_url,
        config: Some(config.to_string()),
        config_file: Some(file),
        _dir: dir,
        shutdown,
    }
}

/// Starts lapse on `db_url`; returns its base URL and the token that stops it.
async fn serve(
    db_url: &str,
    config: Option<&str>,
    file: Option<std::path::PathBuf>,
) -> (String, CancellationToken) {
    // A file, once given, is what lapse reads (as rewritten since, on a restart).
    let from_file = file
        .as_ref()
        .map(|f| std::fs::read_to_string(f).expect("config file readable"));
    let mut config = match from_file.as_deref().or(config) {
        Some(text) => Config::parse(text, "test.toml").expect("test config is valid"),
        None => Config::default(),
    };
    config.clock.start = Some(START.parse().unwrap());
    let env = Environment::from_pairs(
        [
            ("LAPSE_CLOCK", "manual"),
            ("LAPSE_LISTEN", "127.0.0.1:0"),
            ("DATABASE_URL", db_url),
            ("LAPSE_ADMIN_KEY", ADMIN_KEY),
            ("LAPSE_SERVICE_KEY", SERVICE_KEY),
            ("CRON_SECRET", CRON_SECRET),
            ("LAPSE_JWT_SECRET", JWT_SECRET),
            ("LAPSE_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let settings = Settings {
        file,
        ..Settings::from_config(config, env).expect("settings")
    };
    let app = App::build(settings).await.expect("lapse builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run(shutdown.clone()));
    (base, shutdown)
}

impl TestApp {
    /// Begins this lapse's shutdown, as SIGTERM does.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
    }

    /// Stops this lapse and starts a new one on the same database and configuration (its
    /// manual clock starts over at `START`).
    pub async fn restart(&mut self) {
        self.restart_with(self.config.clone()).await;
    }

    /// Stops this lapse and starts it again on the same database with `config`.
    pub async fn restart_with(&mut self, config: Option<String>) {
        self.config = config;
        self.shutdown.cancel();
        let (base, shutdown) = serve(
            &self.db_url,
            self.config.as_deref(),
            self.config_file.clone(),
        )
        .await;
        self.base = base;
        self.shutdown = shutdown;
    }

    /// Writes `text` over the configuration file this lapse was started with.
    pub fn rewrite_config(&self, text: &str) {
        let file = self.config_file.as_ref().expect("started with a file");
        std::fs::write(file, text).expect("config file rewritten");
    }

    pub async fn send(&self, who: As, method: Method, path: &str, body: Option<Value>) -> Resp {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        req = match who {
            As::Admin => req.bearer_auth(ADMIN_KEY),
            As::Service => req.header("X-API-Key", SERVICE_KEY),
            As::User(u) => req.header("X-API-Key", SERVICE_KEY).header("X-Actor", u),
            As::Cron => req.bearer_auth(CRON_SECRET),
            As::Nobody => req,
            As::Bearer(t) => req.bearer_auth(t),
        };
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("request sent");
        let status = r.status();
        let headers = r.headers().clone();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = r.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            content_type,
            text,
        }
    }

    pub async fn get(&self, who: As, path: &str) -> Resp {
        self.send(who, Method::GET, path, None).await
    }

    pub async fn post(&self, who: As, path: &str, body: Value) -> Resp {
        self.send(who, Method::POST, path, Some(body)).await
    }

    pub async fn post_empty(&self, who: As, path: &str) -> Resp {
        self.send(who, Method::POST, path, None).await
    }

    pub async fn delete(&self, who: As, path: &str) -> Resp {
        self.send(who, Method::DELETE, path, None).await
    }

    /// Creates a session of `kind` hosted by `host` with extra fields.
    pub async fn create(&self, kind: &str, id: &str, host: &'static str, extra: Value) -> Value {
        let mut body = json!({ "id": id, "kind": kind, "title": format!("{kind} {id}") });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        self.post(As::User(host), "/v1/sessions", body)
            .await
            .expect(201)
    }

    pub async fn join(&self, id: &str, user: &'static str) -> Value {
        self.post(
            As::User(user),
            &format!("/v1/sessions/{id}/participants"),
            json!({ "user": user }),
        )
        .await
        .expect(201)
    }

    pub async fn start(&self, id: &str, host: &'static str) -> Value {
        self.post_empty(As::User(host), &format!("/v1/sessions/{id}/start"))
            .await
            .expect(200)
    }

    pub async fn heartbeat(&self, id: &str, user: &'static str) -> Resp {
        self.post(
            As::User(user),
            &format!("/v1/sessions/{id}/heartbeat"),
            json!({ "user": user }),
        )
        .await
    }

    pub async fn session(&self, id: &str) -> Resp {
        self.get(As::Admin, &format!("/v1/sessions/{id}")).await
    }

    /// Moves the manual clock and returns the new `now`.
    pub async fn advance(&self, by: &str) -> String {
        let r = self
            .post(As::Admin, "/v1/admin/clock", json!({ "advance": by }))
            .await
            .expect(200);
        r["now"].as_str().unwrap().to_string()
    }

    /// A real sweep, called the way a cron job calls it.
    pub async fn sweep(&self) -> Value {
        self.post_empty(As::Cron, "/v1/sweep").await.expect(200)
    }

    pub async fn dry_sweep(&self) -> Value {
        self.post_empty(As::Cron, "/v1/sweep?dry_run=true")
            .await
            .expect(200)
    }

    /// The session's timeline (admin, so deleted sessions too).
    pub async fn events_of(&self, id: &str) -> Vec<Value> {
        let r = self
            .get(As::Admin, &format!("/v1/sessions/{id}/events"))
            .await
            .expect(200);
        r["events"].as_array().unwrap().clone()
    }

    pub async fn notifications(&self, user: &'static str) -> Vec<Value> {
        let r = self
            .get(As::User(user), &format!("/v1/users/{user}/notifications"))
            .await
            .expect(200);
        r["notifications"].as_array().unwrap().clone()
    }
}

/// Adds a span to an RFC 3339 time, as the API prints times.
pub fn at(base: &str, plus: &str) -> String {
    let t: lapse_core::Timestamp = base.parse().unwrap();
    let span: lapse_core::Span = plus.parse().unwrap();
    (t + span).to_string()
}

pub fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}
