//! How lapse's log records look and where they go: standard error, as text (colours only on
//! a terminal) or as one JSON object per line for a log pipeline (`[log] format`, overridden
//! by `LAPSE_LOG_FORMAT`), filtered by `RUST_LOG` (default `info`).

use std::io::IsTerminal as _;
use std::path::Path;

use lapse_core::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// The format asked for: `LAPSE_LOG_FORMAT`, else the configuration file's `[log] format`,
/// else text. Logs start before the configuration is read in full; a file that cannot be read
/// or parsed here gives text, and reading it in full then reports what is wrong with it.
pub fn chosen_format(config: Option<&Path>) -> Result<LogFormat, String> {
    if let Ok(format) = std::env::var("LAPSE_LOG_FORMAT") {
        return format.parse().map_err(|e| format!("LAPSE_LOG_FORMAT: {e}"));
    }
    let text = config.and_then(|path| std::fs::read_to_string(path).ok());
    Ok(text.as_deref().and_then(format_in).unwrap_or_default())
}

/// `[log] format` in a configuration file's text, if it says one that is valid.
fn format_in(text: &str) -> Option<LogFormat> {
    let table: toml::Table = toml::from_str(text).ok()?;
    table.get("log")?.get("format")?.as_str()?.parse().ok()
}

/// Installs the subscriber for the whole process.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // A request's id is a field of its span: `span` carries it on every line.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_names_the_format() {
        assert_eq!(
            format_in("[log]\nformat = \"json\"\n"),
            Some(LogFormat::Json)
        );
        assert_eq!(
            format_in("[log]\nformat = \"text\"\n"),
            Some(LogFormat::Text)
        );
        assert_eq!(format_in("[server]\nlisten = \"127.0.0.1:1\"\n"), None);
        assert_eq!(format_in("[log]\nformat = \"xml\"\n"), None);
        assert_eq!(format_in("not toml ["), None);
    }
}
