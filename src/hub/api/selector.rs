//! The filters of the application lists: a Kubernetes-style label selector (`k=v`, `k!=v`,
//! `k`, `!k`, `k in (a,b)`, `k notin (a,b)`), annotations (`annotation=k=v`, repeatable),
//! health, sync status and project.

use axum::http::StatusCode;
use serde::Deserialize;

use super::ApiError;
use crate::wire::item::Application;

/// Filters of the application lists.
#[derive(Debug, Default, Deserialize)]
pub struct AppFilter {
    /// Label selector: `k=v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, comma-separated.
    pub selector: Option<String>,
    /// Health status (case-insensitive).
    pub health: Option<String>,
    /// Sync status (case-insensitive).
    pub sync: Option<String>,
    /// Project.
    pub project: Option<String>,
}

/// One label-selector requirement.
#[derive(Debug, PartialEq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// Parses a Kubernetes-style label selector.
fn parse_selector(s: &str) -> Result<Vec<Req>, String> {
    let mut reqs = vec![];
    let mut rest = s.trim();
    while !rest.is_empty() {
        // Split at the next comma that is not inside parentheses.
        let mut depth = 0;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let part = rest[..end].trim();
        rest = rest.get(end + 1..).unwrap_or("").trim();
        if part.is_empty() {
            continue;
        }
        let set = |key: &str, list: &str| -> Result<(String, Vec<String>), String> {
            let inner = list
                .trim()
                .strip_prefix('(')
                .and_then(|l| l.strip_suffix(')'))
                .ok_or(format!("bad set in {part:?}"))?;
            Ok((
                key.trim().to_owned(),
                inner
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
                    .collect(),
            ))
        };
        let req = if let Some((k, v)) = part.split_once("!=") {
            Req::Ne(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Req::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, l)) = part.split_once(" notin ") {
            let (k, vs) = set(k, l)?;
            Req::NotIn(k, vs)
        } else if let Some((k, l)) = part.split_once(" in ") {
            let (k, vs) = set(k, l)?;
            Req::In(k, vs)
        } else if let Some(k) = part.strip_prefix('!') {
            Req::Absent(k.trim().into())
        } else if part.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
            Req::Exists(part.into())
        } else {
            return Err(format!("cannot parse selector requirement {part:?}"));
        };
        reqs.push(req);
    }
    Ok(reqs)
}

/// A compiled filter.
pub struct Matcher {
    selector: Vec<Req>,
    annotations: Vec<(String, String)>,
    health: Option<String>,
    sync: Option<String>,
    project: Option<String>,
}

impl Matcher {
    /// Compiles the filter; `raw_query` carries the repeatable `annotation=k=v` parameters.
    pub fn new(filter: &AppFilter, raw_query: &[(String, String)]) -> Result<Self, ApiError> {
        let selector = parse_selector(filter.selector.as_deref().unwrap_or(""))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("selector: {e}")))?;
        let mut annotations = vec![];
        for (k, v) in raw_query {
            if k == "annotation" {
                let (ak, av) = v.split_once('=').ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("annotation filter {v:?} must be key=value"),
                    )
                })?;
                annotations.push((ak.to_owned(), av.to_owned()));
            }
        }
        Ok(Self {
            selector,
            annotations,
            health: filter.health.clone(),
            sync: filter.sync.clone(),
            project: filter.project.clone(),
        })
    }

    /// Whether an application passes every part of the filter.
    pub fn matches(&self, app: &Application) -> bool {
        let label = |k: &str| app.labels.get(k).map(String::as_str);
        let ok_selector = self.selector.iter().all(|r| match r {
            Req::Eq(k, v) => label(k) == Some(v.as_str()),
            Req::Ne(k, v) => label(k) != Some(v.as_str()),
            Req::Exists(k) => label(k).is_some(),
            Req::Absent(k) => label(k).is_none(),
            Req::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Req::NotIn(k, vs) => label(k).is_none_or(|l| !vs.iter().any(|v| v == l)),
        });
        let ok_annotations = self
            .annotations
            .iter()
            .all(|(k, v)| app.annotations.get(k).map(String::as_str) == Some(v.as_str()));
        let eq_ci = |want: &Option<String>, got: &str| want.as_ref().is_none_or(|w| got.eq_ignore_ascii_case(w));
        ok_selector
            && ok_annotations
            && eq_ci(&self.health, app.health.status.as_str())
            && eq_ci(&self.sync, app.sync.status.as_str())
            && self.project.as_ref().is_none_or(|p| &app.project == p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors() {
        assert_eq!(
            parse_selector("team=a, env in (prod, staging),!legacy,tier!=web").unwrap(),
            vec![
                Req::Eq("team".into(), "a".into()),
                Req::In("env".into(), vec!["prod".into(), "staging".into()]),
                Req::Absent("legacy".into()),
                Req::Ne("tier".into(), "web".into()),
            ]
        );
        assert!(parse_selector("a in b").is_err());
        let f = AppFilter {
            selector: Some("env in (prod),team".into()),
            health: Some("healthy".into()),
            ..Default::default()
        };
        let m = Matcher::new(&f, &[("annotation".into(), "owner=me".into())]).unwrap();
        let item = |v: serde_json::Value| serde_json::from_value::<Application>(v).unwrap();
        let app = item(
            json!({"labels": {"env": "prod", "team": "x"}, "annotations": {"owner": "me"}, "health": {"status": "Healthy"}}),
        );
        assert!(m.matches(&app));
        let other = item(
            json!({"labels": {"env": "dev", "team": "x"}, "annotations": {"owner": "me"}, "health": {"status": "Healthy"}}),
        );
        assert!(!m.matches(&other));
    }
}
