//! A table of checks: each row names what was checked, its outcome (ok, warn, fail), what was
//! found and, when not ok, what to change. `check`, the hub's health check and the registration
//! preflight all report through it, so the same probe reads the same everywhere.

use std::fmt::Write as _;

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but worth attention.
    Warn,
    /// Broken; the exit code will be non-zero.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One row of the check table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CheckRow {
    /// What was checked.
    pub name: String,
    /// Outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to change, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The rows of a check run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Rows in order.
    pub rows: Vec<CheckRow>,
}

impl Report {
    /// Adds a row.
    pub fn push(&mut self, name: impl Into<String>, status: Status, detail: impl Into<String>, fix: Option<String>) {
        self.rows.push(CheckRow {
            name: name.into(),
            status,
            detail: detail.into(),
            fix,
        });
    }

    /// Whether any row failed.
    pub fn failed(&self) -> bool {
        self.rows.iter().any(|r| r.status == Status::Fail)
    }

    /// The table as text.
    pub fn render(&self) -> String {
        let w = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
        let mut out = String::new();
        let _ = writeln!(out, "{:<w$}  {:<7}DETAIL", "CHECK", "STATUS");
        for r in &self.rows {
            let _ = writeln!(out, "{:<w$}  {:<7}{}", r.name, r.status.label(), r.detail);
            if let Some(fix) = &r.fix {
                let _ = writeln!(out, "{:<w$}  {:<7}fix: {}", "", "", fix);
            }
        }
        let summary = if self.failed() { "check FAILED" } else { "check passed" };
        let _ = writeln!(out, "{summary}");
        out
    }
}
