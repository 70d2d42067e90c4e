//! Each application's state timeline: the hub records a point whenever the health, the sync
//! status, the revision or the operation (its phase, or a new operation) changes, plus when an
//! application is first seen and when it is deleted. Points are written by the change-feed
//! recorder ([`super::feed`]) in the same transaction as the feed events, bounded per
//! application (`--timeline-per-app`) and in age (`--timeline-max-age`), and served per
//! application and per gateway by the API and drawn on the status page.

use crate::wire::item::Application;

use super::store::TimelineRow;

/// What a timeline point says about one application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Health status.
    pub health: String,
    /// Health message.
    pub health_message: String,
    /// Sync status.
    pub sync: String,
    /// Revision, or the revisions of a multi-source application joined with commas.
    pub revision: String,
    /// Operation phase ("" when none).
    pub operation_phase: String,
    /// Operation message.
    pub operation_message: String,
    /// When the operation started (tells a new operation from the last one in the same phase).
    pub operation_started: String,
}

impl Status {
    /// The timeline-relevant state of an application.
    pub fn of(app: &Application) -> Self {
        let revision = if app.sync.revisions.is_empty() {
            app.sync.revision.clone()
        } else {
            app.sync.revisions.join(",")
        };
        let (operation_phase, operation_message, operation_started) = match &app.operation {
            Some(op) => (
                op.phase.as_str().to_owned(),
                op.message.clone(),
                op.started_at.map(|t| t.to_string()).unwrap_or_default(),
            ),
            None => Default::default(),
        };
        Self {
            health: app.health.status.as_str().to_owned(),
            health_message: app.health.message.to_string(),
            sync: app.sync.status.as_str().to_owned(),
            revision,
            operation_phase,
            operation_message,
            operation_started,
        }
    }

    /// Which tracked parts differ from `before`, in a fixed order.
    pub fn changes_since(&self, before: &Status) -> Vec<&'static str> {
        let mut changed = vec![];
        if self.health != before.health {
            changed.push("health");
        }
        if self.sync != before.sync {
            changed.push("sync");
        }
        if self.revision != before.revision {
            changed.push("revision");
        }
        if self.operation_phase != before.operation_phase || self.operation_started != before.operation_started {
            changed.push("operation");
        }
        changed
    }
}

/// The timeline point for one application change (`None` before means first seen, `None`
/// after means deleted), or nothing when no tracked part changed.
pub fn point(
    gateway_id: &str,
    key: &str,
    before: Option<&Application>,
    after: Option<&Application>,
    at_ms: i64,
) -> Option<TimelineRow> {
    let (status, changed) = match (before, after) {
        (None, Some(a)) => (Status::of(a), vec!["first"]),
        (Some(b), None) => (Status::of(b), vec!["deleted"]),
        (Some(b), Some(a)) => {
            let now = Status::of(a);
            let changed = now.changes_since(&Status::of(b));
            if changed.is_empty() {
                return None;
            }
            (now, changed)
        }
        (None, None) => return None,
    };
    Some(TimelineRow {
        id: 0,
        gateway_id: gateway_id.to_owned(),
        app: key.to_owned(),
        at_ms,
        health: status.health,
        health_message: status.health_message,
        sync: status.sync,
        revision: status.revision,
        operation_phase: status.operation_phase,
        operation_message: status.operation_message,
        changed: changed.into_iter().map(str::to_owned).collect(),
    })
}

/// A timeline point as the API serves it.
pub fn to_json(row: &TimelineRow) -> serde_json::Value {
    let mut v = serde_json::to_value(row).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("at".into(), crate::util::rfc3339_from_ms(row.at_ms).into());
        o.insert("id".into(), row.id.into());
        if let Some((namespace, name)) = row.app.split_once('/') {
            o.insert("namespace".into(), namespace.into());
            o.insert("name".into(), name.into());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn app(v: serde_json::Value) -> Application {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn transitions_are_recorded_and_noise_is_not() {
        let a = app(
            json!({"name": "a", "namespace": "argocd", "health": {"status": "Healthy"},
            "sync": {"status": "Synced", "revision": "abc"},
            "operation": {"phase": "Succeeded", "startedAt": "2026-01-05T09:00:30Z"}}),
        );
        let first = point("gw", "argocd/a", None, Some(&a), 1).unwrap();
        assert_eq!(first.changed, ["first"]);
        assert_eq!((first.health.as_str(), first.revision.as_str()), ("Healthy", "abc"));

        // Only the resources changed: no point.
        let mut b = a.clone();
        b.resources.push(Default::default());
        assert!(point("gw", "argocd/a", Some(&a), Some(&b), 2).is_none());

        // Health and revision changed.
        let c = app(
            json!({"name": "a", "namespace": "argocd", "health": {"status": "Degraded", "message": "crash"},
            "sync": {"status": "Synced", "revision": "def"},
            "operation": {"phase": "Succeeded", "startedAt": "2026-01-05T09:00:30Z"}}),
        );
        let p = point("gw", "argocd/a", Some(&a), Some(&c), 3).unwrap();
        assert_eq!(p.changed, ["health", "revision"]);
        assert_eq!(p.health_message, "crash");

        // A new operation in the same phase counts.
        let d = app(
            json!({"name": "a", "namespace": "argocd", "health": {"status": "Degraded", "message": "crash"},
            "sync": {"status": "Synced", "revision": "def"},
            "operation": {"phase": "Succeeded", "startedAt": "2026-01-05T10:00:00Z"}}),
        );
        assert_eq!(
            point("gw", "argocd/a", Some(&c), Some(&d), 4).unwrap().changed,
            ["operation"]
        );

        // Multi-source revisions, and deletion keeps the last state.
        let m = app(json!({"sync": {"status": "Synced", "revisions": ["r1", "r2"]}}));
        assert_eq!(Status::of(&m).revision, "r1,r2");
        let gone = point("gw", "argocd/a", Some(&d), None, 5).unwrap();
        assert_eq!(gone.changed, ["deleted"]);
        assert_eq!(gone.health, "Degraded");
        let v = to_json(&gone);
        assert_eq!(v["name"], "a");
        assert_eq!(v["namespace"], "argocd");
        assert_eq!(v["at"], "1970-01-01T00:00:00.005Z");
    }
}
