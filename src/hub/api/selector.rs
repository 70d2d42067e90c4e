//! The filters of the application lists: a Kubernetes-style label selector (`k=v`, `k!=v`,
//! `k`, `!k`, `k in (a,b)`, `k notin (a,b)`), annotations (`annotation=k=v`, repeatable),
//! health, sync status, project and a text search (`q`). The change feed applies the same
//! filters to application events.

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
    /// Text search: case-insensitive, in the name, namespace, project, destination, sources,
    /// revision, labels and annotations.
    pub q: Option<String>,
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
    text: Option<String>,
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
            project: filter.project.clone().filter(|p| !p.is_empty()),
            text: filter
                .q
                .as_deref()
                .map(str::trim)
                .filter(|q| !q.is_empty())
                .map(str::to_lowercase),
        })
    }

    /// Whether the filter says anything about applications (an empty one passes every event).
    pub fn is_empty(&self) -> bool {
        self.selector.is_empty()
            && self.annotations.is_empty()
            && self.health.is_none()
            && self.sync.is_none()
            && self.project.is_none()
            && self.text.is_none()
    }

    /// Whether an application passes every part of the filter.
    pub fn matches(&self, app: &Application) -> bool {
        self.matches_as(app, app.health.status.as_str(), app.sync.status.as_str())
    }

    /// Whether an application would pass with this health and sync status (the change feed
    /// asks it of an application's previous state, so a watcher of Degraded applications also
    /// learns when one recovers).
    pub fn matches_as(&self, app: &Application, health: &str, sync: &str) -> bool {
        let label = |k: &str| app.labels.get(k);
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
            .all(|(k, v)| app.annotations.get(k) == Some(v.as_str()));
        let eq_ci = |want: &Option<String>, got: &str| want.as_ref().is_none_or(|w| got.eq_ignore_ascii_case(w));
        ok_selector
            && ok_annotations
            && eq_ci(&self.health, health)
            && eq_ci(&self.sync, sync)
            && self.project.as_ref().is_none_or(|p| &app.project == p)
            && self.text.as_deref().is_none_or(|q| text_matches(app, q))
    }
}

/// Whether `q` (lower case) occurs in any searchable text of the application.
fn text_matches(app: &Application, q: &str) -> bool {
    let has = |s: &str| !s.is_empty() && s.to_lowercase().contains(q);
    has(&app.name)
        || has(&app.namespace)
        || has(&format!("{}/{}", app.namespace, app.name))
        || has(&app.project)
        || has(&app.destination.server)
        || has(&app.destination.name)
        || has(&app.destination.namespace)
        || has(&app.sync.revision)
        || app.sync.revisions.iter().any(|r| has(r))
        || app
            .sources
            .iter()
            .any(|s| has(&s.repo_url) || has(&s.path) || has(&s.chart))
        || app.labels.iter().any(|(k, v)| has(k) || has(v))
        || app.annotations.iter().any(|(k, v)| has(k) || has(v))
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
        // A Degraded one would have passed: matches_as sees the previous state.
        assert!(!m.matches(&item(json!({"labels": {"env": "prod", "team": "x"}, "annotations": {"owner": "me"}, "health": {"status": "Degraded"}}))));
        assert!(m.matches_as(&app, "Healthy", ""));
        assert!(!m.is_empty());
    }

    #[test]
    fn text_search() {
        let app: Application = serde_json::from_value(json!({
            "namespace": "argocd", "name": "Checkout-API", "project": "payments",
            "labels": {"team": "shop"}, "annotations": {"owner": "<b>alice</b>"},
            "sources": [{"repoURL": "https://git.example.com/shop.git", "path": "deploy/prod"}],
            "sync": {"revision": "9f8e7d6c"}
        }))
        .unwrap();
        let m = |q: &str| {
            Matcher::new(
                &AppFilter {
                    q: Some(q.into()),
                    ..Default::default()
                },
                &[],
            )
            .unwrap()
            .matches(&app)
        };
        for q in [
            "checkout",
            "ARGOCD/check",
            "payments",
            "shop",
            "alice",
            "deploy/prod",
            "9f8e",
            "  api ",
        ] {
            assert!(m(q), "{q}");
        }
        assert!(!m("billing"));
        assert!(
            Matcher::new(
                &AppFilter {
                    q: Some("  ".into()),
                    ..Default::default()
                },
                &[]
            )
            .unwrap()
            .is_empty()
        );
    }
}
