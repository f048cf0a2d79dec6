//! A mistake in a configuration file, said with the file and the place in it (a kind, a
//! rule, a section, or a line and column for bad TOML).

use std::fmt;

/// A mistake in a configuration file, with where it is.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file's name (or `built-in defaults`).
    pub file: String,
    /// Where in it: ``kind `study`, rule `delete-unused` ``, `[server]`, ...
    pub place: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// The kind the mistake is in, if it is in one.
    pub fn kind(&self) -> Option<&str> {
        quoted_after(&self.place, "kind `")
    }

    /// The rule the mistake is in, if it is in one.
    pub fn rule(&self) -> Option<&str> {
        quoted_after(&self.place, "rule `")
    }
}

/// The name in backquotes after `label` in a place like "kind `study`, rule `x`".
fn quoted_after<'p>(place: &'p str, label: &str) -> Option<&'p str> {
    let start = place.find(label)? + label.len();
    let len = place[start..].find('`')?;
    Some(&place[start..start + len])
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.place.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.place, self.message)
        }
    }
}

/// toml's messages carry a source excerpt that points into a sub-table we re-parsed; keep
/// only the sentence.
pub(super) fn clean_toml_error(e: &toml::de::Error) -> String {
    e.message().trim().to_string()
}

/// The error with where in `text` it is: `line 3, column 9: unclosed table, expected ]`.
pub(super) fn located_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = clean_toml_error(e);
    let Some(start) = e.span().map(|s| s.start.min(text.len())) else {
        return message;
    };
    let before = text.get(..start).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    format!("line {line}, column {column}: {message}")
}
