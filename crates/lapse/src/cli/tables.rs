//! What the commands that talk to a running lapse print: tables fitted to the terminal, a
//! session's page, an event's line.

use std::io::IsTerminal as _;

use serde_json::Value;

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
