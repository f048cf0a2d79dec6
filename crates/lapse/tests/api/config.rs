//! Configuration at the edges: `lapse check-config`, a server that refuses a bad file, and
//! the development-mode rule of SPEC §5.

use std::process::Command;

use lapse::{App, Environment, Settings};
use lapse_core::Config;

const BAD: &str = r#"
[kinds.booking]
[[kinds.booking.rules]]
name = "purge-too-early"
on = "start_missed"
after = "0s"
do = "purge"
"#;

fn lapse(args: &[&str], dir: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lapse"))
        .args(args)
        .current_dir(dir)
        .env_remove("LAPSE_CONFIG")
        .env_remove("DATABASE_URL")
        .env("LAPSE_LISTEN", "127.0.0.1:0")
        .output()
        .expect("lapse runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn check_config_names_the_file_kind_and_rule_of_a_mistake() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), BAD).unwrap();
    let (code, out) = lapse(&["check-config", "bad.toml"], dir.path());
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("bad.toml")
            && out.contains("kind `booking`")
            && out.contains("rule `purge-too-early`"),
        "{out}"
    );

    let (code, out) = lapse(&["check-config"], dir.path());
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("6 kind(s)"), "{out}");

    std::fs::write(
        dir.path().join("cors.toml"),
        "[server]\ncors_origins = [\"https://app.example/\"]\n",
    )
    .unwrap();
    let (code, out) = lapse(&["check-config", "cors.toml"], dir.path());
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("is not an origin"), "{out}");

    std::fs::write(dir.path().join("broken.toml"), "[server]\n[kinds.study\n").unwrap();
    let (code, out) = lapse(&["check-config", "broken.toml"], dir.path());
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("broken.toml: line 2, column "), "{out}");
}

#[test]
fn serving_beyond_this_machine_without_credentials_says_so_at_start() {
    use std::io::{BufRead as _, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lapse"))
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("LAPSE_CONFIG")
        .env_remove("LAPSE_ADMIN_KEY")
        .env_remove("LAPSE_SERVICE_KEY")
        .env_remove("CRON_SECRET")
        .env_remove("LAPSE_JWT_SECRET")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("l.db").display()),
        )
        .env("LAPSE_LISTEN", "0.0.0.0:0")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("lapse starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut said = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("a log line");
        said.push_str(&line);
        said.push('\n');
        if line.contains("lapse listening") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        said.contains("NO CREDENTIALS") && said.contains("401"),
        "{said}"
    );
}

#[test]
fn the_server_refuses_to_start_on_an_invalid_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), BAD).unwrap();
    let (code, out) = lapse(&["serve", "--config", "bad.toml"], dir.path());
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("purge-too-early"), "{out}");
    assert!(!dir.path().join("lapse.db").exists(), "nothing was opened");
}

#[test]
fn production_needs_credentials() {
    let config = Config::parse("[server]\nenv = \"production\"\n", "prod.toml").unwrap();
    let err = Settings::from_config(config.clone(), Environment::default()).unwrap_err();
    assert!(err.to_string().contains("credentials"), "{err}");
    let env = Environment::from_pairs([("LAPSE_ADMIN_KEY".to_string(), "k".to_string())]);
    assert!(Settings::from_config(config, env).is_ok());
}

async fn status_without_credentials(listen: &str) -> u16 {
    let dir = tempfile::tempdir().unwrap();
    let env = Environment::from_pairs([
        ("LAPSE_LISTEN".to_string(), listen.to_string()),
        (
            "DATABASE_URL".to_string(),
            format!("sqlite://{}", dir.path().join("d.db").display()),
        ),
    ]);
    let app = App::build(Settings::from_config(Config::default(), env).unwrap())
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}/v1/sessions", app.port());
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(app.run(token.clone()));
    let status = reqwest::get(url).await.unwrap().status().as_u16();
    token.cancel();
    status
}

#[tokio::test]
async fn development_mode_is_open_on_loopback_only() {
    assert_eq!(status_without_credentials("127.0.0.1:0").await, 200);
    assert_eq!(status_without_credentials("0.0.0.0:0").await, 401);
}
