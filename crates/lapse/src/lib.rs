//! lapse, the binary: HTTP API, command line and start-up, wired over the engine.
//!
//! - [`settings`]: the config file plus environment overrides.
//! - [`app`]: `App::build` → `port()` → `run(shutdown)`; tests start lapse the same way.
//! - [`http`]: one module per resource, problem+json errors, authentication.
//! - [`cli`]: `serve`, `sweep`, `check-config`, `migrate`, `explain`, `stats`, `health`, `export`.
//! - [`export`]: a session as a JSON, Markdown or CSV document.
//! - [`priority`]: the sweeper before requests when the processor is short.

// The OpenAPI document is one large `json!` literal.
#![recursion_limit = "512"]

pub mod app;
pub mod cli;
pub mod export;
pub mod http;
pub mod logs;
pub mod priority;
pub mod settings;

pub use app::App;
pub use settings::{Environment, Settings};
