//! How the API client commands print: aligned tables for people, the API's answer as JSON or
//! YAML for scripts (`-o`). A closed pipe (`| head`) ends the output, never the process with a
//! panic.

use serde_json::Value;

/// The `-o` formats every client command honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns (or a short summary) for people.
    #[default]
    Table,
    /// The hub API's answer as pretty JSON.
    Json,
    /// The hub API's answer as YAML.
    Yaml,
}

impl Output {
    /// Prints `v` as JSON or YAML, or calls `table` to print it for people.
    pub fn emit(self, v: &Value, table: impl FnOnce(&Value)) -> anyhow::Result<()> {
        match self {
            Output::Table => {
                table(v);
                Ok(())
            }
            Output::Json => print_json(v),
            Output::Yaml => print_yaml(v),
        }
    }

    /// Prints one item of a stream (the change feed): JSON one object per line, YAML one
    /// document per item, or `line` for people.
    pub fn emit_line(self, v: &Value, line: impl FnOnce(&Value) -> String) -> bool {
        let text = match self {
            Output::Table => line(v),
            Output::Json => v.to_string(),
            Output::Yaml => format!("---\n{}", to_yaml(v).trim_end()),
        };
        use std::io::Write;
        writeln!(std::io::stdout().lock(), "{text}").is_ok()
    }
}

fn to_yaml(v: &Value) -> String {
    // A serde_json::Value always serialises; the fallback only keeps this total.
    serde_norway::to_string(v).unwrap_or_else(|e| format!("# cannot render as YAML: {e}\n"))
}

/// Prints YAML.
pub fn print_yaml(v: &Value) -> anyhow::Result<()> {
    use std::io::Write;
    let _ = write!(std::io::stdout().lock(), "{}", to_yaml(v));
    Ok(())
}

/// Prints `field: value` lines, aligned, for one object shown to people.
pub fn print_fields(fields: &[(&str, String)]) {
    use std::io::Write;
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = std::io::stdout().lock();
    for (k, v) in fields {
        if writeln!(out, "{:<width$} {v}", format!("{k}:")).is_err() {
            return;
        }
    }
}

/// A field as a table cell: strings as they are, arrays joined with commas, missing as `-`.
pub fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
        Some(other) => other.to_string(),
    }
}

/// Prints rows as an aligned table.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    // A reader that stops early (`| head`) closes the pipe; that ends the output, not the
    // process with a panic.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{}", line(headers.iter().map(|h| h.to_string()).collect())).is_err() {
        return;
    }
    for r in rows {
        if writeln!(out, "{}", line(r.clone())).is_err() {
            return;
        }
    }
}

/// Prints applications as a table.
pub fn print_apps(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|a| {
            let revision = a
                .get("sync")
                .map(|sy| {
                    let r = s(sy, "revision");
                    if r == "-" { s(sy, "revisions") } else { r }
                })
                .unwrap_or_else(|| "-".into());
            let short: String = revision.chars().take(12).collect();
            vec![
                s(a, "gatewayId"),
                format!("{}/{}", s(a, "namespace"), s(a, "name")),
                s(a, "project"),
                a.get("sync").map(|x| s(x, "status")).unwrap_or_default(),
                a.get("health").map(|x| s(x, "status")).unwrap_or_default(),
                short,
                if a.get("stale").and_then(Value::as_bool) == Some(true) {
                    "stale".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    print_table(
        &["GATEWAY", "APPLICATION", "PROJECT", "SYNC", "HEALTH", "REVISION", ""],
        &rows,
    );
}

/// Prints JSON, pretty.
pub fn print_json(v: &Value) -> anyhow::Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(v)?;
    // A closed pipe (`| head`) just ends the output.
    let _ = writeln!(std::io::stdout().lock(), "{text}");
    Ok(())
}

/// Prints gateways as a table.
pub fn print_gateways(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|g| {
            // What a person needs to know beyond the columns: why it was removed, or why its
            // self-update holds back.
            let note = if let Some(reason) = g.get("removedReason").and_then(Value::as_str) {
                format!("removed {}: {reason}", s(g, "removedAt"))
            } else if let Some(held) = g.get("updateHeld").filter(|h| !h.is_null()) {
                format!("update held: {}", s(held, "reason"))
            } else {
                String::new()
            };
            vec![
                s(g, "id"),
                s(g, "name"),
                s(g, "environments"),
                s(g, "state"),
                if g.get("connected").and_then(Value::as_bool) == Some(true) {
                    "yes".into()
                } else {
                    "no".into()
                },
                s(g, "lastSeenAt"),
                s(g, "version"),
                s(g, "certificateExpiresAt"),
                note,
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "NAME",
            "ENVIRONMENTS",
            "STATE",
            "CONNECTED",
            "LAST SEEN",
            "VERSION",
            "CERT EXPIRES",
            "",
        ],
        &rows,
    );
}
